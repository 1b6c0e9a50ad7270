"""The SHA-256 of a relayed stream (``?sha256``), in the reactor or beside it.

``InlineDigest`` (the daemon's) hashes each piece as the relay hands it
over. ``Digest`` hashes off the reactor's thread, measured to be slower (see
``digest_maker``): the relay hands each read's pieces to ``Digest.update`` and goes on; one
thread per hashed transfer hashes them in order (hashlib releases the GIL
while it hashes), so hashing overlaps with the relay instead of adding to
it. The pieces are the read buffers the receivers' transports hold anyway;
``MAX_QUEUED`` bounds what waits for the thread, past which ``update``
hashes in the caller's thread (the relay then runs at the hash's pace).
"""

from __future__ import annotations

import hashlib
import os
import queue
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from hoodypipe.frame import Piece

MAX_QUEUED = 64 * 1024 * 1024
_END = object()


class Hasher(Protocol):
    """What the relay feeds and the pipe asks for at the end."""

    def update(self, piece: Piece) -> None: ...

    def result(self, callback: Callable[[str], None]) -> None:
        """Call ``callback`` with the hex digest (in the reactor) once every piece is hashed."""
        ...

    def cancel(self) -> None:
        """The transfer failed: no digest is wanted."""
        ...


class InlineDigest:
    """hashlib in the caller's thread: the result is ready at once."""

    def __init__(self) -> None:
        self._hash = hashlib.sha256()

    def update(self, piece: Piece) -> None:
        self._hash.update(piece)

    def result(self, callback: Callable[[str], None]) -> None:
        callback(self._hash.hexdigest())

    def cancel(self) -> None:
        pass


class Digest:
    """A SHA-256 fed from the reactor, hashed by a thread of its own."""

    def __init__(self, reactor: Any) -> None:
        self.reactor = reactor
        self._hash = hashlib.sha256()
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._queued = 0
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="hoodypipe-sha256", daemon=True)
        self._thread.start()

    def update(self, piece: Piece) -> None:
        size = len(piece)
        with self._lock:
            self._queued += size
            over = self._queued > MAX_QUEUED
        self._queue.put(piece)
        if over:
            self._wait_below()

    def _wait_below(self) -> None:
        # Behind by more than the bound: let the thread catch up.
        done = threading.Event()
        self._queue.put(done)
        done.wait()

    def result(self, callback: Callable[[str], None]) -> None:
        """Call ``callback`` with the hex digest in the reactor, once every piece is hashed."""
        self._queue.put((_END, callback))

    def cancel(self) -> None:
        self._queue.put(None)

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            if isinstance(item, threading.Event):
                item.set()
                continue
            if isinstance(item, tuple) and item and item[0] is _END:
                self.reactor.callFromThread(item[1], self._hash.hexdigest())
                return
            self._hash.update(item)
            with self._lock:
                self._queued -= len(item)


# Measured (bench/throughput.py, docs/benchmarks.md): hashing in a thread
# of its own is slower here than in the reactor's (the handoffs cost more
# than hashing, which releases the GIL, gains on two cores shared with the
# curls). So the daemon hashes inline; ``HOODYPIPE_SHA256=thread`` picks the
# thread, to measure the two side by side (the hoodypipe-sha256-thread target).
ENVIRONMENT = "HOODYPIPE_SHA256"


def digest_maker(reactor: Any) -> Callable[[], Hasher]:
    """How the daemon hashes: in the reactor's thread, unless told otherwise."""
    if os.environ.get(ENVIRONMENT) == "thread" and hasattr(reactor, "callFromThread"):
        return lambda: Digest(reactor)
    return InlineDigest
