"""multipart/form-data, parsed as it streams (RFC 7578 on RFC 2046 section 5.1).

Pure: no I/O, no clock. ``Parser.feed`` takes each read of the body as it
comes and returns what it found in it: a part's headers, pieces of its body
(views of the reads, not copies), its end, the form's end. Nothing is stored
but what a delimiter split across two reads needs (a few bytes) and a part's
header block while it is incomplete (at most ``MAX_HEADER``). A malformed form
raises ``MultipartError``, whose text says what was wrong.

    --BOUNDARY\\r\\n                       delimiter (the body may open with it)
    Content-Disposition: form-data; name="f"; filename="a.txt"\\r\\n
    Content-Type: text/plain\\r\\n
    \\r\\n                                 end of the part's headers
    ...bytes...
    \\r\\n--BOUNDARY--                     close delimiter, then an epilogue (ignored)
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from typing import TypeAlias
from urllib.parse import unquote

MAX_HEADER = 16 * 1024
# RFC 2046 allows 70 characters; be lenient with clients, not unbounded.
MAX_BOUNDARY = 200
# Spaces and tabs allowed after a delimiter, before its CRLF.
MAX_PADDING = 1024

_BOUNDARY = re.compile(rb"^[\x20-\x7e]+$")
_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")


class MultipartError(ValueError):
    """The form is malformed; the text says how."""


# -- parameters of Content-Type and Content-Disposition ----------------------------------


def split_parameters(value: str) -> tuple[str, dict[str, str]]:
    """``type; key=value; key="quoted \\" value"`` -> ("type", {key: value}), keys lowercased.

    The first occurrence of a key wins; a parameter without ``=`` is kept with
    an empty value.
    """
    items: list[str] = []
    current: list[str] = []
    quoted = escaped = False
    for char in value:
        if escaped:
            current.append(char)
            escaped = False
        elif quoted and char == "\\":
            current.append(char)
            escaped = True
        elif char == '"':
            current.append(char)
            quoted = not quoted
        elif char == ";" and not quoted:
            items.append("".join(current))
            current = []
        else:
            current.append(char)
    items.append("".join(current))
    head, *rest = items
    params: dict[str, str] = {}
    for item in rest:
        key, _, raw = item.partition("=")
        key = key.strip().lower()
        if not key or key in params:
            continue
        raw = raw.strip()
        if len(raw) >= 2 and raw[0] == raw[-1] == '"':
            raw = re.sub(r"\\(.)", r"\1", raw[1:-1])
        params[key] = raw
    return head.strip().lower(), params


def boundary_of(content_type: bytes) -> bytes | None:
    """The ``boundary`` of a multipart Content-Type, or None if it has none that can be used."""
    _, params = split_parameters(content_type.decode("latin-1"))
    boundary = params.get("boundary", "").encode("latin-1")
    if not boundary or len(boundary) > MAX_BOUNDARY or not _BOUNDARY.match(boundary):
        return None
    return boundary


def _extended(value: str) -> str | None:
    """An RFC 5987 ``charset'lang'pct-encoded`` value, decoded; None if it is not one."""
    charset, sep, rest = value.partition("'")
    _, sep2, encoded = rest.partition("'")
    if not sep or not sep2:
        return None
    try:
        return unquote(encoded, encoding=charset or "utf-8", errors="replace")
    except LookupError:
        return unquote(encoded, encoding="utf-8", errors="replace")


@dataclass(frozen=True)
class PartHeaders:
    """One part's header fields, names lowercased, values as sent."""

    fields: tuple[tuple[str, bytes], ...] = ()

    def get(self, name: str) -> bytes | None:
        for key, value in self.fields:
            if key == name:
                return value
        return None

    @property
    def content_type(self) -> bytes | None:
        return self.get("content-type")

    @property
    def disposition(self) -> bytes | None:
        return self.get("content-disposition")

    def _params(self) -> dict[str, str]:
        raw = self.disposition
        if raw is None:
            return {}
        # Browsers send names and filenames as raw UTF-8 (HTML's form encoding).
        return split_parameters(raw.decode("utf-8", "replace"))[1]

    @property
    def name(self) -> str | None:
        """The form field's ``name``."""
        return self._params().get("name")

    @property
    def has_filename(self) -> bool:
        """A file part: ``filename`` or ``filename*`` is there, even empty."""
        params = self._params()
        return "filename" in params or "filename*" in params

    @property
    def filename(self) -> str | None:
        params = self._params()
        if "filename*" in params:
            decoded = _extended(params["filename*"])
            if decoded is not None:
                return decoded
        return params.get("filename")


def parse_header_block(block: bytes) -> PartHeaders:
    """A part's header lines (without the empty line that ends them)."""
    fields: list[tuple[str, bytes]] = []
    if not block:
        return PartHeaders()
    for line in block.split(b"\r\n"):
        if line[:1] in (b" ", b"\t"):
            if not fields:
                raise MultipartError("a part's headers begin with a continuation line")
            name, value = fields[-1]
            fields[-1] = (name, value + b" " + line.strip(b" \t"))
            continue
        key, sep, value = line.partition(b":")
        text = key.decode("latin-1")
        if not sep or not _TOKEN.match(text):
            raise MultipartError("a part's header line is not 'Name: value'")
        fields.append((text.lower(), value.strip(b" \t")))
    return PartHeaders(tuple(fields))


# -- events --------------------------------------------------------------------------------


@dataclass(frozen=True)
class PartStart:
    headers: PartHeaders


@dataclass(frozen=True)
class PartData:
    data: memoryview


@dataclass(frozen=True)
class PartEnd:
    pass


@dataclass(frozen=True)
class FormEnd:
    pass


Event: TypeAlias = PartStart | PartData | PartEnd | FormEnd


class _State(enum.Enum):
    PREAMBLE = "preamble"  # before the first delimiter
    DELIMITED = "delimited"  # just after a delimiter: "--" or padding and CRLF follow
    HEADERS = "headers"  # a part's header block
    BODY = "body"  # a part's body
    CLOSED = "closed"  # after the close delimiter: the epilogue


class Parser:
    """A streaming multipart parser (see the module's docstring)."""

    def __init__(self, boundary: bytes, max_header: int = MAX_HEADER) -> None:
        if not boundary or len(boundary) > MAX_BOUNDARY:
            raise ValueError("a boundary is 1 to 200 characters")
        self._delimiter = b"\r\n--" + boundary
        self._max_header = max_header
        self._state = _State.PREAMBLE
        # What the next read continues. The body may open with its first
        # delimiter, without the CRLF before it: start as if one came.
        self._buffer = b"\r\n"

    @property
    def closed(self) -> bool:
        """The close delimiter has been seen."""
        return self._state is _State.CLOSED

    def feed(self, data: bytes) -> list[Event]:
        """One read of the body: what it completes, in order."""
        if self._state is _State.CLOSED:
            return []
        buf = self._buffer + data if self._buffer else data
        self._buffer = b""
        events: list[Event] = []
        pos: int | None = 0
        while pos is not None:
            pos = self._step(buf, pos, events)
        return events

    def end(self) -> None:
        """The body ended: raise unless the form was closed."""
        if self._state is _State.CLOSED:
            return
        if self._state is _State.PREAMBLE:
            raise MultipartError("the body has no part")
        if self._state is _State.BODY:
            raise MultipartError("the body ended inside a part")
        raise MultipartError("the body ended before the form was closed")

    # Each step consumes from ``pos`` and returns where to go on, or None when
    # the rest of ``buf`` must wait for the next read (kept in _buffer).

    def _step(self, buf: bytes, pos: int, events: list[Event]) -> int | None:
        state = self._state
        if state is _State.BODY:
            return self._body(buf, pos, events)
        if state is _State.PREAMBLE:
            found = buf.find(self._delimiter, pos)
            if found < 0:
                self._buffer = buf[self._partial(buf, pos) :]
                return None
            self._state = _State.DELIMITED
            return found + len(self._delimiter)
        if state is _State.DELIMITED:
            return self._delimited(buf, pos, events)
        if state is _State.HEADERS:
            return self._headers(buf, pos, events)
        return None  # closed: the epilogue is ignored

    def _body(self, buf: bytes, pos: int, events: list[Event]) -> int | None:
        found = buf.find(self._delimiter, pos)
        end = found if found >= 0 else self._partial(buf, pos)
        if end > pos:
            events.append(PartData(memoryview(buf)[pos:end]))
        if found < 0:
            self._buffer = buf[end:]
            return None
        events.append(PartEnd())
        self._state = _State.DELIMITED
        return found + len(self._delimiter)

    def _delimited(self, buf: bytes, pos: int, events: list[Event]) -> int | None:
        if buf.startswith(b"--", pos):
            self._state = _State.CLOSED
            events.append(FormEnd())
            return None
        at = pos
        while at < len(buf) and buf[at] in b" \t":
            at += 1
        if at - pos > MAX_PADDING:
            raise MultipartError("a delimiter line is too long")
        if len(buf) - at < 2 or (at == pos and len(buf) - pos < 2):
            self._buffer = buf[pos:]
            return None
        if not buf.startswith(b"\r\n", at):
            raise MultipartError("a delimiter is followed by something other than a line end")
        self._state = _State.HEADERS
        return at + 2

    def _headers(self, buf: bytes, pos: int, events: list[Event]) -> int | None:
        if buf.startswith(b"\r\n", pos):
            block, after = b"", pos + 2  # a part without headers
        elif len(buf) - pos < 2:
            self._buffer = buf[pos:]
            return None
        else:
            found = buf.find(b"\r\n\r\n", pos)
            limit = self._max_header
            if found < 0:
                if len(buf) - pos > limit:
                    raise MultipartError(f"a part's headers are over {limit // 1024} KiB")
                self._buffer = buf[pos:]
                return None
            if found - pos > limit:
                raise MultipartError(f"a part's headers are over {limit // 1024} KiB")
            block, after = buf[pos:found], found + 4
        events.append(PartStart(parse_header_block(block)))
        self._state = _State.BODY
        return after

    def _partial(self, buf: bytes, pos: int) -> int:
        """Where a delimiter may begin that the next read would complete (else the end)."""
        delimiter = self._delimiter
        at = buf.find(b"\r", max(pos, len(buf) - len(delimiter) + 1))
        while at >= 0:
            if delimiter.startswith(buf[at:]):
                return at
            at = buf.find(b"\r", at + 1)
        return len(buf)
