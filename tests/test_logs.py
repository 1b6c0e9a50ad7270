"""Structured logs: one event per transfer start and end, JSON on request."""

from __future__ import annotations

import json

from twisted.logger import globalLogPublisher

from hoodypipe import logs
from tests.memhttp import MemoryDaemon


def test_transfers_log_start_and_end_as_json_events(capsys):
    observer = logs.json()
    globalLogPublisher.addObserver(observer)
    try:
        d = MemoryDaemon()
        receiver = d.receiver("/logged")
        sender = d.sender("/logged")
        sender.chunk(b"12345").end_chunks()
        assert receiver.response().complete
    finally:
        globalLogPublisher.removeObserver(observer)
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.strip()]
    mine = [e for e in events if e.get("name") == "logged"]
    start = next(e for e in mine if e.get("event") == "transfer_start")
    end = next(e for e in mine if e.get("event") == "transfer_end")
    assert start["n"] == 1
    assert end["outcome"] == "complete" and end["bytes"] == 5 and end["reason"] is None
    assert isinstance(end["duration"], float) and "log_time" in end
