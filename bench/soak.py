#!/usr/bin/env python3
"""Soak: hundreds of concurrent pipes of random sizes, with random faults, for minutes.

The pipes are those of the fault tests, run by the same harness
(tests/support/faults.py): per pipe an SSE spectator opened first, a sender
and n (1..3) receivers on raw sockets, every receiver checking each byte as
it arrives (a prefix of a broken download is checked too) and the sha256 of
every clean end. The bytes are slices of one random pool. A share of the
transfers (--fault-rate) gets one fault: the sender hangs up (FIN) or resets
(RST) mid-body, a receiver hangs up or resets, or a receiver stops reading
for longer than the idle timeout; or one of issue 9's sly clients: a sender
that half-closes (shutdown(SHUT_WR)) after its whole body, while it waits or
once it streams (it must be delivered and told `[INFO] Transfer complete.`),
a waiting receiver that pipelines more than 16 KiB of another request behind
its GET and closes (its slot must be free at once), a sender that trickles
below --min-rate (it must fail as `Idle timeout`). Afterwards the harness
checks that the ``done`` event and ``?status`` agree with what the parties
saw, that the outcome is one the fault allows, and that the sender was told.
Each pipe's parties connect from a loopback address of their own
(127.0.0.2-250, in turn), so the daemon's per-client shares (docs/fairness.md)
see many clients, as they would in use.

Every 10 s one line: elapsed, transfers done, bytes moved, corruptions,
failures by kind, daemon RSS. At the end: totals, corruptions, leaks
(registry gauges after quiesce, fds and RSS at the end vs the start), and the
RSS curve. Exit status 1 on any corruption, silent truncation, side-channel
or party mismatch, hung transfer, leak or daemon traceback.

Findings are counted by kind, and the problems (up to 30) are listed with
their plans (fault, variant, sizes, seed of the run): a failing pipe is
replayed with the same --seed.

Examples:
  bench/soak.py                       # 10 minutes, 200 concurrent pipes
  bench/soak.py --minutes 1 --concurrency 100 --seed 3
"""

import collections
import random
import re
import statistics
import sys
import time

from _common import (
    HOST,
    MIB,
    argument_parser,
    default_twistd,
    exit_on_sigterm,
    raise_fd_limit,
    rss_kib,
    start_hoodypipe,
    uncapped,
)

from tests.support.faults import PREFIX, SLY_FAULTS, PipeRun, Plan, Target, check, metrics, shape
from tests.support.httpwire import exchange, request

FAULTS = ("sender_close", "sender_rst", "receiver_close", "receiver_rst", "receiver_stall", *SLY_FAULTS)
# Every pipe's parties come from one of these in turn: each is a client of its own.
SOURCES = [f"127.0.0.{k}" for k in range(2, 251)]
GAUGES = ("hoodypipe_pending_pipes", "hoodypipe_active_pipes", "hoodypipe_spectators")


class Totals:
    def __init__(self):
        self.done = 0
        self.bytes = 0
        self.corruptions = 0
        self.truncations = 0  # a clean end after partial data
        self.mismatches = 0  # the side channel or a party disagrees with what the outcome allows
        self.hung = 0
        self.failures = collections.Counter()  # by reason (failed transfers)
        self.faults = collections.Counter()  # injected, by kind
        self.refusals = collections.Counter()  # receivers refused (HTTP status)
        self.unexpected = 0  # failed transfers without an injected fault
        self.examples = []
        self.findings = collections.Counter()  # (kind, fault/variant) of every finding
        self.shown = collections.Counter()  # examples kept by (kind, fault/variant)
        self.freed = []  # receiver_pipelines_leaves: seconds from its close to its slot free
        self.half_closed_waiting = collections.Counter()  # sender_half_close paused/one_write: True/False

    def problem(self, text, group=None):
        """Keep up to 30 examples, at most 5 of one (finding kind, fault), so that a rare
        problem shows next to a frequent one."""
        if group is not None:
            self.shown[group] += 1
            if self.shown[group] > 5:
                return
        if len(self.examples) < 30:
            self.examples.append(text)

    def count(self, run):
        """What one finished pipe did, and what the harness found wrong with it."""
        plan, out = run.plan, run.outcome
        done = out.done or {}
        state, reason = done.get("state"), done.get("reason")
        self.done += 1
        self.bytes += sum(r.got for r in out.receivers)
        if plan.fault != "none":
            self.faults[plan.fault + ("/" + plan.variant if plan.variant else "")] += 1
        if out.freed_after is not None:
            self.freed.append(out.freed_after)
        if out.half_closed_waiting is not None:
            self.half_closed_waiting[out.half_closed_waiting] += 1
        if state == "failed":
            self.failures[reason] += 1
            self.unexpected += plan.fault == "none"
        for r in out.receivers:
            if r.status not in (None, 200):
                self.refusals[r.status] += 1
        fault = plan.fault + ("/" + plan.variant if plan.variant else "")
        for finding in check(out):
            self.findings[(finding.kind, fault)] += 1
            if finding.kind == "refused":
                continue  # counted above: the caps, not the contract
            if finding.kind == "corruption":
                self.corruptions += 1
            elif finding.kind == "truncation":
                self.truncations += 1
            elif finding.kind == "harness":
                self.hung += 1
            else:
                self.mismatches += 1
            self.problem(f"{plan.describe()}: {finding}", (finding.kind, fault))


def soak_plan(args, rng, index):
    """One pipe: mostly small and medium transfers, some large, --fault-rate of them faulted."""
    n = rng.choice((1, 1, 1, 2, 3))
    roll = rng.random()
    if roll < 0.05:
        size = 0
    elif roll < 0.35:
        size = rng.randrange(1, 256 * 1024)
    elif roll < 0.97:
        size = rng.randrange(256 * 1024, args.max_size + 1)
    else:
        size = rng.randrange(args.max_size, 4 * args.max_size + 1)  # some larger
    fault = rng.choice(FAULTS) if size and rng.random() < args.fault_rate else "none"
    at = rng.randrange(size) if size else 0
    if fault == "receiver_stall":
        size = max(size, 8 * MIB)  # more than the buffers on the way hold
        at = min(at, size // 4)
    elif fault.startswith("receiver"):
        at = max(1, at // 2)  # as the fault tests place it: while the others still read
    plan = Plan(
        index=index,
        name=f"soak-{index}-{rng.getrandbits(32):08x}",
        size=size,
        n=n,
        fault=fault,
        at=at,
        receivers_first=rng.random() < 0.6,
        curl_sender=False,
        curl_receivers=[False] * n,
        chunked=rng.random() < 0.6,
        victim=rng.randrange(n),
    )
    return shape(rng, plan)  # the issue 9 faults' sizes and variants


def health(target):
    import json

    answer = exchange(target.host, target.port, request("GET", PREFIX + "health", {"Connection": "close"}))
    return json.loads(answer.body) if answer.status == 200 else {}


def gauges(target):
    values = metrics(target)
    return {k: values[k] for k in GAUGES if k in values}


def fmt_bytes(n):
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n} B"
        n /= 1024


def run(args):
    raise_fd_limit(max(8192, args.concurrency * 12))
    daemon_args = [
        *uncapped(),
        "--idle-timeout",
        str(args.idle_timeout),
        "--wait-timeout",
        "60",
    ]
    child, port = start_hoodypipe(args.twistd, daemon_args)
    target = Target(HOST, port)
    pid = child.pid
    # One pool of random bytes that every transfer is a slice of.
    pool = memoryview(random.Random(args.seed).randbytes(max(64 * MIB, 4 * args.max_size, 8 * MIB)))
    rng = random.Random(args.seed)
    totals = Totals()
    start_health = health(target)
    rss_start = rss_kib(pid) * 1024
    samples = []  # (elapsed, rss) every second
    curve = []  # RSS at each report line
    started = time.monotonic()
    deadline = started + args.minutes * 60
    print(
        f"soak: seed {args.seed}, {args.minutes:g} min, {args.concurrency} concurrent pipes, "
        f"sizes 0..{fmt_bytes(args.max_size)} (3% up to {fmt_bytes(4 * args.max_size)}), "
        f"faults {args.fault_rate:.0%}, idle timeout {args.idle_timeout:g} s; "
        f"daemon pid {pid} on port {port}, RSS {fmt_bytes(rss_start)}",
        flush=True,
    )
    index = 0
    running = []  # (run, when it must have ended)
    next_sample, next_line = started + 1, started + args.report_every

    def reap(now):
        nonlocal running
        still = []
        for pipe, ends_by in running:
            if not pipe.thread.is_alive():
                totals.count(pipe)
            elif now > ends_by:
                totals.hung += 1
                totals.problem(f"{pipe.plan.describe()}: still running {now - ends_by + 30:.0f} s after its time")
            else:
                still.append((pipe, ends_by))
        running = still

    def sample(now):
        nonlocal next_sample, next_line
        if now < next_sample:
            return
        next_sample = now + 1
        try:
            rss = rss_kib(pid) * 1024
        except (OSError, RuntimeError):
            return
        samples.append((now - started, rss))
        if now >= next_line:
            next_line += args.report_every
            curve.append(rss)
            kinds = ", ".join(f"{k}: {v}" for k, v in sorted(totals.failures.items())) or "none"
            print(
                f"{now - started:6.0f}s  done {totals.done:6d}  moved {fmt_bytes(totals.bytes):>10}  "
                f"corruptions {totals.corruptions + totals.truncations}  failures [{kinds}]  "
                f"RSS {fmt_bytes(rss)}",
                flush=True,
            )

    try:
        while time.monotonic() < deadline:
            while len(running) < args.concurrency and time.monotonic() < deadline:
                plan = soak_plan(args, rng, index)
                offset = rng.randrange(len(pool) - plan.size + 1)
                stall = 3 * args.idle_timeout + 2 if plan.fault == "receiver_stall" else 0
                timeout = 90 + plan.size / (2 * MIB) + stall
                pipe = PipeRun(
                    Target(HOST, port, SOURCES[index % len(SOURCES)]),
                    plan,
                    random.Random(rng.getrandbits(64)),
                    data=pool[offset : offset + plan.size],
                    timeout=timeout,
                    idle_timeout=args.idle_timeout,
                    # Under this load a ?status poll alone can take a second; the
                    # daemon's --wait-timeout, the alternative, is 60 s.
                    freed_within=5.0,
                )
                pipe.thread.start()
                running.append((pipe, time.monotonic() + timeout + 30))
                index += 1
            time.sleep(0.2)
            reap(time.monotonic())
            sample(time.monotonic())
            if child.proc.poll() is not None:
                totals.problem(f"the daemon exited {child.proc.returncode}")
                break
        print(
            f"{time.monotonic() - started:6.0f}s  time is up: waiting for {len(running)} transfers in flight",
            flush=True,
        )
        while running:
            time.sleep(0.2)
            reap(time.monotonic())
            sample(time.monotonic())
        # Quiesce: every connection closes, lingering uploads (10 s) end.
        quiet_deadline = time.monotonic() + 30
        last = {}
        while time.monotonic() < quiet_deadline:
            last = gauges(target)
            if last and all(v == 0 for v in last.values()):
                break
            time.sleep(0.5)
        time.sleep(12)  # lingering uploads are dropped within 10 s
        end_health = health(target)
        rss_end = rss_kib(pid) * 1024
        samples.append((time.monotonic() - started, rss_end))
    finally:
        with open(child.log.name, "rb") as f:
            log = f.read()
        child.stop()
    tracebacks = log.count(b"Traceback")
    if tracebacks:
        kinds = collections.Counter(
            m.decode("utf-8", "replace")[:160]
            for m in re.findall(rb"\n\t?((?:builtins\.)?[\w.]+(?:Error|Exception|BadHost)\b[^\n]*)", log)
        )
        saved = f"/tmp/hoodypipe-soak-{args.seed}.log"
        with open(saved, "wb") as f:
            f.write(log)
        totals.problem(
            f"daemon tracebacks (log saved as {saved}): " + "; ".join(f"{v}x {k}" for k, v in kinds.most_common(5))
        )
    elapsed = time.monotonic() - started
    rss_values = [r for _, r in samples] or [rss_end]
    leak_registry = not last or any(v != 0 for v in last.values())
    fds_start, fds_end = start_health.get("fds"), end_health.get("fds")
    leak_fds = fds_start is not None and fds_end is not None and fds_end > fds_start + 5
    leak_rss = rss_end - rss_start > args.rss_slack * MIB
    corruptions = totals.corruptions + totals.truncations
    print(
        f"\ntotals: {totals.done} transfers in {elapsed / 60:.1f} min, {fmt_bytes(totals.bytes)} received "
        f"({totals.bytes / elapsed / MIB:.1f} MiB/s), {sum(totals.faults.values())} faults injected "
        f"({', '.join(f'{k}: {v}' for k, v in sorted(totals.faults.items()))})"
    )
    print(
        f"failures by reason: {dict(sorted(totals.failures.items()))}; failed without a fault: {totals.unexpected}; "
        f"parties refused: {dict(totals.refusals)}"
    )
    if totals.freed:
        freed = sorted(totals.freed)
        print(
            f"waiting receivers that pipelined and closed: {len(freed)}, slot free after "
            f"median {statistics.median(freed) * 1000:.0f} ms, max {freed[-1] * 1000:.0f} ms"
        )
    if totals.half_closed_waiting:
        print(
            f"senders that half-closed while waiting: {sum(totals.half_closed_waiting.values())}, "
            f"still waiting for their receivers 0.1 s after it: {totals.half_closed_waiting[True]}"
        )
    if totals.findings:
        print(
            "findings by kind and fault: "
            + ", ".join(f"{kind} {fault}: {count}" for (kind, fault), count in sorted(totals.findings.items()))
        )
    print(
        f"corruptions: {totals.corruptions}; clean ends after partial data: {totals.truncations}; "
        f"side-channel or party mismatches: {totals.mismatches}; hung: {totals.hung}; daemon tracebacks: {tracebacks}"
    )
    print(
        f"leaks: registry after quiesce {last} ({'LEAK' if leak_registry else 'ok'}); fds {fds_start} -> {fds_end} "
        f"({'LEAK' if leak_fds else 'ok'}); RSS {fmt_bytes(rss_start)} at start -> {fmt_bytes(rss_end)} at the end "
        f"({'+' if rss_end >= rss_start else '-'}{fmt_bytes(abs(rss_end - rss_start))}; "
        f"{'LEAK' if leak_rss else 'ok'}, slack {args.rss_slack} MiB)"
    )
    third = max(1, len(rss_values) // 3)
    growth = statistics.median(rss_values[-third:]) - statistics.median(rss_values[:third])
    print(
        f"RSS curve: min {fmt_bytes(min(rss_values))}, median {fmt_bytes(statistics.median(rss_values))}, "
        f"max {fmt_bytes(max(rss_values))}; last third vs first third of the run: "
        f"{'+' if growth >= 0 else '-'}{fmt_bytes(abs(growth))}; every {args.report_every:g} s, then at the end "
        f"(MiB): " + " ".join(f"{r / MIB:.0f}" for r in [*curve, rss_end])
    )
    if totals.examples:
        print("problems:")
        for text in totals.examples:
            print("  " + text)
    bad = corruptions or totals.mismatches or totals.hung or tracebacks or leak_registry or leak_fds or leak_rss
    print("RESULT: " + ("FAIL" if bad else "ok"))
    return 1 if bad else 0


def main():
    parser = argument_parser(__doc__)
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--concurrency", type=int, default=200)
    parser.add_argument(
        "--max-size",
        type=lambda t: int(float(t) * MIB),
        default=32 * MIB,
        metavar="MIB",
        help="largest usual size in MiB (3%% of transfers go up to 4x)",
    )
    parser.add_argument("--fault-rate", type=float, default=0.15)
    parser.add_argument("--idle-timeout", type=float, default=10)
    parser.add_argument("--rss-slack", type=int, default=64, help="MiB of RSS growth not counted as a leak")
    parser.add_argument("--report-every", type=float, default=10)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--twistd", default=default_twistd())
    args = parser.parse_args()
    if args.seed is None:
        args.seed = random.SystemRandom().randrange(1 << 31)
    exit_on_sigterm()
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
