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
    for cut in [*sorted(splits), len(wire)]:
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
    assert (rest is not None and b"NEXT".startswith(rest)) or rest == b"NEXT"


def test_one_piece_per_read():
    _, pieces, rest = decode(encode([b"a" * 10, b"b" * 10, b"c" * 10]), [])
    assert pieces == [b"a" * 10 + b"b" * 10 + b"c" * 10] and rest == b""


@pytest.mark.parametrize(
    "wire",
    [
        b"zz\r\n",
        b"5\r\nhelloXX",
        b"-5\r\nhello\r\n",
        b"0x5\r\nhello\r\n",
        b"1" * 2000,
        b"5\r\nhello\r\n0\r\n" + b"T: x\r\n" * 5000,
    ],
)
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


# -- strict framing (issue 9): what a front end that frames differently could smuggle ------------


@pytest.mark.parametrize(
    "wire",
    [
        pytest.param(b"5 \r\nhello\r\n0\r\n\r\n", id="blank-after-size"),
        pytest.param(b"5\t\r\nhello\r\n0\r\n\r\n", id="tab-after-size"),
        pytest.param(b" 5\r\nhello\r\n0\r\n\r\n", id="blank-before-size"),
        pytest.param(b"5;a\nb\r\nhello\r\n0\r\n\r\n", id="bare-lf-in-extension"),
        pytest.param(b"5;a\rb\r\nhello\r\n0\r\n\r\n", id="bare-cr-in-extension"),
        pytest.param(b"5;\r\nhello\r\n0\r\n\r\n", id="empty-extension-name"),
        pytest.param(b"5;a=\r\nhello\r\n0\r\n\r\n", id="empty-extension-value"),
        pytest.param(b'5;a="x\r\nhello\r\n0\r\n\r\n', id="unterminated-quoted-value"),
        pytest.param(b"5;a b\r\nhello\r\n0\r\n\r\n", id="space-inside-extension"),
        pytest.param(b"5;a\x00\r\nhello\r\n0\r\n\r\n", id="nul-in-extension"),
        pytest.param(b"0\r\nGET /x HTTP/1.1\r\nHost: h\r\n\r\n", id="request-as-trailer"),
        pytest.param(b"0\r\nX-T 1\r\n\r\n", id="trailer-without-colon"),
        pytest.param(b"0\r\n: 1\r\n\r\n", id="trailer-without-name"),
        pytest.param(b"0\r\nX T: 1\r\n\r\n", id="trailer-name-with-space"),
        pytest.param(b"0\r\nX-T : 1\r\n\r\n", id="trailer-blank-before-colon"),
        pytest.param(b"0\r\nX-T: 1\r\n continued\r\n\r\n", id="trailer-obs-fold"),
        pytest.param(b"0\r\nX-T: a\nb\r\n\r\n", id="trailer-bare-lf"),
        pytest.param(b"0\r\nX-T: a\x00b\r\n\r\n", id="trailer-nul"),
    ],
)
def test_framing_outside_rfc_9112_is_refused(wire):
    """RFC 9112 section 7.1: whitespace only before a ``;``, extensions are tokens or
    quoted strings, trailer lines are header fields; anything else is refused."""
    finished: list[bytes] = []
    decoder = ChunkedDecoder(lambda d: None, finished.append)
    with pytest.raises(MalformedChunks):
        for byte in range(len(wire)):  # one byte at a time: no split may hide it
            decoder.dataReceived(wire[byte : byte + 1])
    assert finished == []


@pytest.mark.parametrize(
    "wire",
    [
        b"5;a\r\nhello\r\n0\r\n\r\n",
        b"5 ;a\r\nhello\r\n0\r\n\r\n",
        b"5\t; a = b\r\nhello\r\n0\r\n\r\n",
        b'5;a="x y;\\"z"\r\nhello\r\n0\r\n\r\n',
        b"5;a=1;b;c=d\r\nhello\r\n0\r\n\r\n",
        b"5\r\nhello\r\n0\r\nX-T: 1\r\nY:\r\nZ: a b\t\r\n\r\n",
        b"5\r\nhello\r\n0\r\nX-T:\xe9\r\n\r\n",
    ],
)
def test_framing_rfc_9112_allows_is_accepted(wire):
    got: list[bytes] = []
    finished: list[bytes] = []
    decoder = ChunkedDecoder(lambda pieces: got.append(b"".join(pieces)), finished.append)
    for byte in range(len(wire)):
        decoder.dataReceived(wire[byte : byte + 1])
    assert b"".join(got) == b"hello" and finished == [b""]
