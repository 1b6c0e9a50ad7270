"""What pages show of a pipe: its URLs and the commands to paste.

A page is built from the pipe's name, never from the raw request path: the
path ``//evil.example/x`` names the pipe ``/evil.example/x``, and a link made
from the path would be ``//evil.example/x?status``, a link to another site.
``pipe_path`` always starts with exactly one ``/`` and the prefix, so every
page-relative URL stays on this origin.

A command is shown ready to paste: each argument quoted for a POSIX shell
(``shell_command``), so that a name like ``x';echo$IFS'INJECTED';'`` is one
argument to curl and never a command. Templates get these as finished
strings (autoescaped for HTML as any other text); none builds a command or
a URL from parts itself.
"""

from __future__ import annotations

import re
import shlex

from hoodypipe.names import PREFIX

_PIPES = PREFIX.decode() + "/"
# What a browser percent-encodes in a URL path (WHATWG URL, the path
# percent-encode set), and anything outside printable ASCII: the shown URL
# reaches the same name as the one a browser sends for it. The rest (a
# name's own %XX escapes, "/", quotes and shell characters) stays as the
# name has it; quoting for the shell is shell_command's job.
_NOT_RAW = re.compile(r'[^\x21-\x7e]|["#<>?`{}]')


def pipe_path(name: str) -> str:
    """The page-relative URL of the pipe ``name`` (canonical, still percent-encoded)."""
    return _PIPES + _NOT_RAW.sub(_escape, name)


def _escape(match: re.Match[str]) -> str:
    # A name's characters are its raw bytes, read as latin-1; any other text is UTF-8.
    char = match.group()
    return "".join(f"%{b:02X}" for b in char.encode("latin-1" if ord(char) < 256 else "utf-8"))


def shown_url(base: str, name: str, query: str = "") -> str:
    """The pipe's absolute URL on ``base`` (``http://host:port``), with ``?query``."""
    return base + pipe_path(name) + (f"?{query}" if query else "")


def shell_quote(argument: str) -> str:
    """One argument, quoted for a POSIX shell (sh, bash, zsh) when it needs it."""
    return shlex.quote(argument)


def shell_command(*arguments: str) -> str:
    """A command line whose words are exactly ``arguments``, whatever they hold."""
    return " ".join(map(shell_quote, arguments))


def dashboard_context(base: str, name: str) -> dict[str, str]:
    """The URLs and commands the dashboard (templates/dashboard.html) shows."""
    path = pipe_path(name)
    url = base + path
    return {
        "pipe_url": url,
        # follow: a dashboard left open shows the next transfer too.
        "sse_url": f"{path}?progress&follow=1&format=sse",
        "status_url": f"{path}?status",
        "sse_command": shell_command("curl", "-N", "-H", "Accept: text/event-stream", f"{url}?progress"),
        "status_command": shell_command("curl", f"{url}?status"),
    }


def help_context(base: str) -> dict[str, str]:
    """The commands of the help page (templates/help.txt), on the server's own address."""
    url = base + _PIPES + "mypipe"

    def curl(*arguments: str) -> str:
        return shell_command("curl", *arguments)

    return {
        "send_file": curl("-T", "file.iso", url),
        "send_stdin": curl("-T", "-", url),
        "receive": curl(url),
        "send_n": curl("-T", "file.iso", f"{url}?n=3"),
        "receive_n": curl(f"{url}?n=3"),
        "open_progress": shell_command("open", f"{url}?progress"),
        "watch_sse": curl("-N", "-H", "Accept: text/event-stream", f"{url}?progress"),
        "watch_status": curl(f"{url}?status"),
        "watch_text": curl("-N", f"{url}?progress&format=text"),
    }
