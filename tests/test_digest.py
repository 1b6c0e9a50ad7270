"""The ?sha256 hashers: inline, and beside the reactor in a thread of its own."""

from __future__ import annotations

import hashlib
import os
import threading

from hoodypipe import digest
from hoodypipe.digest import Digest, InlineDigest, digest_maker


class ThreadReactor:
    """callFromThread, delivered to the test's thread when it asks."""

    def __init__(self) -> None:
        self.calls: list[tuple[object, tuple[object, ...]]] = []
        self.called = threading.Event()

    def callFromThread(self, f, *args) -> None:
        self.calls.append((f, args))
        self.called.set()


def test_both_hashers_agree_with_hashlib():
    pieces = [os.urandom(n) for n in (0, 1, 4095, 65536, 1 << 20)]
    expected = hashlib.sha256(b"".join(pieces)).hexdigest()
    inline: list[str] = []
    hasher = InlineDigest()
    for piece in pieces:
        hasher.update(memoryview(piece))
    hasher.result(inline.append)
    assert inline == [expected]
    reactor = ThreadReactor()
    threaded = Digest(reactor)
    for piece in pieces:
        threaded.update(memoryview(piece))
    got: list[str] = []
    threaded.result(got.append)
    assert reactor.called.wait(10)
    f, args = reactor.calls[0]
    f(*args)
    assert got == [expected] and len(reactor.calls) == 1


def test_a_hasher_far_behind_makes_the_relay_wait(monkeypatch):
    monkeypatch.setattr(digest, "MAX_QUEUED", 1024)
    reactor = ThreadReactor()
    threaded = Digest(reactor)
    for _ in range(50):
        threaded.update(b"x" * 4096)  # each past the bound: waits for the thread to catch up
        assert threaded._queued <= 4096
    threaded.result(lambda _: None)
    assert reactor.called.wait(10)


def test_a_cancelled_hasher_stops_its_thread():
    threaded = Digest(ThreadReactor())
    threaded.update(b"part")
    threaded.cancel()
    threaded._thread.join(10)
    assert not threaded._thread.is_alive()


def test_the_daemon_hashes_inline_unless_told(monkeypatch):
    assert digest_maker(ThreadReactor()) is InlineDigest
    monkeypatch.setenv("HOODYPIPE_SHA256", "thread")
    assert digest_maker(object()) is InlineDigest  # no callFromThread: inline all the same
    hasher = digest_maker(ThreadReactor())()
    assert isinstance(hasher, Digest)
    hasher.cancel()
