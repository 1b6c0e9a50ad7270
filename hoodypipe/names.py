"""What a request target means: a reserved page, a pipe name, or an error.

Everything here works on the raw, still percent-encoded target, because
twisted.web (and Klein after it) decode ``%2F`` into ``/`` and would make two
different names look alike.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from urllib.parse import parse_qsl

from hoodypipe.errors import HTTPError

PREFIX = b"/api/v1/pipe"
MAX_NAME_LENGTH = 1024

# Pages at the root and under the prefix ("" is the start page).
ROOT_PAGES = frozenset({"", "help", "noscript", "favicon.ico", "robots.txt"})
PREFIX_PAGES = frozenset({"", "help", "noscript", "health", "metrics"})
# At the root these are neither pages nor pipe names: a 404 with a hint.
ROOT_MISTAKES = frozenset({"health", "metrics"})

_ESCAPE = re.compile(rb"%([0-9a-fA-F]{2})")
_FORBIDDEN_ESCAPES = re.compile(rb"%(2[fF]|5[cC]|[01][0-9a-fA-F]|7[fF])")
_CONTROL = re.compile(rb"[\x00-\x1f\x7f\\]")

TRUE_WORDS = frozenset({"", "true", "yes", "1"})
FALSE_WORDS = frozenset({"false", "no", "0"})


@dataclass(frozen=True)
class Query:
    """The query string, parsed so that a bare ``?progress`` is seen."""

    pairs: tuple[tuple[str, str], ...] = ()

    @classmethod
    def parse(cls, raw: bytes) -> Query:
        text = raw.decode("utf-8", "replace")
        return cls(tuple(parse_qsl(text, keep_blank_values=True, encoding="utf-8", errors="replace")))

    def get(self, key: str) -> str | None:
        for k, v in self.pairs:
            if k == key:
                return v
        return None

    def flag(self, key: str) -> bool:
        """A boolean flag: on when bare or true/yes/1, off when absent or false/no/0."""
        value = self.get(key)
        if value is None:
            return False
        word = value.strip().lower()
        if word in TRUE_WORDS:
            return True
        if word in FALSE_WORDS:
            return False
        raise HTTPError(400, f"Invalid value for '{key}': use true or false.")

    def lenient_flag(self, key: str) -> bool | None:
        """A flag that is on for any value but false/no/0; None when absent."""
        value = self.get(key)
        if value is None:
            return None
        return value.strip().lower() not in FALSE_WORDS

    def integer(self, key: str, low: int, high: int, default: int) -> int:
        value = self.get(key)
        if value is None:
            return default
        if not re.fullmatch(r"[0-9]{1,10}", value) or not low <= int(value) <= high:
            raise HTTPError(400, f"Invalid '{key}': must be a whole number from {low} to {high}.")
        return int(value)

    def seconds(self, key: str, low: float, high: float, default: float) -> float:
        """A duration in seconds, fractions allowed (``2.5``), from ``low`` to ``high``."""
        value = self.get(key)
        if value is None:
            return default
        if not _SECONDS.fullmatch(value) or not low <= float(value) <= high:
            raise HTTPError(400, f"Invalid '{key}': must be a number of seconds from {low:g} to {high:g}.")
        return float(value)


_SECONDS = re.compile(r"[0-9]{1,7}(\.[0-9]{1,6})?")

# ?wait= on a sender or receiver.
MIN_WAIT = 1.0
MAX_WAIT = 3600.0


@dataclass(frozen=True)
class PartyQuery:
    """What a sender's or receiver's query asks for, parsed once for both."""

    n: int
    wait: float
    # Receivers only: ``?download`` (None when absent) and ``?filename``.
    download: bool | None = None
    filename: str | None = None
    # ``?sha256``: hash the stream (sender, or a receiver there when it starts).
    sha256: bool = False
    # Senders only: ``?transfer=<id>``, the transfer's chosen id (checked by ``transfer_id``).
    transfer: str | None = None

    @classmethod
    def parse(cls, query: Query, max_receivers: int, default_wait: float) -> PartyQuery:
        return cls(
            n=query.integer("n", 1, max_receivers, 1),
            wait=query.seconds("wait", MIN_WAIT, MAX_WAIT, default_wait),
            download=query.lenient_flag("download"),
            filename=query.get("filename"),
            sha256=query.flag("sha256"),
            transfer=query.get("transfer"),
        )


TRANSFER_ID = re.compile(r"[A-Za-z0-9_-]{16,64}")


def transfer_id(text: str | None) -> str | None:
    """A sender's ``?transfer=``: None if absent, else the id; 400 if malformed."""
    if text is None:
        return None
    if not TRANSFER_ID.fullmatch(text):
        raise HTTPError(400, "Invalid transfer id.")
    return text


@dataclass(frozen=True)
class Target:
    """A request target: either ``page`` or ``name`` is set."""

    page: str | None = None
    name: str | None = None
    query: Query = field(default_factory=Query)

    @property
    def display_name(self) -> str:
        return self.name or ""


def fold(segment: bytes) -> str:
    """Reserved-page folding: case, then one trailing ``/``, then one trailing ``.``."""
    s = segment.decode("latin-1").lower()
    if s.endswith("/"):
        s = s[:-1]
    if s.endswith("."):
        s = s[:-1]
    elif s.endswith("%2e"):
        s = s[:-3]
    return s


def canonical_name(raw: bytes) -> str:
    """Check a raw pipe name and return its identity (hex case folded)."""
    if len(raw) > MAX_NAME_LENGTH:
        raise HTTPError(414, f"Path too long (max {MAX_NAME_LENGTH} characters).")
    if not raw:
        raise HTTPError(400, "Empty pipe name.")
    if _CONTROL.search(raw):
        raise HTTPError(400, "Invalid pipe name: control characters and backslashes are not allowed.")
    if _FORBIDDEN_ESCAPES.search(raw):
        raise HTTPError(400, "Invalid pipe name: encoded slashes, backslashes and control characters are not allowed.")
    return _ESCAPE.sub(lambda m: b"%" + m.group(1).upper(), raw).decode("latin-1")


def parse_target(uri: bytes) -> Target:
    """Classify a raw request target (path and query)."""
    path, _, rawquery = uri.partition(b"?")
    query = Query.parse(rawquery)
    if not path.startswith(b"/"):
        raise HTTPError(400, "Invalid request target.")
    if path == PREFIX or path.startswith(PREFIX + b"/"):
        rest = path[len(PREFIX) + 1 :]
        if len(rest) <= MAX_NAME_LENGTH + 4 and fold(rest) in PREFIX_PAGES:
            return Target(page=fold(rest) or "start", query=query)
        return Target(name=canonical_name(rest), query=query)
    rest = path[1:]
    if len(rest) <= MAX_NAME_LENGTH + 4:
        word = fold(rest)
        if word in ROOT_PAGES:
            return Target(page=word or "start", query=query)
        if word in ROOT_MISTAKES:
            raise HTTPError(404, f"'/{word}' is not a valid path. Use '{PREFIX.decode()}/{word}'.")
    return Target(name=canonical_name(rest), query=query)
