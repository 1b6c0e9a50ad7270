"""The hang-up watch with real sockets: the epoll descriptor driven by hand, and
the choice between it and the polling fallback."""

from __future__ import annotations

import select
import socket
import struct
from collections.abc import Iterator

import pytest
from twisted.internet.interfaces import IReactorFDSet, IReadDescriptor
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from zope.interface import implementer
from zope.interface.verify import verifyObject

from hoodypipe.hangup import ENVIRONMENT, EpollWatch, PollingWatch, hangup_watch

pytestmark = pytest.mark.skipif(not hasattr(select, "epoll"), reason="epoll is Linux only")


@implementer(IReactorFDSet)
class ReaderRecorder:
    """Just enough of IReactorFDSet to see what the watch asks of the reactor."""

    def __init__(self) -> None:
        self.readers: list[IReadDescriptor] = []
        self.calls: list[str] = []

    def addReader(self, reader: IReadDescriptor) -> None:
        assert reader not in self.readers
        assert reader.fileno() >= 0
        self.calls.append("add")
        self.readers.append(reader)

    def removeReader(self, reader: IReadDescriptor) -> None:
        assert reader.fileno() >= 0  # the reactor finds it by its fd
        self.calls.append("remove")
        self.readers.remove(reader)

    def addWriter(self, writer) -> None:
        raise NotImplementedError

    def removeWriter(self, writer) -> None:
        raise NotImplementedError

    def removeAll(self) -> list:
        raise NotImplementedError

    def getReaders(self) -> list:
        return list(self.readers)

    def getWriters(self) -> list:
        return []

    def isReading(self, reader) -> bool:
        return reader in self.readers

    def isWriting(self, writer) -> bool:
        return False


class Party:
    """A watched sender over the server end of a socketpair."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.hangups = 0

    def fileno(self) -> int | None:
        return self.sock.fileno() if self.sock.fileno() >= 0 else None

    def hung_up(self, reset: bool = False) -> None:
        self.hangups += 1


class Pairs:
    """Socketpairs closed at the end of the test, whichever end is left."""

    def __init__(self) -> None:
        self.socks: list[socket.socket] = []

    def __call__(self) -> tuple[Party, socket.socket]:
        ours, theirs = socket.socketpair()
        self.socks += [ours, theirs]
        return Party(ours), theirs

    def close(self) -> None:
        for sock in self.socks:
            sock.close()


@pytest.fixture
def pair() -> Iterator[Pairs]:
    pairs = Pairs()
    yield pairs
    pairs.close()


@pytest.fixture
def reactor() -> ReaderRecorder:
    return ReaderRecorder()


@pytest.fixture
def watch(reactor: ReaderRecorder) -> Iterator[EpollWatch]:
    watch = EpollWatch(reactor)
    yield watch
    watch.connectionLost(Failure(Exception("test over")))


def readable(watch: EpollWatch) -> bool:
    """Would the reactor call doRead now?"""
    return bool(select.select([watch.fileno()], [], [], 0)[0])


def test_is_a_read_descriptor(watch, reactor, pair):
    party, _ = pair()
    watch.add(party)
    assert verifyObject(IReadDescriptor, watch)
    assert reactor.readers == [watch]
    assert watch.logPrefix() == "HangupWatch"


def test_a_hang_up_is_reported_once_and_the_reactor_let_go(watch, reactor, pair):
    party, theirs = pair()
    watch.add(party)
    assert not readable(watch)
    watch.doRead()  # a spurious wake-up changes nothing
    assert party.hangups == 0 and party in watch.watched
    theirs.close()
    assert readable(watch)
    watch.doRead()
    assert party.hangups == 1
    assert not watch.watched
    assert reactor.calls == ["add", "remove"]
    watch.doRead()
    assert party.hangups == 1


def test_unread_data_wakes_nothing_but_a_fin_behind_it_does(watch, pair):
    party, theirs = pair()
    watch.add(party)
    theirs.sendall(b"the first chunk, never read")
    assert not readable(watch)
    theirs.shutdown(socket.SHUT_WR)
    assert readable(watch)
    watch.doRead()
    assert party.hangups == 1


def test_a_reset_is_reported(watch, pair):
    with socket.create_server(("127.0.0.1", 0)) as server:
        theirs = socket.create_connection(server.getsockname())
        ours, _ = server.accept()
        pair.socks += [ours, theirs]
    party = Party(ours)
    watch.add(party)
    theirs.sendall(b"pending")
    theirs.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    theirs.close()
    for _ in range(100):  # the RST crosses loopback at once, but asynchronously
        if readable(watch):
            break
        select.select([], [], [], 0.01)
    watch.doRead()
    assert party.hangups == 1


def test_only_the_one_that_left_is_reported(watch, reactor, pair):
    stays, _ = pair()
    leaves, theirs = pair()
    watch.add(stays)
    watch.add(leaves)
    theirs.close()
    watch.doRead()
    assert (stays.hangups, leaves.hangups) == (0, 1)
    assert list(watch.watched) == [stays]
    assert reactor.calls == ["add"]


def test_adding_twice_and_discarding_the_unknown_are_harmless(watch, reactor, pair):
    party, theirs = pair()
    other, _ = pair()
    watch.add(party)
    watch.add(party)
    watch.discard(other)
    assert reactor.calls == ["add"]
    theirs.close()
    watch.doRead()
    assert party.hangups == 1


def test_discarded_before_the_hang_up_is_not_reported(watch, reactor, pair):
    party, theirs = pair()
    watch.add(party)
    watch.discard(party)
    theirs.close()
    assert reactor.calls == ["add", "remove"]
    assert not readable(watch)
    assert party.hangups == 0
    watch.add(party)  # watched again: the hang-up it already has is reported
    watch.doRead()
    assert party.hangups == 1


def test_no_socket_is_ignored(watch, reactor):
    class InMemory:
        def fileno(self) -> None:
            return None

        def hung_up(self, reset: bool = False) -> None:
            raise AssertionError("never watched")

    watch.add(InMemory())
    watch.discard(InMemory())
    assert not watch.watched and reactor.calls == []


def test_closed_sockets_do_not_raise(watch, reactor, pair):
    party, _ = pair()
    number = party.sock.fileno()
    party.sock.close()
    party.fileno = lambda: number  # a transport that still reports its old fd
    watch.add(party)
    assert not watch.watched and reactor.calls == []

    party, _ = pair()
    watch.add(party)
    party.sock.close()  # Twisted closes the socket before connectionLost
    watch.discard(party)
    assert not watch.watched and reactor.calls == ["add", "remove"]


def test_a_reused_fd_belongs_to_its_new_socket(watch, reactor, pair):
    old, _ = pair()
    watch.add(old)
    number = old.sock.fileno()
    old.sock.close()  # lost without a discard
    new, theirs = pair()
    if new.sock.fileno() != number:
        pytest.skip("the kernel did not reuse the number")
    watch.add(new)
    assert list(watch.watched) == [new]
    watch.discard(old)  # late: must not unregister the new socket
    theirs.close()
    watch.doRead()
    assert (old.hangups, new.hangups) == (0, 1)
    assert reactor.calls == ["add", "remove"]


def test_a_second_request_on_the_same_socket_takes_over(watch, pair):
    first, theirs = pair()
    second = Party(first.sock)  # the next request on a kept-alive connection
    watch.add(first)
    watch.add(second)
    assert list(watch.watched) == [second]
    theirs.close()
    watch.doRead()
    assert (first.hangups, second.hangups) == (0, 1)


def test_after_connection_lost_it_starts_afresh(watch, reactor, pair):
    party, _ = pair()
    watch.add(party)
    reactor.readers.clear()  # the reactor let go of it, as at shutdown
    watch.connectionLost(Failure(Exception("reactor stopping")))
    assert watch.fileno() == -1 and not watch.watched
    again, theirs = pair()
    watch.add(again)
    assert reactor.readers == [watch] and watch.fileno() >= 0
    theirs.close()
    watch.doRead()
    assert again.hangups == 1


# -- which watch -----------------------------------------------------------------------------


def test_a_real_reactor_gets_the_epoll_watch(monkeypatch):
    from twisted.internet import reactor

    monkeypatch.delenv(ENVIRONMENT, raising=False)
    assert isinstance(hangup_watch(reactor), EpollWatch)


def test_the_environment_can_force_polling(monkeypatch):
    from twisted.internet import reactor

    monkeypatch.setenv(ENVIRONMENT, "poll")
    assert isinstance(hangup_watch(reactor), PollingWatch)


@pytest.mark.parametrize("fake", [Clock, MemoryReactorClock, ReaderRecorder])
def test_reactors_that_wait_on_no_descriptor_get_the_polling_watch(fake, monkeypatch):
    # A Clock has no IReactorFDSet; MemoryReactorClock and the recorder have
    # one, but nothing would ever call doRead.
    monkeypatch.delenv(ENVIRONMENT, raising=False)
    assert isinstance(hangup_watch(fake()), PollingWatch)
