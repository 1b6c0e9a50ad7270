"""What receivers see of the sender's headers."""

from __future__ import annotations

from urllib.parse import quote

import pytest
from hypothesis import given
from hypothesis import strategies as st
from twisted.web.http_headers import Headers

from hoodypipe.errors import HTTPError
from hoodypipe.headers import SenderHeaders, content_disposition, safe_content_type, sanitise_filename


def receiver_headers(sent: dict[bytes, bytes], download=None, filename=None, segment="file.bin") -> dict[bytes, bytes]:
    headers = Headers({k: [v] for k, v in sent.items()})
    return dict(SenderHeaders.read(headers).for_receiver(download, filename, segment))


@pytest.mark.parametrize(
    "sent, shown",
    [
        (b"text/html", b"text/plain"),
        (b"TEXT/HTML; charset=utf-8", b"text/plain; charset=utf-8"),
        (b"image/svg+xml", b"text/plain"),
        (b"application/xhtml+xml", b"text/plain"),
        (b"application/javascript", b"text/plain"),
        (b"text/xml", b"text/plain"),
        (b"application/octet-stream", b"application/octet-stream"),
        (b"text/plain; charset=utf-8; evil=1", b"text/plain; charset=utf-8"),
        (b"image/png; name=x", b"image/png"),
        (b"nonsense", b"application/octet-stream"),
    ],
)
def test_content_type(sent, shown):
    assert safe_content_type(sent)[0] == shown


def test_no_content_type_is_invented():
    assert b"Content-Type" not in receiver_headers({})


def test_content_length_only_when_valid():
    assert receiver_headers({b"Content-Length": b"12"})[b"Content-Length"] == b"12"


def test_inline_becomes_attachment_unless_safe_to_show():
    html = receiver_headers({b"Content-Type": b"text/html", b"Content-Disposition": b'inline; filename="a.html"'})
    assert html[b"Content-Disposition"] == b'attachment; filename="a.html"'
    svg = receiver_headers({b"Content-Type": b"image/svg+xml", b"Content-Disposition": b"inline"})
    assert svg[b"Content-Disposition"] == b"attachment"
    png = receiver_headers({b"Content-Type": b"image/png", b"Content-Disposition": b"inline"})
    assert png[b"Content-Disposition"] == b"inline"


def test_download_flags():
    sent = {b"Content-Disposition": b'attachment; filename="report.pdf"'}
    assert receiver_headers(sent, download=True)[b"Content-Disposition"] == b'attachment; filename="report.pdf"'
    assert b"Content-Disposition" not in receiver_headers(sent, download=False)
    assert receiver_headers({}, download=True)[b"Content-Disposition"] == b'attachment; filename="file.bin"'
    named = receiver_headers({}, filename="café.txt")[b"Content-Disposition"]
    assert named == b"attachment; filename=\"caf_.txt\"; filename*=UTF-8''caf%C3%A9.txt"


def test_passed_through_headers_are_stripped_capped_and_exposed():
    got = receiver_headers({b"X-Piping": b"a\x01b" + b"c" * 9000, b"X-Hoody-Pipe": b"meta"})
    assert got[b"X-Piping"] == b"ab" + b"c" * (8192 - 2)
    assert got[b"X-Hoody-Pipe"] == b"meta"
    assert (
        got[b"Access-Control-Expose-Headers"]
        == b"Content-Disposition, X-Hoody-Pipe-Transfer-Id, X-Piping, X-Hoody-Pipe"
    )
    assert got[b"Access-Control-Allow-Origin"] == b"*"
    assert got[b"X-Content-Type-Options"] == b"nosniff"
    assert got[b"X-Robots-Tag"] == b"none"


@pytest.mark.parametrize(
    "header", [{b"X-Pipe-Size": b"12abc"}, {b"X-Pipe-Size": b"-1"}, {b"Content-Range": b"bytes 0-1/2"}]
)
def test_bad_sender_headers_are_400(header):
    with pytest.raises(HTTPError) as caught:
        SenderHeaders.read(Headers({k: [v] for k, v in header.items()}))
    assert caught.value.code == 400


def test_size_hint_feeds_total_bytes_only_without_content_length():
    assert SenderHeaders.read(Headers({b"X-Pipe-Size": [b"1000"]})).total_bytes == 1000
    assert SenderHeaders.read(Headers({b"X-Pipe-Size": [b"1000"], b"Content-Length": [b"5"]})).total_bytes == 5


@pytest.mark.parametrize(
    "name, clean", [("../../etc/passwd", "etcpasswd"), (".hidden", "hidden"), ("a\r\nb", "ab"), ("x" * 300, "x" * 255)]
)
def test_filenames_are_sanitised(name, clean):
    assert sanitise_filename(name) == clean


@given(st.text(max_size=300), st.binary(max_size=300), st.binary(max_size=300))
def test_nothing_a_sender_sends_can_break_a_header_line(filename, ctype, disposition):
    headers = Headers()
    headers.setRawHeaders(b"Content-Type", [ctype.replace(b"\r", b"").replace(b"\n", b"")])
    headers.setRawHeaders(b"Content-Disposition", [disposition.replace(b"\r", b"").replace(b"\n", b"")])
    for download in (None, True):
        for _name, value in SenderHeaders.read(headers).for_receiver(download, filename or None, "seg"):
            assert not any(c in value for c in b"\r\n\x00")
    assert b"\r" not in content_disposition("attachment", sanitise_filename(filename) or None)


# -- issue 9: every JavaScript type, and no invisible controls ------------------------------------

# WHATWG MIME Sniffing, "JavaScript MIME type": every essence a browser runs as script.
JAVASCRIPT_ESSENCES = [
    "application/ecmascript", "application/javascript", "application/x-ecmascript", "application/x-javascript",
    "text/ecmascript", "text/javascript", "text/javascript1.0", "text/javascript1.1", "text/javascript1.2",
    "text/javascript1.3", "text/javascript1.4", "text/javascript1.5", "text/jscript", "text/livescript",
    "text/x-ecmascript", "text/x-javascript",
]  # fmt: skip
# C1 controls, and the bidirectional controls that reorder what a name looks like.
INVISIBLE = (
    [chr(c) for c in range(0x80, 0xA0)]
    + list("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e")
    + list("\u2066\u2067\u2068\u2069")
)


@pytest.mark.parametrize("essence", JAVASCRIPT_ESSENCES)
@pytest.mark.parametrize("spelling", [str.lower, str.upper, lambda t: t + "; charset=utf-8", lambda t: f" {t} "])
def test_every_javascript_type_is_served_as_text(essence, spelling):
    shown, _ = safe_content_type(spelling(essence).encode())
    assert shown is not None and shown.split(b";")[0] == b"text/plain", (essence, shown)


@given(st.text(alphabet=st.sampled_from([*INVISIBLE, "a", "é", "€", ".", " ", "/"]), max_size=40))
def test_filenames_lose_c1_and_bidi_controls(name):
    clean = sanitise_filename(name)
    assert not any(c in clean for c in INVISIBLE), repr(clean)
    shown = receiver_headers({}, filename=name)[b"Content-Disposition"]
    for header in (content_disposition("attachment", clean or None), shown):
        for c in INVISIBLE:
            assert quote(c).encode() not in header, (name, header)


def test_a_right_to_left_override_cannot_disguise_an_extension():
    got = receiver_headers({}, filename="invoice\u202efdp.exe")[b"Content-Disposition"]
    assert got == b'attachment; filename="invoicefdp.exe"'
    sent = {b"Content-Disposition": b"attachment; filename*=UTF-8''a%E2%80%AEgpj.exe%C2%85"}
    assert receiver_headers(sent)[b"Content-Disposition"] == b'attachment; filename="agpj.exe"'


@given(
    st.lists(
        st.one_of(
            st.binary(max_size=4),
            st.sampled_from([b"\x85", b"\x9b", b"\x80", b"\x9f", b"\xc2\x85", b"\xe2\x82\xac", b"\xc3\xa9", b"ok"]),
        ),
        max_size=12,
    )
)
def test_passed_through_headers_carry_no_c1_control(parts):
    value = b"".join(parts).replace(b"\r", b"").replace(b"\n", b"").replace(b"\x00", b"")
    got = receiver_headers({b"X-Piping": value, b"X-Hoody-Pipe": value})
    for name in (b"X-Piping", b"X-Hoody-Pipe"):
        shown = got[name]
        try:  # a UTF-8 value stays UTF-8, without its C1 characters
            text = shown.decode("utf-8")
        except UnicodeDecodeError:  # else no raw byte 0x80-0x9F is left
            assert not any(0x80 <= b <= 0x9F for b in shown), shown
        else:
            assert not any("\x80" <= c <= "\x9f" for c in text), shown
        assert not any(b < 0x20 or b == 0x7F for b in shown), shown


def test_utf8_in_passed_through_headers_is_kept():
    assert receiver_headers({b"X-Piping": "€ café".encode()})[b"X-Piping"] == "€ café".encode()
    assert receiver_headers({b"X-Piping": b"a\xc2\x85b"})[b"X-Piping"] == b"ab"  # U+0085 in UTF-8
    assert receiver_headers({b"X-Piping": b"a\x85b\xe9"})[b"X-Piping"] == b"ab\xe9"  # a raw C1 byte
    capped = receiver_headers({b"X-Piping": "€".encode() * 3000})[b"X-Piping"]  # cut between characters
    assert capped == "€".encode() * (8192 // 3)
