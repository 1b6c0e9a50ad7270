"""Pages, health and metrics in memory."""

from __future__ import annotations

import json

from tests.memhttp import MemoryDaemon


def test_metrics_count_transfers_bytes_rejections_and_gauges():
    d = MemoryDaemon()
    receiver = d.receiver("/m")
    sender = d.sender("/m")
    sender.chunk(b"x" * 10).end_chunks()
    d.receiver("/bad%2Fname")
    d.sender("/waiting")
    d.receiver("/w?progress", {"Accept": "text/event-stream"})
    got = d.receiver("/api/v1/pipe/metrics").response()
    assert got.status == 200 and got.headers["content-type"].startswith("text/plain")
    text = got.body.decode()
    assert 'hoodypipe_transfers_total{kind="pipe",outcome="complete"} 1.0' in text
    assert "hoodypipe_receipts 0.0" in text
    assert "hoodypipe_relayed_bytes_total 10.0" in text
    assert 'hoodypipe_rejections_total{status="400"} 1.0' in text
    assert "hoodypipe_pending_pipes 1.0" in text and "hoodypipe_active_pipes 0.0" in text
    assert "hoodypipe_spectators 1.0" in text
    assert receiver.response().complete


def test_health():
    d = MemoryDaemon()
    body = json.loads(d.receiver("/api/v1/pipe/health", {"User-Agent": "probe/1"}).response().body)
    assert body["status"] == "ok" and body["service"] == "hoodypipe"
    assert body["userAgent"] == "probe/1" and body["ip"] == "127.0.0.1"
    assert body["memory"]["rss"] > 0 and "heap" in body["memory"] and body["fds"] > 0
    assert body["started"].endswith("Z") and body["built"]


def test_help_is_built_from_the_host():
    d = MemoryDaemon()
    got = d.connect().send(b"GET /help HTTP/1.1\r\nHost: pipe.example:8080\r\n\r\n").response()
    assert got.headers["content-type"].startswith("text/plain")
    assert b"curl -T file.iso http://pipe.example:8080/api/v1/pipe/mypipe" in got.body


def test_a_hostile_host_header_is_not_echoed():
    d = MemoryDaemon()
    got = d.connect().send(b"GET /help HTTP/1.1\r\nHost: <script>x</script>\r\n\r\n").response()
    assert b"<script>" not in got.body


def test_start_page_and_dashboard_escape_and_carry_a_csp_nonce():
    d = MemoryDaemon()
    page = d.receiver("/").response()
    assert page.status == 200 and "nonce-" in page.headers["content-security-policy"]
    dash = d.receiver("/%3Cb%3Ex?progress", {"Accept": "text/html"}).response()
    nonce = dash.headers["content-security-policy"].split("nonce-")[1].split("'")[0]
    assert f'nonce="{nonce}"'.encode() in dash.body
    assert b"<b>x" not in dash.body
    assert b'src="http' not in dash.body and b'href="http' not in dash.body.replace(b'href="http://pipe.test', b"")


def test_reserved_pages_refuse_other_methods():
    d = MemoryDaemon()
    assert d.connect().request("DELETE", "/help").response().status == 405
    assert d.connect().request("PUT", "/help", b"x").response().status == 400
    assert d.connect().request("OPTIONS", "/api/v1/pipe/health").response().status == 200
    assert d.receiver("/robots.txt").response().body == b"User-agent: *\nDisallow: /\n"
    assert d.receiver("/favicon.ico").response().status == 204


def test_pipe_options_and_unknown_methods():
    d = MemoryDaemon()
    got = d.connect().request("OPTIONS", "/x").response()
    assert got.status == 200 and got.headers["access-control-allow-origin"] == "*"
    assert got.headers["access-control-allow-methods"] == "GET, POST, PUT, OPTIONS"
    assert "X-Pipe-Size" in got.headers["access-control-allow-headers"]
    assert got.headers["access-control-max-age"] == "86400"
    bad = d.connect().request("PATCH", "/x").response()
    assert bad.status == 405 and bad.body == b"[ERROR] Method PATCH is not allowed.\n"
    assert bad.headers["allow"] == "GET, POST, PUT, OPTIONS"
