"""The browser pages in headless Chromium (KIT 2): send, receive and the no-script form.

Send a file by the picker (Playwright's file chooser) and by a synthetic drop, a text
and a pasted image, on a phone and on a desktop viewport; receive with curl or with
the receive page in a second tab; compare the bytes by sha256. The page reads
"Delivered" only on the sender's final line, and shows the failure when the receiver
is killed mid-way. The no-script form sends with JavaScript off. Every page passes
axe-core (vendored, tests/e2e/vendor/) with no serious or critical violation, in
light and dark, and none logs a console error or a CSP violation. Screenshots go to
artifacts/. The launch code is test_dashboard_browser.py's.
"""

from __future__ import annotations

import base64
import hashlib
import os
import time
from pathlib import Path

import pytest

from ._helpers import Sender, receiver, run_curl, status, unique
from .test_dashboard_browser import ARTIFACTS, PHONE, WATCH_CSP, Problems, browser  # noqa: F401 (a fixture)

pytestmark = pytest.mark.browser

VENDOR = Path(__file__).with_name("vendor")
VENDORED = {
    "axe.min.js": "29348999450cdf2849a8e70b7912fc2da85a849da39c0d0d5394f51d4a9ed95c",
    "jsQR.js": "bc40c8a15196236b2314db0856f72ca0b49980cd5413b8c852a7349f5fee0859",
}
DESKTOP = {"viewport": {"width": 1280, "height": 900}}
VIEWPORTS = {"phone": PHONE, "desktop": DESKTOP}


def _vendored(name: str) -> str:
    data = (VENDOR / name).read_bytes()
    assert hashlib.sha256(data).hexdigest() == VENDORED[name], f"{name} is not the pinned file"
    return data.decode("utf-8")


def _shot(page, stage: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"pages-{stage}.png"), full_page=True)


def _axe(page) -> list[str]:
    """Serious and critical axe-core violations of the page as it is now."""
    page.evaluate(_vendored("axe.min.js"))  # evaluated by the test, not governed by the page's CSP
    result = page.evaluate("() => axe.run(document, { resultTypes: ['violations'] })")
    return [
        f"{v['id']} ({v['impact']}): {[n['target'] for n in v['nodes']][:3]}"
        for v in result["violations"]
        if v["impact"] in ("serious", "critical")
    ]


def _qr_text(page) -> str | None:
    page.evaluate(_vendored("jsQR.js"))
    return page.evaluate(
        """() => {
          const c = document.getElementById('qr');
          const data = c.getContext('2d').getImageData(0, 0, c.width, c.height);
          const code = jsQR(data.data, c.width, c.height);
          return code ? code.data : null;
        }"""
    )


def _handed_to_downloads(problem: str) -> bool:
    # A frame's navigation that turns into a download is reported as aborted.
    return problem.startswith("requestfailed: ") and "?download" in problem and problem.endswith("net::ERR_ABORTED")


class Tab:
    """A context and a page watched for console errors and CSP violations."""

    def __init__(self, chromium, **options) -> None:
        self.problems = Problems()
        self.context = chromium.new_context(**options)
        self.context.add_init_script(WATCH_CSP)
        self.page = self.new_page()

    def new_page(self):
        page = self.context.new_page()
        self.problems.watch(page)
        return page

    def clean(self, *pages, expected: tuple[str, ...] = ()) -> None:
        """No CSP violation, and no console error or failed request but the ``expected`` ones."""
        for page in pages or (self.page,):
            if page.evaluate("() => !!document.getElementById('form')"):
                assert page.evaluate("window.__csp") == [], "CSP violations"
        left = [p for p in self.problems.items if not _handed_to_downloads(p) and p not in expected]
        assert left == [], self.problems.items

    def close(self) -> None:
        self.context.close()


@pytest.fixture
def tab(browser):  # noqa: F811 (the imported fixture)
    made: list[Tab] = []

    def make(**options) -> Tab:
        made.append(Tab(browser, **options))
        return made[-1]

    yield make
    for each in made:
        each.close()


def _outcome(page, timeout: float = 30000) -> str:
    page.wait_for_selector("#outcome:not([hidden])", timeout=timeout)
    return page.inner_text("#outcome")


def _send_page(page, daemon, name: str, query: str = ""):
    answer = page.goto(f"{daemon.base}/?name={name}{query}")
    assert answer.status == 200
    csp = answer.headers["content-security-policy"]
    assert "connect-src 'self'" in csp and "frame-ancestors" not in csp
    assert answer.headers["cache-control"] == "no-store"
    return page


@pytest.mark.parametrize("viewport", ["phone", "desktop"])
def test_send_a_file_by_the_picker_to_curl(tab, daemon, tmp_path, viewport):
    name = unique("pick")
    # Larger than what the kernels' buffers hold on loopback, so the daemon streams a while.
    data = os.urandom(48_000_000)
    path = tmp_path / "picked file.bin"
    path.write_bytes(data)
    t = tab(**VIEWPORTS[viewport])
    page = _send_page(t.page, daemon, name)
    with page.expect_file_chooser() as chooser:
        page.click("#drop")
    chooser.value.set_files(str(path))
    assert "picked file.bin" in page.inner_text("#chosen")
    link = f"{daemon.base}/api/v1/pipe/{name}?receive"
    assert page.inner_text("#link") == link
    assert _qr_text(page) == link
    assert page.inner_text("#receive-command") == f"curl -o 'picked file.bin' {daemon.url(name)}"
    _shot(page, f"send-{viewport}-chosen")

    # A slow receiver: the page must not say Delivered while the transfer runs. The
    # outcome is read before the state: Delivered must find the pipe complete already
    # (the daemon enters complete before it writes the last line).
    got = receiver(daemon.url(name), "-D", "-", "--limit-rate", "10M")
    page.click("#send")
    states: list[str] = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        outcome = page.locator("#outcome")
        shown = outcome.inner_text() if outcome.is_visible() else ""
        states.append(status(daemon, name)["state"])
        if shown:
            assert shown == "Delivered." and states[-1] == "complete", (shown, states[-1])
            break
        if states.count("streaming") == 5:
            _shot(page, f"send-{viewport}-streaming")
        time.sleep(0.1)
    assert states.count("streaming") >= 5, f"too fast to tell: {states}"
    assert _outcome(page) == "Delivered."
    assert got.wait() == 0
    head, _, body = got.out.partition(b"\r\n\r\n")
    assert hashlib.sha256(body).hexdigest() == hashlib.sha256(data).hexdigest()
    assert b'content-disposition: attachment; filename="picked file.bin"' in head.lower()
    assert page.evaluate("document.documentElement.scrollWidth") <= VIEWPORTS[viewport]["viewport"]["width"]
    assert "[INFO] Transfer complete." in page.inner_text("#lines")
    _shot(page, f"send-{viewport}-delivered")
    assert _axe(page) == []
    t.clean()


def test_send_a_dropped_file_to_two_receivers(tab, daemon):
    name = unique("drop")
    data = os.urandom(2_000_000)
    t = tab(**PHONE)
    page = _send_page(t.page, daemon, name, "&n=2")
    handle = page.evaluate_handle(
        """b64 => {
          const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
          const dt = new DataTransfer();
          dt.items.add(new File([bytes], 'dropped ✓.bin', { type: 'application/x-thing' }));
          return dt;
        }""",
        base64.b64encode(data).decode(),
    )
    page.dispatch_event("#drop", "drop", {"dataTransfer": handle})
    assert "dropped ✓.bin" in page.inner_text("#chosen")
    assert page.inner_text("#link").endswith(f"/api/v1/pipe/{name}?receive&n=2")
    first, second = receiver(daemon.url(name, "n=2")), receiver(daemon.url(name, "n=2"), "-D", "-")
    page.click("#send")
    assert _outcome(page) == "Delivered to 2 of 2 receivers."
    assert first.wait() == 0 and second.wait() == 0
    assert first.digest == hashlib.sha256(data).hexdigest()
    assert b"filename*=UTF-8''dropped%20%E2%9C%93.bin" in second.out.partition(b"\r\n\r\n")[0]
    t.clean()


def test_send_text_received_in_the_receive_page(tab, daemon, tmp_path):
    name = unique("text")
    text = "héllo from the send page\n" * 100
    t = tab(**PHONE, accept_downloads=True)
    page = _send_page(t.page, daemon, name, "&mode=text")
    page.fill("#text", text)
    page.fill("#filename", "note.txt")

    other = t.new_page()
    answer = other.goto(f"{daemon.url(name)}?receive")
    assert answer.headers["content-security-policy"].endswith("frame-src 'self'")
    other.wait_for_function("() => document.getElementById('status').textContent === 'No sender yet'")
    _shot(other, "receive-before")
    assert _axe(other) == []

    page.click("#send")
    other.wait_for_function(
        "() => document.getElementById('status').textContent === 'Sender waiting for receivers'", timeout=10000
    )
    with other.expect_download(timeout=20000) as download:
        other.click("#receive")
    assert other.inner_text("#message") == "Receiving in your browser"
    saved = tmp_path / "saved"
    download.value.save_as(saved)
    assert saved.read_bytes() == text.encode()
    assert download.value.suggested_filename == "note.txt"
    assert _outcome(page) == "Delivered."
    other.wait_for_function("() => document.getElementById('status').textContent === 'Transfer finished'")
    assert other.inner_text("#message") == "Receiving in your browser"  # never a success
    _shot(other, "receive-after")
    t.clean(page, other)


def test_a_refused_download_shows_the_servers_reason(tab, daemon):
    name = unique("refused")
    sender = Sender(daemon.url(name), data=b"x" * 1000)
    t = tab(**PHONE)
    page = t.page
    page.goto(f"{daemon.url(name)}?receive&n=2")
    page.wait_for_function("() => document.getElementById('status').textContent === 'Sender waiting for receivers'")
    page.click("#receive")
    page.wait_for_function("() => document.getElementById('message').textContent.startsWith('Failed: ')")
    assert "does not match" in page.inner_text("#message")
    assert page.inner_text("#receive") == "Receive again"
    _shot(page, "receive-refused")
    page.fill("#n", "1")
    with page.expect_download(timeout=20000) as download:
        page.click("#receive")
    assert Path(download.value.path()).read_bytes() == b"x" * 1000
    assert sender.wait() == 0
    t.clean(
        expected=(f"console.error: Failed to load resource: the server responded with a status of {400} (Bad Request)",)
    )


def test_paste_an_image(tab, daemon):
    name = unique("paste")
    t = tab(**DESKTOP)
    page = _send_page(t.page, daemon, name)
    digest = page.evaluate(
        """async () => {
          const c = document.createElement('canvas'); c.width = 64; c.height = 48;
          const g = c.getContext('2d'); g.fillStyle = '#4f46e5'; g.fillRect(0, 0, 64, 48);
          const blob = await new Promise(r => c.toBlob(r, 'image/png'));
          const dt = new DataTransfer();
          dt.items.add(new File([blob], 'image.png', { type: 'image/png' }));
          document.dispatchEvent(new ClipboardEvent('paste', { clipboardData: dt, bubbles: true, cancelable: true }));
          const bytes = new Uint8Array(await blob.arrayBuffer());
          const hash = await crypto.subtle.digest('SHA-256', bytes);
          return Array.from(new Uint8Array(hash), b => b.toString(16).padStart(2, '0')).join('');
        }"""
    )
    assert page.inner_text("#chosen").startswith("Pasted image: pasted-image.png")
    assert page.is_visible("#preview")
    got = receiver(daemon.url(name), "-D", "-")
    page.click("#send")
    assert _outcome(page) == "Delivered."
    assert got.wait() == 0
    head, _, body = got.out.partition(b"\r\n\r\n")
    assert hashlib.sha256(body).hexdigest() == digest
    assert b"content-type: image/png" in head.lower()
    _shot(page, "send-pasted-image")
    t.clean()


def test_a_receiver_killed_mid_way_is_a_failure(tab, daemon, tmp_path):
    name = unique("killed")
    path = tmp_path / "big.bin"
    path.write_bytes(os.urandom(40_000_000))
    t = tab(**PHONE)
    page = _send_page(t.page, daemon, name)
    page.set_input_files("#file", str(path))
    got = receiver(daemon.url(name), "--limit-rate", "2M", keep=False)
    page.click("#send")
    got.wait_bytes(2_000_000, timeout=20)
    got.kill()
    outcome = _outcome(page)
    assert outcome == "Failed: All receivers disconnected before transfer completed.", outcome
    assert page.locator("#lines li.err").inner_text() == (
        "[ERROR] All receivers disconnected before transfer completed."
    )
    _shot(page, "send-receiver-killed")
    t.clean()


def test_a_reserved_or_broken_name_is_refused_before_sending(tab, daemon):
    t = tab(**PHONE)
    page = _send_page(t.page, daemon, "help", "&mode=text&text=hi")
    assert "page of this server" in page.inner_text("#why")
    for bad, why in [("a//b", "//"), ("a/../b", '".."'), ("%2e", '".."'), ("x" * 1025, "too long")]:
        page.fill("#name", bad)
        assert why in page.inner_text("#why"), (bad, page.inner_text("#why"))
    page.click("#send")
    assert page.locator("#progress").is_hidden()
    page.fill("#name", "ok/fine")
    assert page.locator("#why").is_hidden()
    # Whatever the name and file name hold, the link stays a path of this pipe and
    # the command is one curl with two arguments.
    page.fill("#name", "x';echo$IFS'INJECTED';'")
    page.fill("#filename", "it's; rm -rf ~")
    path = "/api/v1/pipe/x%27%3Becho%24IFS%27INJECTED%27%3B%27"
    assert page.get_attribute("#link", "href") == f"{path}?receive"
    assert page.inner_text("#receive-command") == f"curl -o 'it'\\''s; rm -rf ~' {daemon.base}{path}"
    t.clean()


def test_autostart_sends_the_text_of_the_query(tab, daemon):
    name = unique("auto")
    got = receiver(daemon.url(name))
    t = tab(**PHONE)
    _send_page(t.page, daemon, name, "&text=autostarted%20%E2%9C%93&autostart")
    assert _outcome(t.page) == "Delivered."
    assert got.wait() == 0 and got.out == "autostarted ✓".encode()
    t.clean()


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_every_page_passes_axe(tab, daemon, scheme):
    t = tab(**PHONE, color_scheme=scheme)
    page = t.page
    for stage, url in [
        ("send", f"{daemon.base}/"),
        ("receive", f"{daemon.url(unique('axe'))}?receive"),
        ("noscript", f"{daemon.base}/noscript?path=x"),
    ]:
        page.goto(url)
        assert _axe(page) == [], stage
        _shot(page, f"{stage}-{scheme}")
    t.clean()


# -- without JavaScript -------------------------------------------------------------------------


def test_the_noscript_form_sends_a_file_with_javascript_off(tab, daemon, tmp_path):
    name = unique("nojs")
    data = os.urandom(1_500_000)
    path = tmp_path / "plain.bin"
    path.write_bytes(data)
    t = tab(**PHONE, java_script_enabled=False)
    page = t.page
    answer = page.goto(f"{daemon.base}/noscript")
    assert answer.headers["content-security-policy"].startswith("default-src 'none'; style-src 'nonce-")
    assert answer.headers["content-security-policy"].endswith("; form-action 'self'")
    assert page.is_disabled("form[method=post] button")
    page.fill("#path", f"/{name}")
    page.fill("#wait", "60")
    page.click("form[method=get] button")
    assert f"path=%2F{name}" in page.url
    assert page.inner_text("h2#send-title") == f"2. Send to {name}"
    _shot(page, "noscript-file")
    page.set_input_files("#input_file", str(path))
    got = receiver(daemon.url(name), "-D", "-")
    page.click("form[method=post] button")
    page.wait_for_function("() => document.body.innerText.includes('[INFO] Transfer complete.')", timeout=30000)
    assert got.wait() == 0
    head, _, body = got.out.partition(b"\r\n\r\n")
    assert body == data and b'content-disposition: attachment; filename="plain.bin"' in head.lower()
    _shot(page, "noscript-sent")
    assert t.problems.items == []


def test_the_noscript_form_sends_a_text(tab, daemon):
    name = unique("nojs-text")
    t = tab(**DESKTOP, java_script_enabled=False)
    page = t.page
    page.goto(f"{daemon.base}/api/v1/pipe/noscript?path={name}&mode=text&sha256=1")
    assert page.get_attribute("form[method=post]", "action") == f"/api/v1/pipe/{name}?sha256=1"
    page.fill("#input_text", "plain words ✓")
    got = receiver(daemon.url(name), "-D", "-")
    page.click("form[method=post] button")
    page.wait_for_function("() => document.body.innerText.includes('[INFO] Transfer complete.')", timeout=30000)
    assert got.wait() == 0
    head, _, body = got.out.partition(b"\r\n\r\n")
    assert body == "plain words ✓".encode() and b"content-type: text/plain; charset=utf-8" in head.lower()


def test_the_noscript_form_is_what_curl_f_sends(daemon, tmp_path):
    """The form's fields are curl -F's: the same delivery without a browser."""
    name = unique("nojs-curl")
    path = tmp_path / "c.txt"
    path.write_bytes(b"from curl -F\n")
    got = receiver(daemon.url(name), "-D", "-")
    sent = run_curl("-F", f"input_file=@{path}", daemon.url(name))
    assert sent.returncode == 0 and sent.text.endswith("[INFO] Transfer complete.\n"), sent.text
    assert got.wait() == 0 and got.out.endswith(b"\r\n\r\nfrom curl -F\n")
    assert b'content-disposition: attachment; filename="c.txt"' in got.out.lower()
