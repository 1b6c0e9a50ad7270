"""One shutdown per daemon, however many times it is asked.

Twisted's SIGTERM and SIGINT handlers call ``reactor.stop()`` on every
signal. A second one during the drain (an impatient operator, a supervisor
that repeats its SIGTERM) raised ``ReactorNotRunning``, a critical traceback
in the log in the middle of a drain that was going fine. From the first
signal (or any other start of the shutdown) on, another only logs that the
drain goes on; the drain keeps its ``--drain-timeout`` and the daemon still
exits with the signal it stopped on. To stop at once, send SIGKILL.
"""

from __future__ import annotations

import signal
from typing import TYPE_CHECKING, Any

from twisted.logger import Logger

if TYPE_CHECKING:
    from types import FrameType

log = Logger()

SIGNALS = (signal.SIGTERM, signal.SIGINT)


def one_shutdown(reactor: Any) -> None:
    """Once the reactor runs (and Twisted's handlers are in), wrap them so that
    only the first signal stops it. The daemon's own process only."""
    stopping = False

    def shutdown_begins() -> None:
        nonlocal stopping
        stopping = True

    reactor.addSystemEventTrigger("before", "shutdown", shutdown_begins)

    def wrap(number: signal.Signals) -> None:
        twisteds = signal.getsignal(number)
        if not callable(twisteds):
            return  # not Twisted's (SIG_IGN, SIG_DFL): leave it

        def handler(signum: int, frame: FrameType | None) -> None:
            nonlocal stopping
            if stopping:
                name = signal.Signals(signum).name
                reactor.callFromThread(
                    log.info, "Received {name} again: already draining, the drain goes on", name=name
                )
                return
            stopping = True
            twisteds(signum, frame)

        signal.signal(number, handler)

    def install() -> None:
        for number in SIGNALS:
            wrap(number)

    reactor.callWhenRunning(install)
