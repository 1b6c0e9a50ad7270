"""A chunked transfer-coding decoder for the upload hot path.

twisted.web's decoder keeps a bytearray and deletes each chunk from its
front, so a 1 MiB socket read holding sixteen 64 KiB chunks from curl is
moved in memory sixteen times. This one walks each read with offsets and
calls ``dataCallback`` once per read with a list of memoryviews over it:
the payload of every chunk in the read, not yet copied (the relay joins it
once, with its framing; see ``relay.Frame``). Framing errors raise
``MalformedChunks``; ``channel.PipeChannel`` hands them to twisted.web as its
own malformed-body error.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from hoodypipe.frame import Payload

MAX_SIZE_LINE = 1024  # a chunk-size line with extensions
MAX_TRAILERS = 16 * 1024
# RFC 9112 section 7.1: chunk-size [ chunk-ext ] CRLF, where
#   chunk-ext = *( BWS ";" BWS ext-name [ BWS "=" BWS ext-val ] )
#   ext-val   = token / quoted-string
# so whitespace may come only before a ";" (never after a bare size), and no
# CR, LF or NUL may hide inside an extension: a front end that reads such a
# line otherwise would see another body than ours.
_TOKEN = rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_QUOTED = rb'"(?:[\t \x21\x23-\x5b\x5d-\x7e\x80-\xff]|\\[\t \x21-\x7e\x80-\xff])*"'
_SIZE_LINE = re.compile(
    rb"([0-9a-fA-F]{1,16})(?:[ \t]*;[ \t]*" + _TOKEN + rb"(?:[ \t]*=[ \t]*(?:" + _TOKEN + rb"|" + _QUOTED + rb"))?)*"
)
# A trailer line is a header field (RFC 9112 section 7.1.2, 5): a name, a
# colon with nothing before it, a value of visible characters and blanks. A
# request that follows a body without its end is not one.
_TRAILER_FIELD = re.compile(_TOKEN + rb":[\t\x20-\x7e\x80-\xff]*")

_SIZE, _BODY, _CRLF, _TRAILER, _DONE = range(5)


class MalformedChunks(ValueError):
    """The chunked framing is broken: the body cannot be trusted past here."""


class ChunkedDecoder:
    """Decode ``Transfer-Encoding: chunked`` (RFC 9112 section 7.1)."""

    def __init__(self, dataCallback: Callable[[Payload], None], finishCallback: Callable[[bytes], None]) -> None:
        self.dataCallback = dataCallback
        self.finishCallback = finishCallback
        self._state = _SIZE
        self._left = 0  # bytes still to come in the current chunk
        self._tail = b""  # an incomplete size line, CRLF or trailer
        self._trailers = 0

    def dataReceived(self, data: bytes) -> None:
        if self._state == _DONE:
            raise RuntimeError("chunked body already finished")
        if self._tail:
            data = self._tail + data
            self._tail = b""
        view = memoryview(data)
        pieces: list[memoryview] = []
        pos, end = 0, len(data)
        try:
            while pos < end:
                state = self._state
                if state == _BODY:
                    take = min(self._left, end - pos)
                    pieces.append(view[pos : pos + take])
                    pos += take
                    self._left -= take
                    if not self._left:
                        self._state = _CRLF
                elif state == _CRLF:
                    if end - pos < 2:
                        self._tail = data[pos:]
                        return
                    if data[pos : pos + 2] != b"\r\n":
                        raise MalformedChunks("chunk data not followed by CRLF")
                    pos += 2
                    self._state = _SIZE
                elif state == _SIZE:
                    eol = data.find(b"\r\n", pos, pos + MAX_SIZE_LINE + 2)
                    if eol < 0:
                        if end - pos > MAX_SIZE_LINE:
                            raise MalformedChunks("chunk-size line too long")
                        self._tail = data[pos:]
                        return
                    line = _SIZE_LINE.fullmatch(data, pos, eol)
                    if line is None:
                        raise MalformedChunks("bad chunk size or extension")
                    pos = eol + 2
                    self._left = int(line.group(1), 16)
                    self._state = _BODY if self._left else _TRAILER
                else:  # _TRAILER: header lines until an empty one
                    eol = data.find(b"\r\n", pos)
                    if eol < 0:
                        if self._trailers + end - pos > MAX_TRAILERS:
                            raise MalformedChunks("trailers too long")
                        self._tail = data[pos:]
                        return
                    if eol == pos:
                        self._state = _DONE
                        self._deliver(pieces)
                        pieces = []
                        self.finishCallback(data[eol + 2 :])
                        return
                    self._trailers += eol + 2 - pos
                    if self._trailers > MAX_TRAILERS:
                        raise MalformedChunks("trailers too long")
                    if _TRAILER_FIELD.fullmatch(data, pos, eol) is None:
                        raise MalformedChunks("a trailer line that is not a header field")
                    pos = eol + 2
        finally:
            # Whatever payload this read held goes on, even before an error.
            self._deliver(pieces)

    def _deliver(self, pieces: list[memoryview]) -> None:
        if pieces:
            delivered = pieces[:]
            pieces.clear()
            self.dataCallback(delivered)

    def noMoreData(self) -> None:
        if self._state != _DONE:
            raise MalformedChunks("the body ended before its last chunk")
