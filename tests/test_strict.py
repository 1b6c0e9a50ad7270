"""Strict HTTP (issue 9): request heads that a front end could frame differently
from us are refused with one ``[ERROR]`` line, in memory over the real channel.

Each case was accepted before: a proxy in front that reads the message its own
way (the second ``Transfer-Encoding`` line, the other ``Host``) would see a
different request, or a different body, than the daemon.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from twisted.web.http_headers import Headers

from hoodypipe.strict import head_refusal
from tests.memhttp import MemoryDaemon

PIPE = b"/api/v1/pipe/strict"


def head(*lines: bytes, request_line: bytes = b"PUT " + PIPE + b" HTTP/1.1") -> bytes:
    return b"\r\n".join((request_line, *lines)) + b"\r\n\r\n"


def assert_one_error_line(d: MemoryDaemon, raw: bytes, code: int, line: bytes | None = None):
    conn = d.connect().send(raw)
    response = conn.response()
    assert response.status == code, (raw, conn.raw)
    assert response.body.startswith(b"[ERROR] ") and response.body.endswith(b".\n"), conn.raw
    assert response.body.count(b"\n") == 1, conn.raw
    if line is not None:
        assert response.body == line
    assert response.headers.get("connection") == "close" and conn.closing
    assert conn.raw.count(b"HTTP/1.1 ") == 1, conn.raw  # one answer, nothing after it
    # Nothing reached the pipes.
    assert not d.registry.pipes, d.registry.pipes
    return response


# -- Transfer-Encoding ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "lines",
    [
        pytest.param(
            (b"Host: h", b"Transfer-Encoding: chunked", b"Transfer-Encoding: identity"), id="chunked-identity"
        ),
        pytest.param(
            (b"Host: h", b"Transfer-Encoding: identity", b"Transfer-Encoding: chunked"), id="identity-chunked"
        ),
        pytest.param((b"Host: h", b"Transfer-Encoding: identity"), id="identity-alone"),
        pytest.param((b"Host: h", b"Transfer-Encoding: identity", b"Content-Length: 5"), id="identity-and-length"),
        pytest.param((b"Host: h", b"Content-Length: 5", b"Transfer-Encoding: identity"), id="length-and-identity"),
        pytest.param((b"Host: h", b"Transfer-Encoding: chunked", b"Content-Length: 5"), id="chunked-and-length"),
        pytest.param((b"Host: h", b"Transfer-Encoding: gzip, chunked"), id="gzip-chunked"),
        pytest.param((b"Host: h", b"Transfer-Encoding: chunked, chunked"), id="chunked-twice-in-one"),
        pytest.param((b"Host: h", b"Transfer-Encoding: chunked", b"Transfer-Encoding: chunked"), id="chunked-twice"),
        pytest.param((b"Host: h", b"Transfer-Encoding: "), id="empty"),
    ],
)
def test_any_transfer_encoding_but_one_chunked_is_refused(lines):
    assert_one_error_line(MemoryDaemon(), head(*lines) + b"5\r\nhello\r\n0\r\n\r\n", 400)


@pytest.mark.parametrize("value", [b"chunked", b"Chunked", b"CHUNKED"])
def test_one_chunked_is_a_sender(value):
    d = MemoryDaemon()
    conn = d.connect().send(head(b"Host: h", b"Transfer-Encoding: " + value))
    assert conn.response().status == 200 and "strict" in d.registry.pipes


# -- chunked framing (hoodypipe/chunked.py) through the channel ---------------------------------


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"5 \r\nhello\r\n0\r\n\r\n", id="blank-after-size"),
        pytest.param(b"5;a\nb\r\nhello\r\n0\r\n\r\n", id="bare-lf-in-extension"),
        pytest.param(b"5\r\nhello\r\n0\r\nGET /other HTTP/1.1\r\nHost: h\r\n\r\n", id="request-as-trailer"),
    ],
)
def test_bad_chunked_framing_fails_the_upload(body):
    d = MemoryDaemon()
    receiver = d.receiver("/api/v1/pipe/strict")
    sender = d.connect().send(head(b"Host: h", b"Transfer-Encoding: chunked") + body)
    assert sender.response().body.endswith(b"[ERROR] Malformed upload.\n"), sender.raw
    assert receiver.aborted  # never a clean end
    assert b"/other" not in b"".join(map(bytes, d.registry.pipes))  # nothing swallowed became a pipe


def test_a_refused_upload_with_bad_framing_gets_one_400():
    """A GET with a chunked body is refused before its body is read; a bare LF in a
    chunk extension still ends the connection, with the one answer already sent."""
    d = MemoryDaemon()
    raw = head(b"Host: h", b"Transfer-Encoding: chunked", request_line=b"GET /x?status HTTP/1.1")
    conn = d.connect().send(raw + b"5;a\nb\r\nhello\r\n0\r\n\r\n")
    assert conn.raw.count(b"HTTP/1.1 ") == 1 and conn.response().status == 413


# -- Host -------------------------------------------------------------------------------------------


def test_two_host_headers_are_refused():
    raw = head(b"Host: a.example", b"Host: b.example", request_line=b"GET /api/v1/pipe/x?status HTTP/1.1")
    assert_one_error_line(MemoryDaemon(), raw, 400)


def test_an_http11_request_without_host_is_refused():
    assert_one_error_line(MemoryDaemon(), head(request_line=b"GET /api/v1/pipe/x HTTP/1.1"), 400)
    d = MemoryDaemon()
    assert_one_error_line(d, head(b"Transfer-Encoding: chunked"), 400)


def test_an_http10_request_may_leave_host_out_but_not_send_two():
    d = MemoryDaemon()
    conn = d.connect().send(head(request_line=b"GET /api/v1/pipe/x?status HTTP/1.0"))
    assert conn.response().status == 200
    raw = head(b"Host: a", b"Host: b", request_line=b"GET /api/v1/pipe/x?status HTTP/1.0")
    assert_one_error_line(MemoryDaemon(), raw, 400)


# -- methods are case-sensitive -----------------------------------------------------------------------


@pytest.mark.parametrize("method", [b"get", b"Get", b"put", b"post", b"head", b"options"])
def test_a_method_in_another_case_is_an_unknown_method(method):
    """RFC 9110 section 9.1: methods are case-sensitive, so ``get`` is not GET but
    an unknown method: 405 with ``Allow``, never a receiver or a sender."""
    d = MemoryDaemon()
    conn = d.connect().send(head(b"Host: h", request_line=method + b" /api/v1/pipe/x HTTP/1.1"))
    response = conn.response()
    assert response.status == 405, conn.raw
    assert response.headers.get("allow") == "GET, POST, PUT, OPTIONS"
    assert response.body == b"[ERROR] Method " + method + b" is not allowed.\n"
    assert not d.registry.pipes


def test_a_lowercase_method_on_a_page_is_405_too():
    d = MemoryDaemon()
    conn = d.connect().send(head(b"Host: h", request_line=b"get /help HTTP/1.1"))
    assert conn.response().status == 405 and conn.response().headers.get("allow") == "GET, HEAD"


# -- limits: 431, not a silent close --------------------------------------------------------------------

TOO_LARGE = b"[ERROR] Request header fields too large.\n"


def test_a_header_line_over_the_limit_is_431():
    raw = head(b"Host: h", b"X-Big: " + b"x" * 17000, request_line=b"GET /api/v1/pipe/x?status HTTP/1.1")
    assert_one_error_line(MemoryDaemon(), raw, 431, TOO_LARGE)


def test_a_header_line_over_the_limit_is_431_before_its_end_arrives():
    d = MemoryDaemon()
    conn = d.connect().send(b"GET /x?status HTTP/1.1\r\nHost: h\r\nX-Big: " + b"x" * 20000)
    assert conn.response().status == 431 and conn.response().body == TOO_LARGE and conn.closing


def test_too_many_headers_is_431():
    lines = [b"Host: h", *(b"X-F-%d: v" % i for i in range(501))]
    assert_one_error_line(MemoryDaemon(), head(*lines, request_line=b"GET /x?status HTTP/1.1"), 431, TOO_LARGE)


def test_headers_over_the_total_size_are_431():
    lines = [b"Host: h", *(b"X-F-%d: %s" % (i, b"v" * 1000) for i in range(20))]
    assert_one_error_line(MemoryDaemon(), head(*lines, request_line=b"GET /x?status HTTP/1.1"), 431, TOO_LARGE)


def test_a_request_line_over_the_limit_is_414():
    raw = head(b"Host: h", request_line=b"GET /" + b"a" * 17000 + b" HTTP/1.1")
    assert_one_error_line(MemoryDaemon(), raw, 414, b"[ERROR] Request line too long.\n")


def test_a_request_line_over_the_limit_is_414_before_its_end_arrives():
    conn = MemoryDaemon().connect().send(b"GET /" + b"a" * 20000)
    assert conn.response().status == 414 and conn.closing


def test_the_limits_still_allow_a_second_request_on_the_connection():
    """The header counts are per request: 300 headers twice on one connection are fine."""
    d = MemoryDaemon()
    lines = [b"Host: h", *(b"X-F-%d: v" % i for i in range(300))]
    one = head(*lines, request_line=b"GET /api/v1/pipe/x?status HTTP/1.1")
    conn = d.connect().send(one + one)
    assert conn.raw.count(b"HTTP/1.1 200 ") == 2, conn.raw


# -- the pure rules -----------------------------------------------------------------------------------


def headers(*pairs: tuple[bytes, bytes]) -> Headers:
    out = Headers()
    for name, value in pairs:
        out.addRawHeader(name, value)
    return out


def test_head_refusal_accepts_ordinary_heads():
    assert head_refusal(b"HTTP/1.1", headers((b"Host", b"h"))) is None
    assert head_refusal(b"HTTP/1.1", headers((b"Host", b""))) is None  # an empty Host is valid
    assert head_refusal(b"HTTP/1.0", headers()) is None
    assert head_refusal(b"HTTP/1.1", headers((b"Host", b"h"), (b"Transfer-Encoding", b"chunked"))) is None
    assert head_refusal(b"HTTP/1.1", headers((b"Host", b"h"), (b"Content-Length", b"5"))) is None


@given(
    st.lists(st.sampled_from([b"chunked", b"identity", b"gzip", b"", b"Chunked", b"chunked, identity"]), min_size=1),
    st.booleans(),
)
def test_transfer_encoding_is_one_chunked_without_length_or_refused(values, length):
    pairs = [(b"Host", b"h"), *((b"Transfer-Encoding", v) for v in values)]
    if length:
        pairs.append((b"Content-Length", b"5"))
    refusal = head_refusal(b"HTTP/1.1", headers(*pairs))
    ok = len(values) == 1 and values[0].lower() == b"chunked" and not length
    assert (refusal is None) == ok, (values, length)
    if refusal is not None:
        assert refusal.code == 400 and refusal.line.startswith(b"[ERROR] ") and refusal.line.endswith(b".\n")
