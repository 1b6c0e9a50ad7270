"""Fault injection against the installed daemon (issue 4, "Faults").

Many concurrent transfers, with senders and receivers killed, reset, stalled or sending
garbage at random points, and the daemon itself restarted mid-transfer. The parties and the
contract they check (every clean end sha256-identical, every broken transfer visibly broken
and on the side channel) are tests/support/faults.py, which bench/soak.py runs for minutes;
here, afterwards, the registry is also empty (metrics: pending, active and spectators all 0)
and the daemon's RSS is back near its baseline.

The random plan comes from one seeded ``random.Random``: the seed is printed, and
``HOODYPIPE_FAULT_SEED=<seed>`` replays it.

The plans include issue 9's sly clients (a sender half-closing after its whole body, a
waiting receiver that pipelined > 16 KiB and closed, a sender trickling below --min-rate).
Two ways of half-closing are known to fail against the daemon today (``HALF_CLOSE_BUGS``):
they are left out of the random plans and expected to fail, strictly, in their own test, so
that the day the daemon delivers them that test says so and they join the plans.
"""

from __future__ import annotations

import dataclasses
import os
import random
import signal
import threading
import time
from typing import Any

import pytest

from tests.support.faults import (
    BROKEN_CURL,
    HALF_CLOSE_VARIANTS,
    IDLE_TIMEOUT,
    PREFIX,
    CurlReceiver,
    CurlSender,
    MiB,
    Party,
    PipeRun,
    Plan,
    RawReceiver,
    RawSender,
    Spectator,
    assert_no_traceback,
    check,
    connect,
    http_request,
    make_plan,
    metrics,
    outcomes_of,
    reset,
    sha,
    state_of,
    status_of,
    wait_registry_empty,
    warm_up,
)

from ._helpers import fetch, wait_for

PIPES = 60
ROUNDS = 3
CAPS = ("--max-connections-per-address", "2048", "--max-waiting-per-address", "2048")
# Half-closing senders the daemon does not deliver (found by these faults; see
# tests/support/faults.py HALF_CLOSE_VARIANTS), each with why (an xfail, strict, and
# out of the random plans): none now.
HALF_CLOSE_BUGS: dict[str, str] = {}
PLANNED_HALF_CLOSES = tuple(v for v in HALF_CLOSE_VARIANTS if v not in HALF_CLOSE_BUGS)


def _seed() -> int:
    value = os.environ.get("HOODYPIPE_FAULT_SEED")
    return int(value) if value else random.SystemRandom().randrange(1 << 32)


# -- the tests ----------------------------------------------------------------------------------


def run_round(daemon, rng: random.Random, first_index: int, count: int) -> tuple[list[PipeRun], float, int]:
    """``count`` pipes at once; returns the runs, the elapsed time and the daemon's peak RSS."""
    runs = [PipeRun(daemon, make_plan(rng, first_index + i, PLANNED_HALF_CLOSES), rng) for i in range(count)]
    started = time.monotonic()
    peak = daemon.rss()
    for run in runs:
        run.thread.start()
        time.sleep(rng.random() * 0.1)
    deadline = time.monotonic() + 75
    for run in runs:
        while run.thread.is_alive() and time.monotonic() < deadline:
            run.thread.join(0.2)
            peak = max(peak, daemon.rss())
        if run.thread.is_alive():
            run.outcome.problems.append("driver still running after 75 s")
    for run in runs:
        if run.outcome.stalled_spectator is not None:
            run.outcome.stalled_spectator.close()
    return runs, time.monotonic() - started, peak


@pytest.mark.slow
def test_chaos_of_concurrent_transfers_with_random_faults(daemon_factory):
    """Rounds of 60 concurrent pipes (0..8 MiB, n 1..3) with random faults: nothing corrupted,
    nothing silently truncated, every failure on the side channel, nothing leaked."""
    seed = _seed()
    print(f"\nfault seed {seed} (replay: HOODYPIPE_FAULT_SEED={seed})")
    rng = random.Random(seed)
    daemon = daemon_factory("--idle-timeout", str(IDLE_TIMEOUT), "--wait-timeout", "30", *CAPS)
    warm_up(daemon)
    wait_registry_empty(daemon)
    before = outcomes_of(metrics(daemon))
    baseline = peak = daemon.rss()
    failures: list[str] = []
    seen: dict[str, float] = {}
    total = 0
    for round_ in range(ROUNDS):
        runs, elapsed, round_peak = run_round(daemon, rng, round_ * PIPES, PIPES)
        peak = max(peak, round_peak)
        outcomes: dict[str, int] = {}
        for run in runs:
            problems = check(run.outcome)
            done = run.outcome.done or {}
            key = done.get("reason") or done.get("state") or "none"
            outcomes[key] = outcomes.get(key, 0) + 1
            if run.outcome.done:
                seen[key] = seen.get(key, 0) + 1
            print(f"  {run.plan.describe()} -> {done.get('state')}/{done.get('reason')}")
            if problems:
                failures.append(f"{run.plan.describe()}:\n    " + "\n    ".join(problems))
        size = sum(run.plan.size for run in runs)
        total += size
        print(
            f"round {round_}: {len(runs)} pipes, {size / MiB:.0f} MiB, {elapsed:.1f}s, {outcomes}, "
            f"RSS now {daemon.rss() / MiB:.1f} MiB"
        )
    assert not failures, f"seed {seed}: {len(failures)} pipe(s) broke the contract:\n" + "\n".join(failures)
    # The registry is empty, every outcome was counted, and memory went back down.
    after = wait_registry_empty(daemon)
    counted = {k: v - before.get(k, 0) for k, v in outcomes_of(after).items() if v - before.get(k, 0)}
    assert counted == seen, f"metrics count {counted}, the spectators saw {seen}"
    end = daemon.rss()
    settle = time.monotonic() + 10
    while end - baseline >= 40 * MiB and time.monotonic() < settle:
        time.sleep(0.5)
        end = daemon.rss()
    print(
        f"chaos: {ROUNDS * PIPES} pipes, {total / MiB:.0f} MiB, outcomes {seen}; "
        f"RSS {baseline / MiB:.1f} -> peak {peak / MiB:.1f} -> {end / MiB:.1f} MiB"
    )
    assert end - baseline < 40 * MiB, f"RSS {end / MiB:.1f} MiB after, {baseline / MiB:.1f} MiB before"
    assert_no_traceback(daemon)


HALF_CLOSE_SIZES = {
    "paused": (1, 1000, 40_000, 90_000),
    "one_write": (0, 1, 1000, 16_000),
    "streaming": (24 * MiB,) * 4,  # the bug shows in most runs of this size: one of four is enough
}


@pytest.mark.parametrize(
    "variant",
    [
        pytest.param(v, marks=pytest.mark.xfail(strict=True, reason=HALF_CLOSE_BUGS[v])) if v in HALF_CLOSE_BUGS else v
        for v in HALF_CLOSE_VARIANTS
    ],
)
def test_a_sender_that_half_closes_after_its_whole_body_is_delivered(daemon_factory, variant):
    """``shutdown(SHUT_WR)`` after the whole body (``nc -N``): while the sender waits for its
    receivers ("paused": the FIN behind bytes the daemon has not read; "one_write": head, body
    and FIN at once), or once it streams to receivers that came first ("streaming"). Each is a
    valid client: its receivers get every byte and its last line is ``Transfer complete``."""
    seed = _seed()
    print(f"\nfault seed {seed}")
    rng = random.Random(seed)
    daemon = daemon_factory("--wait-timeout", "5", *CAPS)
    runs = []
    for i, size in enumerate(HALF_CLOSE_SIZES[variant]):
        n = rng.choice((1, 2))
        plan = Plan(
            index=i,
            name=f"halfclose-{variant}-{i}-{rng.getrandbits(32):08x}",
            size=size,
            n=n,
            fault="sender_half_close",
            at=size,
            receivers_first=variant == "streaming",
            curl_sender=False,
            curl_receivers=[False] * n,
            chunked=i % 2 == 0,
            variant=variant,
        )
        runs.append(PipeRun(daemon, plan, rng, timeout=30))
    for run in runs:
        run.thread.start()
    failures = []
    for run in runs:
        run.thread.join(60)
        problems = check(run.outcome)
        if run.outcome.half_closed_waiting is False:
            problems.append("0.1 s after its half-close, the pipe no longer waited with it as its sender")
        if problems:
            failures.append(f"{run.plan.describe()}:\n    " + "\n    ".join(problems))
    assert not failures, f"seed {seed}: {len(failures)} half-closing sender(s) not delivered:\n" + "\n".join(failures)
    wait_registry_empty(daemon)
    assert_no_traceback(daemon)


def _slow_sender(daemon, name: str, n: int, data: bytes, rng: random.Random) -> RawSender:
    """A raw chunked sender that trickles: 32 KiB every 50 ms."""
    sender = RawSender(daemon, name, n, data, chunked=True, rng=rng)
    sender.steps = [32 * 1024] * (len(data) // (32 * 1024)) + (
        [len(data) % (32 * 1024)] if len(data) % (32 * 1024) else []
    )
    original = sender._frame

    def paced(piece):
        time.sleep(0.05)
        return original(piece)

    sender._frame = paced  # type: ignore[method-assign]
    return sender


def _on_port(daemon, port: int):
    """The same daemon, addressed through the fixed port it also listens on."""
    return dataclasses.replace(daemon, port=port)


def _listen_on(daemon) -> tuple[str, str]:
    """Options for a new daemon to listen on the port the kernel gave ``daemon`` (its first
    listener, from the port file, keeps a port of its own)."""
    return ("--listen", f"tcp:{daemon.port}:interface={daemon.host}")


def test_sigterm_drains_then_fails_streaming_transfers_visibly(daemon_factory):
    """SIGTERM with --drain-timeout 1: waiting parties told at once, new pipes 503, a transfer
    ending in the window completes, the rest fail visibly with ``Server is shutting down``;
    a new daemon on the same port then serves."""
    seed = _seed()
    print(f"\nfault seed {seed}")
    rng = random.Random(seed)
    first = daemon_factory("--drain-timeout", "1", "--wait-timeout", "30", *CAPS)
    streams = []
    for i in range(4):
        name = f"drain-{i}-{rng.getrandbits(32):08x}"
        n = rng.choice((1, 2))
        data = rng.randbytes(8 * MiB)
        spectator = Spectator(first, name).start()
        assert spectator.greeted.wait(10)
        receivers = [(CurlReceiver if rng.random() < 0.3 else RawReceiver)(first, name, n, data) for _ in range(n)]
        for r in receivers:
            r.start()
        sender = _slow_sender(first, name, n, data, rng).start()
        streams.append((name, data, spectator, receivers, sender))
    # A transfer whose last bytes come just after SIGTERM: it completes within the drain.
    late_name = f"drain-late-{rng.getrandbits(32):08x}"
    late_data = rng.randbytes(512 * 1024)
    late_spectator = Spectator(first, late_name).start()
    assert late_spectator.greeted.wait(10)
    late_receiver = RawReceiver(first, late_name, 1, late_data).start()
    late_sender = RawSender(first, late_name, 1, late_data, chunked=True, rng=rng)
    release = threading.Event()
    head, tail = 400 * 1024, len(late_data) - 400 * 1024
    late_sender.steps = [head, tail]
    original = late_sender._frame

    def gated(piece):
        if len(piece) == tail and late_sender.sent == head:
            release.wait(10)
        return original(piece)

    late_sender._frame = gated  # type: ignore[method-assign]
    late_sender.start()
    # Waiting parties: a receiver alone, a sender alone.
    lonely_receiver = RawReceiver(first, f"drain-lonely-r-{rng.getrandbits(32):08x}", 1, b"").start()
    lonely_sender = RawSender(
        first, f"drain-lonely-s-{rng.getrandbits(32):08x}", 1, b"x" * 1000, chunked=True, rng=rng, wait_streaming=False
    ).start()
    wait_for(
        lambda: all(r.got > 0 for _, _, _, rs, _ in streams for r in rs) and late_receiver.got >= head,
        30,
        "every transfer to be streaming",
    )
    wait_for(lambda: metrics(first).get("hoodypipe_pending_pipes") == 2, 10, "the lonely parties to wait")
    signalled = time.monotonic()
    first.process.send_signal(signal.SIGTERM)
    time.sleep(0.2)
    release.set()
    # A new pipe during the drain is refused.
    refused = fetch(first, f"{PREFIX}drain-new-{rng.getrandbits(32):08x}", timeout=5)
    assert refused.status == 503 and refused.body == b"[ERROR] Server is shutting down.\n", refused
    assert lonely_receiver.join(5), "the waiting receiver was not told at once"
    assert lonely_receiver.status == 503 and lonely_receiver.error_body == b"[ERROR] Server is shutting down.\n"
    assert lonely_sender.join(5), "the waiting sender was not told at once"
    assert lonely_sender.lines[-1:] == ["[ERROR] Server is shutting down."], lonely_sender.lines
    assert time.monotonic() - signalled < 3
    # twistd re-raises the signal it stopped on once the reactor has stopped.
    assert first.process.wait(20) in (0, -signal.SIGTERM), "the daemon did not exit cleanly after SIGTERM"
    assert "draining 5 transfer(s)" in first.log_text()
    problems = []
    # The late transfer completed inside the window.
    for party in (late_receiver, late_sender, late_spectator):
        assert party.join(10)
    assert late_spectator.done and late_spectator.done["state"] == "complete", late_spectator.done
    assert late_receiver.clean and late_receiver.got == len(late_data) and late_receiver.digest == sha(late_data)
    assert late_sender.lines[-1] == "[INFO] Transfer complete.", late_sender.lines
    for name, data, spectator, receivers, sender in streams:
        for party in (*receivers, sender, spectator):
            if not party.join(15):
                problems.append(f"{name}: a {party.role} still running")
        if (
            not spectator.done
            or spectator.done["state"] != "failed"
            or spectator.done["reason"] != "Server is shutting down"
        ):
            problems.append(f"{name}: spectator's done is {spectator.done} ({spectator.broken})")
        if sender.lines[-1:] != ["[ERROR] Server is shutting down."]:
            problems.append(f"{name}: sender's lines {sender.lines[-2:]} ({sender.broken})")
        for r in receivers:
            if isinstance(r, RawReceiver):
                if r.clean or r.mismatch_at is not None or r.got >= len(data):
                    problems.append(f"{name}: raw receiver clean={r.clean} mismatch={r.mismatch_at} got={r.got}")
            else:
                rc = r.curl.returncode
                if rc not in BROKEN_CURL or r.curl.out != data[: len(r.curl.out)]:
                    problems.append(f"{name}: curl receiver exited {rc} with {len(r.curl.out)} bytes")
    assert not problems, "\n".join(problems)
    # A new daemon on the same port takes over.
    second = _on_port(daemon_factory(*_listen_on(first), *CAPS), first.port)
    name = f"drain-after-{rng.getrandbits(32):08x}"
    data = rng.randbytes(3 * MiB + 17)
    r = CurlReceiver(second, name, 1, data).start()
    wait_for(lambda: state_of(second, name) == "waiting", 10, "the receiver on the new daemon")
    s = CurlSender(second, name, 1, data).start()
    assert r.join(30) and s.join(30)
    assert r.curl.returncode == 0 and r.curl.digest == sha(data)
    wait_registry_empty(second)
    assert_no_traceback(first)
    assert_no_traceback(second)


def test_sigkill_mid_transfer_breaks_every_receiver_and_a_restart_serves(daemon_factory):
    """The daemon killed outright: every receiver sees a broken download, never a clean end;
    a new daemon on the same port serves the same names afresh."""
    seed = _seed()
    print(f"\nfault seed {seed}")
    rng = random.Random(seed)
    first = daemon_factory(*CAPS)
    streams = []
    for i in range(5):
        name = f"kill9-{i}-{rng.getrandbits(32):08x}"
        n = rng.choice((1, 2, 3))
        data = rng.randbytes(16 * MiB)
        receivers: list[Party] = []
        for _ in range(n):
            receivers.append((CurlReceiver if rng.random() < 0.5 else RawReceiver)(first, name, n, data))
            receivers[-1].start()
        wait_for(lambda name=name: state_of(first, name) == "waiting", 10, "receivers")
        if i % 2:
            sender: Party = CurlSender(first, name, n, data, hold_back_from=rng.randrange(MiB, 8 * MiB)).start()
        else:
            sender = _slow_sender(first, name, n, data, rng).start()
        streams.append((name, data, receivers, sender))
    wait_for(lambda: all(r.got > 0 for _, _, rs, _ in streams for r in rs), 30, "every transfer to stream")
    time.sleep(rng.random() * 0.5)
    first.process.kill()
    first.process.wait(10)
    problems = []
    for name, data, receivers, sender in streams:
        if isinstance(sender, CurlSender):
            sender.curl.close_stdin()  # curl -T - reads nothing while its stdin idles
        for party in (*receivers, sender):
            if not party.join(20):
                problems.append(f"{name}: a {party.role} still running")
        for r in receivers:
            if isinstance(r, RawReceiver):
                if r.clean or r.mismatch_at is not None or r.broken is None:
                    problems.append(f"{name}: raw receiver clean={r.clean} mismatch={r.mismatch_at} broken={r.broken}")
            else:
                rc = r.curl.returncode
                if rc not in BROKEN_CURL or r.curl.out != data[: len(r.curl.out)]:
                    problems.append(f"{name}: curl receiver exited {rc} with {len(r.curl.out)} bytes")
        if isinstance(sender, CurlSender) and sender.curl.returncode == 0:
            problems.append(f"{name}: curl sender exited 0 after the daemon died")
    assert not problems, "\n".join(problems)
    second = _on_port(daemon_factory(*_listen_on(first), *CAPS), first.port)
    name, data = streams[0][0], rng.randbytes(2 * MiB)
    assert state_of(second, name) == "idle"
    r = RawReceiver(second, name, 1, data).start()
    wait_for(lambda: state_of(second, name) == "waiting", 10, "the receiver on the new daemon")
    s = RawSender(second, name, 1, data, chunked=False, rng=rng).start()
    assert r.join(30) and s.join(30)
    assert r.clean and r.digest == sha(data) and s.lines[-1] == "[INFO] Transfer complete."
    wait_registry_empty(second)
    assert_no_traceback(second)


def test_last_receiver_leaving_after_the_upload_ended_fails_the_transfer(daemon_factory):
    """The sender's whole body has been read, but the only receiver's buffer is still full
    (the daemon waits for it to drain) when that receiver hangs up: the transfer failed.
    The sender must not be told ``Transfer complete`` nor spectators see ``complete``.

    Reaching that state depends on the kernel's buffers, so the body size is searched:
    too small and the daemon hands everything to the kernel (a legitimate completion),
    too large and the receiver blocks before the end of the body is read."""
    daemon = daemon_factory("--idle-timeout", "30", *CAPS)
    size, step = int(3.5 * MiB), 256 * 1024
    reached = None
    for attempt in range(14):
        name = f"lastleft-{attempt}-{random.getrandbits(32):08x}"
        data = random.randbytes(size)
        spectator = Spectator(daemon, name).start()
        assert spectator.greeted.wait(10)
        victim = RawReceiver(daemon, name, 1, data, action="stall", at=1, stall_for=30).start()
        wait_for(lambda name=name: state_of(daemon, name) == "waiting", 10, "the receiver")
        sender = RawSender(
            daemon, name, 1, data, chunked=False, rng=random.Random(attempt), wait_streaming=False
        ).start()
        snap: dict[str, Any] = {}
        last_bytes, since = -1, time.monotonic()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            snap = status_of(daemon, name)
            if snap["state"] == "waiting":
                time.sleep(0.02)
                continue
            if snap["state"] != "streaming" or snap["bytes"] == size:
                break
            if snap["bytes"] != last_bytes:
                last_bytes, since = snap["bytes"], time.monotonic()
            elif snap["bytes"] > 0 and time.monotonic() - since > 0.5:
                break  # blocked before the end of the body
            time.sleep(0.02)
        if snap["state"] == "streaming" and snap["bytes"] == size:
            time.sleep(0.3)
            snap = status_of(daemon, name)
        reset(victim.sock)
        victim.resume.set()
        assert victim.join(10) and sender.join(20) and spectator.join(10)
        if snap["state"] == "streaming" and snap["bytes"] == size:
            reached = (size, victim.got, spectator.done, sender.lines)
            break
        size += step if snap["state"] == "complete" else -step // 2
    if reached is None:
        pytest.skip("could not reach 'body read, receiver still full' with this kernel's buffers")
    size, got, done, lines = reached
    print(f"\nbody {size} bytes read by the daemon; the receiver had taken {got} when it left")
    assert done == {**done, "state": "failed", "reason": "All receivers disconnected"}, (
        f"the only receiver left with {got} of {size} bytes, yet the side channel says {done}"
    )
    assert lines[-1:] == ["[ERROR] All receivers disconnected before transfer completed."], (
        f"the only receiver left with {got} of {size} bytes, yet the sender was told {lines[-1:]}"
    )
    assert_no_traceback(daemon)
    wait_registry_empty(daemon)


def test_sender_reset_while_waiting_after_its_whole_body_frees_the_name(daemon_factory):
    """A small body arrives with the headers (``curl --data-binary``), so the whole upload is
    read before any receiver comes; then the client resets its connection. It is gone: the name
    takes a new sender, and a receiver never gets the abandoned body. (A FIN instead is a
    half-close after the whole body, which is delivered: see the half-close tests.)"""
    daemon = daemon_factory("--wait-timeout", "60", *CAPS)
    name = f"gone-rst-{random.getrandbits(32):08x}"
    conn = connect(daemon)
    conn.send(http_request("PUT", f"{PREFIX}{name}", daemon, {"Content-Length": "9"}) + b"abandoned")
    wait_for(lambda: status_of(daemon, name)["hasSender"], 10, "the sender to wait")
    assert conn.read_head().status == 200
    reset(conn.sock)
    try:
        wait_for(lambda: not status_of(daemon, name)["hasSender"], 5, "the name to forget its sender")
    except AssertionError:
        snap = status_of(daemon, name)
        raise AssertionError(
            f"5 s after the sender's connection was reset, {name} still reads {snap['state']} "
            f"with hasSender={snap['hasSender']}; pending pipes: {metrics(daemon).get('hoodypipe_pending_pipes')}"
        ) from None
    data = random.randbytes(100_000)
    second = RawSender(daemon, name, 1, data, chunked=True, rng=random.Random(3), wait_streaming=False).start()
    r = RawReceiver(daemon, name, 1, data).start()
    assert r.join(20) and second.join(20)
    assert r.clean and r.digest == sha(data)
    wait_registry_empty(daemon)


def test_memory_of_stalled_receivers_is_returned_after_their_transfers_fail(daemon_factory):
    """Receivers that stop reading until the idle timeout fails their transfers: the data
    queued for them (a few MiB each) must be let go once the connections are gone, so the
    daemon's RSS comes back near its baseline instead of growing with every stall."""
    daemon = daemon_factory("--idle-timeout", "1", "--wait-timeout", "30", *CAPS)
    warm_up(daemon)
    wait_registry_empty(daemon)
    baseline = daemon.rss()
    rng = random.Random(_seed())
    pipes = []
    for i in range(32):
        name = f"stallmem-{i}-{rng.getrandbits(32):08x}"
        data = rng.randbytes(12 * MiB)
        victim = RawReceiver(daemon, name, 1, data, action="stall", at=1, stall_for=20).start()
        sender = RawSender(daemon, name, 1, data, chunked=bool(i % 2), rng=rng, wait_streaming=False).start()
        pipes.append((name, victim, sender))
    peak = baseline
    for name, _victim, sender in pipes:
        while sender.thread.is_alive():
            peak = max(peak, daemon.rss())
            sender.join(0.2)
        assert sender.join(30), f"{name}: the sender still runs"
        assert sender.lines[-1:] == ["[ERROR] Idle timeout."], (name, sender.lines, sender.broken)
    for _name, victim, _sender in pipes:
        victim.resume.set()
        assert victim.join(10) and not victim.clean and victim.mismatch_at is None
    wait_registry_empty(daemon)
    end = daemon.rss()
    settle = time.monotonic() + 15  # lingering uploads are dropped within 10 s
    while end - baseline >= 40 * MiB and time.monotonic() < settle:
        time.sleep(0.5)
        end = daemon.rss()
    print(f"\n32 stalled transfers: RSS {baseline / MiB:.1f} -> peak {peak / MiB:.1f} -> {end / MiB:.1f} MiB")
    assert end - baseline < 40 * MiB, (
        f"RSS stays at {end / MiB:.1f} MiB after 32 stalled transfers failed and every connection closed "
        f"(baseline {baseline / MiB:.1f} MiB, peak {peak / MiB:.1f} MiB)"
    )
    assert_no_traceback(daemon)
