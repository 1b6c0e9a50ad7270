"""What receivers see of the sender's headers, made safe for this origin.

An uploaded HTML page or SVG must never run as a page of the pipe's origin,
and nothing a sender sends may inject a response header.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import quote, unquote

from twisted.web.http_headers import Headers

from hoodypipe.errors import HTTPError

MAX_CUSTOM_HEADER = 8 * 1024
PASSED_THROUGH = (b"X-Piping", b"X-Hoody-Pipe")

# WHATWG MIME Sniffing, "JavaScript MIME type": every essence a browser
# runs as a script (a <script src> or a worker on this origin).
JAVASCRIPT_ESSENCES = frozenset(
    {
        "application/ecmascript",
        "application/javascript",
        "application/x-ecmascript",
        "application/x-javascript",
        "text/ecmascript",
        "text/javascript",
        "text/javascript1.0",
        "text/javascript1.1",
        "text/javascript1.2",
        "text/javascript1.3",
        "text/javascript1.4",
        "text/javascript1.5",
        "text/jscript",
        "text/livescript",
        "text/x-ecmascript",
        "text/x-javascript",
    }
)
# Other types a browser would run as a document of this origin.
_SCRIPTABLE = re.compile(
    r"^(text/html|application/xhtml\+xml|image/svg\+xml|text/xml|application/xml|"
    r".*\+xml|text/xsl|application/xslt\+xml|"
    r"multipart/x-mixed-replace|text/vtt|application/pdf\+xml)$"
)
_TOKEN_TYPE = re.compile(r"^[a-z0-9!#$&^_.+-]+/[a-z0-9!#$&^_.+-]+$")
_SAFE_CHARSET = re.compile(r"^[a-z0-9_.:-]{1,40}$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# C1 controls: as characters of a UTF-8 value, or as raw bytes (latin-1).
_C1 = re.compile(r"[\x80-\x9f]")
# Characters that are invisible in a file name or reorder how it reads
# ("invoice\u202efdp.exe" shows as "invoiceexe.pdf"): C0, DEL, C1, and the
# bidirectional controls (marks, embeddings, overrides, isolates).
_NOT_IN_FILENAMES = re.compile(r"[\x00-\x1f\x7f-\x9f/\\\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")
_LENGTH = re.compile(rb"^\d{1,19}$")


def _first(headers: Headers, name: bytes) -> bytes | None:
    values = headers.getRawHeaders(name)
    return values[0] if values else None


def _strip_controls(value: bytes, limit: int = MAX_CUSTOM_HEADER) -> bytes:
    text = value.decode("latin-1")
    return _CONTROL.sub("", text)[:limit].encode("latin-1")


def _passed_value(value: bytes, limit: int = MAX_CUSTOM_HEADER) -> bytes:
    """A passed-through header without C0, DEL or C1 controls, cut to ``limit``
    bytes: a UTF-8 value keeps its other characters (whose bytes may be
    0x80-0x9F) and is cut between them; any other is read byte by byte, and
    its bytes 0x80-0x9F go."""
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError:
        return _C1.sub("", _CONTROL.sub("", value.decode("latin-1")))[:limit].encode("latin-1")
    return _C1.sub("", _CONTROL.sub("", text)).encode("utf-8")[:limit].decode("utf-8", "ignore").encode("utf-8")


def safe_content_type(raw: bytes | None) -> tuple[bytes | None, str]:
    """The type receivers get and the sender's declared media type (lowercase)."""
    if raw is None:
        return None, ""
    text = _CONTROL.sub("", raw.decode("latin-1"))
    media, *params = [p.strip() for p in text.split(";")]
    media = media.lower()
    if not _TOKEN_TYPE.match(media):
        return b"application/octet-stream", media
    charset = ""
    for param in params:
        key, _, value = param.partition("=")
        value = value.strip().strip('"').lower()
        if key.strip().lower() == "charset" and _SAFE_CHARSET.match(value):
            charset = value
    shown = "text/plain" if media in JAVASCRIPT_ESSENCES or _SCRIPTABLE.match(media) else media
    if charset:
        shown += f"; charset={charset}"
    return shown.encode("latin-1"), media


def _inline_allowed(declared: str) -> bool:
    if declared == "image/svg+xml":
        return False
    top = declared.split("/", 1)[0]
    return top in ("image", "audio", "video") or declared in ("text/plain", "application/pdf")


def sanitise_filename(name: str) -> str:
    name = _NOT_IN_FILENAMES.sub("", name)
    name = name.lstrip(".").strip()
    return name[:255]


def content_disposition(kind: str, filename: str | None) -> bytes:
    """``attachment``/``inline`` with an ASCII fallback and RFC 5987 ``filename*``."""
    if not filename:
        return kind.encode()
    ascii_name = filename.encode("ascii", "replace").decode().replace("?", "_")
    ascii_name = ascii_name.replace('"', "_").replace("%", "_")
    value = f'{kind}; filename="{ascii_name}"'
    if ascii_name != filename:
        value += f"; filename*=UTF-8''{quote(filename, safe='')}"
    return value.encode("ascii")


_DISPOSITION_FILENAME = re.compile(r'filename\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^;\s]+))', re.I)
_DISPOSITION_FILENAME_STAR = re.compile(r"filename\*\s*=\s*([^']*)'[^']*'([^;\s]+)", re.I)


def _sender_filename(disposition: str) -> str | None:
    star = _DISPOSITION_FILENAME_STAR.search(disposition)
    if star:
        return unquote(star.group(2), encoding=star.group(1) or "utf-8", errors="replace")
    plain = _DISPOSITION_FILENAME.search(disposition)
    if plain:
        return plain.group(1) if plain.group(1) is not None else plain.group(2)
    return None


class HeaderWait(Protocol):
    """Receivers' headers that are not known yet (a form's part: formupload.Pick)."""

    def when_chosen(self, begin: Callable[[SenderHeaders], None], refuse: Callable[[HTTPError], None]) -> None: ...


@dataclass(frozen=True)
class SenderHeaders:
    """What a sender declared, read once at end of headers."""

    content_type: bytes | None
    declared_type: str
    content_length: int | None
    disposition: str | None
    passed: tuple[tuple[bytes, bytes], ...]
    size_hint: int | None
    # A multipart/form-data sender's receivers wait for the part it carries.
    pick: HeaderWait | None = None

    @classmethod
    def read(cls, headers: Headers) -> SenderHeaders:
        shown, declared = safe_content_type(_first(headers, b"Content-Type"))
        length = _first(headers, b"Content-Length")
        content_length = int(length) if length is not None and _LENGTH.match(length) else None
        disposition = _first(headers, b"Content-Disposition")
        passed = tuple(
            (name, _passed_value(value)) for name in PASSED_THROUGH if (value := _first(headers, name)) is not None
        )
        hint = _first(headers, b"X-Pipe-Size")
        size_hint = None
        if hint is not None:
            if not _LENGTH.match(hint.strip()):
                raise HTTPError(400, "Invalid X-Pipe-Size: must be a number of bytes.")
            size_hint = int(hint.strip())
        if _first(headers, b"Content-Range") is not None:
            raise HTTPError(400, "Content-Range is not supported on a pipe.")
        return cls(
            content_type=shown,
            declared_type=declared,
            content_length=content_length,
            disposition=_strip_controls(disposition).decode("latin-1") if disposition else None,
            passed=passed,
            size_hint=size_hint,
        )

    @property
    def total_bytes(self) -> int | None:
        return self.content_length if self.content_length is not None else self.size_hint

    def when_chosen(self, begin: Callable[[SenderHeaders], None], refuse: Callable[[HTTPError], None]) -> None:
        """Give a receiver its headers: these, at once, or a form's once its part is picked."""
        if self.pick is None:
            begin(self)
        else:
            self.pick.when_chosen(begin, refuse)

    def for_receiver(self, download: bool | None, filename: str | None, last_segment: str) -> list[tuple[bytes, bytes]]:
        """The response headers of one receiver.

        ``download`` is True (force attachment), False (drop the disposition)
        or None (keep the sender's, made safe); ``filename`` implies download.
        """
        out: list[tuple[bytes, bytes]] = []
        if self.content_type is not None:
            out.append((b"Content-Type", self.content_type))
        if self.content_length is not None:
            out.append((b"Content-Length", str(self.content_length).encode()))
        sender_name = _sender_filename(self.disposition) if self.disposition else None
        if filename is not None:
            name = sanitise_filename(filename)
            out.append((b"Content-Disposition", content_disposition("attachment", name or None)))
        elif download:
            name = sanitise_filename(sender_name or last_segment)
            out.append((b"Content-Disposition", content_disposition("attachment", name or None)))
        elif download is None and self.disposition:
            kind = self.disposition.split(";", 1)[0].strip().lower()
            if kind == "form-data" and sender_name is None:
                # A form field's own disposition (KIT 3), stripped and cut at read.
                out.append((b"Content-Disposition", self.disposition.encode("latin-1")))
            else:
                if kind != "inline" or not _inline_allowed(self.declared_type):
                    kind = "attachment"
                shown = sanitise_filename(sender_name) if sender_name else None
                out.append((b"Content-Disposition", content_disposition(kind, shown or None)))
        out.extend(self.passed)
        # What a page on another origin may read of a download (KIT.md section 8).
        exposed = [b"Content-Disposition", TRANSFER_HEADER, *(name for name, _ in self.passed)]
        out.append((b"Access-Control-Expose-Headers", b", ".join(exposed)))
        out.extend(RECEIVER_FIXED)
        return out


# Every ordinary receiver learns its transfer's id (KIT.md section 4).
TRANSFER_HEADER = b"X-Hoody-Pipe-Transfer-Id"

RECEIVER_FIXED = (
    (b"Access-Control-Allow-Origin", b"*"),
    (b"X-Content-Type-Options", b"nosniff"),
    (b"X-Robots-Tag", b"none"),
)
