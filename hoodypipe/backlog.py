"""``--backlog``: the listen queue of the endpoints that do not set their own.

Twisted listens with a backlog of 50: a burst of connections past that
(many senders starting at once, a reconnect storm after a restart) is
dropped by the kernel before the daemon sees it, and each client waits out
a SYN retry of a second or more. ``with_backlog`` adds ``backlog=N`` to a
``tcp``, ``tcp6``, ``ssl`` or ``unix`` endpoint string that does not give
one, by keyword or by position; any other endpoint (``systemd:``, whose
socket systemd made and sized, or a plugin's) is left as it is. The kernel
caps the queue at ``net.core.somaxconn``.
"""

from __future__ import annotations

DEFAULT_BACKLOG = 1024
# Where each endpoint type takes its backlog among its positional arguments
# (after the type), as twisted.internet.endpoints parses them.
_BACKLOG_POSITION = {"tcp": 2, "unix": 2, "ssl": 5, "tcp6": 1}


def _split(description: str) -> list[str] | None:
    """The ':'-separated parts, escapes kept; None if the string ends mid-escape."""
    parts: list[str] = []
    current: list[str] = []
    escaped = False
    for char in description:
        if escaped:
            current.append(char)
            escaped = False
        elif char == "\\":
            current.append(char)
            escaped = True
        elif char == ":":
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    if escaped:
        return None
    parts.append("".join(current))
    return parts


def _is_keyword(part: str) -> bool:
    """An unescaped "=" makes a part a keyword argument."""
    escaped = False
    for char in part:
        if escaped:
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == "=":
            return True
    return False


def with_backlog(description: str, backlog: int) -> str:
    """``description`` with ``backlog=`` added when it is a listening endpoint without one."""
    parts = _split(description)
    if parts is None or parts[0] not in _BACKLOG_POSITION:
        return description
    arguments = parts[1:]
    keywords = [part.split("=", 1)[0] for part in arguments if _is_keyword(part)]
    positional = [part for part in arguments if not _is_keyword(part)]
    if "backlog" in keywords or len(positional) > _BACKLOG_POSITION[parts[0]]:
        return description
    return f"{description}:backlog={backlog}"
