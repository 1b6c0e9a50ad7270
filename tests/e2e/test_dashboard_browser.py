"""The dashboard in a real browser: headless Chromium (Debian's ``chromium``) on a
phone-sized viewport, driven by Playwright for Python.

Open the dashboard before the transfer, watch it go live without a reload, see it
finish, open a fresh tab afterwards and see the final state at once. One tab follows
two transfers on a name (its stream is ``?progress&follow=1``): the final line stays
until the next transfer begins, and after the end nothing reconnects but the window.
A screenshot of each stage goes to ``artifacts/`` (gitignored; CI keeps it as a test
artefact).
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from ._helpers import unique, wait_status
from ._sidechannel import PREFIX, PacedSender, Receiver

pytestmark = pytest.mark.browser

CHROMIUM = os.environ.get("HOODYPIPE_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"
PHONE = {
    "viewport": {"width": 390, "height": 844},
    "is_mobile": True,
    "has_touch": True,
    "device_scale_factor": 2,
    "user_agent": (
        "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) "
        "Chrome/124.0.0.0 Mobile Safari/537.36"
    ),
}
# Collects what the page's CSP refused (the console shows it too, but only as text).
WATCH_CSP = """
window.__csp = [];
document.addEventListener('securitypolicyviolation', function (e) {
  window.__csp.push(e.violatedDirective + ' ' + e.blockedURI);
});
"""


@pytest.fixture
def spawn(daemon_factory):
    return daemon_factory


@pytest.fixture(scope="module")
def browser():
    if not os.path.exists(CHROMIUM):
        reason = f"{CHROMIUM} is not installed (apt-get install chromium)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true but {reason}")
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


class Problems:
    """Console errors, uncaught exceptions and failed requests of every page in a context."""

    def __init__(self) -> None:
        self.items: list[str] = []

    def watch(self, page) -> None:
        page.on(
            "console",
            lambda m: self.items.append(f"console.{m.type}: {m.text}") if m.type in ("error", "warning") else None,
        )
        page.on("pageerror", lambda e: self.items.append(f"pageerror: {e}"))
        page.on(
            "requestfailed",
            lambda r: self.items.append(f"requestfailed: {r.url} {r.failure}") if not _closed_stream(r) else None,
        )


def _closed_stream(request) -> bool:
    # The EventSource of a page being closed shows up as an aborted request.
    return "format=sse" in request.url and "ERR_ABORTED" in (request.failure or "")


def _shot(page, stage: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"dashboard-{stage}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def _stop(sender, receiver, context) -> None:
    """End what a test started, whether it passed or not."""
    if sender is not None and sender.thread.is_alive():
        sender.kill()
    if receiver is not None:
        receiver.close()
    context.close()


ACCESS = re.compile(r'"GET (?P<target>\S+) HTTP/1\.[01]" (?P<status>\d{3}) ')


def _is_stream(url: str, name: str) -> bool:
    """A dashboard's SSE request for ``name`` (not the page itself, not ?status)."""
    parts = urlsplit(url)
    query = parse_qs(parts.query, keep_blank_values=True)
    return parts.path == f"{PREFIX}{name}" and "progress" in query and query.get("format") == ["sse"]


def _streams_logged(daemon, name: str) -> int:
    """SSE requests for ``name`` the daemon answered to their end (twistd logs an
    access line when a request finishes: here, when a stream's window closes)."""
    count = 0
    for line in daemon.log_text().splitlines():
        match = ACCESS.search(line)
        if match and _is_stream(match["target"], name):
            count += 1
    return count


class Requests:
    """The ``?progress`` streams and ``?status`` polls that pages of a context made for a name."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.streams: list[str] = []
        self.polls: list[str] = []

    def watch(self, page) -> None:
        page.on("request", self._seen)

    def _seen(self, request) -> None:
        parts = urlsplit(request.url)
        if _is_stream(request.url, self.name):
            self.streams.append(request.url)
        elif parts.path == f"{PREFIX}{self.name}" and "status" in parse_qs(parts.query, keep_blank_values=True):
            self.polls.append(request.url)


def _state_is(page, state: str, timeout: float = 10000) -> None:
    page.wait_for_function("s => document.getElementById('state').textContent === s", arg=state, timeout=timeout)


def _percent(page) -> float | None:
    text = page.inner_text("#percent").strip().rstrip("%")
    try:
        return float(text)
    except ValueError:
        return None


def _fmt_bytes(n: int) -> str:
    """The dashboard's decimal units, as in "7.6 GB"."""
    if n < 1000:
        return f"{n} B"
    value = float(n)
    for unit in ("kB", "MB", "GB", "TB"):  # noqa: B007 (the unit it stopped at)
        value /= 1000
        if value < 999.95:
            break
    return f"{value:.1f} {unit}"


def test_dashboard_on_a_phone_follows_a_transfer(browser, daemon):
    name = unique("dash")
    url = daemon.url(name, "progress")
    total, duration = 24_000_000, 3.5
    size = _fmt_bytes(total)
    problems = Problems()
    context = browser.new_context(**PHONE)
    context.add_init_script(WATCH_CSP)
    sender = receiver = None
    try:
        page = context.new_page()
        problems.watch(page)
        answer = page.goto(url)
        assert answer.status == 200 and answer.headers["content-type"].startswith("text/html")
        assert page.inner_text("#state") in ("idle", "waiting")
        page.wait_for_function("() => document.getElementById('conn').textContent.trim() === 'live'", timeout=5000)
        page.evaluate("window.__sameDocument = true")
        _shot(page, "1-before")

        # The transfer starts; the open page goes live by itself.
        sender = PacedSender(daemon, name, total, duration, sized=True)
        page.wait_for_function("() => document.getElementById('state').textContent === 'waiting'", timeout=5000)
        receiver = Receiver(daemon, name)
        page.wait_for_function("() => document.getElementById('state').textContent === 'streaming'", timeout=5000)
        samples: list[float] = []
        titles: list[str] = []
        shot_taken = False
        deadline = time.monotonic() + duration + 15
        while time.monotonic() < deadline:
            state = page.inner_text("#state")
            if state != "streaming":
                break
            value = _percent(page)
            if value is not None:
                samples.append(value)
            titles.append(page.title())
            if not shot_taken and value is not None and 20 <= value <= 80:
                _shot(page, "2-streaming")
                shot_taken = True
                assert page.inner_text("#speed").endswith("MB/s"), page.inner_text("#speed")
                assert page.inner_text("#eta") != "—"
                assert page.inner_text("#receivers") == "1"
                assert page.is_visible("#bar") and not page.is_visible("#final")
            page.wait_for_timeout(150)
        assert shot_taken, f"never saw the transfer between 20 and 80%: {samples}"
        assert samples == sorted(samples), f"the percentage went backwards: {samples}"
        assert len(set(samples)) >= 3 and 0 < max(samples) <= 100, samples
        assert any("%" in title for title in titles), titles

        # It finishes.
        page.wait_for_function("() => document.getElementById('state').textContent === 'complete'", timeout=15000)
        page.wait_for_selector("#final", state="visible", timeout=5000)
        final = page.inner_text("#final")
        assert size in final and "no errors" in final.lower(), final
        assert page.inner_text("#percent").strip() == "100%"
        assert page.inner_text("#receivers") == "1", "a finished transfer shows who got it"
        assert "complete" in page.title(), page.title()
        timeline = page.inner_text("#timeline")
        for step in ("waiting", "streaming", "complete"):
            assert step in timeline, timeline
        assert page.evaluate("window.__sameDocument === true"), "the page reloaded"
        page.wait_for_timeout(300)  # let the bar's transition settle for the picture
        _shot(page, "3-complete")
        sender.join()
        receiver.join()
        assert receiver.digest == sender.digest
        wait_status(daemon, name, state="complete")

        # A fresh tab sees the final state at once, from the first paint.
        fresh = context.new_page()
        problems.watch(fresh)
        fresh.goto(url, wait_until="domcontentloaded")
        assert fresh.inner_text("#state") == "complete"
        fresh.wait_for_selector("#final", state="visible", timeout=2000)
        assert size in fresh.inner_text("#final"), fresh.inner_text("#final")
        fresh.wait_for_function("() => document.getElementById('conn').textContent.trim() === 'live'", timeout=5000)
        assert fresh.inner_text("#state") == "complete"
        _shot(fresh, "4-fresh-tab")

        for p in (page, fresh):
            assert p.evaluate("window.__csp") == [], "CSP violations"
        # The page fits a phone: nothing wider than the viewport.
        assert fresh.evaluate("document.documentElement.scrollWidth") <= 390
        assert problems.items == [], problems.items
    finally:
        _stop(sender, receiver, context)


def test_dashboard_reconnects_after_the_spectator_window(browser, spawn):
    """Streams end every ``--spectator-window``; the page reconnects by itself, without a gap."""
    d = spawn("--spectator-window", "1")
    name = unique("dash-window")
    total, duration = 12_000_000, 3.0
    problems = Problems()
    context = browser.new_context(**PHONE)
    context.add_init_script(WATCH_CSP)
    streams: list[str] = []
    sender = receiver = None
    try:
        page = context.new_page()
        problems.watch(page)
        page.on("request", lambda r: streams.append(r.url) if "format=sse" in r.url else None)
        page.goto(d.url(name, "progress"))
        page.wait_for_function("() => document.getElementById('conn').textContent.trim() === 'live'", timeout=5000)
        sender = PacedSender(d, name, total, duration, sized=True)
        receiver = Receiver(d, name)
        page.wait_for_function("() => document.getElementById('state').textContent === 'streaming'", timeout=5000)
        before = len(streams)
        samples, connection = [], set()
        deadline = time.monotonic() + duration + 15
        while time.monotonic() < deadline and page.inner_text("#state") == "streaming":
            value = _percent(page)
            if value is not None:
                samples.append(value)
            connection.add(page.inner_text("#conn").strip())
            page.wait_for_timeout(100)
        page.wait_for_function("() => document.getElementById('state').textContent === 'complete'", timeout=10000)
        assert samples == sorted(samples) and len(set(samples)) >= 3, samples
        assert connection <= {"live"}, f"the page showed the reconnects: {connection}"
        assert len(streams) > before, f"no reconnect while streaming: {len(streams)} stream(s) in all"
        assert page.inner_text("#state") == "complete" and page.is_visible("#final")
        final = page.inner_text("#final")
        sender.join()
        receiver.join()

        # After the end: reconnects at window ends only (1 s window + 1 s retry), no loop,
        # no polling, and the final line stays.
        quiet = 5.0
        page_before, logged_before = len(streams), _streams_logged(d, name)
        page.wait_for_timeout(quiet * 1000)
        page_after, logged_after = len(streams) - page_before, _streams_logged(d, name) - logged_before
        most = int(quiet / (1 + 1)) + 1
        assert 1 <= page_after <= most, f"{page_after} stream(s) in {quiet} s after the end (at most {most})"
        assert logged_after <= most + 1, f"the daemon ended {logged_after} stream(s) in {quiet} s after the end"
        assert page.inner_text("#state") == "complete" and page.inner_text("#final") == final
        assert page.inner_text("#conn").strip() == "live"
        assert page.evaluate("window.__csp") == []
        assert problems.items == [], problems.items
    finally:
        _stop(sender, receiver, context)


def test_one_tab_follows_two_transfers_and_keeps_each_final_line(browser, daemon):
    """One tab open before, during and after two transfers on one name: each goes live
    and finishes without a reload; the first final line stays until the second
    transfer begins; after the end nothing reconnects (the window is 300 s)."""
    name = unique("dash-two")
    url = daemon.url(name, "progress")
    first, second = 6_000_000, 9_000_000
    problems = Problems()
    seen = Requests(name)
    context = browser.new_context(**PHONE)
    context.add_init_script(WATCH_CSP)
    sender = receiver = None
    try:
        page = context.new_page()
        problems.watch(page)
        seen.watch(page)
        page.goto(url)
        page.wait_for_function("() => document.getElementById('conn').textContent.trim() === 'live'", timeout=5000)
        assert page.inner_text("#state") == "idle"
        assert len(seen.streams) == 1, seen.streams
        stream_query = parse_qs(urlsplit(seen.streams[0]).query, keep_blank_values=True)
        assert stream_query.get("follow") == ["1"], f"the dashboard's stream does not follow: {seen.streams[0]}"
        page.evaluate("window.__sameDocument = true")
        _shot(page, "5-two-before")

        # The first transfer, live, to its final line.
        sender = PacedSender(daemon, name, first, 2.0, sized=True)
        receiver = Receiver(daemon, name)
        _state_is(page, "streaming", 5000)
        _state_is(page, "complete", 15000)
        sender.join()
        receiver.join()
        page.wait_for_selector("#final", state="visible", timeout=5000)
        final = page.inner_text("#final")
        assert _fmt_bytes(first) in final and "no errors" in final.lower(), final

        # It stays on screen, with no reconnect and no polling, until the next transfer.
        streams, polls = len(seen.streams), len(seen.polls)
        page.wait_for_timeout(2500)
        assert page.inner_text("#state") == "complete" and page.inner_text("#final") == final
        assert page.is_visible("#final")
        assert (len(seen.streams), len(seen.polls)) == (streams, polls), (seen.streams, seen.polls)
        _shot(page, "6-two-first-complete")

        # The second transfer resets the view as it begins and goes live in the same tab.
        sender = PacedSender(daemon, name, second, 3.0, sized=True)
        _state_is(page, "waiting", 5000)
        assert not page.is_visible("#final"), "the first final line outlived the new transfer"
        timeline = page.inner_text("#timeline")
        assert "waiting" in timeline and "complete" not in timeline, timeline
        receiver = Receiver(daemon, name)
        _state_is(page, "streaming", 5000)
        page.wait_for_function("() => parseFloat(document.getElementById('percent').textContent) >= 10", timeout=10000)
        assert _fmt_bytes(second) in page.inner_text("#total"), page.inner_text("#total")
        _shot(page, "7-two-second-streaming")

        # A tab opened during the transfer shows it from its first paint.
        during = context.new_page()
        problems.watch(during)
        seen.watch(during)
        during.goto(url, wait_until="domcontentloaded")
        assert during.inner_text("#state") == "streaming"
        during.wait_for_function("() => document.getElementById('conn').textContent.trim() === 'live'", timeout=5000)
        _shot(during, "8-two-tab-during")

        _state_is(page, "complete", 15000)
        _state_is(during, "complete", 5000)
        sender.join()
        receiver.join()
        assert receiver.digest == sender.digest
        for p in (page, during):
            p.wait_for_selector("#final", state="visible", timeout=5000)
            assert _fmt_bytes(second) in p.inner_text("#final"), p.inner_text("#final")
        steps = [w for w in page.inner_text("#timeline").split() if w in ("idle", "waiting", "streaming", "complete")]
        assert steps == ["waiting", "streaming", "complete"], f"the timeline is not the second transfer's: {steps}"
        assert page.evaluate("window.__sameDocument === true"), "the page reloaded"
        page.wait_for_timeout(300)
        _shot(page, "9-two-second-complete")

        # After the end: no reconnect, no polling, by the pages' and by the daemon's count.
        quiet = 5.0
        streams, polls, logged = len(seen.streams), len(seen.polls), _streams_logged(daemon, name)
        page.wait_for_timeout(quiet * 1000)
        assert len(seen.streams) == streams, f"reconnects after the end: {seen.streams[streams:]}"
        assert len(seen.polls) == polls, f"polling after the end: {seen.polls[polls:]}"
        assert _streams_logged(daemon, name) == logged, "the daemon ended streams after the end"
        for p in (page, during):
            assert p.inner_text("#state") == "complete" and p.is_visible("#final")
            assert p.inner_text("#conn").strip() == "live"
            assert p.evaluate("window.__csp") == [], "CSP violations"

        # And a tab opened after the end shows the second transfer's final line at once.
        after = context.new_page()
        problems.watch(after)
        after.goto(url, wait_until="domcontentloaded")
        assert after.inner_text("#state") == "complete"
        assert _fmt_bytes(second) in after.inner_text("#final")
        after.wait_for_function("() => document.getElementById('conn').textContent.trim() === 'live'", timeout=5000)
        assert after.evaluate("window.__csp") == []
        _shot(after, "10-two-tab-after")
        assert problems.items == [], problems.items
    finally:
        _stop(sender, receiver, context)


def test_final_line_stays_when_the_name_goes_idle(browser, spawn):
    """Past ``--retain`` the name reads idle again; an open tab keeps the final line
    (until a next transfer begins), through its reconnects, and does not poll."""
    d = spawn("--spectator-window", "1", "--retain", "1")
    name = unique("dash-retain")
    total = 3_000_000
    problems = Problems()
    seen = Requests(name)
    context = browser.new_context(**PHONE)
    context.add_init_script(WATCH_CSP)
    sender = receiver = None
    try:
        page = context.new_page()
        problems.watch(page)
        seen.watch(page)
        page.goto(d.url(name, "progress"))
        page.wait_for_function("() => document.getElementById('conn').textContent.trim() === 'live'", timeout=5000)
        sender = PacedSender(d, name, total, 1.0, sized=True)
        receiver = Receiver(d, name)
        _state_is(page, "complete", 15000)
        sender.join()
        receiver.join()
        page.wait_for_selector("#final", state="visible", timeout=5000)
        final = page.inner_text("#final")
        streams = len(seen.streams)
        wait_status(d, name, timeout=10, state="idle")  # the retained state is gone
        page.wait_for_timeout(4000)  # two windows: the reconnects now find an idle name
        assert len(seen.streams) > streams, "no reconnect at the window ends"
        assert page.inner_text("#state") == "complete", "the final line gave way to idle"
        assert page.is_visible("#final") and page.inner_text("#final") == final
        assert page.inner_text("#conn").strip() == "live"
        assert len(seen.polls) <= len(seen.streams), f"polling: {seen.polls}"
        _shot(page, "11-final-past-retain")

        # The next transfer still takes the tab over.
        sender = PacedSender(d, name, total, 1.0, sized=True)
        _state_is(page, "waiting", 5000)
        assert not page.is_visible("#final")
        receiver = Receiver(d, name)
        _state_is(page, "complete", 15000)
        sender.join()
        receiver.join()
        assert page.evaluate("window.__csp") == []
        assert problems.items == [], problems.items
    finally:
        _stop(sender, receiver, context)


def test_dashboard_falls_back_to_polling_when_sse_is_refused(browser, spawn):
    """With every spectator slot taken the SSE stream gets 429: the page polls ?status instead."""
    from ._sidechannel import open_spectator

    d = spawn("--max-spectators", "1")
    name = unique("dash-poll")
    total, duration = 8_000_000, 4.0
    hog, code, _ = open_spectator(d, name)
    assert code == 200
    context = browser.new_context(**PHONE)
    context.add_init_script(WATCH_CSP)
    polls: list[str] = []
    sender = receiver = None
    try:
        page = context.new_page()
        page.on("request", lambda r: polls.append(r.url) if "?status" in r.url else None)
        page.goto(d.url(name, "progress"))
        page.wait_for_function("() => document.getElementById('conn').textContent.trim() === 'polling'", timeout=15000)
        sender = PacedSender(d, name, total, duration, sized=True)
        receiver = Receiver(d, name)
        page.wait_for_function("() => document.getElementById('state').textContent === 'streaming'", timeout=10000)
        page.wait_for_function("() => document.getElementById('state').textContent === 'complete'", timeout=20000)
        assert page.is_visible("#final") and _fmt_bytes(total) in page.inner_text("#final")
        assert len(polls) >= 2
        assert page.evaluate("window.__csp") == []
        sender.join()
        receiver.join()
    finally:
        hog.close()
        _stop(sender, receiver, context)
