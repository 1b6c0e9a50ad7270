"""The dashboard in a real browser: headless Chromium (Debian's ``chromium``) on a
phone-sized viewport, driven by Playwright for Python.

Open the dashboard before the transfer, watch it go live without a reload, see it
finish, open a fresh tab afterwards and see the final state at once. A screenshot of
each stage goes to ``artifacts/`` (gitignored; CI keeps it as a test artefact).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from ._helpers import unique, wait_status
from ._sidechannel import PacedSender, Receiver

pytestmark = pytest.mark.browser

CHROMIUM = os.environ.get("HOODYPIPE_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
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
        page.on("console", lambda m: self.items.append(f"console.{m.type}: {m.text}")
                if m.type in ("error", "warning") else None)
        page.on("pageerror", lambda e: self.items.append(f"pageerror: {e}"))
        page.on("requestfailed", lambda r: self.items.append(f"requestfailed: {r.url} {r.failure}")
                if not _closed_stream(r) else None)


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
    value, unit = float(n), ""
    for unit in ("kB", "MB", "GB", "TB"):
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
