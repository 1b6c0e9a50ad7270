"""The browser pages in memory (KIT 2): which GET is a page, pre-fills, policies, links."""

from __future__ import annotations

import json
import re
from urllib.parse import urljoin, urlsplit

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hoodypipe import pages
from hoodypipe.names import Query
from tests.memhttp import MemoryDaemon

HTML = {"Accept": "text/html,application/xhtml+xml;q=0.9,*/*;q=0.8"}


def _config(body: bytes) -> dict:
    found = re.search(rb'<script type="application/json" id="config" nonce="[^"]+">(.*?)</script>', body, re.S)
    assert found
    return json.loads(found.group(1))


def _links(body: bytes) -> list[str]:
    return [m.decode() for m in re.findall(rb'\s(?:href|src|action)="([^"]*)"', body)]


def _same_origin(links: list[str], base: str = "http://pipe.test/api/v1/pipe/x") -> None:
    for link in links:
        if link.startswith("data:"):
            continue
        resolved = urlsplit(urljoin(base, link.replace("&amp;", "&")))
        assert (resolved.scheme, resolved.netloc) == ("http", "pipe.test"), link


@pytest.mark.parametrize("path", ["/", "/api/v1/pipe", "/api/v1/pipe/"])
def test_the_send_page_and_its_policy(path):
    d = MemoryDaemon()
    got = d.receiver(path).response()
    assert got.status == 200 and got.headers["content-type"] == "text/html; charset=utf-8"
    nonce = got.headers["content-security-policy"].split("nonce-")[1].split("'")[0]
    assert got.headers["content-security-policy"] == (
        f"default-src 'none'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; connect-src 'self'; "
        "img-src 'self' data: blob:; base-uri 'none'; form-action 'none'"
    )
    assert got.headers["cache-control"] == "no-store"
    assert got.body.count(f'nonce="{nonce}"'.encode()) == 4  # style, config, qrcode, page script
    assert b"var qrcode = function()" in got.body  # inlined, no request for it
    config = _config(got.body)
    assert re.fullmatch(r"[a-z0-9]{8}", config["name"]) and config["n"] == 1 and config["mode"] == "file"
    assert "help" in config["reserved"] and "health" in config["reserved"] and "" not in config["reserved"]
    _same_origin(_links(got.body))


def test_send_page_pre_fills_and_never_400s():
    d = MemoryDaemon()
    config = _config(d.receiver("/?name=a%2Fb&n=3&text=hi&filename=f.txt&autostart=yes").response().body)
    assert (config["name"], config["n"], config["text"], config["mode"]) == ("a/b", 3, "hi", "text")
    assert config["filename"] == "f.txt" and config["autostart"] is True
    bad = _config(d.receiver("/?name=" + "x" * 1025 + "&n=999&mode=video&autostart=maybe").response().body)
    assert len(bad["name"]) == 8 and bad["n"] == 1 and bad["mode"] == "file" and bad["autostart"] is False
    # Cut on a code point (a request line that long would not reach the page: Twisted's limit is 16 KiB).
    long = pages.SendParams.parse(Query((("text", "é" * 100_001), ("filename", "y" * 300))))
    assert long.text == "é" * 100_000 and len(long.filename) == 255 and long.mode == "text"
    assert _config(d.receiver("/?mode=file&text=x").response().body)["mode"] == "file"


def test_values_are_escaped_and_reach_the_script_as_json():
    d = MemoryDaemon()
    body = d.receiver("/?name=%3C/script%3E%3Cb%3E&text=%3Cimg%20src=x%3E&filename=%22%3E%3Cx").response().body
    assert b"</script><b>" not in body and b"<img src=x>" not in body and b'"><x' not in body
    assert _config(body)["name"] == "</script><b>"


def test_precedence_status_progress_receive_page_receiver():
    d = MemoryDaemon()
    assert d.receiver("/x?receive&status", HTML).response().headers["content-type"] == "application/json"
    progress = d.receiver("/x?receive&progress", HTML).response()
    assert b"Live progress" in progress.body  # the dashboard
    page = d.receiver("/x?receive", HTML).response()
    assert page.status == 200 and b"Status for this name:" in page.body
    for accept in ("*/*", "text/*", "text/html;q=0", "application/json", None):
        waiting = d.receiver("/y?receive", {"Accept": accept} if accept else {})
        assert waiting.raw == b"", accept  # a receiver, waiting for its sender
        waiting.drop()
    # A page flag on PUT/POST is an ordinary sender.
    receiver = d.receiver("/z")
    d.connect().request("POST", "/z?receive", b"data", {})
    assert receiver.response().body == b"data"


def test_the_receive_page_policy_pre_fills_and_download_link():
    d = MemoryDaemon()
    got = d.receiver("/api/v1/pipe/a%20b?receive&n=300&filename=r%C3%A9.bin&wait=60&sha256&autostart=1", HTML)
    page = got.response()
    assert page.headers["content-security-policy"].endswith("form-action 'none'; frame-src 'self'")
    assert page.headers["cache-control"] == "no-store"
    config = _config(page.body)
    assert config["n"] == 256 and config["filename"] == "ré.bin" and config["wait"] == 60
    assert config["sha256"] is True and config["autostart"] is True and config["path"] == "/api/v1/pipe/a%20b"
    assert config["name"] == "a b"
    assert 'href="/api/v1/pipe/a%20b?download&amp;n=256&amp;filename=r%C3%A9.bin&amp;wait=60&amp;sha256=1"' in (
        page.body.decode()
    )
    assert "curl -o 'ré.bin' 'http://pipe.test/api/v1/pipe/a%20b?n=256'" in page.body.decode().replace("&#39;", "'")
    plain = _config(d.receiver("/c?receive&n=x&wait=4000", HTML).response().body)
    assert plain["n"] == 1 and plain["wait"] is None and plain["sha256"] is False


@pytest.mark.parametrize(
    "target",
    [
        "//evil.example/x?receive",
        "/api/v1/pipe//evil.example/x?receive",
        "/%2F%2Fevil.example?receive",
        "/api/v1/pipe/x';echo$IFS'INJECTED';'?receive",
    ],
)
def test_no_link_of_the_receive_page_leaves_the_origin(target):
    d = MemoryDaemon()
    page = d.connect().send(f"GET {target} HTTP/1.1\r\nHost: pipe.test\r\nAccept: text/html\r\n\r\n".encode())
    got = page.response()
    if got.status != 200:
        assert got.status == 400  # an encoded slash is no name
        return
    _same_origin(_links(got.body), "http://pipe.test" + target)
    assert _config(got.body)["path"].startswith("/api/v1/pipe/")
    command = re.search(rb'<pre id="command">curl -o received.bin (.*?)</pre>', got.body.replace(b"&#39;", b"'"))
    assert command and command.group(1).lstrip(b"'").startswith(b"http://pipe.test/api/v1/pipe/")


def test_the_noscript_page_policy_and_form():
    d = MemoryDaemon()
    page = d.receiver("/noscript?path=//evil.example/x&mode=text&wait=60&sha256=1").response()
    nonce = page.headers["content-security-policy"].split("nonce-")[1].split("'")[0]
    assert (
        page.headers["content-security-policy"] == f"default-src 'none'; style-src 'nonce-{nonce}'; form-action 'self'"
    )
    body = page.body.decode()
    assert 'action="/api/v1/pipe/evil.examplex?wait=60&amp;sha256=1"' in body
    assert 'name="input_text"' in body and 'name="input_file"' not in body and "<script" not in body
    _same_origin(_links(page.body))
    empty = d.receiver("/api/v1/pipe/noscript?path=..").response().body.decode()
    assert '<button type="submit" disabled>Send</button>' in empty and 'name="input_file"' in empty
    assert 'enctype="multipart/form-data" aria' in empty  # no action: nowhere to send


@pytest.mark.parametrize(
    ("raw", "path"),
    [
        ("/abc", "abc"),
        ("//evil.example/x", "evil.examplex"),
        ("a b<c>'\"", "abc"),
        ("%2e%2E", None),
        (".", None),
        ("..", None),
        ("", None),
        ("Help.", None),
        ("metrics", None),
        ("x" * 2000, "x" * 1024),
    ],
)
def test_noscript_paths_are_sanitised(raw, path):
    assert pages.sanitise_path(raw) == path


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=60))
def test_noscript_paths_are_always_one_safe_segment(raw):
    path = pages.sanitise_path(raw)
    assert path is None or re.fullmatch(r"[A-Za-z0-9\-._~%]{1,1024}", path)


def test_lists_html():
    assert pages.lists_html(b"text/html")
    assert pages.lists_html(b"application/json, TEXT/HTML;q=0.1")
    assert not pages.lists_html(b"*/*") and not pages.lists_html(b"text/*") and not pages.lists_html(None)
    assert not pages.lists_html(b"text/html;q=0") and not pages.lists_html(b"text/html;q=bad")


def test_page_flags_are_on_only_for_bare_1_true_yes():
    query = Query.parse(b"a&b=1&c=TRUE&d=yes&e=no&f=2&g=on")
    assert [pages.page_flag(query, k) for k in "abcdefgh"] == [True, True, True, True, False, False, False, False]
