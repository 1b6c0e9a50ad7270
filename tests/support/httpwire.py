"""HTTP/1.1 on the wire, by hand, for the tests and the benchmarks.

The tests must see what the daemon really sends (http.client would hide or refuse much of
it), and the benchmarks need a parser that costs little. This is the one place that knows
how a message is framed:

- ``request()`` writes a request byte for byte; ``chunk()`` and ``LAST_CHUNK`` frame a body;
- ``parse_response_head()`` / ``parse_request_head()`` read a head, strictly: a status line
  ``HTTP/x.y NNN reason``, then ``name: value`` lines with no control character;
- ``BodyDecoder`` undoes chunked framing (or counts a ``Content-Length``, or reads up to the
  close) on bytes pushed into it, and says whether the body ended *as its framing says*
  (``done`` with ``delimited``): a receiver must never take a cut transfer for a whole one;
- ``ResponseParser`` is a head then a body, 1xx answers skipped; ``parse_response()`` parses
  a byte string captured whole;
- ``Connection`` is a blocking socket client built on them (reads can stop mid-body and
  resume); ``Broken`` says the connection ended before the message did.

Standard library only: bench/ imports it from the checkout.
"""

from __future__ import annotations

import re
import socket
import struct
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field

MAX_HEAD = 1 << 20  # a response head longer than this is an error, not a slow answer
MAX_LINE = 65536  # a chunk-size or trailer line
LAST_CHUNK = b"0\r\n\r\n"

STATUS_LINE = re.compile(rb"HTTP/(\d(?:\.\d)?) (\d{3})(?: ([\t\x20-\x7e\x80-\xff]*))?")
REQUEST_LINE = re.compile(rb"([!#$%&'*+.^_`|~0-9A-Za-z-]+) (\S+) HTTP/(\d\.\d)")
# A field line: a token, a colon, a value without control characters (tab aside), OWS around it.
HEADER_LINE = re.compile(rb"([!#$%&'*+.^_`|~0-9A-Za-z-]+):[ \t]*([\t\x20-\x7e\x80-\xff]*?)[ \t]*")
HEX = re.compile(rb"[0-9A-Fa-f]{1,16}")


class BadMessage(ValueError):
    """What arrived is not a well-framed HTTP/1.1 message."""


class Broken(ConnectionError):
    """The connection ended (EOF, reset, timeout) before the message did."""


# -- writing --------------------------------------------------------------------------------------


def _bytes(text: str | bytes) -> bytes:
    return text if isinstance(text, bytes) else text.encode("latin-1")


def request(
    method: str | bytes,
    target: str | bytes,
    headers: Mapping[str, str] | Iterable[tuple[str | bytes, str | bytes]] = (),
    body: bytes = b"",
    host: str | bytes | None = "x",
    version: bytes = b"HTTP/1.1",
) -> bytes:
    """One request, byte for byte as given (latin-1 for str); ``host=None`` sends no Host."""
    pairs = headers.items() if isinstance(headers, Mapping) else headers
    lines = [_bytes(method) + b" " + _bytes(target) + b" " + version]
    if host is not None:
        lines.append(b"Host: " + _bytes(host))
    lines += [_bytes(k) + b": " + _bytes(v) for k, v in pairs]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def chunk(data: bytes | bytearray | memoryview) -> bytes:
    """``data`` as one chunk of a chunked body."""
    return b"%x\r\n%s\r\n" % (len(data), bytes(data))


# -- heads ------------------------------------------------------------------------------------------


class Headers:
    """Header fields in arrival order; look-ups ignore case. Iterates as ``(name, value)``."""

    def __init__(self, fields: Iterable[tuple[str, str]] = ()) -> None:
        self.fields = list(fields)

    def get(self, name: str, default: str | None = None) -> str | None:
        values = self.all(name)
        return values[0] if values else default

    def all(self, name: str) -> list[str]:
        name = name.lower()
        return [v for k, v in self.fields if k.lower() == name]

    def __getitem__(self, name: str) -> str:
        value = self.get(name)
        if value is None:
            raise KeyError(name)
        return value

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and bool(self.all(name))

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(self.fields)

    def __len__(self) -> int:
        return len(self.fields)

    def __repr__(self) -> str:
        return f"Headers({self.fields!r})"


@dataclass
class Response:
    """A response: its head and as much of its body as was read."""

    status: int
    headers: Headers = field(default_factory=Headers)
    body: bytes = b""
    complete: bool = False  # the body ended as its framing says (or at the close, for an unframed one)
    reason: str = ""
    version: str = "1.1"
    head: bytes = b""  # the raw head, without the blank line

    def header(self, name: str) -> str | None:
        return self.headers.get(name)

    def all(self, name: str) -> list[str]:
        return self.headers.all(name)

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")


@dataclass
class Request:
    method: str
    target: str
    version: str
    headers: Headers = field(default_factory=Headers)


def parse_status_line(line: bytes) -> tuple[str, int, str]:
    """``(version, status, reason)`` of ``HTTP/1.1 200 OK``; BadMessage otherwise."""
    match = STATUS_LINE.fullmatch(line)
    if not match:
        raise BadMessage(f"bad status line {line[:200]!r}")
    return match.group(1).decode(), int(match.group(2)), (match.group(3) or b"").decode("latin-1")


def status_code(prefix: bytes) -> int | None:
    """The status of a response that begins with ``prefix`` (say, peeked at with MSG_PEEK):
    None while too little has arrived to tell; BadMessage if it is not an HTTP/1.x answer."""
    template = b"HTTP/1.x nnn "
    for i, (got, want) in enumerate(zip(prefix, template, strict=False)):
        if not (
            got == want
            or (want == ord("x") and got in b"01")
            or (want == ord("n") and got in b"0123456789")
            or (i == 12 and got == ord("\r"))
        ):
            raise BadMessage(f"not an HTTP/1.x answer: {prefix[:80]!r}")
    return int(prefix[9:12]) if len(prefix) >= len(template) else None


def parse_fields(lines: Iterable[bytes]) -> Headers:
    """Header lines into Headers (values latin-1, OWS stripped); BadMessage for a bad line."""
    headers = Headers()
    for line in lines:
        match = HEADER_LINE.fullmatch(line)
        if not match:
            raise BadMessage(f"bad header line {line[:200]!r}")
        headers.fields.append((match.group(1).decode("ascii"), match.group(2).decode("latin-1")))
    return headers


def parse_response_head(head: bytes) -> Response:
    """A response head (status line and header lines, CRLF-separated, no blank line)."""
    first, *lines = head.split(b"\r\n")
    version, status, reason = parse_status_line(first)
    return Response(status, parse_fields(lines), reason=reason, version=version, head=head)


def parse_request_head(head: bytes) -> Request:
    first, *lines = head.split(b"\r\n")
    match = REQUEST_LINE.fullmatch(first)
    if not match:
        raise BadMessage(f"bad request line {first[:200]!r}")
    method, target, version = (g.decode("latin-1") for g in match.groups())
    return Request(method, target, version, parse_fields(lines))


def last_final_head(dump: bytes) -> Response | None:
    """The last non-1xx head of a ``curl -D`` dump (every head curl saw, LF or CRLF ended)."""
    blocks = [b for b in dump.replace(b"\r\n", b"\n").split(b"\n\n") if b.strip()]
    heads = [parse_response_head(b.strip(b"\n").replace(b"\n", b"\r\n")) for b in blocks]
    finals = [h for h in heads if not 100 <= h.status < 200]
    return finals[-1] if finals else None


# -- bodies -----------------------------------------------------------------------------------------

_SIZE, _DATA, _CRLF, _TRAILER, _LENGTH, _CLOSE, _DONE = range(7)


class BodyDecoder:
    """Push-based decoder of one message body.

    ``feed()`` takes bytes as they arrive and returns the payload in them (memoryviews of the
    bytes fed, so nothing is copied). ``done`` is True once the body ended as its framing says:
    the last chunk and its trailers, all of a ``Content-Length``, or (``eof()``) the close for
    a body framed by nothing; ``delimited`` says whether ``done`` proves the body whole (False
    for an unframed body, which a cut cannot be told from). Bytes after the end go to ``rest``.
    """

    def __init__(self, *, chunked: bool = False, length: int | None = None) -> None:
        self.delimited = chunked or length is not None
        self.left = 0 if length is None else length  # of the Content-Length, or of the chunk
        self._state = _SIZE if chunked else _CLOSE if length is None else _LENGTH if length else _DONE
        self._line = b""  # the start of a size or trailer line
        self.rest = b""

    @classmethod
    def for_response(cls, response: Response, method: str = "GET") -> BodyDecoder:
        """How the body of ``response`` (to a ``method`` request) is framed (RFC 9112, 6.3)."""
        if method.upper() == "HEAD" or response.status in (204, 304) or 100 <= response.status < 200:
            return cls(length=0)
        return cls._framed(response.headers, None)

    @classmethod
    def for_request(cls, headers: Headers) -> BodyDecoder:
        return cls._framed(headers, 0)

    @classmethod
    def _framed(cls, headers: Headers, unframed: int | None) -> BodyDecoder:
        codings = ",".join(headers.all("Transfer-Encoding")).split(",")
        if codings[-1].strip().lower() == "chunked":
            return cls(chunked=True)
        lengths = headers.all("Content-Length")
        if lengths:
            if len(set(lengths)) != 1 or not lengths[0].isdigit():
                raise BadMessage(f"bad Content-Length {lengths!r}")
            return cls(length=int(lengths[0]))
        return cls(length=unframed)

    @property
    def done(self) -> bool:
        return self._state == _DONE

    def eof(self) -> None:
        """The connection closed: the end of a body framed by nothing."""
        if self._state == _CLOSE:
            self._state = _DONE

    def feed(self, data: bytes | bytearray, end: int | None = None) -> list[memoryview]:
        """The payload in ``data[:end]`` (``end``: for a reused receive buffer)."""
        end = len(data) if end is None else end
        view = memoryview(data)
        pieces: list[memoryview] = []
        pos = 0
        while pos < end:
            state = self._state
            if state in (_DATA, _LENGTH):
                take = min(self.left, end - pos)
                pieces.append(view[pos : pos + take])
                pos += take
                self.left -= take
                if not self.left:
                    self._state = _CRLF if state == _DATA else _DONE
            elif state == _CLOSE:
                pieces.append(view[pos:end])
                pos = end
            elif state == _DONE:
                self.rest += bytes(view[pos:end])
                pos = end
            else:
                line, pos = self._take_line(data, pos, end)
                if line is not None:
                    self._line_done(line)
        return pieces

    def _take_line(self, data: bytes | bytearray, pos: int, end: int) -> tuple[bytes | None, int]:
        """A whole CRLF-ended line from ``data`` (after what an earlier feed left), or None."""
        if self._line:
            window = self._line + bytes(data[pos : min(end, pos + MAX_LINE)])
            at = window.find(b"\r\n")
            if at < 0:
                self._line = window
                if len(window) > MAX_LINE:
                    raise BadMessage("chunk-size or trailer line too long")
                return None, min(end, pos + MAX_LINE)
            used = at + 2 - len(self._line)
            self._line = b""
            return window[:at], pos + used
        at = data.find(b"\r\n", pos, end)
        if at < 0:
            self._line = bytes(data[pos:end])
            if len(self._line) > MAX_LINE:
                raise BadMessage("chunk-size or trailer line too long")
            return None, end
        return bytes(data[pos:at]), at + 2

    def _line_done(self, line: bytes) -> None:
        if self._state == _CRLF:
            if line:
                raise BadMessage(f"chunk data not followed by CRLF: {line[:50]!r}")
            self._state = _SIZE
        elif self._state == _SIZE:
            size = line.split(b";", 1)[0].strip(b" \t")
            if not HEX.fullmatch(size):
                raise BadMessage(f"bad chunk size line {line[:50]!r}")
            self.left = int(size, 16)
            self._state = _DATA if self.left else _TRAILER
        elif not line:  # _TRAILER: the blank line after the trailers
            self._state = _DONE


class ResponseParser:
    """Push bytes in, get the body of the next final response out (1xx answers skipped).

    ``response`` is None until its head has arrived; ``done``, ``delimited`` and ``rest`` are
    its body's (see BodyDecoder). ``method`` is the request's: a HEAD answer has no body.
    """

    def __init__(self, method: str = "GET") -> None:
        self.method = method
        self.response: Response | None = None
        self.interim: list[Response] = []
        self.body: BodyDecoder | None = None
        self._head = b""

    @property
    def status(self) -> int | None:
        return self.response.status if self.response is not None else None

    @property
    def done(self) -> bool:
        return self.body is not None and self.body.done

    @property
    def delimited(self) -> bool:
        return self.body is not None and self.body.delimited

    @property
    def rest(self) -> bytes:
        return self.body.rest if self.body is not None else self._head

    def feed(self, data: bytes | bytearray) -> list[memoryview]:
        if self.body is not None:
            return self.body.feed(data)
        self._head += data
        while self.body is None:
            at = self._head.find(b"\r\n\r\n")
            if at < 0:
                if len(self._head) > MAX_HEAD:
                    raise BadMessage("response head over 1 MiB")
                return []
            head, self._head = self._head[:at], self._head[at + 4 :]
            response = parse_response_head(head)
            if 100 <= response.status < 200 and response.status != 101:
                self.interim.append(response)
                continue
            self.response = response
            self.body = BodyDecoder.for_response(response, self.method)
        rest, self._head = self._head, b""
        return self.body.feed(rest)

    def eof(self) -> None:
        if self.body is not None:
            self.body.eof()


def parse_response(raw: bytes, method: str = "GET", closed: bool = False) -> Response:
    """The first final response in ``raw`` (1xx skipped), its body decoded as far as it goes;
    ``closed``: the connection closed after ``raw`` (the end of an unframed body)."""
    parser = ResponseParser(method)
    pieces = parser.feed(raw)
    if closed:
        parser.eof()
    if parser.response is None:
        raise BadMessage(f"no final response in {raw[:200]!r}")
    parser.response.body = b"".join(pieces)
    parser.response.complete = parser.done
    return parser.response


# -- a blocking client ------------------------------------------------------------------------------


class Connection:
    """One TCP connection speaking HTTP/1.1 by hand, with blocking reads.

    ``buffer`` holds what was received and not yet parsed. ``read_head()`` then ``read_body()``
    read a response (``read_body`` may stop mid-body and be called again to read on);
    ``read_response()`` does both. Every read raises Broken if the connection ends (EOF,
    reset, timeout) before what it waits for.
    """

    def __init__(
        self, host: str, port: int, timeout: float | None = 10, rcvbuf: int | None = None, source: str | None = None
    ) -> None:
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        try:
            if rcvbuf is not None:  # before connect(), so that the window is small from the start
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            if source is not None:  # another loopback address: another client to the daemon's caps
                sock.bind((source, 0))
            sock.settimeout(timeout)
            sock.connect((host, port))
        except BaseException:
            sock.close()
            raise
        self._adopt(sock)

    @classmethod
    def over(cls, sock: socket.socket) -> Connection:
        """A Connection on a socket that is already connected."""
        conn = cls.__new__(cls)
        conn._adopt(sock)
        return conn

    def _adopt(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = bytearray()
        self._parser: ResponseParser | None = None
        self._pieces: deque[bytes] = deque()

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.sock.close()

    def reset(self) -> None:
        """Close with an RST (SO_LINGER 0), like a crashed peer."""
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def more(self, most: int = 1 << 20) -> bytes:
        """Receive into ``buffer``; Broken at EOF, on a reset or a timeout."""
        try:
            data = self.sock.recv(most)
        except TimeoutError:
            raise Broken("timeout") from None
        except OSError as error:
            raise Broken(f"{type(error).__name__}: {error}") from None
        if not data:
            raise Broken(f"eof; unparsed: {bytes(self.buffer[:200])!r}")
        self.buffer += data
        return data

    def line(self) -> bytes:
        """The next CRLF-ended line of the raw stream."""
        while (at := self.buffer.find(b"\r\n")) < 0:
            if len(self.buffer) > MAX_LINE:
                raise BadMessage(f"line too long: {bytes(self.buffer[:200])!r}")
            self.more()
        line = bytes(self.buffer[:at])
        del self.buffer[: at + 2]
        return line

    # The names of the old RawConnection.
    _more = more
    _line = line

    def _feed(self) -> None:
        """Hand ``buffer`` to the parser; what follows the response's end goes back to it."""
        parser = self._parser
        assert parser is not None
        if not self.buffer:
            return
        data, self.buffer = bytes(self.buffer), bytearray()
        self._pieces.extend(bytes(p) for p in parser.feed(data))
        if parser.body is not None and parser.body.done:
            self.buffer += parser.body.rest
            parser.body.rest = b""

    def read_head(self, method: str = "GET", most: int = 65536) -> Response:
        """The status and headers of the next final (non-1xx) response. ``most=1`` reads the
        head byte by byte, leaving the body unread in the kernel."""
        self._parser = parser = ResponseParser(method)
        self._pieces.clear()
        self._feed()
        while parser.response is None:
            self.more(most)
            self._feed()
        return parser.response

    def read_body(self, on_piece: Callable[[bytes], bool]) -> bool:
        """Feed the body of the response whose head was read to ``on_piece``, which returns
        False to stop. True when the body ended as its framing says (for an unframed body,
        never: a close cannot be told from a cut); False when ``on_piece`` stopped first.
        Raises Broken when the connection ends before the body."""
        parser = self._parser
        assert parser is not None and parser.body is not None, "read_head() first"
        while True:
            while self._pieces:
                if not on_piece(self._pieces.popleft()):
                    return False
            if parser.done:
                return parser.delimited
            try:
                self.more()
            except Broken:
                parser.eof()
                if parser.done:
                    continue  # the close ended an unframed body
                raise
            self._feed()

    @property
    def ended(self) -> bool:
        """The body whose head was read has ended, as its framing says or (unframed) at the close."""
        return self._parser is not None and self._parser.done

    def read_response(self, method: str = "GET") -> Response:
        """The next final response, body and all (an unframed body: up to the close)."""
        response = self.read_head(method)
        body: list[bytes] = []
        response.complete = self.read_body(lambda piece: body.append(piece) or True) or self.ended
        response.body = b"".join(body)
        return response

    def request(self, data: bytes, method: str | None = None) -> Response:
        """Send ``data`` (a whole request) and read its response."""
        self.send(data)
        return self.read_response(method or data.split(b" ", 1)[0].decode("latin-1"))

    def is_closed(self, timeout: float = 5) -> bool:
        """True if the peer closes the connection (EOF or reset) within ``timeout``."""
        self.sock.settimeout(timeout)
        try:
            return self.sock.recv(1) == b""
        except ConnectionResetError:
            return True
        except TimeoutError:
            return False


def exchange(host: str, port: int, data: bytes, timeout: float = 10) -> Response:
    """One request on a fresh connection, read to the end of its answer."""
    with Connection(host, port, timeout) as conn:
        return conn.request(data)
