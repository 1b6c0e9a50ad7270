"""The upload path in memory: real HTTPChannels over StringTransports."""

from __future__ import annotations

from hoodypipe.pipes import Limits
from tests.memhttp import MemoryDaemon

LINES_RECEIVER_FIRST = (
    b"[INFO] Waiting for 1 receiver(s) to connect...\n"
    b"[INFO] 1 receiver(s) already connected.\n"
    b"[INFO] Streaming to 1 receiver(s)...\n"
    b"[INFO] Upload complete.\n"
    b"[INFO] Transfer complete.\n"
)


def test_receiver_first_then_chunked_sender():
    d = MemoryDaemon()
    receiver = d.receiver("/api/v1/pipe/a")
    assert receiver.raw == b""  # waiting: nothing sent yet
    sender = d.sender("/api/v1/pipe/a")
    sender.chunk(b"hello ").chunk(b"world").end_chunks()
    got = receiver.response()
    assert got.status == 200 and got.body == b"hello world" and got.complete
    assert "content-type" not in got.headers  # none invented
    assert sender.response().body == LINES_RECEIVER_FIRST
    assert sender.response().complete


def test_sender_first_is_not_read_until_receiver_arrives():
    d = MemoryDaemon()
    sender = d.sender("/b")
    assert not sender.reading
    assert sender.response().body == b"[INFO] Waiting for 1 receiver(s) to connect...\n"
    # Bytes that came with the headers are held, not lost.
    sender.chunk(b"early")
    receiver = d.receiver("/api/v1/pipe/b")
    assert sender.reading
    sender.chunk(b"-late").end_chunks()
    assert receiver.response().body == b"early-late"
    assert b"already connected" not in sender.raw


def test_small_fixed_length_body_that_arrives_before_the_receiver():
    d = MemoryDaemon()
    sender = d.connect().request("PUT", "/c", b"0123456789", {"Content-Type": "application/x-tar"})
    receiver = d.receiver("/c")
    got = receiver.response()
    assert got.body == b"0123456789" and got.complete
    assert got.headers["content-length"] == "10"
    assert got.headers["content-type"] == "application/x-tar"
    assert sender.response().body.endswith(b"[INFO] Upload complete.\n[INFO] Transfer complete.\n")


def test_expect_100_continue_is_answered_once_before_the_status_lines():
    d = MemoryDaemon()
    sender = d.sender("/e", {"Expect": "100-continue"})
    assert sender.raw.startswith(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n")
    assert sender.raw.count(b"100 Continue") == 1


def test_refused_expect_100_gets_no_continue_and_closes():
    d = MemoryDaemon()
    sender = d.sender("/e?n=0", {"Expect": "100-continue"})
    assert sender.raw.startswith(b"HTTP/1.1 400 ")
    assert b"100 Continue" not in sender.raw
    assert sender.closing


def test_backpressure_any_full_receiver_pauses_the_sender():
    d = MemoryDaemon()
    r1 = d.receiver("/bp?n=2")
    r2 = d.receiver("/bp?n=2")
    sender = d.sender("/bp?n=2")
    assert sender.reading
    # What a TCP transport does when its buffer passes the high-water mark.
    r1.channel.pauseProducing()
    assert not sender.reading
    r2.channel.pauseProducing()
    r1.channel.resumeProducing()
    assert not sender.reading  # r2 is still full
    r2.channel.resumeProducing()
    assert sender.reading


def test_transfer_complete_waits_for_a_full_receiver_to_drain():
    d = MemoryDaemon()
    receiver = d.receiver("/drain")
    sender = d.sender("/drain")
    sender.chunk(b"x" * 100)
    receiver.channel.pauseProducing()
    sender.end_chunks()
    assert b"Upload complete" in sender.raw and b"Transfer complete" not in sender.raw
    assert not receiver.response().complete
    receiver.channel.resumeProducing()
    assert b"Transfer complete" in sender.raw and receiver.response().complete


def test_malformed_chunk_mid_stream_aborts_receivers_and_tells_the_sender():
    d = MemoryDaemon()
    receiver = d.receiver("/m")
    sender = d.sender("/m")
    sender.chunk(b"part")
    sender.send(b"zz\r\nnot hex\r\n")
    assert receiver.aborted
    assert not receiver.response().complete
    body = sender.response().body
    assert body.endswith(b"[ERROR] Malformed upload.\n")
    assert b"HTTP/1.1 400" not in sender.raw


def test_sender_lost_mid_stream_aborts_every_receiver():
    d = MemoryDaemon()
    receivers = [d.receiver("/s?n=3") for _ in range(3)]
    sender = d.sender("/s?n=3")
    sender.chunk(b"partial")
    sender.drop()
    for receiver in receivers:
        assert receiver.aborted and not receiver.response().complete
        assert receiver.response().body == b"partial"


def test_one_receiver_of_three_leaving_spares_the_rest():
    d = MemoryDaemon()
    receivers = [d.receiver("/r3?n=3") for _ in range(3)]
    sender = d.sender("/r3?n=3")
    sender.chunk(b"a")
    receivers[0].drop()
    sender.chunk(b"b").end_chunks()
    assert b"[INFO] A receiver disconnected.\n" in sender.raw
    assert sender.response().body.endswith(b"[INFO] Transfer complete.\n")
    for receiver in receivers[1:]:
        assert receiver.response().body == b"ab" and receiver.response().complete


def test_last_receiver_leaving_stops_the_sender():
    d = MemoryDaemon()
    receiver = d.receiver("/last")
    sender = d.sender("/last")
    sender.chunk(b"a")
    receiver.drop()
    assert sender.response().body.endswith(b"[ERROR] All receivers disconnected before transfer completed.\n")
    assert sender.response().complete
    assert sender.closing  # its body never finished: no reuse


def test_waiting_sender_outlives_the_channel_idle_timeout_then_times_out_itself():
    d = MemoryDaemon(Limits(wait_timeout=300))
    sender = d.sender("/w")
    d.clock.advance(120)  # twisted.web's own idle timeout is 60 s
    assert not sender.closing
    d.clock.advance(181)
    assert sender.response().body.endswith(b"[ERROR] Timed out waiting for receivers.\n")


def test_waiting_receiver_times_out_with_408():
    d = MemoryDaemon()
    receiver = d.receiver("/w2?wait=2")
    d.clock.advance(2)
    got = receiver.response()
    assert got.status == 408 and got.body == b"[ERROR] Timed out waiting for sender.\n"


def test_idle_timeout_fails_a_stalled_transfer():
    d = MemoryDaemon(Limits(idle_timeout=4, min_rate=0))
    receiver = d.receiver("/idle")
    sender = d.sender("/idle")
    for _ in range(10):  # with no minimum rate, a trickle keeps it alive
        sender.chunk(b"x")
        d.clock.advance(3)
    assert not receiver.aborted
    d.clock.advance(5)
    assert receiver.aborted
    assert sender.response().body.endswith(b"[ERROR] Idle timeout.\n")


def test_keep_alive_survives_an_early_rejection_with_a_small_body():
    d = MemoryDaemon()
    conn = d.connect().request("PUT", "/k?n=abc", b"small body")
    first = conn.response()
    assert first.status == 400 and first.body.startswith(b"[ERROR] Invalid 'n'")
    assert not conn.closing
    conn.transport.clear()
    conn.request("GET", "/api/v1/pipe/health")
    assert conn.response().status == 200


def test_form_typed_post_is_relayed_unparsed():
    d = MemoryDaemon()
    receiver = d.receiver("/form")
    body = b"a=1&b=2"
    d.connect().request("POST", "/form", body, {"Content-Type": "application/x-www-form-urlencoded"})
    assert receiver.response().body == body


def test_second_sender_is_refused_and_the_first_goes_on():
    d = MemoryDaemon()
    first = d.sender("/two")
    second = d.sender("/two")
    assert second.response().status == 400
    assert second.response().body == b"[ERROR] Another sender is already connected to 'two'.\n"
    receiver = d.receiver("/two")
    first.chunk(b"ok").end_chunks()
    assert receiver.response().body == b"ok"


def test_max_active_refuses_the_starting_receiver_with_429():
    d = MemoryDaemon(Limits(max_active=1))
    d.receiver("/one")
    d.sender("/one")
    d.sender("/other")
    late = d.receiver("/other")
    assert late.response().status == 429
    assert late.response().headers["retry-after"]


def test_max_active_gives_a_starting_sender_its_error_line():
    d = MemoryDaemon(Limits(max_active=1))
    d.receiver("/one")
    d.sender("/one")
    waiting = d.receiver("/other")
    sender = d.sender("/other")
    assert sender.response().status == 200
    assert sender.response().body.endswith(b"[ERROR] Server at maximum active transfer capacity.\n")
    assert waiting.raw == b""  # the receiver keeps waiting


def test_pending_cap():
    d = MemoryDaemon(Limits(max_pending=2))
    d.sender("/p1")
    d.receiver("/p2")
    third = d.sender("/p3")
    assert third.response().status == 429


def test_leaving_receiver_frees_its_slot():
    d = MemoryDaemon()
    first = d.receiver("/slot")
    first.close()
    second = d.receiver("/slot")
    sender = d.sender("/slot")
    sender.chunk(b"z").end_chunks()
    assert second.response().body == b"z"


def test_a_large_body_on_a_get_is_refused_not_buffered():
    d = MemoryDaemon()
    conn = d.connect().send(b"GET /x HTTP/1.1\r\nHost: a\r\nContent-Length: 10000000\r\n\r\n")
    assert conn.response().status == 413
    assert conn.closing


def test_lowercase_put_is_not_an_upload():
    d = MemoryDaemon()
    conn = d.connect().send(b"put /x HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n")
    assert conn.response().status == 405


def test_refused_get_body_with_expect_gets_no_continue():
    d = MemoryDaemon()
    conn = d.connect().send(b"GET /x HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 10000000\r\n\r\n")
    assert conn.raw.startswith(b"HTTP/1.1 413 ") and b"100 Continue" not in conn.raw


def test_a_waiting_sender_that_hangs_up_is_noticed_while_not_read():
    import socket

    from tests.memhttp import HalfCloseTransport

    ours, theirs = socket.socketpair()
    try:
        HalfCloseTransport.fileno = lambda self: ours.fileno()  # a real socket under the fake
        d = MemoryDaemon()
        sender = d.sender("/hup")
        assert not sender.reading
        d.clock.advance(1)
        assert not sender.aborted  # still there
        theirs.shutdown(socket.SHUT_WR)  # a FIN (a close() of a unix socket would be a hang-up)
        d.clock.advance(1)
        # A FIN behind unread bytes: it is read on, to learn whether its body was whole.
        assert sender.reading and not sender.aborted
        sender.channel.readConnectionLost()  # the end of the connection, not of a body
        assert sender.aborted
        sender.drop()
        assert "hup" not in d.registry.pipes
        assert not d.site.hangups.watched
    finally:
        del HalfCloseTransport.fileno
        ours.close()
        theirs.close()


def test_defer_header_holds_the_status_lines_until_the_body_is_in():
    d = MemoryDaemon()
    receiver = d.receiver("/defer")
    sender = d.sender("/defer", {"X-Pipe-Defer-Response": "1", "Expect": "100-continue"})
    assert sender.raw == b"HTTP/1.1 100 Continue\r\n\r\n"  # the body may come; the answer waits
    sender.chunk(b"data")
    assert b"HTTP/1.1 200" not in sender.raw
    sender.end_chunks()
    assert sender.response().body == LINES_RECEIVER_FIRST
    assert receiver.response().body == b"data"


def test_non_utf8_targets_and_bad_hosts_get_one_clean_error_line():
    d = MemoryDaemon()
    for raw in (
        b"GET /api/v1/pipe/caf%E9?status HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET /%FF?status HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET /\x80x?status HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET /x?status HTTP/1.1\r\nHost: " + b"a" * 70 + b".example\r\n\r\n",
        b"GET /x?status HTTP/1.1\r\nHost: a..b\r\n\r\n",
    ):
        got = d.connect().send(raw).response()
        assert got.status in (200, 400), raw
        assert got.status == 200 or got.body.startswith(b"[ERROR] ")


def test_a_refused_request_gets_one_answer_even_if_its_body_is_broken():
    d = MemoryDaemon()
    conn = d.connect().send(b"GET /x?status HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n")
    assert conn.raw.count(b"HTTP/1.1 ") == 1


def test_a_sender_that_half_closes_after_its_whole_body_is_delivered():
    d = MemoryDaemon()
    sender = d.sender("/half").chunk(b"all of it").end_chunks()
    sender.channel.readConnectionLost()  # shutdown(SHUT_WR): it still reads
    assert not sender.aborted
    receiver = d.receiver("/half")
    assert receiver.response().body == b"all of it" and receiver.response().complete
    assert sender.response().body.endswith(b"[INFO] Transfer complete.\n")
    assert sender.closing  # answered, then closed: it sends no other request


def test_a_sender_that_half_closes_before_its_body_ended_has_left():
    d = MemoryDaemon()
    sender = d.sender("/cut").chunk(b"part")
    sender.channel.readConnectionLost()
    assert sender.aborted
    sender.drop()
    assert "cut" not in d.registry.pipes


def test_a_hung_up_waiting_sender_is_read_at_most_a_megabyte():
    import socket

    from tests.memhttp import HalfCloseTransport

    ours, theirs = socket.socketpair()
    try:
        HalfCloseTransport.fileno = lambda self: ours.fileno()
        d = MemoryDaemon()
        sender = d.sender("/big")
        theirs.shutdown(socket.SHUT_WR)
        d.clock.advance(1)
        assert sender.reading
        for _ in range(17):
            if sender.aborted:
                break
            sender.chunk(b"z" * 65536)
        assert sender.aborted  # not held for receivers that are not there
    finally:
        del HalfCloseTransport.fileno
        ours.close()
        theirs.close()


def test_a_waiting_sender_reset_is_gone_at_once():
    import socket

    from tests.memhttp import HalfCloseTransport

    ours, theirs = socket.socketpair()
    try:
        HalfCloseTransport.fileno = lambda self: ours.fileno()
        d = MemoryDaemon()
        sender = d.sender("/rst")
        theirs.close()  # a hang-up, as an RST is
        d.clock.advance(1)
        assert sender.aborted  # gone, whatever it had sent
    finally:
        del HalfCloseTransport.fileno
        ours.close()
        theirs.close()
