"""The browser pages (KIT 2): send, receive and the no-script form.

What each page is given: its query's pre-fills (never a 400: a bad value is
the default, a long one is cut on a code point), its Content-Security-Policy,
and the URLs and commands it shows, built from the pipe's name by
``shown`` (so no link leaves the origin and every command pastes as one).
Pure: no I/O.

Which GET is a page (KIT 2, Order): ``?status`` > ``?progress`` > ``?receive``
for a client whose ``Accept`` lists ``text/html`` (q>0, not a wildcard) >
a receiver. ``web.PipeWeb`` asks ``wants_receive_page`` after the first two.
"""

from __future__ import annotations

import re
import secrets
import string
from dataclasses import asdict, dataclass
from typing import Any
from urllib.parse import quote

from markupsafe import Markup

from hoodypipe.accept import media_ranges
from hoodypipe.names import MAX_NAME_LENGTH, PREFIX, PREFIX_PAGES, ROOT_MISTAKES, ROOT_PAGES, Query
from hoodypipe.shown import pipe_path, shell_command, shown_url

MAX_RECEIVERS = 256
MAX_TEXT = 100_000
MAX_FILENAME = 255
MIN_WAIT, MAX_WAIT = 1, 3600
PAGE_ON = frozenset({"", "1", "true", "yes"})
# Every folded name the server keeps for itself, at the root or under the
# prefix: the pages refuse to send to one (and say why) before trying.
RESERVED = sorted((ROOT_PAGES | PREFIX_PAGES | ROOT_MISTAKES) - {""})
_NAME_ALPHABET = string.ascii_lowercase + string.digits
# /noscript?path=: what survives of a path (KIT 2).
_PATH_KEEP = re.compile(r"[^A-Za-z0-9\-._~%]")
_DOTS = re.compile(r"^(\.|%2e){1,2}$", re.I)
_WAIT = re.compile(r"^[0-9]{1,4}$")
_N = re.compile(r"^[0-9]{1,10}$")


def csp(nonce: str, extra: str = "") -> str:
    """The pages' policy (KIT 2); no frame-ancestors, so they may be embedded."""
    policy = (
        f"default-src 'none'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; "
        "connect-src 'self'; img-src 'self' data: blob:; base-uri 'none'; form-action 'none'"
    )
    return policy + (f"; {extra}" if extra else "")


def noscript_csp(nonce: str) -> str:
    """Exactly KIT 2's: no script at all, forms to this origin."""
    return f"default-src 'none'; style-src 'nonce-{nonce}'; form-action 'self'"


def inline_script(path: str) -> Markup:
    """A vendored script's text, to inline in a nonce'd ``<script>``: it must not close it."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    if re.search(r"</script|<!--", text, re.I):
        raise ValueError(f"{path} cannot be inlined in a <script>")
    return Markup(text)  # a file we ship, checked above


# -- reading a page's query -----------------------------------------------------------------


def page_flag(query: Query, key: str) -> bool:
    """A page's own flag: on only when bare, 1, true or yes."""
    value = query.get(key)
    return value is not None and value.strip().lower() in PAGE_ON


def lists_html(accept: bytes | None) -> bool:
    """``Accept`` names ``text/html`` itself with q>0 (``*/*`` and ``text/*`` do not count)."""
    return any(media == "text/html" and q > 0 for media, q in media_ranges(accept))


def wants_receive_page(query: Query, accept: bytes | None) -> bool:
    """A GET on a name that is the receive page rather than a receiver."""
    return page_flag(query, "receive") and lists_html(accept)


def _cut(value: str | None, limit: int) -> str:
    return (value or "")[:limit]  # a str is code points: the cut never splits one


def _count(value: str | None, low: int, high: int, default: int, clamp: bool = False) -> int:
    if value is None or not _N.match(value.strip()):
        return default
    number = int(value.strip())
    if number < low:
        return default
    if number > high:
        return high if clamp else default
    return number


def _wait(value: str | None) -> int | None:
    if value is None or not _WAIT.match(value.strip()):
        return None
    seconds = int(value.strip())
    return seconds if MIN_WAIT <= seconds <= MAX_WAIT else None


def random_name() -> str:
    """Eight characters of ``[a-z0-9]``."""
    return "".join(secrets.choice(_NAME_ALPHABET) for _ in range(8))


@dataclass(frozen=True)
class SendParams:
    """``/?name=&n=&text=&mode=&filename=&autostart``."""

    name: str
    n: int
    text: str
    mode: str
    filename: str
    autostart: bool

    @classmethod
    def parse(cls, query: Query) -> SendParams:
        name = query.get("name") or ""
        text = _cut(query.get("text"), MAX_TEXT)
        mode = query.get("mode")
        return cls(
            name=name if 0 < len(name) <= MAX_NAME_LENGTH else random_name(),
            n=_count(query.get("n"), 1, MAX_RECEIVERS, 1),
            text=text,
            mode=mode if mode in ("file", "text") else ("text" if text else "file"),
            filename=_cut(query.get("filename"), MAX_FILENAME),
            autostart=page_flag(query, "autostart"),
        )


@dataclass(frozen=True)
class ReceiveParams:
    """``<name>?receive&n=&filename=&autostart&wait=&sha256``."""

    n: int
    filename: str
    autostart: bool
    wait: int | None
    sha256: bool

    @classmethod
    def parse(cls, query: Query) -> ReceiveParams:
        return cls(
            n=_count(query.get("n"), 1, MAX_RECEIVERS, 1, clamp=True),
            filename=_cut(query.get("filename"), MAX_FILENAME),
            autostart=page_flag(query, "autostart"),
            wait=_wait(query.get("wait")),
            sha256=page_flag(query, "sha256"),
        )

    def download_query(self) -> str:
        """The query of the hidden download (the page adds a fresh ``_=``)."""
        parts = ["download"]
        if self.n > 1:
            parts.append(f"n={self.n}")
        if self.filename:
            parts.append("filename=" + quote(self.filename, safe=""))
        if self.wait is not None:
            parts.append(f"wait={self.wait}")
        if self.sha256:
            parts.append("sha256=1")
        return "&".join(parts)


def sanitise_path(raw: str | None) -> str | None:
    """``/noscript?path=``: a leading ``/`` off, only ``A-Z a-z 0-9 - . _ ~ %`` kept,
    at most 1024; nothing for an empty, dot or reserved one."""
    if raw is None:
        return None
    path = _PATH_KEEP.sub("", raw.lstrip("/"))[:MAX_NAME_LENGTH]
    if not path or _DOTS.match(path) or _folded(path) in RESERVED:
        return None
    return path


def _folded(path: str) -> str:
    word = path.lower().rstrip("/")
    if word.endswith("."):
        return word[:-1]
    return word[:-3] if word.endswith("%2e") else word


@dataclass(frozen=True)
class NoscriptParams:
    """``/noscript?path=&mode=&wait=&sha256``."""

    path: str | None
    mode: str
    wait: int | None
    sha256: bool

    @classmethod
    def parse(cls, query: Query) -> NoscriptParams:
        return cls(
            path=sanitise_path(query.get("path")),
            mode="text" if query.get("mode") == "text" else "file",
            wait=_wait(query.get("wait")),
            sha256=page_flag(query, "sha256"),
        )

    def post_query(self) -> str:
        parts = []
        if self.wait is not None:
            parts.append(f"wait={self.wait}")
        if self.sha256:
            parts.append("sha256=1")
        return "&".join(parts)


# -- what each page is given ----------------------------------------------------------------

_PREFIX = PREFIX.decode() + "/"


def _common() -> dict[str, Any]:
    return {"prefix": _PREFIX, "reserved": RESERVED, "maxName": MAX_NAME_LENGTH, "maxReceivers": MAX_RECEIVERS}


def send_context(base: str, query: Query) -> dict[str, Any]:
    params = SendParams.parse(query)
    example = shown_url(base, "mypipe")
    return {
        "params": params,
        "config": {**_common(), **asdict(params), "maxText": MAX_TEXT, "base": base},
        "commands": {
            "send": shell_command("curl", "-T", "file.iso", example),
            "send_form": shell_command("curl", "-F", "file=@file.iso", example),
            "receive": shell_command("curl", "-o", "file.iso", example),
            "watch": shell_command("curl", "-N", f"{example}?progress&format=text"),
        },
        "help_command": shell_command("curl", f"{base}/help"),
    }


def receive_context(base: str, name: str, display: str, query: Query) -> dict[str, Any]:
    params = ReceiveParams.parse(query)
    path = pipe_path(name)
    pipe_query = f"n={params.n}" if params.n > 1 else ""
    return {
        "name": display,
        "params": params,
        "download_url": f"{path}?{params.download_query()}",
        "status_url": f"{path}?status",
        "progress_url": f"{path}?progress",
        "config": {
            **_common(),
            **asdict(params),
            "name": display,
            # The name as the server has it: used while the field is unchanged.
            "path": path,
            "base": base,
        },
        "command": shell_command("curl", "-o", params.filename or "received.bin", shown_url(base, name, pipe_query)),
    }


def noscript_context(base: str, query: Query) -> dict[str, Any]:
    params = NoscriptParams.parse(query)
    context: dict[str, Any] = {"params": params, "action": None, "commands": None, "receive_url": None}
    if params.path is not None:
        post_query = params.post_query()
        path = pipe_path(params.path)
        url = shown_url(base, params.path)
        context.update(
            action=path + (f"?{post_query}" if post_query else ""),
            receive_url=f"{path}?download",
            url=url,
            commands={
                "send": shell_command("curl", "-T", "file.iso", url),
                "send_form": shell_command("curl", "-F", "input_file=@file.iso", url),
                "receive": shell_command("curl", "-o", "file.iso", url),
            },
        )
    return context
