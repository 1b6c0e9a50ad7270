"""The one way a request is refused: a status, one ``[ERROR]`` line, and the
headers every answer needs, counted once by status for ``/metrics``.

Pages, receivers, senders and the channel (before any request exists) all
refuse through here, so no refusal forgets a header: a browser on another
origin can read its own ``[ERROR]`` line, and no error is sniffed as HTML.
"""

from __future__ import annotations

from collections import Counter
from http import HTTPStatus
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from twisted.web.iweb import IRequest

    from hoodypipe.errors import HTTPError

TEXT_PLAIN = b"text/plain; charset=utf-8"
# What every error answer carries, whoever writes it.
ERROR_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"Content-Type", TEXT_PLAIN),
    (b"Access-Control-Allow-Origin", b"*"),
    (b"X-Content-Type-Options", b"nosniff"),
    (b"Cache-Control", b"no-store"),
)


class Rejections(Counter[int]):
    """Refusals by status code, read by the metrics at scrape time."""


def reason_phrase(code: int) -> bytes:
    try:
        return HTTPStatus(code).phrase.encode("ascii")
    except ValueError:
        return b"Error"


def refuse(request: IRequest, error: HTTPError, rejections: Rejections) -> bytes:
    """Set the refusal's status and headers on ``request``; return its body.

    The caller writes the body (and finishes, drains or closes) as its
    connection allows.
    """
    rejections[error.code] += 1
    request.setResponseCode(error.code, reason_phrase(error.code))
    for name, value in ERROR_HEADERS:
        request.setHeader(name, value)
    for name, value in error.headers.items():
        request.setHeader(name, value)
    return error.line


def raw_refusal(error: HTTPError, rejections: Rejections) -> bytes:
    """A whole ``Connection: close`` response, for the channel to write
    where no request object exists yet (too many connections, bad framing)."""
    rejections[error.code] += 1
    body = error.line
    head = [b"HTTP/1.1 %d %s" % (error.code, reason_phrase(error.code))]
    head += [name + b": " + value for name, value in (*ERROR_HEADERS, *error.headers.items())]
    head += [b"Content-Length: %d" % len(body), b"Connection: close"]
    return b"\r\n".join(head) + b"\r\n\r\n" + body
