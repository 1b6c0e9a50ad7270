"""The upload edge, in memory: one way to refuse, one query parser, the
sender's phases, proxy trust, and the request/answer rules of KIT.md section 8.
"""

from __future__ import annotations

import pytest

from hoodypipe.errors import HTTPError
from hoodypipe.names import PartyQuery, Query
from hoodypipe.pipes import Limits
from hoodypipe.proxy import client_host, forwarded_secure, normal_address
from hoodypipe.refusal import ERROR_HEADERS, Rejections, raw_refusal
from hoodypipe.sender import PHASES, Phase
from tests.memhttp import MemoryDaemon

ORIGIN = {"Origin": "https://elsewhere.example"}
EVERY_ANSWER = {name.decode().lower(): value.decode() for name, value in ERROR_HEADERS}


def assert_refusal(response, code: int) -> None:
    assert response.status == code, response
    for name, value in EVERY_ANSWER.items():
        assert response.headers.get(name) == value, (name, response.headers)
    assert response.body.startswith(b"[ERROR] ") and response.body.endswith(b".\n")


# -- one way to refuse ----------------------------------------------------------------


def test_a_senders_refusals_can_be_read_from_another_origin():
    d = MemoryDaemon()
    d.registry.shutting_down = True
    assert_refusal(d.connect().request("PUT", "/x", b"data", ORIGIN).response(), 503)
    d.registry.shutting_down = False
    assert_refusal(d.connect().request("PUT", "/x?n=0", b"data", ORIGIN).response(), 400)
    assert_refusal(d.connect().request("POST", "/x?n=0", b"data", ORIGIN).response(), 400)
    full = MemoryDaemon(Limits(max_pending=1))
    full.sender("/taken")
    assert_refusal(full.connect().request("PUT", "/y", b"data", ORIGIN).response(), 429)


def test_a_receivers_timeout_is_a_full_refusal():
    d = MemoryDaemon()
    receiver = d.receiver("/x?wait=1")
    d.clock.advance(1)
    assert_refusal(receiver.response(), 408)


def test_every_refusal_is_counted_once_by_status():
    d = MemoryDaemon()
    d.connect().request("PUT", "/x?n=0", b"data")  # a sender
    d.receiver("/x?n=0")  # a receiver
    d.receiver("/health")  # a page
    receiver = d.receiver("/x?wait=1")
    d.clock.advance(1)  # a wait that ran out
    assert receiver.response().status == 408
    assert dict(d.registry.rejections) == {400: 2, 404: 1, 408: 1}


def test_refusals_say_their_reason_phrase():
    d = MemoryDaemon(Limits(max_pending=1))
    d.sender("/taken")
    assert d.connect().request("PUT", "/x", b"data").raw.startswith(b"HTTP/1.1 429 Too Many Requests\r\n")
    raw = raw_refusal(HTTPError(429, "Slow down.", {b"Retry-After": b"5"}), Rejections())
    head, body = raw.split(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 429 Too Many Requests\r\n") and b"Retry-After: 5" in head
    assert b"Connection: close" in head and b"Content-Length: %d" % len(body) in head


def test_bad_framing_gets_one_answer_in_the_senders_own_response():
    d = MemoryDaemon()
    conn = d.connect().send(b"PUT /x HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n")
    conn.send(b"zz\r\n")  # the sender waits for receivers; its framing breaks
    assert conn.response().body.endswith(b"[ERROR] Malformed upload.\n") and conn.raw.count(b"HTTP/1.1 ") == 1
    refused = d.connect().request("PUT", "/y?n=0", None, {"Transfer-Encoding": "chunked"})
    refused.send(b"zz\r\n")  # refused first, then broken: still one answer
    assert refused.response().status == 400 and refused.raw.count(b"HTTP/1.1 ") == 1


# -- one parser of a party's query --------------------------------------------------------


@pytest.mark.parametrize(("text", "seconds"), [("2.5", 2.5), ("2.9", 2.9), ("1", 1.0), ("3600", 3600.0)])
def test_wait_takes_fractions(text, seconds):
    assert PartyQuery.parse(Query.parse(f"wait={text}".encode()), 256, 300).wait == seconds


@pytest.mark.parametrize("text", ["0.5", "0", "3600.5", "-1", "1e3", "abc", "", "1."])
def test_bad_waits_are_refused(text):
    with pytest.raises(HTTPError) as error:
        PartyQuery.parse(Query.parse(f"wait={text}".encode()), 256, 300)
    assert error.value.code == 400


def test_a_fractional_wait_timeout_is_kept_for_senders_and_receivers():
    d = MemoryDaemon()
    d.registry.limits.wait_timeout = 0.5
    receiver = d.receiver("/a")
    sender = d.sender("/b")
    d.clock.advance(0.4)
    assert not receiver.raw and b"Timed out" not in sender.raw  # not at once, as int(0.5) made it
    d.clock.advance(0.1)
    assert receiver.response().status == 408 and b"[ERROR] Timed out waiting for receivers." in sender.raw


def test_query_wait_with_fractions_end_to_end_in_memory():
    d = MemoryDaemon()
    receiver = d.receiver("/a?wait=1.5")
    d.clock.advance(1.4)
    assert not receiver.raw
    d.clock.advance(0.1)
    assert receiver.response().status == 408


@pytest.mark.parametrize(
    ("value", "on"),
    [
        ("", True),
        ("1", True),
        ("x", True),
        ("yes", True),
        ("no", False),
        ("0", False),
        ("false", False),
        ("FALSE", False),
    ],
)
def test_download_is_on_for_any_value_but_false_no_0(value, on):
    assert PartyQuery.parse(Query.parse(f"download={value}".encode()), 256, 300).download is on
    assert PartyQuery.parse(Query.parse(b""), 256, 300).download is None


# -- KIT.md section 8 -------------------------------------------------------------------------------


@pytest.mark.parametrize("flag", ["progress", "status", "receive", "download", "_=123"])
def test_a_put_with_a_page_flag_is_an_ordinary_sender(flag):
    d = MemoryDaemon()
    receiver = d.receiver("/x")
    sender = d.connect().request("PUT", f"/x?{flag}", b"hello")
    assert sender.response().status == 200 and sender.response().body.endswith(b"[INFO] Transfer complete.\n")
    assert receiver.response().body == b"hello"


def test_head_is_only_for_pages_health_metrics_and_status():
    d = MemoryDaemon()
    for path in ("/help", "/api/v1/pipe/health", "/api/v1/pipe/metrics", "/x?status"):
        assert d.connect().request("HEAD", path).response().status == 200, path
    for path in ("/x", "/x?progress"):
        got = d.connect().request("HEAD", path).response()
        assert got.status == 405 and got.headers["allow"] == "GET, POST, PUT, OPTIONS", path


@pytest.mark.parametrize("page", ["health", "metrics", "HEALTH/"])
@pytest.mark.parametrize("method", ["PUT", "POST"])
def test_uploads_to_health_and_metrics_are_405(page, method):
    d = MemoryDaemon()
    got = d.connect().request(method, f"/api/v1/pipe/{page}", b"x").response()
    assert_refusal(got, 405)
    assert got.headers["allow"] == "GET, HEAD, OPTIONS"
    assert d.connect().request("OPTIONS", f"/api/v1/pipe/{page}").response().status == 200


def test_a_waiting_receivers_timeout_is_told_to_the_sender_who_waits_on():
    d = MemoryDaemon()
    sender = d.sender("/x?n=2")
    receiver = d.receiver("/x?n=2&wait=1")
    d.clock.advance(1)
    assert receiver.response().status == 408
    assert sender.response().body.endswith(b"[INFO] A receiver disconnected.\n")
    assert d.registry.pipes["x"].sender is not None  # it waits on for others


# -- the sender's phases -----------------------------------------------------------------------------


def test_every_phase_is_reachable_and_gone_is_final():
    reachable = {Phase.PENDING}
    for phase in list(Phase):
        for after in PHASES[phase]:
            reachable.add(after)
    assert reachable == set(Phase)
    assert PHASES[Phase.GONE] == frozenset()
    assert all(Phase.GONE in PHASES[p] for p in Phase if p is not Phase.GONE)


def test_a_refused_small_body_is_drained_and_the_connection_kept():
    d = MemoryDaemon()
    conn = d.connect().request("PUT", "/x?n=0", b"data")
    assert conn.response().status == 400 and not conn.closing
    conn.request("GET", "/x?status")  # the same connection carries the next request
    assert conn.raw.count(b"HTTP/1.1 200 OK") == 1


# -- proxy trust ----------------------------------------------------------------------------------------


PROXIES = frozenset({"127.0.0.1", "::1"})


def test_forwarded_for_is_believed_only_from_a_trusted_proxy():
    assert client_host("10.0.0.9", [b"1.2.3.4"], PROXIES) == "10.0.0.9"
    assert client_host("127.0.0.1", [b"1.2.3.4"], PROXIES) == "1.2.3.4"
    assert client_host("127.0.0.1", [b"6.6.6.6, 1.2.3.4"], PROXIES) == "1.2.3.4"  # the nearest hop
    assert client_host("127.0.0.1", [b"1.2.3.4, 127.0.0.1"], PROXIES) == "1.2.3.4"  # through two of ours


def test_forwarded_values_must_be_addresses():
    assert client_host("127.0.0.1", [b"not-an-address"], PROXIES) == "127.0.0.1"
    assert client_host("127.0.0.1", [b"1.2.3.4, evil"], PROXIES) == "127.0.0.1"
    assert client_host("127.0.0.1", [b"<script>"], PROXIES) == "127.0.0.1"


def test_ipv4_mapped_peers_match_ipv4_proxies():
    assert normal_address("::ffff:127.0.0.1") == "127.0.0.1"
    assert client_host("::ffff:127.0.0.1", [b"1.2.3.4"], PROXIES) == "1.2.3.4"
    assert forwarded_secure("::ffff:127.0.0.1", [b"https"], PROXIES) is True
    assert forwarded_secure("10.0.0.1", [b"https"], PROXIES) is None
