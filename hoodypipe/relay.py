"""Moving bytes: the sender's body to every receiver, in lockstep.

Nothing is queued here. Each chunk is written to every receiver's transport
as it arrives; when any receiver's transport buffer fills, Twisted pauses
that receiver's producer (a ``_ReceiverFlow``), and the relay stops reading
the sender's socket until every receiver has drained. So the slowest
receiver paces the transfer, and the daemon holds about one socket read
per receiver on top of the transports' own buffers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from twisted.internet.interfaces import IPushProducer
from zope.interface import implementer

from hoodypipe.frame import Frame

if TYPE_CHECKING:
    from hoodypipe.digest import Hasher
    from hoodypipe.frame import Payload
    from hoodypipe.parties import ReceiverParty, SenderParty

# The step: the size of the sender's socket reads and the high-water mark of
# each receiver's transport buffer, so a transfer holds about one step plus
# one step per receiver (a receiver that stops reading keeps its step: its
# transport joins what it could not send into one buffer of its own). Twisted's
# 64 KiB default costs a read, a write and two epoll changes per 64 KiB; 1 MiB
# steps relay ~2x faster (see docs/benchmarks.md). A daemon-wide budget,
# shared by every receiver streaming, shrinks the step as receivers add up,
# so memory stays bounded with a thousand transfers or one of n=256.
MAX_STEP = 1024 * 1024
MIN_STEP = 64 * 1024
STEP_BUDGET = 16 * 1024 * 1024


def step_for(receivers: int) -> int:
    """The step of a transfer starting while ``receivers`` receivers stream (its own included)."""
    return max(MIN_STEP, min(MAX_STEP, STEP_BUDGET // max(1, receivers)))


@implementer(IPushProducer)
class _ReceiverFlow:
    """Registered on one receiver: its transport says when its buffer is full."""

    def __init__(self, relay: Relay, receiver: ReceiverParty) -> None:
        self.relay = relay
        self.receiver = receiver

    def pauseProducing(self) -> None:
        self.relay._blocked_by(self.receiver)

    def resumeProducing(self) -> None:
        self.relay._unblocked_by(self.receiver)

    def stopProducing(self) -> None:
        # The connection is going away; the pipe hears of it from the request.
        pass


class Relay:
    """Lockstep fan-out from one sender to N receivers."""

    def __init__(self, sender: SenderParty, receivers: list[ReceiverParty], digest: Hasher | None = None) -> None:
        self.sender = sender
        self.receivers = list(receivers)
        # ?sha256: every byte relayed, hashed once for all receivers.
        self.digest = digest
        self.bytes = 0
        # Bumped on every chunk and every drain: the idle check compares it.
        self.activity = 0
        self._blocked: set[int] = set()
        self._on_flushed: Callable[[], None] | None = None

    def start(self, early: list[Payload], step: int = MAX_STEP) -> None:
        self.sender.read_in(step)
        for receiver in self.receivers:
            receiver.watch_flow(_ReceiverFlow(self, receiver), step)
        for chunk in early:
            self.write(chunk)
        if not self._blocked:
            self.sender.resume_reading()

    def write(self, data: Payload) -> None:
        # The hot path: one call per socket read of the sender's body.
        frame = Frame(data)
        if not frame.size:
            return
        for receiver in self.receivers:
            receiver.write(frame)
        if self.digest is not None:
            for piece in frame.pieces:
                self.digest.update(piece)
        self.bytes += frame.size
        self.activity += 1

    def remove(self, receiver: ReceiverParty) -> bool:
        """Drop a receiver that left; False if it was not here."""
        if receiver not in self.receivers:
            return False
        self.receivers.remove(receiver)
        self._unblocked_by(receiver)
        return True

    def when_flushed(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once no receiver's transport buffer is full.

        A receiver that was paused is resumed only when its transport has
        handed everything it held to the kernel, so at that point the data
        is on its way; the rest (less than one buffer) is flushed by the
        transport before it closes.
        """
        if self._blocked:
            self._on_flushed = callback
        else:
            callback()

    def _blocked_by(self, receiver: ReceiverParty) -> None:
        if not self._blocked:
            self.sender.pause_reading()
        self._blocked.add(id(receiver))

    def _unblocked_by(self, receiver: ReceiverParty) -> None:
        if id(receiver) not in self._blocked:
            return
        self._blocked.discard(id(receiver))
        self.activity += 1
        if self._blocked:
            return
        if self._on_flushed is not None:
            callback, self._on_flushed = self._on_flushed, None
            callback()
        else:
            self.sender.resume_reading()
