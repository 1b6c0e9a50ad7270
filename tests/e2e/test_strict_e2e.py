"""Strict HTTP against the installed daemon (issue 9), byte for byte on raw sockets.

Each request here was accepted before and means something else to a front end
that frames messages its own way: every one is refused with one ``[ERROR]``
line, nothing in it reaches a pipe, and the connection closes.
"""

from __future__ import annotations

import pytest

from tests.support.httpwire import Broken

from ._helpers import ERROR_LINE, RawConnection, receiver, status, unique, wait_status

TOO_LARGE = b"[ERROR] Request header fields too large.\n"


def refused(daemon, raw: bytes, code: int) -> bytes:
    """Send ``raw`` whole; the answer is ``code`` with one [ERROR] line, then the close."""
    with RawConnection(daemon) as conn:
        try:
            conn.send(raw)
        except (BrokenPipeError, ConnectionResetError):
            pass  # answered and closed before all of it was sent
        response = conn.read_response()
        assert response.status == code, response
        assert ERROR_LINE.match(response.body), response.body
        assert (response.header("Connection") or "").lower() == "close"
        assert conn.is_closed(5)
        return response.body


def assert_idle(daemon, name: str) -> None:
    snapshot = status(daemon, name)
    assert snapshot["state"] == "idle", snapshot


@pytest.mark.parametrize(
    "framing",
    [
        pytest.param(b"Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n", id="chunked-then-identity"),
        pytest.param(b"Transfer-Encoding: identity\r\nContent-Length: 5\r\n", id="identity-and-length"),
        pytest.param(b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n", id="length-and-chunked"),
        pytest.param(b"Transfer-Encoding: identity\r\n", id="identity"),
    ],
)
def test_a_body_framed_two_ways_is_refused(daemon, framing):
    name = unique("te")
    raw = b"PUT /api/v1/pipe/%s HTTP/1.1\r\nHost: x\r\n%s\r\n5\r\nhello\r\n0\r\n\r\n" % (name.encode(), framing)
    refused(daemon, raw, 400)
    assert_idle(daemon, name)


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"5 \r\nhello\r\n0\r\n\r\n", id="blank-after-size"),
        pytest.param(b"5;a\nb\r\nhello\r\n0\r\n\r\n", id="bare-lf-in-extension"),
    ],
)
def test_chunk_sizes_outside_rfc_9112_fail_the_upload(daemon, body):
    name = unique("chunk")
    got = receiver(daemon.url(name))
    wait_status(daemon, name, state="waiting")
    with RawConnection(daemon) as conn:
        conn.send(b"PUT /api/v1/pipe/%s HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" % name.encode())
        conn.send(body)
        response = conn.read_response()
    assert response.status == 200 and response.body.endswith(b"[ERROR] Malformed upload.\n"), response.body
    assert got.wait(10) != 0  # never a clean end


def test_a_request_smuggled_as_trailers_is_never_served(daemon):
    """A front end that ends the body at "0\\r\\n" forwards the next request as its own;
    to us it was trailers, swallowed. Now it is bad framing, and the victim is never read."""
    name, victim = unique("smuggler"), unique("victim")
    got = receiver(daemon.url(name))
    wait_status(daemon, name, state="waiting")
    smuggled = b"GET /api/v1/pipe/%s HTTP/1.1\r\nHost: x\r\n\r\n" % victim.encode()
    with RawConnection(daemon) as conn:
        conn.send(b"PUT /api/v1/pipe/%s HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" % name.encode())
        conn.send(b"5\r\nhello\r\n0\r\n" + smuggled)
        response = conn.read_response()
    assert response.body.endswith(b"[ERROR] Malformed upload.\n"), response.body
    assert got.wait(10) != 0
    assert_idle(daemon, victim)


def test_two_hosts_and_no_host_are_refused(daemon):
    refused(daemon, b"GET /api/v1/pipe/health HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\n\r\n", 400)
    refused(daemon, b"GET /api/v1/pipe/health HTTP/1.1\r\n\r\n", 400)
    with RawConnection(daemon) as conn:  # HTTP/1.0 needs none
        assert conn.request(b"GET /api/v1/pipe/health HTTP/1.0\r\n\r\n").status == 200


@pytest.mark.parametrize("method", [b"get", b"Get", b"put", b"post"])
def test_a_lowercase_method_is_an_unknown_method_never_a_party(daemon, method):
    name = unique("case")
    with RawConnection(daemon) as conn:
        response = conn.request(
            b"%s /api/v1/pipe/%s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" % (method, name.encode())
        )
    assert response.status == 405 and response.header("Allow") == "GET, POST, PUT, OPTIONS", response
    assert response.body == b"[ERROR] Method %s is not allowed.\n" % method
    assert_idle(daemon, name)


def test_a_header_line_over_the_limit_is_431_not_a_silent_close(daemon):
    raw = b"GET /api/v1/pipe/health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"x" * 20000 + b"\r\n\r\n"
    assert refused(daemon, raw, 431) == TOO_LARGE


def test_too_many_headers_are_431(daemon):
    raw = b"GET /api/v1/pipe/health HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-F-%d: v\r\n" % i for i in range(600))
    assert refused(daemon, raw + b"\r\n", 431) == TOO_LARGE


def test_a_request_line_over_the_limit_is_414(daemon):
    assert refused(daemon, b"GET /" + b"a" * 20000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414) == (
        b"[ERROR] Request line too long.\n"
    )


def test_the_daemon_answers_after_all_of_it(daemon):
    with RawConnection(daemon) as conn:
        assert conn.request(b"GET /api/v1/pipe/health HTTP/1.1\r\nHost: x\r\n\r\n").status == 200
    with pytest.raises(Broken), RawConnection(daemon) as conn:  # and a refused connection stays closed
        conn.send(b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n")
        assert conn.read_response().status == 400
        conn.read_response()
