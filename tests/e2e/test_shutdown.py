"""SIGTERM on the installed daemon: drain, tell, and never truncate silently."""

from __future__ import annotations

import signal
import time

from ._helpers import Sender, receiver, unique, wait_for, wait_status
from ._sidechannel import CurlSSE, is_kind

MiB = 1024 * 1024


def paced(sender: Sender, total: int, seconds: float) -> None:
    """Feed ``total`` bytes over about ``seconds``, then close stdin."""
    steps = 20

    def run() -> None:
        for i in range(steps):
            sender.proc.stdin.write(b"x" * (total * (i + 1) // steps - total * i // steps))
            sender.proc.stdin.flush()
            time.sleep(seconds / steps)

    sender.feed_async(run)


def test_sigterm_lets_a_streaming_transfer_finish_and_tells_waiting_parties(daemon_factory):
    daemon = daemon_factory("--drain-timeout", "30")
    busy, idle = unique("drain"), unique("waiting")
    got = receiver(daemon.url(busy), keep=False)
    sender = Sender(daemon.url(busy))
    paced(sender, 4 * MiB, 2.0)
    wait_status(daemon, busy, state="streaming")
    waiting = receiver(daemon.url(idle))
    wait_status(daemon, idle, state="waiting")

    daemon.process.send_signal(signal.SIGTERM)
    assert waiting.wait(10) == 0
    assert waiting.out == b"[ERROR] Server is shutting down.\n"  # told at once, with its reason
    assert got.wait(30) == 0 and got.nbytes == 4 * MiB  # the streaming one finished
    assert sender.wait(30) == 0
    assert sender.lines[-1] == "[INFO] Transfer complete."
    assert daemon.process.wait(30) == -signal.SIGTERM  # twistd re-raises the signal it stopped on


def test_a_transfer_outliving_the_drain_fails_visibly_everywhere(daemon_factory):
    daemon = daemon_factory("--drain-timeout", "1")
    name = unique("cut")
    watcher = CurlSSE(daemon.url(name, "progress"))
    got = receiver(daemon.url(name), keep=False)
    sender = Sender(daemon.url(name))
    paced(sender, 40 * MiB, 20.0)
    wait_status(daemon, name, state="streaming")
    got.wait_bytes(1)

    started = time.monotonic()
    daemon.process.send_signal(signal.SIGTERM)
    assert got.wait(15) != 0  # never a clean end after partial data
    done = watcher.wait_for(is_kind("done"), 10, "done")
    assert done.data["state"] == "failed" and done.data["reason"] == "Server is shutting down"
    assert daemon.process.wait(15) == -signal.SIGTERM
    assert time.monotonic() - started < 12
    sender.close_stdin()
    sender.wait(15)
    assert sender.lines[-1] == "[ERROR] Server is shutting down."
    wait_for(lambda: watcher.ended, 10, "the spectator stream to end")


def test_a_second_sigterm_during_the_drain_only_says_the_drain_goes_on(daemon_factory):
    """Issue 9: Twisted stops the reactor on every SIGTERM or SIGINT, and the second
    stop raised ReactorNotRunning, a traceback in the log in the middle of the drain."""
    daemon = daemon_factory("--drain-timeout", "30")
    name = unique("twice")
    got = receiver(daemon.url(name), keep=False)
    sender = Sender(daemon.url(name))
    paced(sender, 4 * MiB, 2.0)
    wait_status(daemon, name, state="streaming")

    daemon.process.send_signal(signal.SIGTERM)
    wait_for(lambda: "draining 1 transfer(s)" in daemon.log_text(), 10, "the drain to begin")
    daemon.process.send_signal(signal.SIGTERM)
    wait_for(lambda: "again" in daemon.log_text(), 10, "the second SIGTERM to be told")
    daemon.process.send_signal(signal.SIGINT)
    assert got.wait(30) == 0 and got.nbytes == 4 * MiB  # the drain went on
    assert sender.wait(30) == 0 and sender.lines[-1] == "[INFO] Transfer complete."
    assert daemon.process.wait(30) == -signal.SIGTERM  # still the signal it stopped on
    text = daemon.log_text()
    assert "Traceback" not in text and "ReactorNotRunning" not in text, text[-3000:]
    assert "Received SIGTERM again: already draining" in text and "Received SIGINT again: already draining" in text
