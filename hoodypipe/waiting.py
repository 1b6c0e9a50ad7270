"""Deferreds for "once this holds": the drain waits on them, never polls."""

from __future__ import annotations

from twisted.internet.defer import Deferred


class Waiters:
    """Whoever waits for one condition; ``fire`` when it comes to hold."""

    def __init__(self) -> None:
        self._waiting: list[Deferred[None]] = []

    def wait(self, holds: bool) -> Deferred[None]:
        """A Deferred that fires at once if the condition ``holds`` now, else at ``fire``."""
        waiting: Deferred[None] = Deferred()
        if holds:
            waiting.callback(None)
        else:
            self._waiting.append(waiting)
        return waiting

    def fire(self) -> None:
        waiting, self._waiting = self._waiting, []
        for each in waiting:
            each.callback(None)
