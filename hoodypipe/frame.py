"""One read of a sender's body, framed once for every receiver."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeAlias

# What the body's decoder hands over for one socket read: bytes (a body with
# a Content-Length), or the payload of every chunk in the read, not yet
# copied (chunked.ChunkedDecoder).
Piece: TypeAlias = bytes | memoryview
Payload: TypeAlias = bytes | Sequence[Piece]


class Frame:
    """One read of the sender's body, as each kind of receiver sends it.

    The decoder hands over the payload of every chunk in one socket read as
    a list of memoryviews; each form is joined at most once, however many
    receivers there are, and a receiver's transport then holds that one
    bytes object (a single item is sent without another copy).
    """

    __slots__ = ("_chunked", "_plain", "pieces", "size")

    def __init__(self, data: Payload) -> None:
        self.pieces: Sequence[Piece] = [data] if isinstance(data, bytes) else data
        self.size = sum(len(p) for p in self.pieces)
        self._plain: bytes | None = None
        self._chunked: bytes | None = None

    def plain(self) -> bytes:
        if self._plain is None:
            pieces = self.pieces
            first = pieces[0] if len(pieces) == 1 else None
            self._plain = first if type(first) is bytes else b"".join(pieces)
        return self._plain

    def chunked(self) -> bytes:
        """The same bytes with HTTP/1.1 chunked framing around them."""
        if self._chunked is None:
            self._chunked = b"".join([b"%x\r\n" % self.size, *self.pieces, b"\r\n"])
        return self._chunked
