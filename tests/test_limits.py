"""Hostile clients in memory: slow headers, too many connections or waiting parties."""

from __future__ import annotations

from hoodypipe.channel import HEADER_TIMEOUT
from hoodypipe.pipes import Limits
from tests.memhttp import MemoryDaemon


def test_headers_trickled_too_slowly_are_cut_off():
    d = MemoryDaemon()
    conn = d.connect().send(b"GET /api/v1/pipe/health HTTP/1.1\r\n")
    for _ in range(int(HEADER_TIMEOUT) - 1):
        d.clock.advance(1)
        conn.send(b"X")  # a byte a second keeps twisted.web's idle timer happy
    assert not conn.aborted
    d.clock.advance(1)
    assert conn.aborted


def test_a_connection_that_never_sends_a_request_is_closed():
    d = MemoryDaemon()
    conn = d.connect()
    d.clock.advance(HEADER_TIMEOUT)
    assert conn.aborted


def test_a_paused_transfer_outlives_the_header_deadline():
    d = MemoryDaemon()
    receiver = d.receiver("/t")
    sender = d.sender("/t")
    receiver.channel.pauseProducing()
    d.clock.advance(HEADER_TIMEOUT * 5)  # past twisted.web's 60 s too, short of --idle-timeout
    assert not sender.closing and not receiver.aborted


def test_keep_alive_gets_a_fresh_header_deadline_per_request():
    d = MemoryDaemon()
    conn = d.connect()
    for _ in range(3):
        d.clock.advance(HEADER_TIMEOUT - 1)
        conn.request("GET", "/api/v1/pipe/health")
    assert not conn.aborted


def test_connections_per_address_are_capped():
    d = MemoryDaemon()
    d.site.max_per_address = 2
    first, second, third = d.connect(), d.connect(), d.connect()
    assert first.raw == second.raw == b""
    assert third.raw.startswith(b"HTTP/1.1 429 ") and third.closing
    assert b"[ERROR] Too many connections from your address.\n" in third.raw
    third.close()
    first.close()
    assert d.connect().raw == b""


def test_waiting_parties_per_address_are_capped_and_released():
    d = MemoryDaemon(Limits(max_waiting_per_address=2))
    d.receiver("/a")
    d.sender("/b")
    third = d.receiver("/c")
    assert third.response().status == 429
    d.sender("/a")  # a starts: its receiver no longer waits
    assert d.receiver("/c").raw == b""
    assert d.registry.waiting_by_address["127.0.0.1"] == 2


def test_a_trusted_proxy_names_the_client_and_is_not_capped():
    d = MemoryDaemon(Limits(max_waiting_per_address=1))
    d.site.trusted_proxies = frozenset({"127.0.0.1"})
    d.site.max_per_address = 1
    a = d.receiver("/a", {"X-Forwarded-For": "198.51.100.7"})
    b = d.receiver("/b", {"X-Forwarded-For": "spoofed, 198.51.100.8"})
    assert a.raw == b.raw == b""  # two connections, two clients: neither capped
    again = d.receiver("/c", {"X-Forwarded-For": "198.51.100.7"})
    assert again.response().status == 429  # that client already waits once
    assert d.registry.waiting_by_address == {"198.51.100.7": 1, "198.51.100.8": 1}
    health = d.receiver("/api/v1/pipe/health", {"X-Forwarded-For": "203.0.113.9"}).response()
    assert b'"ip":"203.0.113.9"' in health.body


def test_x_forwarded_proto_from_a_trusted_proxy_sets_the_scheme_in_help():
    d = MemoryDaemon()
    d.site.trusted_proxies = frozenset({"127.0.0.1"})
    got = d.receiver("/help", {"X-Forwarded-Proto": "https"}).response()
    assert b"https://pipe.test/api/v1/pipe/mypipe" in got.body


def test_forwarded_headers_from_anyone_else_are_ignored():
    d = MemoryDaemon()
    got = d.receiver("/api/v1/pipe/health", {"X-Forwarded-For": "203.0.113.9"}).response()
    assert b'"ip":"127.0.0.1"' in got.body
