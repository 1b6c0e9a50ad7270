"""Refusals, pages and connection reuse, end to end (DESIGN.md sections 2 and 3).

Every refusal is a status and exactly one ``[ERROR] ... .`` line of text/plain.
"""

from __future__ import annotations

import json
import re

import pytest

from ._helpers import (
    ERROR_LINE,
    RawConnection,
    Sender,
    fetch,
    raw_request,
    receiver,
    run_curl,
    status,
    unique,
    wait_status,
)

PIPE_ALLOW = {"GET", "PUT", "POST", "OPTIONS"}


def assert_error(response, code: int, text: str | None = None) -> None:
    body = response.body
    assert response.status == code, (response.status, body)
    assert ERROR_LINE.match(body), body
    assert (response.header("Content-Type") or "").startswith("text/plain"), response.headers
    if text is not None:
        assert body == f"[ERROR] {text}\n".encode(), body


def put(daemon, target: str, body: bytes = b"data", headers: dict[str, str] | None = None):
    """A small fixed-length upload (no Expect) on a fresh connection."""
    return fetch(daemon, target, "PUT", headers=headers, body=body)


# -- bad parameters ---------------------------------------------------------------------


@pytest.mark.parametrize("query", ["n=0", "n=257", "n=abc", "n=-1", "n=1.5", "n=", "wait=0", "wait=3601", "wait=x"])
@pytest.mark.parametrize("method", ["GET", "PUT", "POST"])
def test_bad_n_and_wait_are_400(daemon, query, method):
    name = unique("badq")
    target = f"/api/v1/pipe/{name}?{query}"
    answer = fetch(daemon, target) if method == "GET" else fetch(daemon, target, method, body=b"xyz")
    assert_error(answer, 400)
    assert status(daemon, name)["state"] == "idle"  # no pipe left behind


def test_n_at_the_limit_is_accepted(daemon):
    name = unique("n256")
    r = receiver(daemon.url(name, "n=256&wait=1"))
    wait_status(daemon, name, state="waiting", activeReceivers=1)
    r.kill()


def test_max_receivers_option_bounds_n(daemon_factory):
    d = daemon_factory("--max-receivers", "4")
    assert_error(fetch(d, f"/api/v1/pipe/{unique()}?n=5"), 400)
    assert_error(put(d, f"/api/v1/pipe/{unique()}?n=5"), 400)


def test_mismatched_n_between_parties(daemon):
    name = unique("mism")
    r = receiver(daemon.url(name, "n=2"))
    wait_status(daemon, name, state="waiting", activeReceivers=1)
    assert_error(fetch(daemon, f"/api/v1/pipe/{name}?n=3"), 400)
    assert_error(fetch(daemon, f"/api/v1/pipe/{name}"), 400)  # n defaults to 1
    assert_error(put(daemon, f"/api/v1/pipe/{name}?n=1"), 400)
    # The waiting receiver is unharmed.
    assert status(daemon, name)["activeReceivers"] == 1
    assert r.proc.poll() is None
    r.kill()


def test_mismatched_n_sender_first(daemon):
    name = unique("mism2")
    s = Sender(daemon.url(name, "n=2"), data=b"x")
    wait_status(daemon, name, state="waiting", hasSender=True)
    assert_error(fetch(daemon, f"/api/v1/pipe/{name}?n=1"), 400)
    assert_error(fetch(daemon, f"/{name}"), 400)
    assert status(daemon, name)["activeReceivers"] == 0
    s.kill()


def test_second_sender_is_400(daemon):
    name = unique("twosend")
    s = Sender(daemon.url(name), data=b"first")
    wait_status(daemon, name, state="waiting", hasSender=True)
    second = put(daemon, f"/api/v1/pipe/{name}")
    assert_error(second, 400)
    curl_second = run_curl("-T", "-", daemon.url(name), input=b"second")
    assert curl_second.status == 400 and ERROR_LINE.match(curl_second.body), curl_second
    # The first sender still gets its transfer.
    r = receiver(daemon.url(name))
    assert r.wait(30) == 0 and r.out == b"first"
    assert s.wait(30) == 0 and s.lines[-1] == "[INFO] Transfer complete."


def test_one_receiver_too_many(daemon):
    name = unique("toomany")
    r = receiver(daemon.url(name))
    wait_status(daemon, name, state="waiting", activeReceivers=1)
    assert_error(fetch(daemon, f"/api/v1/pipe/{name}"), 400)
    assert_error(fetch(daemon, f"/{name}?n=1"), 400)
    s = Sender(daemon.url(name), data=b"ok")
    assert r.wait(30) == 0 and r.out == b"ok"
    assert s.wait(30) == 0


def test_one_receiver_too_many_n3(daemon):
    name = unique("toomany3")
    rs = [receiver(daemon.url(name, "n=3")) for _ in range(3)]
    wait_status(daemon, name, state="waiting", activeReceivers=3)
    assert_error(fetch(daemon, f"/api/v1/pipe/{name}?n=3"), 400)
    for r in rs:
        r.kill()


def test_name_already_streaming(daemon):
    name = unique("busy")
    r = receiver(daemon.url(name))
    wait_status(daemon, name, state="waiting", activeReceivers=1)
    s = Sender(daemon.url(name))
    s.feed(b"a" * 1000)
    r.wait_bytes(1000)
    assert status(daemon, name)["state"] == "streaming"
    assert_error(fetch(daemon, f"/api/v1/pipe/{name}"), 400)
    assert_error(put(daemon, f"/api/v1/pipe/{name}"), 400)
    assert_error(fetch(daemon, f"/{name}"), 400)
    s.feed(b"b" * 1000)
    s.close_stdin()
    assert s.wait(30) == 0 and r.wait(30) == 0
    assert r.out == b"a" * 1000 + b"b" * 1000
    assert s.lines[-1] == "[INFO] Transfer complete."


# -- names ------------------------------------------------------------------------------------


def test_name_too_long_is_414(daemon):
    long = "a" * 1025
    expected = "Path too long (max 1024 characters)."
    assert_error(fetch(daemon, f"/api/v1/pipe/{long}"), 414, expected)
    assert_error(fetch(daemon, f"/{long}"), 414, expected)
    assert_error(put(daemon, f"/api/v1/pipe/{long}"), 414, expected)
    # Exactly 1024 characters (of the raw, percent-encoded name) is fine.
    assert status(daemon, "b" * 1024)["state"] == "idle"
    assert fetch(daemon, "/api/v1/pipe/" + "%41" * 341 + "c?status").status == 200  # 1024 raw chars
    assert_error(fetch(daemon, "/api/v1/pipe/" + "%41" * 341 + "cd?status"), 414, expected)


@pytest.mark.parametrize(
    "name",
    ["a%2Fb", "a%2fb", "a%5Cb", "a%5cb", "a\\b", "a%00b", "a%0Ab", "a%0d", "a%7F", "a\x01b", "a\x7fb", "a\tb"],
)
@pytest.mark.parametrize("method", ["GET", "PUT"])
def test_bad_characters_are_400(daemon, name, method):
    body = b"xyz"
    extra = f"Content-Length: {len(body)}\r\n" if method == "PUT" else ""
    request = f"{method} /api/v1/pipe/{name} HTTP/1.1\r\nHost: x\r\n{extra}Connection: close\r\n\r\n".encode(
        "latin-1"
    ) + (body if method == "PUT" else b"")
    answer = raw_request(daemon, request)
    assert answer.status == 400, answer
    assert ERROR_LINE.match(answer.body), answer.body


def test_slashes_in_names_are_fine(daemon):
    name = unique("dir") + "/sub/file.tar"
    r = receiver(f"{daemon.base}/{name}")
    wait_status(daemon, name, state="waiting", activeReceivers=1)
    s = Sender(daemon.url(name), data=b"nested")
    assert r.wait(30) == 0 and r.out == b"nested"
    assert s.wait(30) == 0


# -- sender and receiver headers ---------------------------------------------------------------


@pytest.mark.parametrize(
    "header",
    [
        "Content-Range: bytes 0-3/4",
        "X-Pipe-Size: abc",
        "X-Pipe-Size: -5",
        "X-Pipe-Size: 1e9",
        "X-Pipe-Size: 12345678901234567890",
    ],
)
def test_bad_sender_headers_are_400(daemon, header):
    name = unique("badh")
    key, _, value = header.partition(": ")
    assert_error(put(daemon, f"/api/v1/pipe/{name}", body=b"abcd", headers={key: value}), 400)
    via_curl = run_curl("-T", "-", "-H", header, daemon.url(name), input=b"abcd")
    assert via_curl.status == 400 and ERROR_LINE.match(via_curl.body), via_curl
    assert status(daemon, name)["state"] == "idle"


def test_good_x_pipe_size_feeds_total_bytes(daemon):
    name = unique("size")
    s = Sender(daemon.url(name), "-H", "X-Pipe-Size: 123456", data=b"x")
    assert wait_status(daemon, name, state="waiting", hasSender=True)["totalBytes"] == 123456
    s.kill()


def test_service_worker_receiver_is_400(daemon):
    name = unique("sw")
    assert_error(fetch(daemon, f"/api/v1/pipe/{name}", headers={"Service-Worker": "script"}), 400)
    assert status(daemon, name)["state"] == "idle"


# -- methods ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["DELETE", "PATCH", "TRACE", "PROPFIND"])
@pytest.mark.parametrize("root", [False, True])
def test_other_methods_are_405(daemon, method, root):
    name = unique("m")
    target = f"/{name}" if root else f"/api/v1/pipe/{name}"
    answer = fetch(daemon, target, method)
    assert_error(answer, 405, f"Method {method} is not allowed.")
    allow = {m.strip() for m in (answer.header("Allow") or "").split(",")}
    assert allow == PIPE_ALLOW


@pytest.mark.parametrize(
    "target", ["/help", "/api/v1/pipe/help", "/", "/api/v1/pipe", "/noscript", "/robots.txt", "/favicon.ico", "/HELP/"]
)
@pytest.mark.parametrize("method", ["PUT", "POST"])
def test_upload_to_reserved_path_is_400(daemon, target, method):
    assert_error(fetch(daemon, target, method, body=b"abc"), 400)
    via_curl = run_curl("-T", "-", "-X", method, f"{daemon.base}{target}", input=b"abc")
    assert via_curl.status == 400 and ERROR_LINE.match(via_curl.body), via_curl


@pytest.mark.parametrize("target", ["/api/v1/pipe/health", "/api/v1/pipe/metrics", "/api/v1/pipe/Health/"])
@pytest.mark.parametrize("method", ["PUT", "POST"])
def test_upload_to_health_or_metrics_is_405(daemon, target, method):
    got = fetch(daemon, target, method, body=b"abc")
    assert_error(got, 405)
    assert got.header("Allow") == "GET, HEAD, OPTIONS"
    via_curl = run_curl("-T", "-", "-X", method, f"{daemon.base}{target}", input=b"abc")
    assert via_curl.status == 405 and ERROR_LINE.match(via_curl.body), via_curl


@pytest.mark.parametrize("target", ["/help", "/", "/robots.txt"])
def test_delete_on_reserved_path_is_405(daemon, target):
    answer = fetch(daemon, target, "DELETE")
    assert_error(answer, 405, "Method DELETE is not allowed.")
    assert answer.header("Allow")


def test_options_preflight_on_a_name(daemon):
    for target in (f"/api/v1/pipe/{unique()}", f"/{unique()}"):
        answer = fetch(
            daemon, target, "OPTIONS", headers={"Origin": "https://example.org", "Access-Control-Request-Method": "PUT"}
        )
        assert answer.status == 200
        assert answer.header("Access-Control-Allow-Origin") == "*"
        methods = {m.strip() for m in answer.header("Access-Control-Allow-Methods").split(",")}
        assert methods == PIPE_ALLOW
        allowed = {h.strip().lower() for h in answer.header("Access-Control-Allow-Headers").split(",")}
        assert allowed == {
            "content-type",
            "content-disposition",
            "x-piping",
            "x-hoody-pipe",
            "x-pipe-size",
            "last-event-id",
        }
        assert answer.header("Access-Control-Max-Age") == "86400"


# -- pages --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("word", ["health", "metrics", "Health", "health/"])
def test_root_health_and_metrics_are_404(daemon, word):
    folded = word.lower().rstrip("/")
    answer = fetch(daemon, f"/{word}")
    assert_error(answer, 404, f"'/{folded}' is not a valid path. Use '/api/v1/pipe/{folded}'.")


@pytest.mark.parametrize(
    "target",
    [
        "/help",
        "/Help",
        "/HELP",
        "/help/",
        "/help.",
        "/help%2e",
        "/help%2E",
        "/help./",
        "/api/v1/pipe/help",
        "/api/v1/pipe/HELP/",
        "/api/v1/pipe/help%2e",
    ],
)
def test_reserved_path_folding_serves_help(daemon, target):
    answer = fetch(daemon, target)
    assert answer.status == 200, (target, answer.status, answer.body[:200])
    assert answer.header("Content-Type").startswith("text/plain")
    assert b"curl" in answer.body and b"[ERROR]" not in answer.body


def test_folding_is_only_one_slash_and_one_dot(daemon):
    """``/help..`` and ``/help/.`` (slash first, then dot) are not the help page but pipe names."""
    for target in ("/help..", "/help%2e%2e", "/Help/.", "/api/v1/pipe/help.."):
        answer = fetch(daemon, target + "?status")
        assert answer.status == 200 and json.loads(answer.body)["state"] == "idle", target


def test_help_uses_the_host_header(daemon):
    answer = fetch(daemon, "/help", headers={"Host": "pipes.example.org:8443"})
    assert answer.status == 200
    text = answer.text
    curl_lines = [line for line in text.splitlines() if "curl " in line]
    assert len(curl_lines) >= 3, text
    assert all("http://pipes.example.org:8443/" in line for line in curl_lines), curl_lines
    assert "curl -T" in text
    assert "http://pipes.example.org:8443/api/v1/pipe/" in text
    # Without a custom Host, the daemon's own address shows.
    own = fetch(daemon, "/api/v1/pipe/help").text
    assert f"{daemon.host}:{daemon.port}/api/v1/pipe/" in own


def test_help_ignores_a_hostile_host_header(daemon):
    answer = fetch(daemon, "/help", headers={"Host": "evil.example/<script>"})
    assert answer.status == 200
    assert "<script>" not in answer.text


def test_health_json(daemon):
    answer = fetch(daemon, "/api/v1/pipe/health", headers={"User-Agent": "e2e-agent/1.0"})
    assert answer.status == 200
    assert answer.header("Content-Type").startswith("application/json")
    body = json.loads(answer.body)
    assert body["status"] == "ok"
    assert body["service"] == "hoodypipe"
    rfc3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)$")
    assert rfc3339.match(body["built"]), body
    assert rfc3339.match(body["started"]), body
    assert isinstance(body["memory"]["rss"], int) and body["memory"]["rss"] > 1_000_000
    assert "heap" in body["memory"]
    assert isinstance(body["fds"], int) and body["fds"] > 0
    assert body["pid"] == daemon.process.pid
    assert body["ip"] == "127.0.0.1"
    assert body["userAgent"] == "e2e-agent/1.0"
    for method in ("HEAD", "OPTIONS"):
        assert fetch(daemon, "/api/v1/pipe/health", method).status == 200
    assert fetch(daemon, "/api/v1/pipe/Health/").status == 200


@pytest.mark.parametrize("target", ["/", "/api/v1/pipe", "/api/v1/pipe/"])
def test_start_page(daemon, target):
    answer = fetch(daemon, target)
    assert answer.status == 200
    assert answer.header("Content-Type").startswith("text/html")
    assert b"curl" in answer.body
    assert b"<html" in answer.body.lower()


def test_metrics_page(daemon):
    answer = fetch(daemon, "/api/v1/pipe/metrics")
    assert answer.status == 200
    assert answer.header("Content-Type").startswith("text/plain")
    assert b"# TYPE" in answer.body


# -- keep-alive after early rejections -------------------------------------------------------------


HEALTH = b"GET /api/v1/pipe/health HTTP/1.1\r\nHost: x\r\n\r\n"


def test_keepalive_after_rejected_put(daemon):
    name = unique("ka")
    with RawConnection(daemon) as conn:
        first = conn.request(
            f"PUT /api/v1/pipe/{name}?n=0 HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\n\r\nhello world".encode()
        )
        assert first.status == 400 and ERROR_LINE.match(first.body), first
        assert (first.header("Connection") or "").lower() != "close"
        second = conn.request(HEALTH)
        assert second.status == 200, second
        assert json.loads(second.body)["status"] == "ok"
        # And a third: a rejected chunked upload, then health again.
        third = conn.request(
            f"POST /api/v1/pipe/{name}?wait=0 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            "5\r\nhello\r\n0\r\n\r\n".encode()
        )
        assert third.status == 400 and ERROR_LINE.match(third.body), third
        if (third.header("Connection") or "").lower() == "close":
            # Allowed by DESIGN.md ("close it or drain the body"), but then say so and close.
            assert conn.is_closed()
        else:
            assert conn.request(HEALTH).status == 200


def test_keepalive_after_rejected_receiver(daemon):
    name = unique("ka2")
    with RawConnection(daemon) as conn:
        first = conn.request(f"GET /api/v1/pipe/{name}?n=abc HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        assert first.status == 400 and ERROR_LINE.match(first.body), first
        second = conn.request(f"GET /api/v1/pipe/{name}?status HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        assert second.status == 200 and json.loads(second.body)["state"] == "idle"
        third = conn.request(f"DELETE /api/v1/pipe/{name} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        assert third.status == 405
        assert conn.request(HEALTH).status == 200


def test_keepalive_after_a_full_transfer(daemon):
    """A sender connection that completed its transfer can send the next request."""
    name = unique("ka3")
    r = receiver(daemon.url(name))
    wait_status(daemon, name, state="waiting", activeReceivers=1)
    with RawConnection(daemon) as conn:
        answer = conn.request(f"PUT /api/v1/pipe/{name} HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello".encode())
        assert answer.status == 200
        assert answer.body.decode().splitlines()[-1] == "[INFO] Transfer complete."
        assert conn.request(HEALTH).status == 200
    assert r.wait(30) == 0 and r.out == b"hello"


def test_rejected_upload_with_expect_continue_gets_no_100(daemon):
    """An early refusal of an ``Expect: 100-continue`` upload answers at once, without 100 Continue."""
    name = unique("exp")
    with RawConnection(daemon) as conn:
        conn.send(
            f"PUT /api/v1/pipe/{name}?n=0 HTTP/1.1\r\nHost: x\r\nContent-Length: 5000000\r\n"
            "Expect: 100-continue\r\n\r\n".encode()
        )
        line = conn._line()
        assert line.startswith(b"HTTP/1.1 400"), line
