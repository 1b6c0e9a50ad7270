"""One client must not hurt everyone, in memory: pipelined requests that are
never read, the step budget, and fair shares of every daemon-wide cap."""

from __future__ import annotations

import pytest
from twisted.internet.address import IPv4Address, IPv6Address

from hoodypipe.fairshare import Shares, client_key
from hoodypipe.hub import HubLimits
from hoodypipe.pipes import Limits
from hoodypipe.relay import MAX_STEP, MIN_STEP, STEP_BUDGET, step_for
from tests.memhttp import Conn, HalfCloseTransport, MemoryDaemon

SSE = {"Accept": "text/event-stream"}


class FullTransport(HalfCloseTransport):
    """A client that reads nothing: past ``limit`` unread bytes, the transport
    pauses its producer, as a real one does when its buffer fills."""

    limit = 64 * 1024

    def write(self, data: bytes) -> None:
        super().write(data)
        if len(self.value()) > self.limit and self.producer is not None and not self.full:
            self.full = True
            self.producer.pauseProducing()

    full = False

    def read_all(self) -> None:
        self.clear()
        if self.full and self.producer is not None:
            self.full = False
            self.producer.resumeProducing()


def stalled_client(d: MemoryDaemon, host: str = "127.0.0.1") -> tuple[Conn, FullTransport]:
    conn = Conn.__new__(Conn)
    conn.transport = transport = FullTransport(peerAddress=IPv4Address("TCP", host, 50000))
    conn.channel = d.site.buildProtocol(transport.getPeer())
    conn.channel.makeConnection(transport)
    return conn, transport


def answers(raw: bytes) -> int:
    return raw.count(b"HTTP/1.1 200 ")


# -- pipelined requests that are never read ---------------------------------------------


def test_pipelined_requests_are_not_answered_while_the_client_reads_nothing():
    d = MemoryDaemon()
    conn, transport = stalled_client(d)
    page = b"GET /x?progress HTTP/1.1\r\nHost: h\r\nAccept: text/html\r\n\r\n"
    conn.send(page * 30)
    first = answers(transport.value())
    assert 1 <= first < 30  # it stopped once the buffer was full
    total, reads = 0, 0
    while True:
        unread = transport.value()
        assert len(unread) < FullTransport.limit + 64 * 1024  # about one buffer, plus one answer
        total += answers(unread)
        if not transport.full:
            break
        transport.read_all()  # the client reads: it gets more, a buffer at a time
        reads += 1
    assert total == 30 and reads >= 1


def test_a_reading_client_gets_every_pipelined_answer():
    d = MemoryDaemon()
    conn = d.connect()
    conn.send(b"GET /x?status HTTP/1.1\r\nHost: h\r\n\r\n" * 10)
    assert answers(conn.raw) == 10


def test_too_many_pipelined_requests_are_refused_and_the_connection_closed():
    d = MemoryDaemon()
    conn = d.connect()
    conn.send(b"GET /x?status HTTP/1.1\r\nHost: h\r\n\r\n" * 100)
    assert answers(conn.raw) == 32  # then the 33rd sent without waiting is refused
    assert b"HTTP/1.1 429 Too Many Requests" in conn.raw and b"Too many pipelined requests" in conn.raw
    assert conn.closing
    assert d.registry.rejections[429] == 1


# -- the step budget counts receivers ------------------------------------------------------


def test_the_step_shrinks_with_the_receivers_streaming():
    assert step_for(1) == MAX_STEP
    assert step_for(STEP_BUDGET // MAX_STEP) == MAX_STEP
    assert step_for(200) == STEP_BUDGET // 200
    assert step_for(100_000) == MIN_STEP
    d = MemoryDaemon(Limits(max_receivers=256, max_waiting_per_address=1000))
    receivers = [d.receiver("/fan?n=200") for _ in range(200)]
    sender = d.sender("/fan?n=200")
    assert d.registry.streaming_receivers == 200
    assert receivers[0].transport.producer is not None
    assert sender.transport.bufferSize == STEP_BUDGET // 200  # reads the size of one step
    sender.end_chunks()
    assert d.registry.streaming_receivers == 0


# -- fair shares ----------------------------------------------------------------------------


def test_ipv6_clients_are_counted_by_prefix():
    assert client_key("2001:db8:1:2:aaaa::1") == client_key("2001:db8:1:2:ffff::9") == "2001:db8:1:2::/64"
    assert client_key("2001:db8:1:3::1") != client_key("2001:db8:1:2::1")
    assert client_key("2001:db8:1:2::1", 128) == "2001:db8:1:2::1/128"
    assert client_key("::ffff:10.0.0.1") == "10.0.0.1" == client_key("10.0.0.1")


def test_shares_keep_a_reserve_for_clients_below_their_fair_share():
    shares = Shares(cap=100)  # 10 reserved
    for heavy in ("a", "b"):
        while shares.refusal(heavy) is None:
            shares.take(heavy)
    assert shares.taken == 91 and shares.refusal("a") == "share"  # b, light at 0, took one reserved slot
    assert shares.refusal("new") is None  # a newcomer finds a reserved slot
    for n in range(9):
        shares.take(f"light{n}")
    assert shares.refusal("late") == "full"


def test_the_per_client_limit_of_a_cap():
    shares = Shares(cap=10, per_client=2)
    shares.take("a")
    shares.take("a")
    assert shares.refusal("a") == "client" and shares.refusal("b") is None
    shares.give("a")
    assert shares.refusal("a") is None


def sender_from(d: MemoryDaemon, host: str, path: str) -> Conn:
    conn = Conn.__new__(Conn)
    family = IPv6Address if ":" in host else IPv4Address
    conn.transport = HalfCloseTransport(peerAddress=family("TCP", host, 50000))
    conn.channel = d.site.buildProtocol(conn.transport.getPeer())
    conn.channel.makeConnection(conn.transport)
    return conn.request("PUT", path, None, {"Transfer-Encoding": "chunked"})


def test_heavy_waiting_senders_leave_room_for_a_new_client():
    d = MemoryDaemon(Limits(max_pending=100, max_waiting_per_address=1000))
    for heavy in ("10.0.0.1", "10.0.0.2"):
        n = 0
        while True:
            conn = sender_from(d, heavy, f"/{heavy}-{n}?wait=3600")
            n += 1
            if conn.response().status != 200:
                assert conn.response().body == b"[ERROR] Too many waiting pipes from your address.\n"
                break
    assert d.registry.waiting == 91  # the second one took a reserved slot while it held none
    newcomer = sender_from(d, "10.0.0.3", "/fresh")
    assert newcomer.response().status == 200 and b"Waiting for 1 receiver" in newcomer.response().body


def test_an_ipv6_subscriber_cannot_take_every_slot_with_its_addresses():
    d = MemoryDaemon(Limits(max_pending=20, max_waiting_per_address=5))
    statuses = [sender_from(d, f"2001:db8:1:2::{n:x}", f"/v6-{n}").response().status for n in range(1, 20)]
    assert statuses.count(200) == 5  # one /64, one client
    assert sender_from(d, "2001:db8:9:9::1", "/other").response().status == 200


def test_active_transfers_are_capped_per_client():
    d = MemoryDaemon(Limits(max_active=10, max_active_per_address=2))
    for n in range(2):
        d.receiver(f"/a{n}")
        assert sender_from(d, "127.0.0.1", f"/a{n}").response().status == 200
    d.receiver("/a2")
    refused = sender_from(d, "127.0.0.1", "/a2")
    assert refused.response().body.endswith(b"[ERROR] Too many active transfers from your address.\n")
    d.receiver("/b0")
    assert b"Streaming to" in sender_from(d, "10.9.9.9", "/b0").response().body  # others still start


def spectator_from(d: MemoryDaemon, host: str, name: str) -> Conn:
    conn = Conn.__new__(Conn)
    conn.transport = HalfCloseTransport(peerAddress=IPv4Address("TCP", host, 50000))
    conn.channel = d.site.buildProtocol(conn.transport.getPeer())
    conn.channel.makeConnection(conn.transport)
    return conn.request("GET", f"/{name}?progress", None, SSE)


def test_one_client_cannot_take_every_spectator_slot_of_a_name():
    d = MemoryDaemon(hub_limits=HubLimits(max_spectators=50))
    taken = [spectator_from(d, "10.0.0.1", "x").response().status for _ in range(60)]
    assert taken.count(200) == 45  # the last 5 are for others
    assert spectator_from(d, "10.0.0.2", "x").response().status == 200


def test_two_clients_cannot_watch_every_path():
    d = MemoryDaemon(hub_limits=HubLimits(max_watched_paths=100))
    for heavy in ("10.0.0.1", "10.0.0.2"):
        for n in range(60):
            spectator_from(d, heavy, f"{heavy}-{n}")
    assert len(d.hub.watches) == 90  # the last 10 are for light clients
    got = spectator_from(d, "10.0.0.3", "mine").response()
    assert got.status == 200


@pytest.mark.parametrize("refused_text", [b"Too many watched pipes from your address"])
def test_share_refusals_say_why(refused_text):
    d = MemoryDaemon(hub_limits=HubLimits(max_watched_paths=10))
    bodies = [spectator_from(d, "10.0.0.1", f"p{n}").response().body for n in range(12)]
    assert any(refused_text in body for body in bodies)
