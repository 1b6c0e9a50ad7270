"""Property-based tests of path, query and header handling through the real daemon.

Requests are written byte for byte on fresh sockets (http.client would refuse or
fix up much of what is generated here). For every answer:

- the status is one the contract allows for that request;
- an error body is exactly one line, ``[ERROR] ...`` ending with ``.\\n``;
- no response header carries a control character (NUL, a bare CR or LF) and
  every header name is one the daemon sends: nothing from the input leaked
  into the response head;
- the daemon stays healthy (``/api/v1/pipe/health`` answers 200 afterwards,
  its log holds no traceback, and its registry empties).

Standalone mutational fuzzing of the request parser is ``bench/fuzz.py``.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import time
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, unquote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import start_daemon
from tests.support.fuzzgrammar import (
    BAD_CHUNKED_BODIES,
    ESCAPES,
    HEADER_VALUES,
    HOST_PIECES,
    HOSTS,
    INVISIBLE,
    JAVASCRIPT_TYPES,
    OVERSIZED_HEADS,
    PREFIX,
    QUERY_KEYS,
    QUERY_VALUES,
    SEGMENTS,
    STRICT_CHUNKED_BODIES,
    STRICT_HEADS,
    answer_problems,
)
from tests.support.httpwire import Broken, Connection, Response

SCRIPTABLE = re.compile(
    r"^(text/html|application/xhtml\+xml|image/svg\+xml|text/xml|application/xml|.*\+xml|text/javascript|"
    r"application/javascript|application/x-javascript|application/ecmascript|text/ecmascript|text/xsl|"
    r"multipart/x-mixed-replace|text/vtt|" + "|".join(map(re.escape, JAVASCRIPT_TYPES)) + r")$"
)
TOO_LARGE = b"[ERROR] Request header fields too large.\n"
SETTINGS = dict(
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    database=None,
    print_blob=True,
)


# -- a daemon for the module, checked on the way out -------------------------------------------


@pytest.fixture(scope="module")
def fuzzd():
    daemon = start_daemon(
        "--wait-timeout",
        "3",
        "--idle-timeout",
        "3",
        "--max-connections-per-address",
        "2048",
        "--max-waiting-per-address",
        "2048",
        "--max-pending",
        "4096",
    )
    yield daemon
    try:
        assert exchange(daemon, b"GET /api/v1/pipe/health HTTP/1.1\r\nHost: x\r\n\r\n").status == 200
        # Parties left waiting time out within --wait-timeout.
        deadline = time.monotonic() + 15
        while True:
            gauges = metrics(daemon)
            if all(
                gauges.get(k) == 0
                for k in ("hoodypipe_pending_pipes", "hoodypipe_active_pipes", "hoodypipe_spectators")
            ):
                break
            assert time.monotonic() < deadline, f"registry not empty after the fuzz tests: {gauges}"
            time.sleep(0.2)
    finally:
        daemon.stop()
        text = daemon.log_text()
        shutil.rmtree(daemon.workdir, ignore_errors=True)
    at = text.find("Traceback")
    assert at < 0, f"the daemon logged a traceback:\n{text[max(0, at - 2000) : at + 3000]}"


# -- raw HTTP -----------------------------------------------------------------------------------


@dataclass
class Answer:
    status: int | None  # None: the connection closed (or timed out) without a status line
    head: bytes = b""
    headers: list[tuple[str, bytes]] = field(default_factory=list)
    body: bytes = b""
    complete: bool = False
    response: Response | None = field(default=None, repr=False)
    conn: Connection | None = field(default=None, repr=False)  # to read on (see _read_answer_rest)

    def header(self, name: str) -> bytes | None:
        for k, v in self.headers:
            if k == name.lower():
                return v
        return None


def _read_answer(sock: socket.socket, head_only: bool = False, stop_after: bytes | None = None) -> Answer:
    """The next answer on ``sock``, parsed by tests/support/httpwire.py (a bad status or
    header line, a control character in a header, a head over 1 MiB: BadMessage)."""
    conn = Connection.over(sock)
    try:
        head = conn.read_head("HEAD" if head_only else "GET")
    except Broken:
        return Answer(None, bytes(conn.buffer))
    headers = [(k.lower(), v.encode("latin-1")) for k, v in head.headers]
    answer = Answer(head.status, head.head, headers, response=head, conn=conn)
    body = bytearray()

    def piece(data: bytes) -> bool:
        body.extend(data)
        return stop_after is None or stop_after not in body

    try:
        answer.complete = conn.read_body(piece) or conn.ended
    except Broken:
        pass
    answer.body = head.body = bytes(body)
    head.complete = answer.complete
    return answer


def exchange(daemon, raw: bytes, timeout: float = 5, head_only: bool = False) -> Answer:
    """One request on a fresh connection, read to the end of its answer."""
    with socket.create_connection((daemon.host, daemon.port), timeout=timeout) as sock:
        try:
            sock.sendall(raw)
        except (BrokenPipeError, ConnectionResetError):
            pass  # answered and closed before the request was all sent
        return _read_answer(sock, head_only=head_only)


def metrics(daemon) -> dict[str, float]:
    answer = exchange(daemon, b"GET /api/v1/pipe/metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert answer.status == 200
    values = {}
    for line in answer.body.decode().splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            values[key] = float(value)
    return values


def check_answer(answer: Answer, allowed: set[int | None], what: object, has_body: bool = True) -> None:
    assert answer.status in allowed, (
        f"status {answer.status} not in {sorted(allowed, key=str)} for {what!r}: {answer.head!r}"
    )
    if answer.response is not None:
        problems = answer_problems(answer.response, has_body)
        assert not problems, f"{problems} for {what!r}:\n{answer.head!r}"


def healthy(daemon) -> None:
    answer = exchange(daemon, b"GET /api/v1/pipe/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert answer.status == 200 and json.loads(answer.body)["status"] == "ok"


_counter = iter(range(10**9))


def fresh(prefix: str = "fz") -> bytes:
    return f"{prefix}-{next(_counter)}-{time.monotonic_ns() % 10**9}".encode()


# -- strategies ---------------------------------------------------------------------------------

# Percent escapes, including the forbidden ones (%2F, %5C, %00-%1F, %7F) and odd hex case.
ESCAPE = st.sampled_from(ESCAPES)
PRINTABLE = st.binary(min_size=1, max_size=6).map(lambda b: bytes(0x21 + x % 94 for x in b))
RAW_BYTES = st.binary(min_size=1, max_size=3)  # anything at all: controls, spaces, non-ASCII
SEGMENT = st.one_of(PRINTABLE, PRINTABLE, ESCAPE, st.sampled_from(SEGMENTS))
NAMES = st.one_of(
    st.lists(SEGMENT, min_size=1, max_size=12).map(b"".join),
    st.lists(st.one_of(SEGMENT, RAW_BYTES), min_size=1, max_size=8).map(b"".join),
    st.integers(1000, 1100).map(lambda n: b"a" * n),  # around the 1024-character limit
)
QUERY_KEY = st.sampled_from(QUERY_KEYS)
QUERY_VALUE = st.one_of(st.sampled_from(QUERY_VALUES), st.text(max_size=8))
QUERIES = st.lists(st.tuples(QUERY_KEY, QUERY_VALUE, st.booleans()), max_size=5)


def render_query(items: list[tuple[str, str, bool]]) -> bytes:
    """key=value pairs, sometimes bare keys; non-printable bytes percent-encoded so the
    request line stays parseable (raw controls are covered by NAMES)."""
    from urllib.parse import quote

    parts = []
    for key, value, bare in items:
        k = quote(key, safe="%")
        parts.append(k if bare and not value else f"{k}={quote(value, safe='%+')}")
    return "&".join(parts).encode()


def header_value(extra: list[bytes] | None = None):
    interesting = [*HEADER_VALUES, *(extra or [])]
    return st.lists(st.one_of(st.sampled_from(interesting), PRINTABLE, st.binary(max_size=4)), max_size=8).map(
        lambda parts: _no_new_lines(b"".join(parts))
    )


def _no_new_lines(value: bytes) -> bytes:
    """Keep a value on its own header line: a CRLF not followed by a space or tab (obs-fold)
    would start another request header, which is not what is being tested; it becomes a
    CR, NUL, LF that twisted.web must refuse."""
    return re.sub(rb"\r\n(?![ \t])", b"\r\x00\n", value)


def twisted_value(value: bytes) -> bytes:
    """A header value as twisted.web hands it on: obs-fold joined, blanks stripped."""
    return re.sub(rb"\r\n[ \t]+", b" ", value).strip(b" \t")


def forbidden_in_header(value: bytes) -> bool:
    """Twisted refuses these (400) before anything else sees them."""
    return bool(re.search(rb"[\x00\r\n]", twisted_value(value)))


def pipe_flag_or_int_ok(items: list[tuple[str, str, bool]]) -> dict[str, str]:
    """The first value of each key, as the daemon parses the rendered query."""
    first: dict[str, str] = {}
    for k, v in parse_qsl(render_query(items).decode(), keep_blank_values=True, errors="replace"):
        first.setdefault(k, v)
    return first


def int_ok(value: str | None, low: int, high: int) -> bool:
    return value is None or (re.fullmatch(r"[0-9]{1,10}", value) is not None and low <= int(value) <= high)


def seconds_ok(value: str | None, low: float, high: float) -> bool:
    """``?wait=``: seconds, fractions allowed."""
    return value is None or (
        re.fullmatch(r"[0-9]{1,7}(\.[0-9]{1,6})?", value) is not None and low <= float(value) <= high
    )


def download_ok(value: str | None) -> bool:
    """``?download`` is on for any value but false/no/0 (KIT.md section 8): never refused."""
    return True


# -- the properties -----------------------------------------------------------------------------


@settings(max_examples=300, **SETTINGS)
@given(name=NAMES, query=QUERIES, method=st.sampled_from([b"GET", b"HEAD", b"OPTIONS"]), prefixed=st.booleans())
def test_any_name_and_query_on_the_status_page(fuzzd, name, query, method, prefixed):
    """``?status`` (and OPTIONS) on any target: a JSON snapshot, a page, or one [ERROR] line."""
    query = [q for q in query if q[0] not in ("progress", "status")]
    name = name.replace(b"?", b"%3F")  # a "?" would turn the rest into the query: a receiver
    rendered = render_query(query)
    target = (PREFIX if prefixed else b"/") + name + b"?status" + (b"&" + rendered if rendered else b"")
    raw = method + b" " + target + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    answer = exchange(fuzzd, raw, head_only=method == b"HEAD")
    # 200 (snapshot, page, preflight), 204 (favicon), 400 (bad name, flag or request line),
    # 404 (/health at the root), 405, 414 (a long name, or a request line over twisted.web's
    # limit); 431 for a head over its limit. Never a close without an answer.
    allowed = {200, 204, 400, 404, 405, 414}
    if len(target) > 16000:
        allowed.add(431)
    check_answer(answer, allowed, raw[:300], has_body=method != b"HEAD")
    if answer.status == 200 and method == b"GET" and answer.header("content-type") == b"application/json":
        snapshot = json.loads(answer.body)
        if "state" in snapshot:  # else the health page, for a name that folds to "health"
            assert snapshot["state"] == "idle", f"a name nobody used is {snapshot['state']}: {raw!r}"
    if answer.status == 414 and method != b"HEAD":
        assert answer.body in (b"[ERROR] Path too long (max 1024 characters).\n", b"[ERROR] Request line too long.\n")


@settings(max_examples=150, **SETTINGS)
@given(
    query=QUERIES,
    x_pipe_size=st.one_of(st.none(), header_value([b"123", b"-1", b"1" * 20, b" 42 "])),
    sized=st.booleans(),
)
def test_sender_query_and_size_are_validated(fuzzd, query, x_pipe_size, sized):
    """A sender with any ``n``, ``wait`` and ``X-Pipe-Size``: accepted (200, waiting) exactly when
    they are valid, else one [ERROR] line with 400."""
    query = [q for q in query if q[0] not in ("progress", "status")]
    name = fresh("fzs")
    target = PREFIX + name + (b"?" + render_query(query) if query else b"")
    head = b"PUT " + target + b" HTTP/1.1\r\nHost: x\r\n"
    head += b"Content-Length: 10\r\n" if sized else b"Transfer-Encoding: chunked\r\n"
    if x_pipe_size is not None:
        head += b"X-Pipe-Size: " + x_pipe_size + b"\r\n"
    raw = head + b"\r\n"
    first = pipe_flag_or_int_ok(query)
    bad_header = x_pipe_size is not None and forbidden_in_header(x_pipe_size)
    size_ok = x_pipe_size is None or re.fullmatch(rb"\d{1,19}", twisted_value(x_pipe_size).strip()) is not None
    valid = int_ok(first.get("n"), 1, 256) and seconds_ok(first.get("wait"), 1, 3600) and size_ok and not bad_header
    with socket.create_connection((fuzzd.host, fuzzd.port), timeout=5) as sock:
        sock.sendall(raw)
        answer = _read_answer(sock, stop_after=b"\n")
        check_answer(answer, {200, 400}, raw)
        if valid:
            assert answer.status == 200, f"a valid sender was refused: {raw!r} -> {answer.body!r}"
            assert answer.body.startswith(b"[INFO] Waiting for "), answer.body
        else:
            assert answer.status == 400, f"an invalid sender was accepted: {raw!r}"
        # Hang up before the body: a waiting sender that leaves frees its name.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")


@settings(max_examples=150, **SETTINGS)
@given(query=QUERIES)
def test_receiver_query_is_validated(fuzzd, query):
    """A receiver with any ``n``, ``wait``, ``download`` and ``filename``: waiting when valid,
    else one [ERROR] line with 400."""
    query = [q for q in query if q[0] not in ("progress", "status")]
    name = fresh("fzr")
    target = PREFIX + name + (b"?" + render_query(query) if query else b"")
    raw = b"GET " + target + b" HTTP/1.1\r\nHost: x\r\n\r\n"
    first = pipe_flag_or_int_ok(query)
    valid = (
        int_ok(first.get("n"), 1, 256) and seconds_ok(first.get("wait"), 1, 3600) and download_ok(first.get("download"))
    )
    with socket.create_connection((fuzzd.host, fuzzd.port), timeout=0.15 if valid else 5) as sock:
        sock.sendall(raw)
        answer = _read_answer(sock)
    if valid:
        # A valid receiver waits for its sender; it leaves here, which frees its slot.
        assert answer.status is None, f"a valid receiver was answered: {raw!r} -> {answer.status} {answer.body!r}"
    else:
        check_answer(answer, {400}, raw)


@settings(max_examples=200, **SETTINGS)
@given(
    content_type=st.one_of(st.none(), header_value()),
    disposition=st.one_of(st.none(), header_value()),
    x_piping=st.one_of(st.none(), header_value([b"x" * 9000])),
    x_hoody=st.one_of(st.none(), header_value()),
    receiver_query=st.lists(
        st.tuples(st.sampled_from(["download", "filename"]), QUERY_VALUE, st.booleans()), max_size=2
    ),
    body=st.binary(max_size=2000),
)
def test_sender_headers_reach_receivers_safely(
    fuzzd, content_type, disposition, x_piping, x_hoody, receiver_query, body
):
    """Whatever a sender puts in Content-Type, Content-Disposition, X-Piping and X-Hoody-Pipe, and
    whatever the receiver asks with ?download and ?filename: the body arrives intact, no header is
    injected, nothing scriptable is served, and ``inline`` is kept only for safe types."""
    name = fresh("fzh")
    sent = {
        b"Content-Type": content_type,
        b"Content-Disposition": disposition,
        b"X-Piping": x_piping,
        b"X-Hoody-Pipe": x_hoody,
    }
    head = b"PUT " + PREFIX + name + b" HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n" % len(body)
    for key, value in sent.items():
        if value is not None:
            head += key + b": " + value + b"\r\n"
    raw = head + b"\r\n" + body
    refused = any(v is not None and forbidden_in_header(v) for v in sent.values())
    # A head over twisted.web's 16384 bytes is 431 (a NUL, CR or LF in a line before may be 400).
    too_big = sum(len(line) for line in head.split(b"\r\n")) > 16384
    with socket.create_connection((fuzzd.host, fuzzd.port), timeout=10) as sender:
        try:
            sender.sendall(raw)
        except ConnectionError:
            pass
        answer = _read_answer(sender, stop_after=b"\n")
        if too_big:
            check_answer(answer, {400, 431} if refused else {431}, raw[:500])
            return
        check_answer(answer, {200, 400}, raw[:500])
        if refused:
            assert answer.status == 400, f"a header with NUL/CR/LF was accepted: {raw[:500]!r}"
            return
        assert answer.status == 200, f"sender refused: {raw[:500]!r} -> {answer.body!r}"
        query = render_query(receiver_query)
        first = pipe_flag_or_int_ok(receiver_query)
        get = (
            b"GET "
            + PREFIX
            + name
            + (b"?" + query if query else b"")
            + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        got = exchange(fuzzd, get, timeout=10)
        if not download_ok(first.get("download")):
            check_answer(got, {400}, get)
            # Finish the transfer with a plain receiver so the sender is not left waiting.
            got = exchange(fuzzd, b"GET " + PREFIX + name + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            first = {}
        check_answer(got, {200}, (raw[:500], get))
        assert got.complete and got.body == body, f"the body did not arrive intact: {got.body[:100]!r}"
        rest = _read_answer_rest(answer)
        assert rest.endswith(b"[INFO] Transfer complete.\n"), rest
    # What the receiver was shown.
    shown_type = got.header("content-type")
    if content_type is None:
        assert shown_type is None, f"a Content-Type was invented: {shown_type!r}"
    else:
        media = shown_type.split(b";")[0].strip().decode("latin-1")
        assert not SCRIPTABLE.match(media), f"scriptable type served: {shown_type!r} from {content_type!r}"
    shown_disposition = got.header("content-disposition")
    if shown_disposition is not None:
        assert re.fullmatch(
            rb"(attachment|inline)(; filename=\"[\x20\x21\x23-\x5b\x5d-\x7e]*\""
            rb"(; filename\*=UTF-8''[!-~]+)?)?",
            shown_disposition,
        ), shown_disposition
        if shown_disposition.startswith(b"inline"):
            declared = re.sub(r"[\x00-\x1f\x7f]", "", twisted_value(content_type or b"").decode("latin-1"))
            declared = declared.split(";")[0].strip().lower()
            top = declared.split("/", 1)[0]
            assert declared != "image/svg+xml" and (
                top in ("image", "audio", "video") or declared in ("text/plain", "application/pdf")
            ), f"inline kept for {content_type!r}: {shown_disposition!r}"
    download, filename = first.get("download"), first.get("filename")
    word = download.strip().lower() if download is not None else None
    if filename is not None or word in ("", "true", "yes", "1"):
        assert shown_disposition is not None and shown_disposition.startswith(b"attachment"), shown_disposition
    elif word in ("false", "no", "0"):
        assert shown_disposition is None, shown_disposition
    for key in (b"X-Piping", b"X-Hoody-Pipe"):
        value = sent[key]
        shown = got.header(key.decode())
        if value is None:
            assert shown is None
        else:
            expected = passed_through(twisted_value(value))
            assert shown.strip(b" \t") == expected.strip(b" \t"), (key, value, shown)
    if shown_disposition is not None and b"filename*=" in shown_disposition:
        star = unquote(shown_disposition.split(b"filename*=UTF-8''", 1)[1].decode(), errors="replace")
        assert not any(c in star for c in INVISIBLE), f"a C1 or bidi control in a file name: {shown_disposition!r}"


def passed_through(value: bytes) -> bytes:
    """X-Piping and X-Hoody-Pipe as receivers get them: no C0, DEL or C1 controls (characters
    of a UTF-8 value, else raw bytes), at most 8192 bytes, cut between characters."""
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError:
        return re.sub(rb"[\x00-\x1f\x7f-\x9f]", b"", value)[:8192]
    return re.sub("[\x00-\x1f\x7f-\x9f]", "", text).encode()[:8192].decode("utf-8", "ignore").encode()


def _read_answer_rest(answer: Answer) -> bytes:
    """The rest of the body of ``answer`` (read up to its ``stop_after``), to its end."""
    assert answer.conn is not None
    answer.conn.sock.settimeout(10)
    rest = bytearray()
    try:
        answer.conn.read_body(lambda piece: rest.extend(piece) or True)
    except Broken:
        pass
    return bytes(rest)


@settings(max_examples=100, **SETTINGS)
@given(
    count=st.integers(0, 700),
    size=st.integers(0, 20000),
    name=st.binary(min_size=1, max_size=20).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b"")),
    value=header_value(),
)
def test_header_counts_sizes_and_names(fuzzd, count, size, name, value):
    """Many headers, huge headers, odd header names on a ``?status`` request: an answer, a
    clean 400, or 431 over twisted.web's limits; never a close without an answer."""
    lines = [b"X-F-%d: v" % i for i in range(count)]
    lines.append(name + b": " + value + b"x" * size)
    raw = b"GET " + PREFIX + fresh("fzc") + b"?status HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
    raw += b"\r\n".join(lines) + b"\r\n\r\n"
    answer = exchange(fuzzd, raw)
    # twisted.web: at most 500 header lines (Host and Connection count) and 16384 bytes of
    # request line and headers, and a line of at most 16 KiB: 431 past them, or 400 for a
    # broken last line that came first.
    head_bytes = sum(len(line) for line in raw.split(b"\r\n"))
    too_much = count + 3 > 500 or head_bytes > 16384
    plain = re.fullmatch(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+", name) is not None and not forbidden_in_header(value)
    check_answer(answer, ({431} if plain else {400, 431}) if too_much else {200, 400}, raw[:300])
    if answer.status == 431:
        assert answer.body == TOO_LARGE


@settings(max_examples=120, **SETTINGS)
@given(
    method=st.sampled_from([b"GET", b"HEAD", b"PUT", b"POST", b"OPTIONS"]),
    strict=st.sampled_from(STRICT_HEADS),
    others=st.lists(st.sampled_from([b"Accept: */*", b"X-Pipe-Size: 5", b"Expect: 100-continue"]), max_size=2),
    order=st.randoms(use_true_random=False),
    query=QUERIES,
    body=st.sampled_from([b"", b"5\r\nhello\r\n0\r\n\r\n", b"hello"]),
)
def test_a_request_framed_two_ways_is_refused_before_anything_acts_on_it(
    fuzzd, method, strict, others, order, query, body
):
    """Strict HTTP (docs/security.md): whatever the method, target and other headers, a head
    with two framings or two Hosts gets one 400 [ERROR] line, then the close, and no pipe
    sees it (no 100 Continue either)."""
    name = fresh("fzx")
    lines = [b"Host: x", *strict, *others]
    order.shuffle(lines)
    target = PREFIX + name + (b"?" + render_query(query) if query else b"")
    raw = method + b" " + target + b" HTTP/1.1\r\n" + b"\r\n".join(lines) + b"\r\n\r\n" + body
    with socket.create_connection((fuzzd.host, fuzzd.port), timeout=5) as sock:
        sock.sendall(raw)
        answer = _read_answer(sock)
        check_answer(answer, {400}, raw, has_body=True)
        assert answer.body.startswith(b"[ERROR] Bad request") and answer.complete, answer.body
        assert (answer.header("connection") or b"").lower() == b"close"
        assert Connection.over(sock).is_closed(5)
    assert b"100 Continue" not in answer.head
    snapshot = json.loads(exchange(fuzzd, b"GET " + PREFIX + name + b"?status HTTP/1.1\r\nHost: x\r\n\r\n").body)
    assert snapshot["state"] == "idle", snapshot


@settings(max_examples=80, **SETTINGS)
@given(body=st.sampled_from(STRICT_CHUNKED_BODIES), cuts=st.lists(st.integers(1, 60), max_size=4))
def test_chunked_framing_outside_rfc_9112_fails_the_upload_however_it_arrives(fuzzd, body, cuts):
    """A chunk size with a blank after it, a bare LF in an extension, a request where trailers
    go: the upload fails with [ERROR] Malformed upload., the receiver never sees a clean end,
    and a request hidden in the trailers is never served, however the bytes are split."""
    name = fresh("fzk")
    with (
        socket.create_connection((fuzzd.host, fuzzd.port), timeout=10) as got,
        socket.create_connection((fuzzd.host, fuzzd.port), timeout=10) as sender,
    ):
        got.sendall(b"GET " + PREFIX + name + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        deadline = time.monotonic() + 10
        while (
            json.loads(exchange(fuzzd, b"GET " + PREFIX + name + b"?status HTTP/1.1\r\nHost: x\r\n\r\n").body)["state"]
            != "waiting"
        ):
            assert time.monotonic() < deadline, "the receiver did not start waiting"
            time.sleep(0.01)
        sender.sendall(b"PUT " + PREFIX + name + b" HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        pos = 0
        for cut in sorted(set(cuts)):
            if pos < cut < len(body):
                sender.sendall(body[pos:cut])
                pos = cut
                time.sleep(0.005)
        sender.sendall(body[pos:])
        lines = _read_answer(sender)
        assert lines.status == 200 and lines.body.endswith(b"[ERROR] Malformed upload.\n"), (body, lines.body)
        received = _read_answer(got)
        assert not received.complete, (body, received.body)
    victim = json.loads(exchange(fuzzd, b"GET " + PREFIX + b"victim?status HTTP/1.1\r\nHost: x\r\n\r\n").body)
    assert victim["state"] == "idle", victim


@pytest.mark.parametrize("lines, code", OVERSIZED_HEADS, ids=["long-line", "501-headers", "17-KiB-head"])
@pytest.mark.parametrize("method", [b"GET", b"PUT"])
def test_a_head_over_the_limits_is_answered(fuzzd, lines, code, method):
    raw = method + b" " + PREFIX + fresh("fzo") + b" HTTP/1.1\r\nHost: x\r\n" + b"\r\n".join(lines) + b"\r\n\r\n"
    answer = exchange(fuzzd, raw)
    check_answer(answer, {code}, raw[:300])
    assert answer.body == TOO_LARGE


def test_the_daemon_is_healthy_after_the_fuzzing(fuzzd):
    healthy(fuzzd)


HOST = st.one_of(
    header_value(),
    st.sampled_from(HOSTS),
    st.lists(st.sampled_from(HOST_PIECES), max_size=8).map(b"".join),
)


@settings(max_examples=200, **SETTINGS)
@given(
    host=HOST,
    target=st.sampled_from(
        [b"/api/v1/pipe/health", b"/help", b"/", b"/api/v1/pipe/fzq?status", b"/api/v1/pipe/metrics"]
    ),
)
def test_any_host_header(fuzzd, host, target):
    """Whatever the Host header says: the page, or one [ERROR] line with 400; never a 500, and the
    help page never echoes a hostile Host."""
    raw = b"GET " + target + b" HTTP/1.1\r\nHost: " + host + b"\r\nConnection: close\r\n\r\n"
    answer = exchange(fuzzd, raw)
    check_answer(answer, {200, 400}, raw)
    if forbidden_in_header(host):
        assert answer.status == 400
    if answer.status == 200 and target == b"/help":
        shown = twisted_value(host)
        if not re.fullmatch(rb"[A-Za-z0-9.\-]+(:[0-9]{1,5})?|\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?", shown):
            assert shown not in answer.body or len(shown) < 3, f"a hostile Host is echoed: {shown!r}"


@settings(max_examples=100, **SETTINGS)
@given(
    request=st.sampled_from(
        [
            b"GET /api/v1/pipe/fzb?status HTTP/1.1",  # 413: only uploads carry a body
            b"HEAD /api/v1/pipe/fzb?status HTTP/1.1",
            b"OPTIONS /api/v1/pipe/fzb HTTP/1.1",
            b"PUT /api/v1/pipe/bad%2Fname HTTP/1.1",  # 400: a bad name
            b"POST /api/v1/pipe/fzb?n=0 HTTP/1.1",  # 400: a bad n
            b"PUT /help HTTP/1.1",  # 400: a reserved path
        ]
    ),
    framing=st.one_of(st.sampled_from(BAD_CHUNKED_BODIES), st.binary(min_size=1, max_size=40)),
)
def test_a_refused_request_gets_one_answer_whatever_its_body(fuzzd, request, framing):
    """A request the daemon refuses before reading its (chunked) body gets exactly one answer,
    however broken the body's framing: nothing may follow an answer that said Connection: close."""
    raw = request + b"\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + framing
    with socket.create_connection((fuzzd.host, fuzzd.port), timeout=2) as sock:
        sock.sendall(raw)
        data = b""
        try:
            while more := sock.recv(65536):
                data += more
        except (TimeoutError, ConnectionError):
            pass
    heads = re.findall(rb"HTTP/1\.[01] \d{3} [^\r\n]*\r\n", data)
    assert len(heads) == 1, f"{len(heads)} answers to one request {raw!r}:\n{data!r}"


# Single inputs the properties above have found; each is one clear failure of its own.
FOUND = [
    pytest.param(b"GET /api/v1/pipe/caf%E9?status HTTP/1.1\r\nHost: x\r\n\r\n", {200, 400}, id="latin1-escape-in-name"),
    pytest.param(b"GET /caf\xe9?status HTTP/1.1\r\nHost: x\r\n\r\n", {400}, id="raw-non-ascii-in-target"),
    pytest.param(b"GET /api/v1/pipe/health HTTP/1.1\r\nHost: caf\xe9.example\r\n\r\n", {200, 400}, id="latin1-host"),
    pytest.param(
        b"GET /api/v1/pipe/health HTTP/1.1\r\nHost: " + b"a" * 64 + b".example\r\n\r\n",
        {200, 400},
        id="host-label-over-63",
    ),
    pytest.param(b"GET /api/v1/pipe/health HTTP/1.1\r\nHost: a..b\r\n\r\n", {200, 400}, id="host-empty-label"),
]


@pytest.mark.parametrize("raw, allowed", FOUND)
def test_found_inputs(fuzzd, raw, allowed):
    answer = exchange(fuzzd, raw.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n", 1))
    check_answer(answer, allowed, raw)
    if answer.status == 200 and b"?status" in raw:
        assert json.loads(answer.body)["state"] == "idle"
