"""Failures, timeouts, freed slots and bounded memory, end to end (DESIGN.md section 3)."""

from __future__ import annotations

import hashlib
import threading
import time

import pytest

from ._helpers import (
    Sender,
    deterministic_bytes,
    fetch,
    receiver,
    sha256,
    status,
    unique,
    wait_status,
)

MiB = 1024 * 1024
# curl's exit codes for a transfer cut short: partial file, receive error, bad chunk.
BROKEN_DOWNLOAD = {18, 56}


@pytest.fixture(scope="module")
def short(module_daemon_factory):
    """A daemon with one-second wait and idle timeouts (and no minimum rate: any byte is activity)."""
    return module_daemon_factory("--wait-timeout", "1", "--idle-timeout", "1", "--min-rate", "0")


# -- a sender that dies ---------------------------------------------------------------------


@pytest.mark.parametrize("fixed_length", [False, True])
def test_sender_killed_mid_stream_breaks_every_receiver(daemon, tmp_path, fixed_length):
    name = unique("skill")
    receivers = [receiver(daemon.url(name, "n=2"), keep=False) for _ in range(2)]
    wait_status(daemon, name, state="waiting", activeReceivers=2)
    # curl -T - with its chunked encoding removed and a length declared: a fixed-length body.
    extra = ("-H", "Transfer-Encoding:", "-H", f"Content-Length: {100 * MiB}") if fixed_length else ()
    s = Sender(daemon.url(name, "n=2"), *extra)
    s.feed_async(deterministic_bytes(4 * MiB, seed=10), close=False)
    for r in receivers:
        r.wait_bytes(4 * MiB)
    s.kill()
    for r in receivers:
        rc = r.wait(15)
        assert rc in BROKEN_DOWNLOAD, (rc, r.stderr)
        assert r.nbytes >= 4 * MiB
    final = wait_status(daemon, name, state="failed")
    assert final["reason"] == "Sender disconnected"
    # The name is free again at once.
    r = receiver(daemon.url(name))
    wait_status(daemon, name, state="waiting", activeReceivers=1)
    s = Sender(daemon.url(name), data=b"again")
    assert r.wait(15) == 0 and r.out == b"again"
    assert s.wait(15) == 0


def test_sender_killed_before_start_frees_the_name(daemon):
    """A waiting sender that goes away frees the name for another sender (DESIGN.md section 3)."""
    name = unique("swait")
    s = Sender(daemon.url(name))
    s.feed(b"never")  # its body is not over: killed, it has left (a whole body and a FIN is delivered)
    wait_status(daemon, name, state="waiting", hasSender=True)
    s.kill()
    wait_status(daemon, name, hasSender=False)
    s2 = Sender(daemon.url(name), data=b"second sender")
    wait_status(daemon, name, state="waiting", hasSender=True)
    r = receiver(daemon.url(name))
    assert r.wait(15) == 0 and r.out == b"second sender"
    assert s2.wait(15) == 0


# -- receivers that die ------------------------------------------------------------------------


def test_only_receiver_killed_stops_the_sender(daemon):
    name = unique("rkill")
    r = receiver(daemon.url(name), keep=False)
    wait_status(daemon, name, state="waiting", activeReceivers=1)
    s = Sender(daemon.url(name))
    s.feed(deterministic_bytes(2 * MiB, seed=11))
    r.wait_bytes(2 * MiB)
    r.kill()
    final = wait_status(daemon, name, state="failed")
    assert final["reason"] == "All receivers disconnected"
    # curl -T - reads the reply only once its input ends.
    s.close_stdin()
    s.wait(15)
    assert s.lines == [
        "[INFO] Waiting for 1 receiver(s) to connect...",
        "[INFO] 1 receiver(s) already connected.",
        "[INFO] Streaming to 1 receiver(s)...",
        "[ERROR] All receivers disconnected before transfer completed.",
    ]


def test_one_of_three_receivers_killed_the_rest_complete(daemon):
    name = unique("r3kill")
    data = deterministic_bytes(24 * MiB, seed=12)
    survivors = [receiver(daemon.url(name, "n=3"), keep=False) for _ in range(2)]
    victim = receiver(daemon.url(name, "n=3"), keep=False)
    wait_status(daemon, name, state="waiting", activeReceivers=3)
    s = Sender(daemon.url(name, "n=3"))
    s.feed(data[: 4 * MiB])
    victim.wait_bytes(2 * MiB)
    victim.kill()
    wait_status(daemon, name, state="streaming", activeReceivers=2)
    s.feed_async(data[4 * MiB :], close=True)
    for r in survivors:
        assert r.wait(30) == 0, r.stderr
        assert r.nbytes == len(data) and r.digest == sha256(data)
    assert s.wait(30) == 0
    assert s.lines == [
        "[INFO] Waiting for 3 receiver(s) to connect...",
        "[INFO] 3 receiver(s) already connected.",
        "[INFO] Streaming to 3 receiver(s)...",
        "[INFO] A receiver disconnected.",
        "[INFO] Upload complete.",
        "[INFO] Transfer complete.",
    ]
    assert status(daemon, name)["state"] == "complete"


def test_all_three_receivers_killed_one_by_one(daemon):
    name = unique("r3all")
    rs = [receiver(daemon.url(name, "n=3"), keep=False) for _ in range(3)]
    wait_status(daemon, name, state="waiting", activeReceivers=3)
    s = Sender(daemon.url(name, "n=3"))
    s.feed(b"z" * MiB)
    for r in rs:
        r.wait_bytes(MiB)
    for k, r in enumerate(rs[:2]):
        r.kill()
        wait_status(daemon, name, state="streaming", activeReceivers=2 - k)
    rs[2].kill()
    wait_status(daemon, name, state="failed")
    s.close_stdin()
    s.wait(15)
    assert s.lines[-3:] == [
        "[INFO] A receiver disconnected.",
        "[INFO] A receiver disconnected.",
        "[ERROR] All receivers disconnected before transfer completed.",
    ]


# -- waiting parties that leave ---------------------------------------------------------------


def test_waiting_receiver_that_leaves_frees_its_slot(daemon):
    name = unique("rleave")
    first = receiver(daemon.url(name))
    wait_status(daemon, name, state="waiting", activeReceivers=1)
    first.kill()
    wait_status(daemon, name, activeReceivers=0)
    second = receiver(daemon.url(name))
    wait_status(daemon, name, state="waiting", activeReceivers=1)
    s = Sender(daemon.url(name), data=b"for the second")
    assert second.wait(15) == 0 and second.out == b"for the second"
    assert s.wait(15) == 0
    assert s.lines[1] == "[INFO] 1 receiver(s) already connected."


def test_waiting_receiver_of_three_that_leaves_frees_its_slot(daemon):
    name = unique("r3leave")
    rs = [receiver(daemon.url(name, "n=3")) for _ in range(2)]
    wait_status(daemon, name, state="waiting", activeReceivers=2)
    rs[0].kill()
    wait_status(daemon, name, state="waiting", activeReceivers=1)
    rs += [receiver(daemon.url(name, "n=3")) for _ in range(2)]
    wait_status(daemon, name, state="waiting", activeReceivers=3)
    s = Sender(daemon.url(name, "n=3"), data=b"three")
    for r in rs[1:]:
        assert r.wait(15) == 0 and r.out == b"three"
    assert s.wait(15) == 0


# -- timeouts ------------------------------------------------------------------------------------------


def test_waiting_receiver_times_out_408(short):
    name = unique("rto")
    started = time.monotonic()
    answer = fetch(short, f"/api/v1/pipe/{name}", timeout=15)
    took = time.monotonic() - started
    assert answer.status == 408
    assert answer.body == b"[ERROR] Timed out waiting for sender.\n"
    assert 0.9 <= took < 5, took
    assert status(short, name)["state"] in ("idle", "failed")


def test_waiting_receiver_times_out_waiting_for_other_receivers(short):
    """n=2 with the sender there: a receiver whose wait ends lacks receivers, not the sender."""
    name = unique("rto2")
    s = Sender(short.url(name, "n=2&wait=10"), data=b"x")
    wait_status(short, name, state="waiting", hasSender=True)
    answer = fetch(short, f"/api/v1/pipe/{name}?n=2", timeout=15)
    assert answer.status == 408
    assert answer.body == b"[ERROR] Timed out waiting for receivers.\n"
    assert status(short, name)["hasSender"] is True
    s.kill()


def test_per_request_wait_overrides_the_default(daemon):
    """The shared daemon waits 30 s by default; ``?wait=1`` makes it one second."""
    name = unique("qwait")
    started = time.monotonic()
    answer = fetch(daemon, f"/{name}?wait=1", timeout=15)
    assert answer.status == 408
    assert answer.body == b"[ERROR] Timed out waiting for sender.\n"
    assert 0.9 <= time.monotonic() - started < 5


def test_waiting_sender_times_out(short):
    name = unique("sto")
    s = Sender(short.url(name), data=b"nobody listens")
    assert s.wait(15) == 0
    assert s.lines == [
        "[INFO] Waiting for 1 receiver(s) to connect...",
        "[ERROR] Timed out waiting for receivers.",
    ]
    # The name is free afterwards.
    r = receiver(short.url(name, "wait=10"))
    wait_status(short, name, state="waiting", activeReceivers=1)
    s = Sender(short.url(name, "wait=10"), data=b"now")
    assert r.wait(15) == 0 and r.out == b"now"
    assert s.wait(15) == 0


def test_waiting_sender_with_some_receivers_times_out(short):
    name = unique("sto3")
    r = receiver(short.url(name, "n=2&wait=10"))
    wait_status(short, name, state="waiting", activeReceivers=1)
    s = Sender(short.url(name, "n=2"), data=b"x")
    assert s.wait(15) == 0
    assert s.lines[-1] == "[ERROR] Timed out waiting for receivers."
    r.kill()


def test_stalled_sender_hits_the_idle_timeout(short):
    name = unique("stall")
    # ?wait=10: only the idle timeout (1 s) is under test here.
    r = receiver(short.url(name, "wait=10"), keep=False)
    wait_status(short, name, state="waiting", activeReceivers=1)
    s = Sender(short.url(name, "wait=10"))
    s.feed(b"s" * 65536)
    r.wait_bytes(65536)
    # The sender now sends nothing, without closing: the receiver's download must fail.
    rc = r.wait(15)
    assert rc in BROKEN_DOWNLOAD, (rc, r.stderr)
    final = wait_status(short, name, state="failed")
    assert final["reason"] == "Idle timeout"
    s.close_stdin()
    s.wait(15)
    assert s.lines == [
        "[INFO] Waiting for 1 receiver(s) to connect...",
        "[INFO] 1 receiver(s) already connected.",
        "[INFO] Streaming to 1 receiver(s)...",
        "[ERROR] Idle timeout.",
    ]


def test_idle_timeout_spares_a_trickling_transfer(short):
    """Bytes moving every 0.3 s keep a 1 s idle timeout from firing."""
    name = unique("trickle")
    r = receiver(short.url(name, "wait=10"))
    wait_status(short, name, state="waiting", activeReceivers=1)
    s = Sender(short.url(name, "wait=10"))
    for i in range(8):
        s.feed(b"%d" % i)
        r.wait_bytes(i + 1)
        time.sleep(0.3)  # the point of this test is the gap between bytes
    s.close_stdin()
    assert s.wait(15) == 0 and r.wait(15) == 0
    assert r.out == b"01234567"
    assert s.lines[-1] == "[INFO] Transfer complete."


# -- a slow receiver: backpressure and flat memory ------------------------------------------------


@pytest.mark.slow
def test_slow_receiver_paces_the_sender_and_memory_stays_flat(daemon_factory):
    d = daemon_factory()
    size = 512 * MiB
    rate = 64 * MiB  # curl's --limit-rate 64M is 64 MiB/s
    block = deterministic_bytes(MiB, seed=13)
    expected = hashlib.sha256()
    for _ in range(size // MiB):
        expected.update(block)
    name = unique("slow")
    fetch(d, "/api/v1/pipe/health")
    baseline = d.rss()
    peak = baseline
    sampling = True

    def sample():
        nonlocal peak
        while sampling:
            peak = max(peak, d.rss())
            time.sleep(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        r = receiver(d.url(name), "--limit-rate", "64M", keep=False)
        wait_status(d, name, state="waiting", activeReceivers=1)
        s = Sender(d.url(name))

        def produce():
            for _ in range(size // MiB):
                s.proc.stdin.write(block)

        started = time.monotonic()
        s.feed_async(produce, close=True)
        assert r.wait(60) == 0, r.stderr
        elapsed = time.monotonic() - started
        assert s.wait(30) == 0
        s.join_writer(10)
    finally:
        sampling = False
        sampler.join(5)
    assert r.nbytes == size and r.digest == expected.hexdigest()
    assert s.lines[-1] == "[INFO] Transfer complete."
    ideal = size / rate
    assert elapsed >= 0.8 * ideal, f"{elapsed:.1f}s for {ideal:.1f}s of rate-limited transfer"
    # The sender was throttled: it could not hand over its whole input much before the
    # receiver had taken it (a relay that buffered would take it all in a second or two).
    fed_after = s.fed_at - started
    assert fed_after >= 0.7 * ideal, f"the sender's input was consumed after {fed_after:.1f}s"
    growth = peak - baseline
    print(
        f"slow receiver: {elapsed:.1f}s (ideal {ideal:.1f}s), sender fed after {fed_after:.1f}s, "
        f"RSS {baseline / MiB:.1f} MiB + {growth / MiB:.1f} MiB peak growth"
    )
    assert growth < 32 * MiB, f"RSS grew by {growth / MiB:.1f} MiB (baseline {baseline / MiB:.1f} MiB)"
