"""Graceful shutdown in memory: refuse new pipes, finish or fail the rest."""

from __future__ import annotations

import json

from hoodypipe.service import PipeService
from tests.memhttp import MemoryDaemon


def service(d: MemoryDaemon, drain: float = 10) -> PipeService:
    svc = PipeService(d.clock, d.parts, [], drain_timeout=drain)
    svc.startService()
    return svc


def test_waiting_parties_are_told_at_once_and_new_ones_refused():
    d = MemoryDaemon()
    svc = service(d)
    receiver = d.receiver("/w")
    sender = d.sender("/v")
    stopping = svc.stopService()
    assert receiver.response().status == 503
    assert receiver.response().body == b"[ERROR] Server is shutting down.\n"
    assert sender.response().body.endswith(b"[ERROR] Server is shutting down.\n")
    late = d.receiver("/x")
    assert late.response().status == 503
    d.clock.advance(0.2)
    for conn in (receiver, sender, late):
        assert conn.closing  # idle connections are closed by the drain
        conn.close()
    d.clock.advance(1)
    assert stopping.called


def test_streaming_transfers_may_finish_during_the_drain():
    d = MemoryDaemon()
    svc = service(d)
    receiver = d.receiver("/s")
    sender = d.sender("/s")
    stopping = svc.stopService()
    sender.chunk(b"more")
    d.clock.advance(5)
    assert not stopping.called
    sender.end_chunks()
    assert receiver.response().complete and receiver.response().body == b"more"
    assert sender.response().body.endswith(b"[INFO] Transfer complete.\n")
    receiver.close()
    sender.close()
    d.clock.advance(1)
    assert stopping.called


def test_transfers_still_running_at_the_drain_timeout_fail_visibly():
    d = MemoryDaemon()
    svc = service(d, drain=3)
    watcher = d.receiver("/f?progress", {"Accept": "text/event-stream"})
    receiver = d.receiver("/f")
    sender = d.sender("/f")
    sender.chunk(b"part")
    svc.stopService()
    d.clock.pump([0.1] * 35)
    assert receiver.aborted
    assert sender.response().body.endswith(b"[ERROR] Server is shutting down.\n")
    body = watcher.response().body.decode()
    done = [json.loads(block.split("data: ", 1)[1]) for block in body.split("\n\n") if "event: done" in block]
    assert done[0]["state"] == "failed" and done[0]["reason"] == "Server is shutting down"
    assert watcher.response().complete  # spectator streams are closed cleanly
