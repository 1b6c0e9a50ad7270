"""Real SSE clients against the daemon: the side channel's lifecycle after a
transfer ends (KIT.md section 1), as bots and scripts see it.

- the npm ``eventsource`` package (pinned in ``clients/package.json``), in a Node
  bot that counts ``done`` events across window reconnects and must stop on 204;
- ``curl -N``: a plain stream ends by itself after its ``done``; a latecomer gets
  the final line and ends; a reconnect that saw the ``done`` gets 204;
- ``&follow=1``: one stream across transfers, and its reconnects;
- the CORS preflight a cross-origin EventSource needs for ``Last-Event-ID``;
- the one-liner of docs/sse.md, run as written.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from ._helpers import fetch, run_curl, unique, wait_for, wait_status
from ._sidechannel import (
    PREFIX,
    CurlSSE,
    Event,
    PacedSender,
    Receiver,
    check_fields,
    check_ids_increase,
    is_kind,
    is_state,
)

CLIENTS = Path(__file__).resolve().parent / "clients"
NODE_MAJOR = 18  # eventsource 3.x runs on Debian 12's node 18 (4.x needs >= 20, 5.x >= 22.12)
ACCESS = re.compile(r'"GET (?P<target>\S+) HTTP/1\.[01]" (?P<status>\d{3}) ')


def _unavailable(reason: str) -> None:
    """Skip locally; under CI nothing may skip."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true but {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def node_clients() -> Path:
    """``tests/e2e/clients`` with its pinned packages installed (``npm ci``)."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        _unavailable("node and npm are needed for the eventsource client tests (apt-get install nodejs npm)")
    wanted = json.loads((CLIENTS / "package.json").read_text())["dependencies"]["eventsource"]
    version = subprocess.run(
        [node, "--version"], capture_output=True, text=True, timeout=30, check=False
    ).stdout.strip()
    match = re.match(r"v(\d+)\.", version)
    if not match or int(match.group(1)) < NODE_MAJOR:
        _unavailable(f"node {version or '?'} is too old for eventsource {wanted} (needs >= {NODE_MAJOR})")
    installed = CLIENTS / "node_modules" / "eventsource" / "package.json"
    if not installed.exists() or json.loads(installed.read_text())["version"] != wanted:
        done = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=CLIENTS,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        if done.returncode != 0:
            _unavailable(f"npm ci in {CLIENTS} failed ({done.returncode}): {done.stderr[-2000:]}")
    assert json.loads(installed.read_text())["version"] == wanted
    return CLIENTS


class NodeBot:
    """``node clients/done_bot.mjs``: its stderr log as it goes, its JSON report at the end."""

    def __init__(self, clients: Path, pipe_url: str, seconds: float, *args: str) -> None:
        self.args = ["node", str(clients / "done_bot.mjs"), pipe_url, "--seconds", str(seconds), *args]
        self.seconds = seconds
        self.proc = subprocess.Popen(self.args, cwd=clients, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.log: list[str] = []
        self.out = ""
        self._threads = [
            threading.Thread(target=self._read_log, daemon=True),
            threading.Thread(target=self._read_out, daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def _read_log(self) -> None:
        for line in self.proc.stderr:
            self.log.append(line.rstrip("\n"))
        self.proc.stderr.close()

    def _read_out(self) -> None:
        self.out = self.proc.stdout.read()
        self.proc.stdout.close()

    def wait_log(self, pattern: str, timeout: float = 10) -> None:
        wait_for(
            lambda: any(re.search(pattern, line) for line in self.log),
            timeout,
            f"the bot to log {pattern!r}; log: {self.log[-10:]}",
        )

    def report(self) -> dict[str, Any]:
        try:
            self.proc.wait(self.seconds + 20)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError("the bot did not exit; log:\n" + "\n".join(self.log[-30:])) from None
        for thread in self._threads:
            thread.join(10)
        assert self.proc.returncode == 0, f"bot exited {self.proc.returncode}:\n" + "\n".join(self.log[-30:])
        return json.loads(self.out)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def access_log(daemon, name: str, query: str = "progress") -> list[tuple[str, int]]:
    """The daemon's access lines (target, status) for ``name?<query>...``: one per
    request that was answered to its end (twistd logs a request when it finishes)."""
    prefix = f"{PREFIX}{name}?{query}"
    found = []
    for line in daemon.log_text().splitlines():
        match = ACCESS.search(line)
        if match and match["target"].startswith(prefix):
            found.append((match["target"], int(match["status"])))
    return found


def spectators(daemon) -> int:
    """Open ``?progress`` streams, from ``/metrics``."""
    text = fetch(daemon, f"{PREFIX}metrics").text
    return int(float(re.search(r"^hoodypipe_spectators (\S+)$", text, re.M).group(1)))


def transfer(daemon, name: str, total: int, duration: float = 0.0) -> PacedSender:
    """One complete transfer on ``name`` (a sized, paced sender and one receiver)."""
    sender = PacedSender(daemon, name, total, duration, sized=True)
    receiver = Receiver(daemon, name)
    try:
        sender.join(duration + 30)
        receiver.join(duration + 30)
    finally:
        sender.kill()
        receiver.close()
    assert sender.lines and sender.lines[-1] == "[INFO] Transfer complete.", sender.lines
    assert receiver.complete and receiver.digest == sender.digest
    wait_status(daemon, name, state="complete", bytes=total)
    return sender


def sse(daemon, name: str, query: str = "progress", last_event_id: str | None = None, *args: str) -> CurlSSE:
    extra = list(args) + (["-H", f"Last-Event-ID: {last_event_id}"] if last_event_id is not None else [])
    return CurlSSE(daemon.url(name, query), "text/event-stream", *extra)


def payload(events: list[Event]) -> list[Event]:
    return [e for e in events if e.kind in ("state", "progress", "done")]


# -- a. the npm eventsource package in a Node bot -----------------------------------------------------


def test_eventsource_bot_gets_one_done_across_window_reconnects_and_stops_on_204(node_clients, daemon_factory):
    """A 1 s window cuts the stream three times mid-transfer; the library reconnects
    with Last-Event-ID each time; after the done its reconnect gets 204 and it stops."""
    d = daemon_factory("--spectator-window", "1")
    name = unique("bot")
    total, duration, linger = 7_000_000, 7.0, 6.0
    bot = NodeBot(node_clients, d.url(name), duration + linger + 6)
    sender = receiver = None
    try:
        bot.wait_log(r"event state id=\d+ idle", 10)
        sender = PacedSender(d, name, total, duration, sized=True)
        receiver = Receiver(d, name)
        sender.join(duration + 30)
        receiver.join(duration + 30)
        assert receiver.complete and receiver.digest == sender.digest
        wait_status(d, name, state="complete")
        report = bot.report()
    finally:
        bot.kill()
        if sender is not None:
            sender.kill()
        if receiver is not None:
            receiver.close()
    log = "\n".join(bot.log)
    events, requests, errors = report["events"], report["requests"], report["errors"]

    # Exactly one done, the transfer's, and it is the last event.
    assert report["counts"]["done"] == 1, f"{report['counts']}\n{log}"
    done = events[-1]
    assert done["type"] == "done", log
    assert done["data"]["state"] == "complete" and done["data"]["bytes"] == total, done
    # Ids are integers, strictly increasing across every reconnect.
    ids = [int(e["id"]) for e in events]
    assert all(a < b for a, b in itertools.pairwise(ids)), f"ids do not increase: {ids}\n{log}"
    # Every reconnect sent the id of the last event before it.
    assert requests[0]["lastEventId"] is None, requests[0]
    for number, request in enumerate(requests[1:], start=2):
        before = [e for e in events if e["connection"] < number]
        assert before, f"request {number} before any event: {requests}"
        assert request["lastEventId"] == before[-1]["id"], f"request {number}: {request}\n{log}"
    # The window cut the stream mid-transfer, at least three times: each of those
    # reconnects opened with the current state, then live progress.
    mid = []
    for number in range(2, len(requests) + 1):
        got = [e for e in events if e["connection"] == number]
        if got and got[0]["type"] == "state" and got[0]["state"] == "streaming":
            mid.append(number)
            assert any(e["type"] == "progress" for e in got) or number == done["connection"], got
    assert len(mid) >= 3, f"{len(mid)} mid-transfer reconnect(s): {requests}\n{log}"
    # After the done: one reconnect, answered 204, and nothing more; the library closed.
    after = [r for number, r in enumerate(requests, start=1) if number > done["connection"]]
    assert [r["status"] for r in after] == [204], f"after the done: {after}\n{log}"
    assert all(r["status"] == 200 for r in requests[:-1]), requests
    assert after[0]["lastEventId"] == done["id"], after
    assert errors[-1]["code"] == 204 and errors[-1]["readyState"] == 2, errors[-1]
    assert report["readyState"] == 2, "the EventSource did not stop"
    assert report["counts"]["error"] == len(requests), "one error event per ended stream, the last one the 204"
    # ... and it stayed stopped for the seconds after the end.
    ended_at = done["at"]
    assert bot.seconds * 1000 - ended_at >= linger * 1000 * 0.8, (bot.seconds, ended_at)

    # The daemon saw the same requests, in the same order, the last one answered 204.
    wait_for(lambda: len(access_log(d, name)) >= len(requests), 5, "the bot's requests in the daemon's log")
    lines = access_log(d, name)
    assert [status for _, status in lines] == [r["status"] for r in requests], (lines, requests)
    assert lines[-1][1] == 204


# -- b. curl on a plain stream ------------------------------------------------------------------------------


def test_curl_stream_started_before_a_transfer_ends_after_its_done(daemon):
    name = unique("curl-one")
    total = 900_000
    spectator = sse(daemon, name, "progress", None, "-v")
    try:
        spectator.wait_for(is_state("idle"), 5, "state idle")
        sender = transfer(daemon, name, total, 1.0)
        spectator.wait_end(10)
        assert spectator.proc.returncode == 0, f"curl {spectator.proc.returncode}: {spectator.stderr[-800:]}"
    finally:
        spectator.kill()
    events = payload(spectator.events)
    assert spectator.raw.count(b"event: done") == 1, spectator.raw[-400:]
    assert events[-1].kind == "done", "the stream ends right after its done"
    assert spectator.raw.endswith(b"\n\n") and spectator.raw.rstrip().endswith(events[-1].raw.encode()), spectator.raw[
        -300:
    ]
    assert events[-1].data["state"] == "complete" and events[-1].data["bytes"] == total
    assert spectator.ended_at - events[-1].at < 1.0, "the stream lingered after its done"
    states = [e.data["state"] for e in events if e.kind == "state"]
    assert states[0] == "idle" and "streaming" in states and states[-1] == "complete", states
    check_ids_increase(events)
    check_fields(events)
    # Ended by the chunked terminator on a kept-alive connection, not by a close.
    assert "left intact" in spectator.stderr, spectator.stderr[-800:]
    assert sender.lines[-1] == "[INFO] Transfer complete."


def test_latecomer_gets_the_final_line_and_a_reconnect_that_saw_it_gets_204(daemon):
    name = unique("curl-late")
    total = 400_000
    watcher = sse(daemon, name)
    try:
        watcher.wait_for(is_state("idle"), 5, "state idle")
        transfer(daemon, name, total)
        watcher.wait_end(10)
    finally:
        watcher.kill()
    first_done = watcher.named("done")[0]
    D = first_done.id  # the id of the transfer's done

    # A fresh curl: the final state, the final progress, the done, and curl exits 0 at once.
    started = time.monotonic()
    late = sse(daemon, name)
    try:
        late.wait_end(3)
    finally:
        late.kill()
    assert late.proc.returncode == 0, late.stderr
    assert time.monotonic() - started < 2.0, "the latecomer's stream did not end at once"
    events = payload(late.events)
    assert [e.kind for e in events] in (["state", "progress", "done"], ["state", "done"]), events
    assert events[0].data["state"] == "complete" and events[-1].data["bytes"] == total
    assert late.events[0].kind == "retry"
    assert all(e.id > D for e in events), f"replayed events take fresh ids above D={D}: {events}"
    check_ids_increase(events)
    replayed_done = events[-1].id

    # The same with the id of a done it saw: 204, no body, CORS *, and at once.
    for seen in (D, replayed_done, replayed_done + 1_000_000):
        started = time.monotonic()
        answer = run_curl(
            "-N",
            "-H",
            "Accept: text/event-stream",
            "-H",
            f"Last-Event-ID: {seen}",
            daemon.url(name, "progress"),
            timeout=10,
        )
        assert answer.returncode == 0, answer.stderr
        assert answer.status == 204, (seen, D, answer.status, answer.text[:300])
        assert answer.body == b"", answer.body[:200]
        assert answer.header("Access-Control-Allow-Origin") == "*", answer.headers
        assert answer.header("Content-Length") in (None, "0"), answer.headers
        assert time.monotonic() - started < 2.0

    # An id from before the done, or one that is not our kind of integer: the final line again.
    for unseen in (str(D - 1), str(watcher.named("state")[0].id), "abc", "12a", "-5", "1.5", "0x10", ""):
        again = sse(daemon, name, "progress", unseen)
        try:
            again.wait_end(3)
        finally:
            again.kill()
        assert again.proc.returncode == 0
        kinds = [e.kind for e in payload(again.events)]
        assert kinds[0] == "state" and kinds[-1] == "done" and kinds.count("done") == 1, (unseen, kinds)


def test_the_one_liner_of_docs_sse_md_exits_on_done(daemon):
    """docs/sse.md: ``curl -sN ... ?progress | grep -m1 -A1 '^event: done'`` waits and exits."""
    name = unique("oneliner")
    url = daemon.url(name, "progress")
    command = f"curl -sN -H 'Accept: text/event-stream' '{url}' | grep -m1 -A1 '^event: done'"
    before = spectators(daemon)
    waiter = subprocess.Popen(
        ["bash", "-o", "pipefail", "-c", command], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        wait_for(lambda: spectators(daemon) > before, 5, "the one-liner's curl to connect")
        assert waiter.poll() is None, "the one-liner returned before any transfer"
        transfer(daemon, name, 300_000, 0.5)
        out, err = waiter.communicate(timeout=10)
    finally:
        if waiter.poll() is None:
            waiter.kill()
            waiter.communicate()
    assert waiter.returncode == 0, (waiter.returncode, err)
    lines = out.splitlines()
    assert lines[0] == "event: done" and lines[1].startswith("data: "), lines
    assert json.loads(lines[1][len("data: ") :])["state"] == "complete"


# -- c. follow=1 ------------------------------------------------------------------------------------------------


def test_follow_stream_carries_two_transfers_and_stays_open(daemon):
    name = unique("follow")
    first_total, second_total = 500_000, 700_000
    follower = sse(daemon, name, "progress&follow=1")
    try:
        follower.wait_for(is_state("idle"), 5, "state idle")
        transfer(daemon, name, first_total, 0.5)
        follower.wait_for(is_kind("done"), 5, "the first done")
        time.sleep(1.5)  # past the first done: still open (an open stream has nothing to poll)
        assert not follower.ended, "a follow stream ended at its done"
        seen = len(follower.events)
        transfer(daemon, name, second_total, 0.5)
        second = follower.wait_for(is_kind("done"), 5, "the second done", after=seen)
        time.sleep(1.5)
        assert not follower.ended, "a follow stream ended at its second done"
    finally:
        follower.kill()
    events = payload(follower.events)
    dones = [e for e in events if e.kind == "done"]
    assert [e.data["bytes"] for e in dones] == [first_total, second_total], dones
    assert second.id == dones[1].id
    check_ids_increase(events)
    check_fields(events)
    # The second transfer brought its own states after the first done.
    later = [e.data["state"] for e in events if e.kind == "state" and e.id > dones[0].id]
    assert "waiting" in later and "streaming" in later and later[-1] == "complete", later
    D1, D2 = dones[0].id, dones[1].id

    # Reconnects of a follower after the end: nothing newer seen -> the final state alone, still open.
    back = sse(daemon, name, "progress&follow=1", str(D2))
    try:
        back.wait_for(is_state("complete"), 3, "the final state")
        time.sleep(1.0)
        assert not back.ended, "follow=1 never ends at the end, never 204"
    finally:
        back.kill()
    kinds = [e.kind for e in payload(back.events)]
    assert kinds == ["state"], f"a follower that saw the done gets the final state alone: {back.events}"
    assert payload(back.events)[0].id > D2

    # It missed the second done: replayed once (the latest only), and still open.
    missed = sse(daemon, name, "progress&follow=1", str(D1))
    try:
        missed.wait_for(is_kind("done"), 3, "the missed done")
        time.sleep(1.0)
        assert not missed.ended
    finally:
        missed.kill()
    replay = payload(missed.events)
    assert [e.data["bytes"] for e in replay if e.kind == "done"] == [second_total], replay
    assert all(e.id > D2 for e in replay), replay
    check_ids_increase(replay)

    # A plain stream with the first done's id has not seen the latest: final line, end;
    # with the latest: 204.
    plain = sse(daemon, name, "progress", str(D1))
    try:
        plain.wait_end(3)
    finally:
        plain.kill()
    assert [e.data["bytes"] for e in plain.named("done")] == [second_total], plain.events
    answer = run_curl(
        "-N", "-H", "Accept: text/event-stream", "-H", f"Last-Event-ID: {D2}", daemon.url(name, "progress"), timeout=10
    )
    assert answer.status == 204, (answer.status, answer.text[:300])


def test_follow_reconnect_mid_transfer_replays_the_missed_done_then_the_current_state(daemon):
    name = unique("follow-mid")
    first_total, second_total = 300_000, 4_000_000
    follower = sse(daemon, name, "progress&follow=1")
    sender = receiver = None
    streams = [follower]
    try:
        follower.wait_for(is_state("idle"), 5, "state idle")
        transfer(daemon, name, first_total)
        first_done = follower.wait_for(is_kind("done"), 5, "the first done")
        before_done = [e for e in payload(follower.events) if e.id < first_done.id][-1]
        sender = PacedSender(daemon, name, second_total, 4.0, sized=True)
        receiver = Receiver(daemon, name)
        follower.wait_for(
            lambda e: e.kind == "progress" and e.data["bytes"] > 0 and e.id > first_done.id,
            10,
            "the second transfer moving",
        )
        # Away since before the first done: that done, once, and the transfer as it is now.
        back = sse(daemon, name, "progress&follow=1", str(before_done.id))
        streams.append(back)
        back.wait_for(is_state("streaming"), 3, "the current state")
        back.wait_for(is_kind("progress"), 3, "live progress")
        assert [e.data["bytes"] for e in back.named("done")] == [first_total], back.events
        assert all(e.id > before_done.id for e in payload(back.events))
        check_ids_increase(back.events)
        # Seen the first done already: the current state, no done.
        current = sse(daemon, name, "progress&follow=1", str(first_done.id))
        streams.append(current)
        current.wait_for(is_state("streaming"), 3, "the current state")
        current.wait_for(is_kind("progress"), 3, "live progress")
        assert current.named("done") == [], current.events
        sender.join(30)
        receiver.join(30)
        for stream in (back, current, follower):
            stream.wait_for(lambda e: e.kind == "done" and e.data["bytes"] == second_total, 5, "the second done")
        time.sleep(0.5)
        assert not (back.ended or current.ended or follower.ended)
    finally:
        if sender is not None:
            sender.kill()
        if receiver is not None:
            receiver.close()
        for stream in streams:
            stream.kill()


def test_follow_text_lines_go_on_after_the_final_line(daemon):
    name = unique("follow-text")
    transfer(daemon, name, 200_000)
    plain = fetch(daemon, f"{PREFIX}{name}?progress&format=text", timeout=5)
    assert plain.status == 200 and plain.text.startswith("[complete]"), plain
    follower = CurlSSE(daemon.url(name, "progress&format=text&follow=1"), None)
    try:
        wait_for(lambda: follower.raw.count(b"\n") >= 2, 5, "two lines")
        assert not follower.ended, "follow=1 text ended at the final line"
    finally:
        follower.kill()
    assert follower.raw.decode().startswith("[complete]"), follower.raw


# -- d. CORS ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("query", ["progress", "progress&follow=1", ""])
def test_cors_preflight_allows_last_event_id(daemon, query):
    name = unique("cors")
    target = f"{PREFIX}{name}" + (f"?{query}" if query else "")
    answer = fetch(
        daemon,
        target,
        "OPTIONS",
        headers={
            "Origin": "https://status.example",
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "last-event-id",
        },
    )
    assert 200 <= answer.status < 300, answer
    assert answer.header("Access-Control-Allow-Origin") == "*", answer.headers
    allowed = {h.strip().lower() for h in (answer.header("Access-Control-Allow-Headers") or "").split(",")}
    assert "last-event-id" in allowed or "*" in allowed, answer.headers
    assert "GET" in (answer.header("Access-Control-Allow-Methods") or ""), answer.headers
