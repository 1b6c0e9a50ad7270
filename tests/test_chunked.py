"""The upload path's chunked decoder."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hoodypipe.chunked import ChunkedDecoder, MalformedChunks


def encode(chunks: list[bytes], trailers: bytes = b"") -> bytes:
    out = b"".join(b"%x;ext=1\r\n%s\r\n" % (len(c), c) for c in chunks if c)
    return out + b"0\r\n" + trailers + b"\r\n"


def decode(wire: bytes, splits: list[int]) -> tuple[bytes, list[bytes], bytes | None]:
    got: list[bytes] = []
    rest: list[bytes] = []
    decoder = ChunkedDecoder(lambda pieces: got.append(b"".join(pieces)), rest.append)
    pos = 0
    for cut in sorted(splits) + [len(wire)]:
        if cut > pos:
            decoder.dataReceived(wire[pos:cut])
            pos = cut
        if rest:
            break
    return b"".join(got), got, rest[0] if rest else None


@given(st.lists(st.binary(max_size=300), max_size=20), st.lists(st.integers(0, 7000), max_size=30))
def test_any_split_decodes_to_the_same_bytes(chunks, splits):
    wire = encode(chunks, b"X-Trailer: 1\r\n") + b"NEXT"
    body, _, rest = decode(wire, splits)
    assert body == b"".join(chunks)
    assert rest is not None and b"NEXT".startswith(rest) or rest == b"NEXT"


def test_one_piece_per_read():
    _, pieces, rest = decode(encode([b"a" * 10, b"b" * 10, b"c" * 10]), [])
    assert pieces == [b"a" * 10 + b"b" * 10 + b"c" * 10] and rest == b""


@pytest.mark.parametrize("wire", [b"zz\r\n", b"5\r\nhelloXX", b"-5\r\nhello\r\n", b"0x5\r\nhello\r\n",
                                  b"1" * 2000, b"5\r\nhello\r\n0\r\n" + b"T: x\r\n" * 5000])
def test_malformed_framing_raises_the_channel_error(wire):
    decoder = ChunkedDecoder(lambda d: None, lambda d: None)
    with pytest.raises(MalformedChunks):
        decoder.dataReceived(wire)


def test_payload_before_an_error_is_still_delivered():
    got: list[bytes] = []
    decoder = ChunkedDecoder(lambda pieces: got.append(b"".join(pieces)), lambda d: None)
    with pytest.raises(MalformedChunks):
        decoder.dataReceived(b"3\r\nabc\r\nzz\r\n")
    assert got == [b"abc"]
