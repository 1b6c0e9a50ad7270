"""Noticing senders that hang up while their socket is not being read.

A sender's socket is not read while its receivers are missing or full, so
the reactor never sees its FIN or RST: a sender killed while waiting would
hold its pipe until the wait timeout. One timer for the whole daemon polls
the paused senders' sockets for a hang-up (``POLLRDHUP`` is reported even
while unread data is pending) and aborts those connections, which ends them
through the usual ``connectionLost`` path.
"""

from __future__ import annotations

import select
from typing import Protocol

from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall

INTERVAL = 1.0
_HANGUP = getattr(select, "POLLRDHUP", 0) | select.POLLHUP | select.POLLERR


class Watched(Protocol):
    def fileno(self) -> int | None: ...

    def hung_up(self) -> None: ...


class HangupWatch:
    """Polls the sockets of paused senders once a second; costs nothing when none are."""

    def __init__(self, clock: IReactorTime, interval: float = INTERVAL) -> None:
        self.interval = interval
        self.watched: set[Watched] = set()
        self._loop = LoopingCall(self.check)
        self._loop.clock = clock

    def add(self, watched: Watched) -> None:
        self.watched.add(watched)
        if not self._loop.running:
            self._loop.start(self.interval, now=False)

    def discard(self, watched: Watched) -> None:
        self.watched.discard(watched)
        if not self.watched and self._loop.running:
            self._loop.stop()

    def check(self) -> None:
        poller = select.poll()
        by_fd: dict[int, Watched] = {}
        for watched in self.watched:
            fd = watched.fileno()
            if fd is not None and fd >= 0:
                by_fd[fd] = watched
                poller.register(fd, _HANGUP)
        for fd, _ in poller.poll(0):
            watched = by_fd[fd]
            self.discard(watched)
            watched.hung_up()


def socket_fileno(transport: object) -> int | None:
    """The socket under a transport, through TLS wrappers; None in memory."""
    for _ in range(4):
        fileno = getattr(transport, "fileno", None)
        if callable(fileno):
            try:
                return fileno()
            except (OSError, ValueError):
                return None
        transport = getattr(transport, "transport", None)
        if transport is None:
            return None
    return None
