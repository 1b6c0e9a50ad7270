"""End-to-end tests of the side channel (``?progress`` and ``?status``, DESIGN.md section 4)
against the installed daemon, over real loopback sockets: curl, treq and raw sockets.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
import shutil
import statistics
import subprocess
import time
from html.parser import HTMLParser
from urllib.parse import urlsplit

import pytest
import pytest_twisted
from twisted.internet.protocol import Protocol

from ._helpers import fetch, unique, wait_for, wait_status
from ._sidechannel import (
    BROWSER_ACCEPT,
    PREFIX,
    STATUS_FIELDS,
    CurlSSE,
    Event,
    EventLog,
    PacedSender,
    Receiver,
    RSSWatch,
    check_fields,
    check_ids_increase,
    is_kind,
    is_state,
    open_spectator,
    snapshot_json,
    stream_head,
)

MiB = 1024 * 1024


@pytest.fixture
def spawn(daemon_factory):
    return daemon_factory


# -- 1. format choice ----------------------------------------------------------------------------


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.urls: list[tuple[str, str, str]] = []
        self.nonces: list[str] = []
        self.scripts_without_nonce = 0
        self.inline_styles = 0
        self.inline_handlers: list[str] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        for key in ("src", "href", "action", "srcset", "poster", "data"):
            if attrs.get(key):
                self.urls.append((tag, key, attrs[key]))
        if tag in ("script", "style"):
            if attrs.get("nonce"):
                self.nonces.append(attrs["nonce"])
            else:
                self.scripts_without_nonce += 1
        if "style" in attrs:
            self.inline_styles += 1
        self.inline_handlers += [k for k in attrs if k.startswith("on")]


def test_html_dashboard_for_a_browser(daemon):
    name = unique("fmt-html")
    answer = fetch(daemon, f"{PREFIX}{name}?progress", headers={"Accept": BROWSER_ACCEPT})
    assert answer.status == 200, answer
    assert answer.header("Content-Type").startswith("text/html"), answer.headers
    csp = answer.header("Content-Security-Policy")
    assert csp, "no Content-Security-Policy"
    nonce = re.search(r"script-src[^;]*'nonce-([A-Za-z0-9+/_=-]{16,})'", csp)
    assert nonce, f"no script nonce in the CSP: {csp}"
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp and "*" not in csp, csp
    assert re.search(r"default-src 'none'", csp), csp
    page = answer.text
    links = _Links()
    links.feed(page)
    assert links.nonces and set(links.nonces) == {nonce.group(1)}, (links.nonces, nonce.group(1))
    assert links.scripts_without_nonce == 0
    assert links.inline_styles == 0 and not links.inline_handlers, "inline styles/handlers break the CSP"
    for tag, key, url in links.urls:
        parts = urlsplit(url)
        if parts.scheme in ("", "data") or url.startswith("#"):
            continue
        assert parts.scheme in ("http", "https"), f"<{tag} {key}={url!r}>"
        assert parts.netloc == f"{daemon.host}:{daemon.port}", f"external asset <{tag} {key}={url!r}>"
    assert not re.search(r"@import|url\(\s*['\"]?https?:", page), "CSS loads something external"
    assert name in page
    # A second load gets a fresh nonce.
    again = fetch(daemon, f"{PREFIX}{name}?progress", headers={"Accept": "text/html"})
    assert again.header("Content-Security-Policy") != csp


@pytest.mark.parametrize("accept", ["text/event-stream", "*/*", None, "application/xml", "text/html;q=0, */*"])
def test_sse_for_curl_and_anything_unlisted(daemon, accept):
    name = unique("fmt-sse")
    headers = {"Accept": accept} if accept is not None else {}
    code, found, body = stream_head(daemon, name, headers=headers, want=b"event: state")
    assert code == 200
    assert found["content-type"].startswith("text/event-stream"), found
    assert found["cache-control"] == "no-cache", found
    assert found["x-accel-buffering"] == "no", found
    assert body.startswith(b"retry: "), body
    assert b"event: state" in body and b'"state":"idle"' in body, body


@pytest.mark.parametrize(
    "accept",
    [
        "application/json",
        "application/json;q=0.9, text/plain;q=0.5",
        "text/plain;q=0.5, application/json",
        "text/html;q=0, application/json",
    ],
)
def test_json_snapshot_by_accept(daemon, accept):
    name = unique("fmt-json")
    answer = fetch(daemon, f"{PREFIX}{name}?progress", headers={"Accept": accept})
    assert answer.status == 200
    assert answer.header("Content-Type").startswith("application/json"), answer.headers
    data = json.loads(answer.body)
    assert data["state"] == "idle" and set(data) >= STATUS_FIELDS, data


def test_text_lines_by_accept(daemon):
    name = unique("fmt-text")
    started = time.monotonic()
    code, found, body = stream_head(daemon, name, headers={"Accept": "text/plain"}, want=b"\n", timeout=5)
    assert code == 200 and found["content-type"].startswith("text/plain"), found
    assert body.startswith(b"[idle]"), body
    # and then a line about every second
    code, found, body = stream_head(daemon, name, headers={"Accept": "text/plain"}, timeout=5, want=b"\n[idle]")
    lines = body.decode().splitlines()
    assert len(lines) >= 2 and all(line.startswith("[idle]") for line in lines), lines
    assert time.monotonic() - started < 4


@pytest.mark.parametrize(
    "fmt,accept,expect",
    [
        ("json", "text/html", "application/json"),
        ("sse", "application/json", "text/event-stream"),
        ("html", "text/event-stream", "text/html"),
        ("text", "application/json", "text/plain"),
        ("json", None, "application/json"),
    ],
)
def test_format_parameter_overrides_accept(daemon, fmt, accept, expect):
    name = unique("fmt-override")
    headers = {"Accept": accept} if accept else {}
    code, found, _ = stream_head(daemon, name, f"progress&format={fmt}", headers, want=b"\n", timeout=5)
    assert code == 200 and found["content-type"].startswith(expect), (fmt, accept, found)


def test_bad_format_is_400(daemon):
    answer = fetch(daemon, f"{PREFIX}{unique('fmt-bad')}?progress&format=xml")
    assert answer.status == 400 and answer.text.startswith("[ERROR] "), answer


@pytest.mark.parametrize("value", ["0", "false", "no"])
def test_progress_off_is_an_ordinary_receiver(daemon, value):
    name = unique("prog-off")
    receiver = Receiver(daemon, name, f"progress={value}")
    try:
        wait_status(daemon, name, state="waiting", activeReceivers=1, hasSender=False)
        assert receiver.status is None, "a receiver answers only when the transfer starts"
    finally:
        receiver.close()
        receiver.join()
    wait_status(daemon, name, state="idle", activeReceivers=0)


@pytest.mark.parametrize("value", ["", "=1", "=true", "=yes"])
def test_progress_on_is_a_spectator(daemon, value):
    name = unique("prog-on")
    code, found, _body = stream_head(daemon, name, f"progress{value}", want=b"event: state")
    assert code == 200 and found["content-type"].startswith("text/event-stream")
    assert snapshot_json(daemon, name)["activeReceivers"] == 0


def test_status_get_and_head(daemon):
    name = unique("status")
    answer = fetch(daemon, f"{PREFIX}{name}?status")
    assert answer.status == 200, "an unused name is idle, not 404"
    assert answer.header("Content-Type").startswith("application/json")
    assert answer.header("Cache-Control") == "no-store"
    assert answer.header("Access-Control-Allow-Origin") == "*"
    data = json.loads(answer.body)
    missing = STATUS_FIELDS - set(data)
    assert not missing, f"?status lacks {sorted(missing)}"
    assert data["state"] == "idle" and data["history"] == [] and data["reason"] is None
    assert data["bytes"] == data["bytesTransferred"] == 0
    assert data["totalBytes"] is None and data["percent"] is None and data["eta"] is None
    for flag in ("status=1", "status=true", "status=yes"):
        assert json.loads(fetch(daemon, f"{PREFIX}{name}?{flag}").body)["state"] == "idle"

    head = fetch(daemon, f"{PREFIX}{name}?status", method="HEAD")
    assert head.status == 200 and head.body == b""
    assert head.header("Content-Type").startswith("application/json")
    assert head.header("Cache-Control") == "no-store"
    assert head.header("Access-Control-Allow-Origin") == "*"
    # also through the short URL form
    assert json.loads(fetch(daemon, f"/{name}?status").body)["state"] == "idle"


# -- 2. the whole lifecycle ---------------------------------------------------------------------


def check_lifecycle(events: list[Event], total: int, known: bool, duration: float) -> None:
    """What a spectator that came first must have seen of one successful transfer."""
    assert events[0].kind == "retry" and events[0].retry and events[0].retry > 0, events[:2]
    first = events[1]
    assert first.kind == "state" and first.data["state"] == "idle", events[:3]
    assert first.data["hasSender"] is False and first.data["activeReceivers"] == 0
    check_ids_increase(events)
    check_fields(events)

    kinds = [e.kind for e in events if e.kind != "comment"]
    index = {k: i for i, k in reversed(list(enumerate(kinds)))}  # first index of each kind
    states = [e for e in events if e.kind == "state"]
    waiting = [e for e in states if e.data["state"] == "waiting" and e.data["hasSender"]]
    assert waiting, f"no state waiting with hasSender: {states}"
    streaming = [e for e in states if e.data["state"] == "streaming"]
    assert streaming, f"no state streaming event: {[e.data for e in states]}"
    assert streaming[0].data["activeReceivers"] == 1 and streaming[0].data["hasSender"] is True
    assert events.index(waiting[0]) < events.index(streaming[0])

    done = [e for e in events if e.kind == "done"]
    assert len(done) == 1, f"done {len(done)} times"
    done = done[0]
    assert done.data["state"] == "complete" and done.data["reason"] is None, done
    assert done.data["bytes"] == done.data["bytesTransferred"] == total
    assert 0.5 * duration <= done.data["durationSec"] <= duration + 3, done
    assert done.data["avgSpeed"] > 0 and done.data["mbps"] == pytest.approx(done.data["avgSpeed"] / 1e6, abs=0.06)
    complete = [e for e in states if e.data["state"] == "complete"]
    assert complete and events.index(complete[0]) < events.index(done), "state complete before done"
    assert index["state"] < index.get("progress", len(kinds))

    live = [
        e for e in events if e.kind == "progress" and events.index(streaming[0]) < events.index(e) < events.index(done)
    ]
    assert len(live) >= duration / 0.25 * 0.5, f"only {len(live)} progress events in {duration}s"
    gaps = [b.at - a.at for a, b in itertools.pairwise(live)]
    assert 0.15 <= statistics.median(gaps) <= 0.45, f"progress every {statistics.median(gaps):.3f}s"
    figures = [e.data for e in live]
    sent = [f["bytes"] for f in figures]
    assert sent == sorted(sent) and 0 < sent[-1] <= total, sent
    elapsed = [f["elapsed"] for f in figures]
    assert elapsed == sorted(elapsed) and elapsed[-1] > 0, elapsed
    assert all(f["receivers"] == 1 for f in figures), figures
    assert any(f["speed"] > 0 for f in figures), f"the speed never left 0: {[f['speed'] for f in figures]}"
    middle = [f for f in figures if 0 < f["bytes"] < total]
    if known:
        assert all(f["totalBytes"] == total for f in figures), figures
        percents = [f["percent"] for f in figures]
        assert all(p is not None and 0 <= p <= 100 for p in percents), percents
        assert percents == sorted(percents), percents
        assert any(0 < p < 100 for p in percents), percents
        etas = [f["eta"] for f in middle if f["speed"] > 0]
        assert etas and all(e is not None and e >= 0 for e in etas), f"no ETA while streaming: {figures}"
        assert min(etas) < duration + 2
    else:
        for f in figures:
            assert f["totalBytes"] is None and f["percent"] is None, f
            assert f["eta"] is None and f["etaSec"] is None, f


class _Collect(Protocol):
    """Feeds a streamed body into an EventLog (treq's ``unbuffered`` response)."""

    def __init__(self, log: EventLog) -> None:
        self.log = log

    def dataReceived(self, data: bytes) -> None:
        self.log.got(data)

    def connectionLost(self, reason) -> None:
        self.log.end()


async def _until(predicate, timeout: float, what: str, log: EventLog | None = None):
    from twisted.internet import reactor
    from twisted.internet.task import deferLater

    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(
                f"timed out after {timeout}s waiting for {what}; events:\n{log.describe() if log else ''}"
            )
        await deferLater(reactor, 0.02, lambda: None)


@pytest_twisted.ensureDeferred
async def test_lifecycle_over_sse_with_treq(daemon):
    """Content-Length known: percent, ETA and totalBytes are figures."""
    import treq
    from twisted.internet import reactor
    from twisted.web.client import Agent, HTTPConnectionPool

    name = unique("life-treq")
    total, duration = 2_000_000, 2.0
    client = treq.client.HTTPClient(Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False)))
    response = await client.get(
        daemon.url(name, "progress"), headers={"Accept": ["text/event-stream"]}, unbuffered=True
    )
    assert response.code == 200
    headers = response.headers
    assert headers.getRawHeaders("content-type")[0].startswith("text/event-stream")
    assert headers.getRawHeaders("cache-control") == ["no-cache"]
    assert headers.getRawHeaders("x-accel-buffering") == ["no"]
    log = EventLog()
    collector = _Collect(log)
    response.deliverBody(collector)
    sender = receiver = None
    try:
        await _until(lambda: log.find(is_state("idle")), 5, "state idle", log)
        sender = PacedSender(daemon, name, total, duration, sized=True)
        await _until(lambda: log.find(is_state("waiting", hasSender=True)), 5, "state waiting", log)
        receiver = Receiver(daemon, name)
        await _until(lambda: log.find(is_kind("done")), duration + 15, "done", log)
        await _until(lambda: not sender.thread.is_alive() and not receiver.thread.is_alive(), 10, "the parties")
        sender.join()
        receiver.join()
        assert receiver.status == 200 and receiver.complete and receiver.digest == sender.digest
        assert sender.lines[-1] == "[INFO] Transfer complete.", sender.lines
        check_lifecycle(log.events, total, known=True, duration=duration)
        # A plain stream carries one transfer: the server ends it after done.
        await _until(lambda: log.ended, 5, "the stream to end after done", log)
        assert [e.kind for e in log.events].count("done") == 1
    finally:
        if collector.transport is not None:
            collector.transport.stopProducing()
        if sender is not None and sender.thread.is_alive():
            sender.kill()
        if receiver is not None:
            receiver.close()
    await _until(lambda: log.ended, 5, "the treq stream to close")


@pytest.mark.parametrize("sized", [True, False], ids=["x-pipe-size", "unknown-size"])
def test_lifecycle_over_sse_with_curl(daemon, sized):
    """``curl -N`` as in the story; a chunked upload with or without ``X-Pipe-Size``."""
    name = unique("life-curl")
    total, duration = 1_500_000, 2.0
    spectator = CurlSSE(daemon.url(name, "progress"), accept=None)
    spectator.wait_for(is_state("idle"), 5, "state idle")
    data = hashlib.sha256()
    block = b"hoodypipe-" * 6_000  # 60,000 bytes
    header = ["-H", f"X-Pipe-Size: {total}"] if sized else []
    sender = subprocess.Popen(
        ["curl", "-sS", "-T", "-", *header, daemon.url(name)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        spectator.wait_for(is_state("waiting", hasSender=True), 5, "state waiting")
        receiver = Receiver(daemon, name)
        wait_status(daemon, name, state="streaming")
        steps = total // len(block)
        start = time.monotonic()
        for i in range(steps):
            sender.stdin.write(block)
            sender.stdin.flush()
            data.update(block)
            pause = start + (i + 1) * duration / steps - time.monotonic()
            if pause > 0:
                time.sleep(pause)  # pacing the upload, not waiting for a condition
        sender.stdin.close()
        sender.wait(15)
        out, err = sender.stdout.read(), sender.stderr.read()
        assert out.decode().splitlines()[-1] == "[INFO] Transfer complete.", (out, err)
        spectator.wait_for(is_kind("done"), 10, "done")
        receiver.join()
        assert receiver.digest == data.hexdigest()
        check_lifecycle(spectator.events, total, known=sized, duration=duration)
        status = snapshot_json(daemon, name)
        assert status["state"] == "complete" and status["bytes"] == total
        assert [h["state"] for h in status["history"]] == ["waiting", "streaming", "complete"]
        assert status["finishedAt"] and status["startedAt"] and status["durationSec"] > 0
    finally:
        if sender.poll() is None:
            sender.kill()
        sender.wait()
        for pipe in (sender.stdin, sender.stdout, sender.stderr):
            pipe.close()
        spectator.kill()


# -- 3. failed transfers ------------------------------------------------------------------------------


def _done(spectator: CurlSSE, timeout: float = 10) -> dict:
    event = spectator.wait_for(is_kind("done"), timeout, "done")
    return event.data


def test_sender_killed_mid_stream(daemon):
    name = unique("fail-sender")
    spectator = CurlSSE(daemon.url(name, "progress"))
    sender = PacedSender(daemon, name, 8 * MiB, 8.0, sized=False, pipe_size=8 * MiB)
    receiver = Receiver(daemon, name)
    try:
        spectator.wait_for(lambda e: e.kind == "progress" and e.data["bytes"] > 0, 10, "bytes moving")
        sender.kill()
        done = _done(spectator)
        assert done["state"] == "failed" and done["reason"] == "Sender disconnected", done
        assert 0 < done["bytes"] < 8 * MiB
        failed = spectator.wait_for(is_state("failed"), 1, "state failed")
        assert spectator.events.index(failed) < spectator.events.index(spectator.named("done")[0])
        receiver.join(10)
        assert not receiver.complete, "a receiver never gets a clean end after partial data"
        status = snapshot_json(daemon, name)
        assert status["state"] == "failed" and status["reason"] == "Sender disconnected"
        assert status["history"][-1]["state"] == "failed"
        check_ids_increase(spectator.events)
        check_fields(spectator.events)
    finally:
        sender.kill()
        receiver.close()
        spectator.kill()


def test_all_receivers_leave(daemon):
    name = unique("fail-receivers")
    spectator = CurlSSE(daemon.url(name, "progress"))
    sender = PacedSender(daemon, name, 8 * MiB, 8.0, query="n=2")
    first, second = Receiver(daemon, name, "n=2"), Receiver(daemon, name, "n=2")
    try:
        spectator.wait_for(lambda e: e.kind == "progress" and e.data["bytes"] > 0, 10, "bytes moving")
        first.close()
        spectator.wait_for(is_state("streaming", activeReceivers=1), 5, "one receiver left")
        second.close()
        done = _done(spectator)
        assert done["state"] == "failed" and done["reason"] == "All receivers disconnected", done
        assert snapshot_json(daemon, name)["reason"] == "All receivers disconnected"
    finally:
        sender.kill()
        first.close()
        second.close()
        spectator.kill()


def test_wait_timeout(daemon):
    alone_receiver, alone_sender = unique("fail-wait-r"), unique("fail-wait-s")
    spectators = [CurlSSE(daemon.url(n, "progress")) for n in (alone_receiver, alone_sender)]
    receiver = Receiver(daemon, alone_receiver, "wait=1")
    sender = PacedSender(daemon, alone_sender, 1000, 0, query="wait=1", wait_streaming=False)
    try:
        for spectator in spectators:
            spectator.wait_for(is_state("waiting"), 5, "state waiting")
            done = _done(spectator, 5)
            assert done["state"] == "failed" and done["reason"] == "Timed out", done
            assert done["bytes"] == 0
        receiver.join(5)
        assert receiver.status == 408
        sender.join(5)
        assert sender.lines[-1] == "[ERROR] Timed out waiting for receivers.", sender.lines
        for name in (alone_receiver, alone_sender):
            status = snapshot_json(daemon, name)
            assert status["state"] == "failed" and status["reason"] == "Timed out", status
    finally:
        sender.kill()
        receiver.close()
        for spectator in spectators:
            spectator.kill()


# -- 4. latecomers and a new transfer on the same name -------------------------------------------------


def test_latecomer_sees_the_end_and_follow_streams_follow_a_new_transfer(daemon):
    name = unique("late")
    sender = PacedSender(daemon, name, 300_000, 0)
    receiver = Receiver(daemon, name)
    sender.join()
    receiver.join()
    wait_status(daemon, name, state="complete")

    opened = time.monotonic()
    plain = CurlSSE(daemon.url(name, "progress"))
    plain.wait_end(5)  # the final line, then the end of the stream
    assert plain.proc.returncode == 0 and [e.kind for e in plain.events] == ["retry", "state", "progress", "done"]
    late = CurlSSE(daemon.url(name, "progress&follow=1"))
    try:
        done = late.wait_for(is_kind("done"), 2, "done at once")
        assert done.at - opened < 1.0, "a latecomer gets the final line at once"
        events = late.events
        assert events[0].kind == "retry"
        assert events[1].kind == "state" and events[1].data["state"] == "complete", events
        assert done.data["state"] == "complete" and done.data["bytes"] == 300_000 and done.data["reason"] is None
        check_fields(events)
        check_ids_increase(events)

        snap = snapshot_json(daemon, name, "progress&format=json")
        assert snap["state"] == "complete" and snap["bytes"] == 300_000 and snap["finishedAt"]
        assert snap == snapshot_json(daemon, name)
        text = fetch(daemon, f"{PREFIX}{name}?progress&format=text", timeout=5)
        assert text.status == 200 and text.text.startswith("[complete]") and text.text.endswith("\n"), text

        # A new transfer on the name: the follow stream follows it.
        seen = len(late.events)
        second = PacedSender(daemon, name, 600_000, 1.0)
        late.wait_for(is_state("waiting", hasSender=True), 5, "the new transfer waiting", after=seen)
        fresh = snapshot_json(daemon, name)
        assert fresh["state"] == "waiting" and fresh["bytes"] == 0 and fresh["finishedAt"] is None
        assert [h["state"] for h in fresh["history"]] == ["waiting"], fresh["history"]
        receiver2 = Receiver(daemon, name)
        late.wait_for(is_state("streaming"), 5, "the new transfer streaming", after=seen)
        done2 = late.wait_for(is_kind("done"), 10, "the second done", after=seen)
        assert done2.data["bytes"] == 600_000 and done2.data["state"] == "complete"
        news = late.events[seen:]
        assert all(e.data["bytes"] <= 600_000 for e in news if e.kind == "progress"), news
        check_ids_increase(late.events)
        second.join()
        receiver2.join()
        assert receiver2.digest == second.digest
    finally:
        late.kill()


# -- 5. caps ------------------------------------------------------------------------------------------------


def test_spectator_and_watched_path_caps(spawn):
    d = spawn("--max-spectators", "3", "--max-watched-paths", "2")
    a, b, c = unique("cap-a"), unique("cap-b"), unique("cap-c")
    sockets = []
    try:
        # Each from its own address: one client alone gets less than the cap (docs/fairness.md).
        streams = [("progress", "text/event-stream"), ("progress", "*/*"), ("progress&format=text", "*/*")]
        for n, (query, accept) in enumerate(streams):
            sock, code, _ = open_spectator(d, a, query, accept, source=f"127.0.0.{10 + n}")
            sockets.append(sock)
            assert code == 200
        for query in ("progress", "progress&format=text"):
            sock, code, headers = open_spectator(d, a, query, source="127.0.0.20")
            sock.close()
            assert code == 429, f"a 4th streaming spectator ({query}) got {code}"
            assert headers.get("retry-after", "").isdigit(), headers
        for _ in range(3):  # snapshots are not counted
            assert snapshot_json(d, a)["state"] == "idle"
            assert snapshot_json(d, a, "progress&format=json")["state"] == "idle"
            assert fetch(d, f"{PREFIX}{a}?progress", headers={"Accept": "text/html"}).status == 200

        sock_b, code, _ = open_spectator(d, b, source="127.0.0.21")
        assert code == 200
        sock, code, headers = open_spectator(d, c, source="127.0.0.22")
        sock.close()
        assert code == 429 and headers.get("retry-after", "").isdigit(), (code, headers)
        assert snapshot_json(d, c)["state"] == "idle", "snapshots of an unwatched name still work"

        # Leaving frees the slots.
        sock_b.close()

        def admitted(name):
            sock, code, _ = open_spectator(d, name, source="127.0.0.23")
            if code == 200:
                sockets.append(sock)
                return True
            sock.close()
            return False

        wait_for(lambda: admitted(c), 5, "the third path to be admitted once the second is free", 0.05)
        sockets.pop(0).close()
        wait_for(lambda: admitted(a), 5, "a spectator slot on the first path", 0.05)
    finally:
        for sock in sockets:
            sock.close()


# -- 6. the spectator window --------------------------------------------------------------------------------


def test_stream_ends_after_the_window_and_reconnects(spawn):
    d = spawn("--spectator-window", "1")
    name = unique("window")
    sender = PacedSender(d, name, 1000, 0, wait_streaming=False)  # no receiver ever comes
    try:
        wait_status(d, name, state="waiting", hasSender=True)
        started = time.monotonic()
        first = CurlSSE(d.url(name, "progress"))
        first.wait_end(5)
        lasted = first.ended_at - started
        assert first.proc.returncode == 0, f"curl {first.proc.returncode}: the stream did not end cleanly"
        assert 0.9 <= lasted <= 2.5, f"the stream lasted {lasted:.2f}s with a 1 s window"
        assert first.raw.endswith(b"\n\n"), f"not at an event boundary: {first.raw[-80:]!r}"
        assert first.events[0].kind == "retry"
        assert first.find(is_state("waiting", hasSender=True)), first.events

        again = CurlSSE(d.url(name, "progress"))
        event = again.wait_for(is_kind("state"), 2, "the current state on reconnect")
        assert event.data["state"] == "waiting" and event.data["hasSender"] is True
        again.wait_end(5)
    finally:
        sender.kill()


# -- 7. stalled spectators during a large transfer ------------------------------------------------------------


@pytest.mark.slow
def test_fifty_stalled_spectators_during_a_large_transfer(spawn, big_random_file):
    """50 spectators that never read (the default cap) cost the transfer nothing."""
    path, _digest = big_random_file
    copies = 2  # 2 x 256 MiB
    expected = hashlib.sha256()
    with open(path, "rb") as f:
        block = f.read()
    for _ in range(copies):
        expected.update(block)
    del block
    # A fast tick (100 events/s) fills the stalled sockets within the transfer.
    d = spawn("--progress-interval", "0.01")
    name = unique("stalled")
    stalled = []
    try:
        for n in range(50):  # each its own client: one alone gets 45 of a name's 50 (docs/fairness.md)
            sock, code, _ = open_spectator(d, name, rcvbuf=4096, source=f"127.0.0.{30 + n}")
            assert code == 200
            stalled.append(sock)
        sock, code, headers = open_spectator(d, name)
        sock.close()
        assert code == 429 and headers.get("retry-after"), "the 51st spectator"
        assert snapshot_json(d, name)["state"] == "idle"

        baseline = d.rss()
        watch = RSSWatch(d)
        started = time.monotonic()
        receiver = subprocess.Popen(
            f"curl -sS '{d.url(name)}' | sha256sum", shell=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        sender = subprocess.Popen(
            f"cat {' '.join([str(path)] * copies)} | curl -sS -T - '{d.url(name)}'",
            shell=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        sent, sent_err = sender.communicate(timeout=120)
        got, got_err = receiver.communicate(timeout=30)
        elapsed = time.monotonic() - started
        peak = watch.stop()
        assert sent.decode().splitlines()[-1] == "[INFO] Transfer complete.", (sent, sent_err)
        assert got.split()[0].decode() == expected.hexdigest(), (got, got_err)
        status = snapshot_json(d, name)
        assert status["state"] == "complete" and status["bytes"] == copies * 256 * MiB
        growth = peak - baseline
        print(
            f"512 MiB with 50 stalled spectators in {elapsed:.2f}s "
            f"({copies * 256 / elapsed:.0f} MiB/s), RSS {baseline / MiB:.0f} -> peak {peak / MiB:.0f} MiB"
        )
        assert growth < 64 * MiB, f"RSS grew by {growth / MiB:.0f} MiB"
        if shutil.which("ss"):
            # They really were stalled: the daemon's side holds unsent bytes for them.
            queued = _send_queues(d.port, {sock.getsockname()[1] for sock in stalled})
            assert sum(1 for q in queued.values() if q > 0) >= 45, f"spectators not stalled: {queued}"
    finally:
        for sock in stalled:
            sock.close()

    def admitted():
        sock, code, _ = open_spectator(d, name)
        sock.close()
        return code == 200

    wait_for(admitted, 5, "the stalled spectators' slots to be freed", 0.05)
    assert d.process.poll() is None


def _send_queues(server_port: int, client_ports: set[int]) -> dict[int, int]:
    """Send-Q of the daemon's side of each connection to ``client_ports`` (from ``ss``)."""
    out = subprocess.run(
        ["ss", "-tnH", "state", "established", f"( sport = :{server_port} )"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    queues = {}
    for line in out.splitlines():
        fields = line.split()
        send_q, peer = int(fields[1]), fields[-1]
        port = int(peer.rsplit(":", 1)[1])
        if port in client_ports:
            queues[port] = send_q
    return queues
