"""The side channel after ``done`` (KIT.md section 1), in memory under a Clock.

Ids that increase across streams, transfers and restarts; a plain stream that
ends after its ``done``; 204 for a reconnect that saw the end; ``follow``
streams across transfers; ``done`` never merged away nor sent twice.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest

from hoodypipe.hub import HubLimits, parse_last_event_id
from tests.memhttp import Conn, MemoryDaemon, parse_response

SSE = {"Accept": "text/event-stream"}
NOW = 1_780_000_000.0  # a realistic Unix time: ids are microseconds


@dataclass
class Event:
    id: int
    name: str
    data: dict


def sse_events(conn: Conn) -> list[Event]:
    body = parse_response(conn.raw).body.decode()
    out = []
    for block in body.split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line and not line.startswith(":"))
        if "event" in fields:
            out.append(Event(int(fields["id"]), fields["event"], json.loads(fields["data"])))
    return out


def daemon(**limits) -> MemoryDaemon:
    d = MemoryDaemon(hub_limits=HubLimits(**limits))
    d.clock.advance(NOW)
    d.hub.start()
    return d


def transfer(d: MemoryDaemon, name: str = "x", body: bytes = b"12345") -> None:
    receiver = d.receiver(f"/{name}")
    d.sender(f"/{name}").chunk(body).end_chunks()
    assert receiver.response().complete


def watch(d: MemoryDaemon, query: str = "", last_id: int | str | None = None, name: str = "x") -> Conn:
    headers = dict(SSE)
    if last_id is not None:
        headers["Last-Event-ID"] = str(last_id)
    return d.receiver(f"/{name}?progress{query}", headers)


def kinds(events: list[Event]) -> list[tuple[str, str | None]]:
    return [(e.name, e.data.get("state")) for e in events]


def assert_increasing(events: list[Event]) -> None:
    ids = [e.id for e in events]
    assert ids == sorted(ids) and len(set(ids)) == len(ids), ids


# -- ids -------------------------------------------------------------------------


def test_ids_are_unix_microseconds_and_increase_across_streams_and_transfers():
    d = daemon()
    first = watch(d)
    transfer(d)
    seen = sse_events(first)
    assert all(e.id >= int(NOW * 1e6) for e in seen)
    d.clock.advance(1)
    second = watch(d, "&follow=1")
    transfer(d)
    transfer(d)
    later = sse_events(second)
    assert later[0].id > seen[-1].id
    assert_increasing(seen + later)


def test_a_burst_within_one_microsecond_still_gets_increasing_ids():
    d = daemon()
    spectators = [watch(d) for _ in range(5)]  # the clock does not move
    ids = [e.id for s in spectators for e in sse_events(s)]
    assert len(set(ids)) == len(ids) and ids == sorted(ids)


def test_ids_keep_increasing_across_a_restart():
    d = daemon()
    transfer(d)
    before = sse_events(watch(d))[-1].id
    restarted = MemoryDaemon()  # forgets everything but the time
    restarted.clock.advance(NOW + 2)
    after = sse_events(watch(restarted))
    assert after[0].id > before


@pytest.mark.parametrize("value", ["abc", "-5", "1.5", "", " ", "12345678901234567890123", "0x10", "1e6"])
def test_a_last_event_id_that_is_no_integer_is_ignored(value):
    assert parse_last_event_id(value.encode()) is None
    assert parse_last_event_id("１２".encode()) is None  # digits, but not ASCII ones
    d = daemon()
    transfer(d)
    got = watch(d, last_id=value)
    assert got.response().status == 200
    assert kinds(sse_events(got))[-1] == ("done", "complete")


# -- a plain stream carries one transfer ---------------------------------------------


def test_a_plain_stream_ends_right_after_its_done():
    d = daemon()
    spectator = watch(d)
    receiver = d.receiver("/x")
    sender = d.sender("/x").chunk(b"a" * 100)
    d.clock.advance(0.25)
    assert not spectator.response().complete
    sender.end_chunks()
    assert receiver.response().complete
    got = spectator.response()
    assert got.complete and got.body.endswith(b"\n\n")  # ended at an event boundary
    events = sse_events(spectator)
    assert [e.name for e in events].count("done") == 1 and events[-1].name == "done"
    assert not spectator.closing  # the terminator, and the connection kept alive
    assert d.hub.watches == {}


def test_an_idle_name_gets_idle_then_the_next_transfer_then_the_end():
    d = daemon()
    spectator = watch(d)
    assert kinds(sse_events(spectator)) == [("state", "idle")]
    transfer(d)
    got = kinds(sse_events(spectator))
    assert got[0] == ("state", "idle") and ("state", "streaming") in got and got[-1] == ("done", "complete")
    assert spectator.response().complete


def test_a_fresh_spectator_of_a_finished_name_gets_the_final_state_and_done_then_the_end():
    d = daemon()
    transfer(d)
    late = watch(d)
    assert kinds(sse_events(late)) == [("state", "complete"), ("progress", None), ("done", "complete")]
    assert late.response().complete
    assert sse_events(late)[-1].data["bytes"] == 5


def test_a_reconnect_that_saw_the_done_gets_204_and_nothing_else():
    d = daemon()
    first = watch(d)
    transfer(d)
    done = sse_events(first)[-1]
    assert done.name == "done"
    again = watch(d, last_id=done.id)
    got = again.response()
    assert got.status == 204 and got.body == b""
    assert got.headers["access-control-allow-origin"] == "*"
    assert "content-type" not in got.headers
    assert d.hub.watches == {}  # it holds no spectator slot


def test_a_replayed_done_counts_as_seen_too():
    d = daemon()
    transfer(d)
    replayed = sse_events(watch(d))[-1]
    assert watch(d, last_id=replayed.id).response().status == 204
    assert watch(d, last_id=replayed.id + 10**9).response().status == 204  # any id above D


def test_a_reconnect_that_missed_the_done_gets_it_once():
    d = daemon()
    spectator = watch(d)
    receiver = d.receiver("/x")
    sender = d.sender("/x").chunk(b"a" * 10)
    d.clock.advance(0.25)
    seen = sse_events(spectator)
    spectator.close()  # away when it ends
    sender.end_chunks()
    assert receiver.response().complete
    back = watch(d, last_id=seen[-1].id)
    events = sse_events(back)
    assert kinds(events) == [("state", "complete"), ("progress", None), ("done", "complete")]
    assert back.response().complete
    assert watch(d, last_id=events[-1].id).response().status == 204


def test_a_mid_transfer_reconnect_gets_the_state_then_live_progress_and_one_done():
    d = daemon(window=1)
    receiver = d.receiver("/x")
    sender = d.sender("/x").chunk(b"a" * 10)
    every: list[Event] = []
    spectator = watch(d)
    for _ in range(3):  # three windows
        for _ in range(4):
            sender.chunk(b"b" * 10)
            d.clock.advance(0.25)
        assert spectator.response().complete  # the window closed it
        got = sse_events(spectator)
        assert kinds(got)[0] == ("state", "streaming") and ("progress", None) in kinds(got)
        assert "done" not in [e.name for e in got]
        every += got
        spectator = watch(d, last_id=got[-1].id)
    sender.end_chunks()
    assert receiver.response().complete
    every += sse_events(spectator)
    assert [e.name for e in every].count("done") == 1
    assert_increasing(every)
    assert watch(d, last_id=every[-1].id).response().status == 204


def test_a_new_transfer_after_a_seen_done_is_followed_again():
    d = daemon()
    first = watch(d)
    transfer(d)
    d_id = sse_events(first)[-1].id
    d.sender("/x")  # the next transfer waits for its receiver
    back = watch(d, last_id=d_id)
    assert back.response().status == 200
    assert kinds(sse_events(back)) == [("state", "waiting")]  # no second done of the old one


def test_a_spectator_that_stopped_reading_still_gets_its_done_then_the_end():
    d = daemon()
    spectator = watch(d)
    receiver = d.receiver("/x")
    sender = d.sender("/x").chunk(b"a" * 10)
    spectator.channel.pauseProducing()  # its socket is full
    before = len(spectator.raw)
    for _ in range(8):
        sender.chunk(b"b")
        d.clock.advance(0.25)
    sender.end_chunks()
    assert receiver.response().complete
    got = spectator.response()
    assert got.complete  # done handed to the transport with what was held, then the end
    events = sse_events(spectator)
    assert events[-1].name == "done" and len(spectator.raw) - before < 2048
    assert_increasing(events)


def test_a_timed_out_wait_is_a_failed_done_and_ends_the_stream():
    d = MemoryDaemon(limits=None, hub_limits=HubLimits())
    d.registry.limits.wait_timeout = 5
    d.clock.advance(NOW)
    spectator = watch(d)
    d.sender("/x")
    d.clock.advance(6)
    events = sse_events(spectator)
    assert kinds(events)[-2:] == [("progress", None), ("done", "failed")]
    assert events[-1].data["reason"] == "Timed out"
    assert spectator.response().complete


def test_the_window_still_closes_a_stream_on_an_idle_name():
    d = daemon(window=1)
    spectator = watch(d)
    d.clock.advance(1)
    assert spectator.response().complete
    assert kinds(sse_events(spectator)) == [("state", "idle")]


# -- follow ----------------------------------------------------------------------------


def test_follow_stays_open_across_transfers_each_with_its_own_done():
    d = daemon()
    follower = watch(d, "&follow=1")
    transfer(d, body=b"one")
    d.clock.advance(1)
    transfer(d, body=b"second")
    events = sse_events(follower)
    dones = [e for e in events if e.name == "done"]
    assert [e.data["bytes"] for e in dones] == [3, 6]
    assert_increasing(events)
    assert not follower.response().complete
    assert kinds(events).count(("state", "streaming")) == 2


def test_follow_never_gets_204_and_a_seen_end_gives_the_final_state_alone():
    d = daemon()
    transfer(d)
    done = sse_events(watch(d))[-1]
    back = watch(d, "&follow=1", last_id=done.id)
    assert back.response().status == 200
    assert kinds(sse_events(back)) == [("state", "complete")]
    assert not back.response().complete


def test_follow_replays_a_missed_done_once():
    d = daemon()
    follower = watch(d, "&follow=1")
    last_seen = sse_events(follower)[-1].id
    follower.close()  # nothing is left of the name: its ids start from the clock again
    d.clock.advance(0.001)
    transfer(d)
    back = watch(d, "&follow=1", last_id=last_seen)
    assert kinds(sse_events(back)) == [("state", "complete"), ("progress", None), ("done", "complete")]
    fresh = watch(d, "&follow=1")  # no Last-Event-ID: like a fresh plain stream, but open
    assert kinds(sse_events(fresh))[-1] == ("done", "complete") and not fresh.response().complete


def test_follow_reconnect_during_the_next_transfer_gets_the_missed_done_then_the_new_state():
    d = daemon()
    follower = watch(d, "&follow=1")
    last_seen = sse_events(follower)[-1].id
    follower.close()  # nothing is left of the name: its ids start from the clock again
    d.clock.advance(0.001)
    transfer(d)
    d.sender("/x")  # a second transfer is waiting
    back = watch(d, "&follow=1", last_id=last_seen)
    events = sse_events(back)
    assert kinds(events) == [("done", "complete"), ("state", "waiting")]
    assert_increasing(events)
    fresh = watch(d, "&follow=1")  # no Last-Event-ID: only where things stand
    assert kinds(sse_events(fresh)) == [("state", "waiting")]


def test_text_follow_stays_open_after_the_final_line():
    d = daemon()
    plain = d.receiver("/x?progress&format=text")
    follower = d.receiver("/x?progress&format=text&follow=1")
    transfer(d)
    assert plain.response().complete and b"[complete]" in plain.response().body
    assert b"[complete]" in follower.response().body and not follower.response().complete
    late = d.receiver("/x?progress&format=text")
    assert late.response().complete  # text prints the final line and ends, as before


# -- what stays as it was ----------------------------------------------------------------


def test_status_and_json_ignore_last_event_id():
    d = daemon()
    transfer(d)
    done = sse_events(watch(d))[-1]
    for query in ("?status", "?progress&format=json"):
        got = d.receiver(f"/x{query}", {"Last-Event-ID": str(done.id)}).response()
        assert got.status == 200 and json.loads(got.body)["state"] == "complete"
    head = d.connect().request("HEAD", "/x?status").response()
    assert head.status == 200 and head.headers["content-type"] == "application/json"


def test_the_preflight_allows_last_event_id_and_private_network():
    d = daemon()
    got = (
        d.connect()
        .request(
            "OPTIONS",
            "/x?progress",
            headers={
                "Origin": "https://status.example",
                "Access-Control-Request-Method": "GET",
                "Access-Control-Request-Headers": "last-event-id",
                "Access-Control-Request-Private-Network": "true",
            },
        )
        .response()
    )
    allowed = [h.strip().lower() for h in got.headers["access-control-allow-headers"].split(",")]
    assert "last-event-id" in allowed
    assert got.headers["access-control-allow-private-network"] == "true"
    plain = d.connect().request("OPTIONS", "/x").response()
    assert "access-control-allow-private-network" not in plain.headers


def test_the_dashboard_follows_the_name():
    d = daemon()
    page = d.receiver("/x?progress", {"Accept": "text/html"}).response().body.decode()
    config = json.loads(page.split('id="config"', 1)[1].split(">", 1)[1].split("</script>", 1)[0])
    assert config["sseUrl"] == "/api/v1/pipe/x?progress&follow=1&format=sse"  # from the name, not the path
