"""Noticing senders that hang up while their socket is not being read.

A sender's socket is not read while its receivers are missing or full, so
the reactor never sees its FIN or RST: a sender killed while waiting would
hold its pipe, and its name, until the wait timeout. The watch learns of
those hang-ups and aborts the connections, which ends them through the usual
``connectionLost`` path.

On Linux, ``EpollWatch`` keeps every watched socket in one epoll set of its
own, registered for ``EPOLLRDHUP | EPOLLHUP | EPOLLERR`` and not for input:
unread data wakes nothing, a FIN or an RST does, even behind unread data.
That epoll's descriptor is readable exactly when a watched socket has hung
up, so the reactor waits on it like on any socket: no timer, nothing spent
while nobody leaves, and the name is free as soon as the kernel knows.

Without ``select.epoll``, or on a reactor that does not wait on file
descriptors (the in-memory ones of the tests), ``PollingWatch`` polls the
paused sockets once a second with ``POLLRDHUP`` instead. Setting
``HOODYPIPE_HANGUP=poll`` in the daemon's environment forces the polling
watch, to compare the two (``bench/waiting.py``).
"""

from __future__ import annotations

import os
import select
from collections.abc import Collection
from typing import Protocol

from twisted.internet.base import ReactorBase
from twisted.internet.interfaces import IReactorFDSet, IReactorTime, IReadDescriptor
from twisted.internet.task import LoopingCall
from twisted.python.failure import Failure
from zope.interface import implementer

INTERVAL = 1.0
ENVIRONMENT = "HOODYPIPE_HANGUP"
_POLL_HANGUP = getattr(select, "POLLRDHUP", 0) | select.POLLHUP | select.POLLERR
_EPOLL_HANGUP = getattr(select, "EPOLLRDHUP", 0) | getattr(select, "EPOLLHUP", 0) | getattr(select, "EPOLLERR", 0)
# An RST (or an error) rather than a FIN: the connection is gone, not half-closed.
_POLL_RESET = select.POLLHUP | select.POLLERR
_EPOLL_RESET = getattr(select, "EPOLLHUP", 0) | getattr(select, "EPOLLERR", 0)


class Watched(Protocol):
    def fileno(self) -> int | None: ...

    def hung_up(self, reset: bool = False) -> None:
        """It hung up: ``reset`` for an RST or an error, else a FIN (maybe a half-close)."""
        ...


class HangupWatch(Protocol):
    """Where paused senders are kept while their sockets are not read."""

    @property
    def watched(self) -> Collection[Watched]: ...

    def add(self, watched: Watched) -> None: ...

    def discard(self, watched: Watched) -> None: ...


def hangup_watch(reactor: IReactorTime) -> HangupWatch:
    """The event-driven watch where the platform and the reactor allow it."""
    if os.environ.get(ENVIRONMENT) != "poll" and epoll_usable(reactor):
        return EpollWatch(reactor)  # type: ignore[arg-type]
    return PollingWatch(reactor)


def epoll_usable(reactor: object) -> bool:
    # MemoryReactor provides IReactorFDSet too, but only records its readers:
    # a descriptor is waited on only by a real reactor.
    return hasattr(select, "epoll") and IReactorFDSet.providedBy(reactor) and isinstance(reactor, ReactorBase)


@implementer(IReadDescriptor)
class EpollWatch:
    """Every watched socket in one epoll set, which the reactor reads like a socket."""

    def __init__(self, reactor: IReactorFDSet) -> None:
        self._reactor = reactor
        self._epoll: select.epoll | None = None
        self._reading = False
        self._by_fd: dict[int, Watched] = {}
        # The fd each was added with: once a connection is lost its transport
        # no longer knows it, and it still has to be unregistered.
        self._fds: dict[Watched, int] = {}

    @property
    def watched(self) -> Collection[Watched]:
        return self._fds.keys()

    def add(self, watched: Watched) -> None:
        fd = watched.fileno()
        if fd is None or fd < 0:
            return  # no socket (in memory): nothing can be watched
        if self._fds.get(watched) == fd:
            return
        self.discard(watched)
        if self._epoll is None:
            self._epoll = select.epoll()
        try:
            self._epoll.register(fd, _EPOLL_HANGUP)
        except FileExistsError:
            # The socket is still registered for an earlier request on the
            # same connection, which was never discarded: this one takes over.
            self._epoll.modify(fd, _EPOLL_HANGUP)
        except OSError:
            return  # closed already: its connectionLost is on the way
        stale = self._by_fd.get(fd)
        if stale is not None:
            # Closed without a discard (its number was then reused, and the
            # kernel forgot the old registration), or the takeover above.
            del self._fds[stale]
        self._by_fd[fd] = watched
        self._fds[watched] = fd
        if not self._reading:
            self._reading = True
            self._reactor.addReader(self)

    def discard(self, watched: Watched) -> None:
        fd = self._fds.pop(watched, None)
        if fd is None:
            return
        del self._by_fd[fd]
        self._unregister(fd)
        if not self._fds and self._reading:
            self._reading = False
            self._reactor.removeReader(self)

    def _unregister(self, fd: int) -> None:
        if self._epoll is None:
            return
        try:
            self._epoll.unregister(fd)
        except OSError:
            # Closed (EBADF), or closed and its number reused (ENOENT): the
            # kernel dropped the registration with the socket.
            pass

    # -- IReadDescriptor ---------------------------------------------------------

    def fileno(self) -> int:
        return self._epoll.fileno() if self._epoll is not None else -1

    def doRead(self) -> None:
        if self._epoll is None:
            return
        # Level-triggered: whatever is not taken out now is reported again.
        for fd, events in self._epoll.poll(0):
            watched = self._by_fd.get(fd)
            if watched is None:
                self._unregister(fd)  # or it would keep waking the reactor
                continue
            self.discard(watched)
            watched.hung_up(reset=bool(events & _EPOLL_RESET))

    def connectionLost(self, reason: Failure) -> None:
        # The reactor let go of us: it is shutting down, or doRead raised
        # (and was logged). Start afresh with the next sender watched.
        self._reading = False
        self._by_fd.clear()
        self._fds.clear()
        if self._epoll is not None:
            self._epoll.close()
            self._epoll = None

    def logPrefix(self) -> str:
        return "HangupWatch"


class PollingWatch:
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
                poller.register(fd, _POLL_HANGUP)
        for fd, events in poller.poll(0):
            watched = by_fd[fd]
            self.discard(watched)
            watched.hung_up(reset=bool(events & _POLL_RESET))


def socket_fileno(transport: object) -> int | None:
    """The socket under a transport, through TLS wrappers; None in memory."""
    for _ in range(4):
        fileno = getattr(transport, "fileno", None)
        if callable(fileno):
            try:
                number: int = fileno()
            except (OSError, ValueError):
                return None
            return number
        transport = getattr(transport, "transport", None)
        if transport is None:
            return None
    return None
