"""Strict HTTP: the request-head rules twisted.web does not enforce.

Behind a front end (a proxy, a load balancer, a CDN) that reads a message
its own way, any leniency here is a request smuggled past it: the front end
sees one body or one target, the daemon another. So a head that RFC 9112
does not allow is refused with one ``[ERROR]`` line before any of it is
acted on. Pure: ``channel.PipeChannel`` calls these at the end of the
headers and where twisted.web's limits are hit, and writes the refusal.

What lives elsewhere: the chunked framing of the body is checked by
``chunked.ChunkedDecoder``; methods are case-sensitive in ``web`` (a ``get``
is an unknown method there, never a GET).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from hoodypipe.errors import HTTPError

if TYPE_CHECKING:
    from twisted.web.http_headers import Headers

BAD_FRAMING = HTTPError(400, "Bad request: a body is framed by one Transfer-Encoding: chunked or by Content-Length.")
BAD_HOST = HTTPError(400, "Bad request: a request needs exactly one Host header.")
HEADERS_TOO_LARGE = HTTPError(431, "Request header fields too large.")
REQUEST_LINE_TOO_LONG = HTTPError(414, "Request line too long.")


def head_refusal(version: bytes, headers: Headers) -> HTTPError | None:
    """Why a request head must be refused, or None.

    twisted.web has already refused a second ``Content-Length``, one with
    anything but digits, a second ``chunked`` and a coding it does not know,
    but not these.
    """
    # RFC 9112 section 6.1 and 6.3: chunked is the only coding we decode, so
    # it must be there exactly once and alone. twisted.web skips an
    # "identity" line (a coding that no longer exists), so "chunked" then
    # "identity" was chunked to us and plain to a front end that takes the
    # last line; and a Transfer-Encoding next to Content-Length is the
    # classic smuggling pair, refused rather than resolved.
    codings = headers.getRawHeaders(b"Transfer-Encoding")
    if codings is not None and (
        len(codings) != 1 or codings[0].lower() != b"chunked" or headers.hasHeader(b"Content-Length")
    ):
        return BAD_FRAMING
    # RFC 9112 section 3.2: an HTTP/1.1 request without Host, or any request
    # with two Host lines, gets 400 (two front ends could route it apart).
    hosts = headers.getRawHeaders(b"Host") or []
    if len(hosts) > 1 or (not hosts and version == b"HTTP/1.1"):
        return BAD_HOST
    return None


def limit_refusal(request_line_read: bool) -> HTTPError:
    """The answer to a head over twisted.web's limits (a line over 16 KiB, more
    than 500 headers, 16 KiB in all), instead of a silent close or a bare 400:
    414 while the request line is still being read (RFC 9112 section 3), 431
    once it is in (RFC 6585 section 5)."""
    return HEADERS_TOO_LARGE if request_line_read else REQUEST_LINE_TOO_LONG
