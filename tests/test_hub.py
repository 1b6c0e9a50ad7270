"""The side channel in memory: meter, hub ticks, coalescing, caps, window, retention."""

from __future__ import annotations

import json

import pytest

from hoodypipe.hub import HubLimits
from hoodypipe.progress import Meter, eta, percent, text_line
from tests.e2e._sidechannel import STATUS_FIELDS
from tests.memhttp import MemoryDaemon

SSE = {"Accept": "text/event-stream"}


def events(raw: bytes) -> list[tuple[str, dict]]:
    """(event, data) pairs from an SSE body (headers and chunk framing stripped)."""
    from tests.memhttp import parse_response

    body = parse_response(raw).body.decode()
    out = []
    for block in body.split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line and not line.startswith(":"))
        if "event" in fields:
            out.append((fields["event"], json.loads(fields["data"])))
    return out


def started(d: MemoryDaemon, name: str = "x", size: int | None = None):
    headers = {"X-Pipe-Size": str(size)} if size is not None else {}
    receiver = d.receiver(f"/{name}")
    sender = d.sender(f"/{name}", headers)
    return sender, receiver


def test_meter_settles_over_its_window():
    meter = Meter(window=5)
    for t in range(0, 21):
        meter.sample(float(t), t * 100)
    assert meter.speed() == pytest.approx(100)
    meter.sample(21.0, 2100 + 1000)  # a burst moves the figure, but only so far
    assert 100 < meter.speed() < 400
    assert meter.samples[0][0] >= 21 - 5 - 1


def test_eta_and_percent():
    assert eta(50, 100, 10.0) == 5.0
    assert eta(50, None, 10.0) is None
    assert eta(50, 100, 0.0) is None
    assert percent(50, 200) == 25.0 and percent(5, None) is None and percent(0, 0) == 100.0


def test_spectator_sees_the_whole_lifecycle():
    d = MemoryDaemon()
    d.hub.start()
    watcher = d.receiver("/x?progress", SSE)
    assert watcher.raw.split(b"\r\n\r\n", 1)[1].find(b"retry: ") >= 0
    sender, receiver = started(d, size=1000)
    sender.chunk(b"a" * 400)
    d.clock.advance(0.25)
    d.clock.advance(0.25)
    sender.chunk(b"a" * 600).end_chunks()
    got = events(watcher.raw)
    names = [e for e, _ in got]
    assert names[0] == "state" and got[0][1]["state"] == "idle"
    assert ("state", "waiting") in [(e, v.get("state")) for e, v in got]
    assert "progress" in names and names[-1] == "done"
    progress = [v for e, v in got if e == "progress" and v["bytes"] == 400][-1]
    assert progress["bytesTransferred"] == progress["bytes"] == 400
    assert progress["totalBytes"] == 1000 and progress["percent"] == 40.0
    assert progress["speed"] > 0 and progress["mbps"] >= 0 and progress["etaSec"] == progress["eta"]
    done = got[-1][1]
    assert done["state"] == "complete" and done["reason"] is None and done["bytes"] == 1000
    assert receiver.response().complete


def test_ids_increase():
    d = MemoryDaemon()
    d.hub.start()
    watcher = d.receiver("/x?progress", SSE)
    started(d)
    d.clock.advance(0.5)
    ids = [int(line[4:]) for line in watcher.response().body.decode().splitlines() if line.startswith("id: ")]
    assert ids == sorted(ids) and len(set(ids)) == len(ids) > 2


def test_a_full_spectator_gets_the_latest_figures_only_and_never_blocks_the_transfer():
    d = MemoryDaemon()
    d.hub.start()
    watcher = d.receiver("/x?progress", SSE)
    sender, _receiver = started(d)
    watcher.channel.pauseProducing()  # its socket buffer is full
    before = len(watcher.raw)
    for _i in range(40):
        sender.chunk(b"z" * 10)
        d.clock.advance(0.25)
    assert len(watcher.raw) == before  # nothing queued behind a full socket
    assert sender.reading  # and the transfer never noticed
    watcher.channel.resumeProducing()
    fresh = events(watcher.raw)
    progress = [v for e, v in fresh if e == "progress"]
    assert progress[-1]["bytes"] == 400
    assert len(progress) <= 3  # one coalesced update, not forty


def test_spectator_caps_and_snapshots_are_not_counted():
    d = MemoryDaemon(hub_limits=HubLimits(max_spectators=2, max_watched_paths=1))
    d.receiver("/x?progress", SSE)
    d.receiver("/x?progress", SSE)
    third = d.receiver("/x?progress", SSE)
    assert third.response().status == 429 and third.response().headers["retry-after"]
    assert d.receiver("/x?status").response().status == 200
    assert d.receiver("/x?progress&format=json").response().status == 200
    other = d.receiver("/y?progress", SSE)
    assert other.response().status == 429


def test_spectators_leaving_free_their_slot():
    d = MemoryDaemon(hub_limits=HubLimits(max_spectators=1))
    first = d.receiver("/x?progress", SSE)
    first.close()
    assert d.receiver("/x?progress", SSE).response().status == 200
    assert len(d.hub.watches["x"].spectators) == 1


def test_window_ends_a_stream_at_an_event_boundary():
    d = MemoryDaemon(hub_limits=HubLimits(window=1))
    d.hub.start()
    watcher = d.receiver("/x?progress", SSE)
    d.clock.advance(0.75)
    assert not watcher.response().complete
    d.clock.advance(0.25)
    got = watcher.response()
    assert got.complete and got.body.endswith(b"\n\n")
    assert d.hub.watches == {}


def test_latecomers_see_the_final_state_until_retention_ends():
    d = MemoryDaemon(hub_limits=HubLimits(retain=100))
    d.hub.start()
    sender, _ = started(d)
    sender.chunk(b"12345").end_chunks()
    late = d.receiver("/x?progress", SSE)
    names = [(e, v.get("state")) for e, v in events(late.raw)]
    assert names[0] == ("state", "complete") and names[-1] == ("done", "complete")
    status = json.loads(d.receiver("/x?status").response().body)
    assert status["state"] == "complete" and status["bytes"] == 5 and status["durationSec"] is not None
    assert [h["state"] for h in status["history"]] == ["waiting", "streaming", "complete"]
    text = d.receiver("/x?progress&format=text").response()
    assert text.complete and text.body.startswith(b"[complete] 5 B")
    d.clock.advance(101)
    assert json.loads(d.receiver("/x?status").response().body)["state"] == "idle"


def test_follow_streams_follow_a_new_transfer_on_the_name():
    d = MemoryDaemon()
    d.hub.start()
    plain = d.receiver("/x?progress", SSE)
    follower = d.receiver("/x?progress&follow=1", SSE)
    sender, _ = started(d)
    sender.chunk(b"1").end_chunks()
    d.sender("/x")
    states = [v["state"] for e, v in events(follower.raw) if e == "state"]
    assert states[-1] == "waiting" and "complete" in states
    assert plain.response().complete  # a plain stream carries one transfer
    assert [v["state"] for e, v in events(plain.raw) if e == "state"][-1] == "complete"


def test_failed_transfer_reports_its_reason():
    d = MemoryDaemon()
    watcher = d.receiver("/x?progress", SSE)
    sender, _ = started(d)
    sender.chunk(b"1")
    sender.drop()
    done = [v for e, v in events(watcher.raw) if e == "done"]
    assert done == [done[0]] and done[0]["state"] == "failed" and done[0]["reason"] == "Sender disconnected"


def test_one_timer_for_the_whole_daemon():
    d = MemoryDaemon()
    d.hub.start()
    base = len(d.clock.getDelayedCalls())
    for i in range(20):
        d.receiver(f"/p{i}?progress", SSE)
    assert len(d.clock.getDelayedCalls()) == base


def test_status_of_an_unused_name_is_idle_with_every_field():
    d = MemoryDaemon()
    got = d.receiver("/nobody?status").response()
    assert got.status == 200 and got.headers["cache-control"] == "no-store"
    body = json.loads(got.body)
    assert set(body) >= STATUS_FIELDS | {"kind", "peers", "transferId", "sha256"}
    assert body["state"] == "idle"


@pytest.mark.parametrize(
    "accept, kind",
    [
        ("text/html,application/xhtml+xml,*/*;q=0.8", "text/html"),
        ("text/event-stream", "text/event-stream"),
        ("*/*", "text/event-stream"),
        (None, "text/event-stream"),
        ("application/json", "application/json"),
        ("text/plain", "text/plain"),
        ("text/html;q=0, application/json", "application/json"),
        ("application/json;q=0.5, text/plain;q=0.9", "text/plain"),
    ],
)
def test_format_is_chosen_by_accept(accept, kind):
    d = MemoryDaemon()
    got = d.receiver("/x?progress", {"Accept": accept} if accept else {}).response()
    assert got.headers["content-type"].startswith(kind)


def test_text_lines():
    assert text_line({"state": "waiting", "hasSender": True, "receivers": 0, "totalReceivers": 1, "bytes": 0}) == (
        "[waiting] sender connected, 0 of 1 receiver(s)"
    )
