"""multipart/form-data senders (KIT 3): the streaming parser, and the part a form carries, in memory."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hoodypipe.formupload import FIRST_PART_DEADLINE, MAX_HELD
from hoodypipe.multipart import (
    MAX_HEADER,
    FormEnd,
    MultipartError,
    Parser,
    PartData,
    PartEnd,
    PartHeaders,
    PartStart,
    boundary_of,
    split_parameters,
)
from tests.memhttp import MemoryDaemon

B = b"----hoodypipeBoundary7MA4YWxkTrZu0gW"
FORM = f"multipart/form-data; boundary={B.decode()}"
FAILED = b"[ERROR] Transfer failed.\n"


def part(headers: list[str], body: bytes) -> tuple[list[str], bytes]:
    return headers, body


def form(*parts: tuple[list[str], bytes], boundary: bytes = B, preamble: bytes = b"", epilogue: bytes = b"") -> bytes:
    out = [preamble + b"\r\n" if preamble else b""]
    for headers, body in parts:
        out.append(b"--" + boundary + b"\r\n")
        out.extend(h.encode("utf-8") + b"\r\n" for h in headers)
        out.append(b"\r\n" + body + b"\r\n")
    out.append(b"--" + boundary + b"--\r\n" + epilogue)
    return b"".join(out)


def field(name: str, body: bytes, *extra: str) -> tuple[list[str], bytes]:
    return [f'Content-Disposition: form-data; name="{name}"', *extra], body


def file(name: str, filename: str, body: bytes, ctype: str = "application/octet-stream") -> tuple[list[str], bytes]:
    return [f'Content-Disposition: form-data; name="{name}"; filename="{filename}"', f"Content-Type: {ctype}"], body


def parse(data: bytes, cuts: list[int] | None = None, boundary: bytes = B) -> list[tuple[PartHeaders, bytes]]:
    """The parts of ``data`` fed in pieces cut at ``cuts``; the form must close."""
    parser = Parser(boundary)
    parts: list[tuple[PartHeaders, bytearray]] = []
    ended = False
    edges = [0, *sorted(cuts or []), len(data)]
    for start, stop in itertools.pairwise(edges):
        for event in parser.feed(data[start:stop]):
            assert not ended
            if isinstance(event, PartStart):
                parts.append((event.headers, bytearray()))
            elif isinstance(event, PartData):
                parts[-1][1].extend(event.data)
            elif isinstance(event, FormEnd):
                ended = True
            else:
                assert isinstance(event, PartEnd)
    parser.end()
    assert ended
    return [(headers, bytes(body)) for headers, body in parts]


# -- the parser ----------------------------------------------------------------------------


def test_a_form_of_a_field_and_a_file():
    data = form(field("msg", b"hi"), file("f", "a.txt", b"line\r\n--not the boundary\r\n", "text/plain"))
    (h1, b1), (h2, b2) = parse(data)
    assert h1.name == "msg" and not h1.has_filename and b1 == b"hi"
    assert h2.name == "f" and h2.has_filename and h2.filename == "a.txt" and h2.content_type == b"text/plain"
    assert b2 == b"line\r\n--not the boundary\r\n"


def test_preamble_epilogue_padding_and_a_part_without_headers():
    data = b"preamble\r\n--" + B + b" \t\r\n\r\nbare\r\n--" + B + b"--  junk\r\nmore epilogue"
    ((headers, body),) = parse(data)
    assert headers.fields == () and body == b"bare"


def test_every_split_of_a_form_gives_the_same_parts():
    data = form(field("a", b"\r\n--" + B[:-1]), file("b", "x.bin", bytes(range(256)) * 3), field("c", b""))
    whole = parse(data)
    for cut in range(len(data) + 1):
        assert parse(data, [cut]) == whole, cut
    for cut in range(0, len(data), 7):
        assert parse(data, [cut, cut + 1, cut + 3]) == whole, cut


_BODY = st.lists(
    st.sampled_from([b"x", b"\r", b"\n", b"-", b"--", b"\r\n", b"\r\n--", b"\r\n--" + B[:5], B[:8], b"\x00", b"\xff"]),
    max_size=30,
).map(b"".join)


@settings(max_examples=300, deadline=None)
@given(
    bodies=st.lists(_BODY, min_size=1, max_size=4),
    cuts=st.lists(st.integers(min_value=0, max_value=2000), max_size=8),
)
def test_split_anywhere_hypothesis(bodies, cuts):
    data = form(*(field(f"f{i}", body) for i, body in enumerate(bodies)))
    got = parse(data, [c % (len(data) + 1) for c in cuts])
    assert [body for _, body in got] == bodies
    assert [headers.name for headers, _ in got] == [f"f{i}" for i in range(len(bodies))]


def test_part_data_are_views_of_the_reads_not_copies():
    parser = Parser(B)
    parser.feed(b"--" + B + b"\r\n\r\n")
    read = b"y" * 100_000
    (event,) = parser.feed(read)
    assert isinstance(event, PartData) and event.data.obj is read and len(event.data) == len(read)


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"--" + B + b"\r\n" + b"X-Long: " + b"a" * MAX_HEADER + b"\r\n\r\nbody", "over 16 KiB"),
        (b"--" + B + b"\r\nno colon here\r\n\r\nbody\r\n--" + B + b"--", "Name: value"),
        (b"--" + B + b"\r\n  folded first\r\n\r\n", "continuation"),
        (b"--" + B + b"garbage\r\n\r\nbody", "line end"),
        (b"--" + B + b" " * 2000 + b"\r\n", "too long"),
    ],
)
def test_malformed_forms_are_refused_with_a_reason(data, why):
    parser = Parser(B)
    with pytest.raises(MultipartError, match=why):
        parser.feed(data)


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"", "no part"),
        (b"no delimiter at all", "no part"),
        (b"--" + B + b"\r\ncontent-disposition: form-data\r\n\r\npartial", "inside a part"),
        (b"--" + B + b"\r\nContent-Type: text/plain\r\n", "before the form was closed"),
        (b"--" + B + b"\r\n\r\nx\r\n--" + B, "before the form was closed"),
    ],
)
def test_a_body_that_ends_early_is_refused_at_its_end(data, why):
    parser = Parser(B)
    parser.feed(data)
    with pytest.raises(MultipartError, match=why):
        parser.end()


def test_boundaries_and_parameters():
    assert boundary_of(b"multipart/form-data; boundary=abc") == b"abc"
    assert boundary_of(b'Multipart/Form-Data; charset=utf-8; BOUNDARY="a b;c"') == b"a b;c"
    assert boundary_of(b"multipart/form-data") is None
    assert boundary_of(b"multipart/form-data; boundary=") is None
    assert boundary_of(b"multipart/form-data; boundary=" + b"x" * 201) is None
    assert boundary_of(b"multipart/form-data; boundary=a\x01b") is None
    kind, params = split_parameters('form-data; name="a;b"; filename="q\\"uote.txt"; name="second"')
    assert kind == "form-data" and params == {"name": "a;b", "filename": 'q"uote.txt'}


def test_filenames_utf8_extended_and_empty():
    raw = 'Content-Disposition: form-data; name="f"; filename="résumé.pdf"'.encode()
    headers = PartHeaders((("content-disposition", raw.split(b": ", 1)[1]),))
    assert headers.filename == "résumé.pdf"
    star = PartHeaders((("content-disposition", b"form-data; name=f; filename*=UTF-8''%E2%9C%93.txt"),))
    assert star.has_filename and star.filename == "✓.txt"
    empty = PartHeaders((("content-disposition", b'form-data; name="f"; filename=""'),))
    assert empty.has_filename and empty.filename == ""


# -- the part a form carries, through the in-memory daemon ---------------------------------


def _send_form(d: MemoryDaemon, path: str, data: bytes, headers: dict[str, str] | None = None):
    return d.connect().request("POST", path, data, {"Content-Type": FORM, **(headers or {})})


def _chunked_form(d: MemoryDaemon, path: str, headers: dict[str, str] | None = None):
    return d.sender(path, {"Content-Type": FORM, **(headers or {})})


def test_curl_f_file_is_unwrapped_with_its_type_and_filename_and_no_length():
    d = MemoryDaemon()
    receiver = d.receiver("/a")
    data = form(file("file", "report.html", b"<script>x</script>", "text/html"))
    sender = _send_form(d, "/a", data, {"X-Piping": "meta"})
    got = receiver.response()
    assert got.status == 200 and got.complete and got.body == b"<script>x</script>"
    assert got.headers["content-type"] == "text/plain"  # made safe, as for any sender
    assert got.headers["content-disposition"] == 'attachment; filename="report.html"'
    assert got.headers["x-piping"] == "meta"
    assert "content-length" not in got.headers
    assert sender.response().body.endswith(b"[INFO] Upload complete.\n[INFO] Transfer complete.\n")
    status = d.hub.snapshot("a")
    assert status["state"] == "complete" and status["bytesTransferred"] == 18 and status["totalBytes"] is None


def test_a_field_before_the_file_is_drained_and_the_file_wins():
    d = MemoryDaemon()
    receiver = d.receiver("/b")
    _send_form(d, "/b", form(field("note", b"skip me"), field("input_text", b"and me"), file("f", "x.bin", b"DATA")))
    got = receiver.response()
    assert got.body == b"DATA" and got.headers["content-type"] == "application/octet-stream"
    assert got.headers["content-disposition"] == 'attachment; filename="x.bin"'


def test_input_text_wins_over_other_fields_as_utf8_text_without_disposition():
    d = MemoryDaemon()
    receiver = d.receiver("/c")
    _send_form(d, "/c", form(field("other", b"first"), field("input_text", "héllo".encode())))
    got = receiver.response()
    assert got.body == "héllo".encode() and got.headers["content-type"] == "text/plain; charset=utf-8"
    assert "content-disposition" not in got.headers


def test_a_lone_field_is_delivered_with_its_own_headers_like_piping_server():
    d = MemoryDaemon()
    receiver = d.receiver("/d")
    _send_form(d, "/d", form(field("msg", b"hi")))
    got = receiver.response()
    assert got.body == b"hi" and "content-type" not in got.headers
    assert got.headers["content-disposition"] == 'form-data; name="msg"'


def test_piping_server_checks_lone_8_mib_part_streams_byte_equal_past_1_mib():
    d = MemoryDaemon()
    receiver = d.receiver("/e")
    sender = _chunked_form(d, "/e")
    head = (
        b"--" + B + b'\r\nContent-Disposition: form-data; name="input_data"\r\n'
        b"Content-Type: application/octet-stream\r\n\r\n"
    )
    payload = bytes(range(256)) * (8 * 4096)  # 8 MiB
    sender.chunk(head)
    step = 256 * 1024
    for i in range(0, len(payload), step):
        sender.chunk(payload[i : i + step])
        if i + step == 2 * MAX_HELD:
            # Past 1 MiB the part is picked: its headers are out and it streams on.
            early = receiver.response()
            assert early.status == 200 and len(early.body) >= MAX_HELD
    sender.chunk(b"\r\n--" + B + b"--\r\n").end_chunks()
    got = receiver.response()
    assert got.complete and got.body == payload
    assert got.headers["content-type"] == "application/octet-stream"
    assert got.headers["content-disposition"] == 'form-data; name="input_data"'


def test_a_large_first_field_is_the_pick_and_a_later_file_is_ignored():
    d = MemoryDaemon()
    receiver = d.receiver("/f")
    big = b"z" * (MAX_HELD + 10)
    _send_form(d, "/f", form(field("blob", big, "Content-Type: application/x-thing"), file("f", "x", b"FILE")))
    got = receiver.response()
    assert got.body == big and got.headers["content-type"] == "application/x-thing"


def test_the_file_streams_before_the_form_ends_and_the_rest_is_not_read():
    d = MemoryDaemon()
    receiver = d.receiver("/g")
    sender = _chunked_form(d, "/g")
    sender.chunk(b"--" + B + b'\r\nContent-Disposition: form-data; name="f"; filename="a.bin"\r\n\r\n')
    assert receiver.response().status == 200  # the headers went out with the pick
    sender.chunk(b"first ")
    assert receiver.response().body == b"first "
    sender.chunk(b"last\r\n--" + B + b"\r\nContent-Disposition: form-data; name=later\r\n\r\n" + b"q" * 1000)
    got = receiver.response()
    assert got.complete and got.body == b"first last"
    lines = sender.response().body
    assert lines.endswith(b"[INFO] Upload complete.\n[INFO] Transfer complete.\n")
    assert sender.closing  # the rest of the body is not waited for


def test_no_boundary_is_400():
    d = MemoryDaemon()
    got = d.connect().request("POST", "/h", b"x", {"Content-Type": "multipart/form-data"}).response()
    assert got.status == 400 and got.body == b"[ERROR] Invalid multipart body: no boundary.\n"
    upper = d.connect().request("PUT", "/h", b"x", {"Content-Type": "MULTIPART/Form-Data; charset=x"}).response()
    assert upper.status == 400


def test_a_form_without_a_part_fails_and_the_waiting_receiver_gets_500():
    d = MemoryDaemon()
    receiver = d.receiver("/i")
    sender = _send_form(d, "/i", b"--" + B + b"--\r\n")
    got = receiver.response()
    assert got.status == 500 and got.body == FAILED
    assert sender.response().body.endswith(FAILED)
    assert d.hub.snapshot("i")["reason"] == "Transfer failed"


def test_a_form_that_fails_before_its_receivers_come_refuses_them_too():
    d = MemoryDaemon()
    sender = _send_form(d, "/i2", b"--" + B + b"\r\nbroken header\r\n\r\n")
    assert sender.response().body.endswith(FAILED)
    assert d.hub.snapshot("i2")["reason"] == "Transfer failed"
    # The name is free again: a new receiver waits for a new sender.
    assert d.receiver("/i2").raw == b""


def test_input_text_over_1_mib_fails():
    d = MemoryDaemon()
    receiver = d.receiver("/j")
    sender = _chunked_form(d, "/j")
    sender.chunk(b"--" + B + b'\r\nContent-Disposition: form-data; name="input_text"\r\n\r\n')
    sender.chunk(b"t" * MAX_HELD)
    assert receiver.raw == b""  # held, not yet picked
    sender.chunk(b"t")
    assert receiver.response().status == 500 and receiver.response().body == FAILED
    assert sender.response().body.endswith(FAILED)


def test_a_body_that_ends_inside_the_file_aborts_the_started_receiver():
    d = MemoryDaemon()
    receiver = d.receiver("/k")
    sender = _chunked_form(d, "/k")
    sender.chunk(b"--" + B + b'\r\nContent-Disposition: form-data; name="f"; filename="a"\r\n\r\npartial')
    sender.end_chunks()
    assert receiver.aborted and not receiver.response().complete and receiver.response().body == b"partial"
    assert sender.response().body.endswith(FAILED)
    assert d.hub.snapshot("k")["reason"] == "Transfer failed"


def test_the_first_part_is_due_30_s_after_the_transfer_starts():
    d = MemoryDaemon()
    sender = _chunked_form(d, "/l")
    sender.chunk(b"a long preamble...")
    d.clock.advance(FIRST_PART_DEADLINE * 2)  # waiting for receivers does not count
    receiver = d.receiver("/l")
    d.clock.advance(FIRST_PART_DEADLINE - 1)
    assert receiver.raw == b"" and not sender.response().body.endswith(FAILED)
    d.clock.advance(1)
    assert receiver.response().status == 500 and receiver.response().body == FAILED
    assert sender.response().body.endswith(FAILED)


def test_a_part_seen_in_time_stops_the_deadline():
    d = MemoryDaemon()
    receiver = d.receiver("/m")
    sender = _chunked_form(d, "/m")
    sender.chunk(b"--" + B + b'\r\nContent-Disposition: form-data; name="input_text"\r\n\r\nslow')
    d.clock.advance(FIRST_PART_DEADLINE + 1)
    assert receiver.raw == b""
    sender.chunk(b"\r\n--" + B + b"--").end_chunks()
    assert receiver.response().body == b"slow"


def test_a_sender_that_leaves_before_the_pick_is_a_500_for_waiting_receivers():
    d = MemoryDaemon()
    receiver = d.receiver("/n")
    sender = _chunked_form(d, "/n")
    sender.chunk(b"--" + B + b'\r\nContent-Disposition: form-data; name="input_text"\r\n\r\nhalf')
    sender.drop()
    assert receiver.response().status == 500 and receiver.response().body == FAILED
    assert d.hub.snapshot("n")["reason"] == "Sender disconnected"


def test_two_receivers_and_one_leaves_before_the_pick():
    d = MemoryDaemon()
    first, second = d.receiver("/o?n=2"), d.receiver("/o?n=2")
    sender = _chunked_form(d, "/o?n=2")
    sender.chunk(b"--" + B + b'\r\nContent-Disposition: form-data; name="input_text"\r\n\r\nfor one')
    first.drop()
    sender.chunk(b"\r\n--" + B + b"--").end_chunks()
    assert second.response().body == b"for one"
    assert first.raw == b""
    assert b"[INFO] A receiver disconnected.\n" in sender.response().body


def test_a_plain_sender_keeps_a_form_data_disposition_verbatim():
    d = MemoryDaemon()
    receiver = d.receiver("/p")
    d.connect().request("PUT", "/p", b"x", {"Content-Disposition": 'form-data; name="input_data"'})
    assert receiver.response().headers["content-disposition"] == 'form-data; name="input_data"'
    receiver = d.receiver("/p2")
    d.connect().request("PUT", "/p2", b"x", {"Content-Disposition": 'form-data; name="f"; filename="a.txt"'})
    assert receiver.response().headers["content-disposition"] == 'attachment; filename="a.txt"'


def test_receiver_flags_apply_to_the_part():
    d = MemoryDaemon()
    receiver = d.receiver("/q?filename=mine.txt")
    _send_form(d, "/q", form(file("f", "theirs.txt", b"x")))
    assert receiver.response().headers["content-disposition"] == 'attachment; filename="mine.txt"'
