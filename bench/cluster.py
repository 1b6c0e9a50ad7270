#!/usr/bin/env python3
"""Aggregate relay throughput of 1, 2 and 3 daemons behind HAProxy, beside one
daemon without it, on this machine.

Each round runs --parallel transfers at once (each _gen.py | curl -T - URL into
curl URL -o /dev/null, as bench/throughput.py does one), on fresh random names,
so that HAProxy's consistent hash spreads them over the nodes as it would any
names. Aggregate = all bytes / wall time from the first curl to the last exit.
Targets, measured interleaved (A, B, C, D, A, B, ...):

  direct     one daemon, no HAProxy (the baseline)
  haproxy-1  etc/haproxy-hoodypipe-cluster.cfg in front of 1 daemon
  haproxy-2  ... of 2 daemons
  haproxy-3  ... of 3 daemons

Every daemon runs with --store on one Redis (a unix socket), as the recipe
says. Reported per target: the median aggregate MB/s (10^6 bytes/s), and the
CPU seconds per GiB relayed of HAProxy and of the daemons (from /proc, all
threads). The machine has 2 cores that the curls and generators share with
the relays, so more daemons than cores cannot add throughput here: the
figures are per-node inputs for docs/scaling.md, not a cluster's ceiling.

Examples:
  bench/cluster.py                             # 4 x 256 MiB at once, 5 rounds
  bench/cluster.py --only direct,haproxy-1 --size 128M --runs 3
"""

import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

from _common import (
    MIB,
    TransferFailed,
    argument_parser,
    cpu_seconds,
    exit_on_sigterm,
    parse_size,
    transfer,
)

from tests.conftest import start_daemon
from tests.e2e._cluster import HAProxy, Redis

TARGETS = ("direct", "haproxy-1", "haproxy-2", "haproxy-3")
GIB = 1 << 30


class Target:
    def __init__(self, name, where, redis):
        self.name = name
        nodes = 1 if name == "direct" else int(name.split("-")[1])
        self.daemons = [start_daemon("--store", redis.url, "--trusted-proxy", "127.0.0.1") for _ in range(nodes)]
        self.proxy = None
        if name != "direct":
            (where / name).mkdir()
            self.proxy = HAProxy(where / name, [d.port for d in self.daemons])
        self.rates = []
        self.proxy_cpu = []
        self.daemon_cpu = []

    def url(self, name):
        base = self.proxy.base if self.proxy else self.daemons[0].base
        return "%s/api/v1/pipe/%s" % (base, name)

    def cpu(self):
        proxy = cpu_seconds(self.proxy.process.pid) if self.proxy else 0.0
        return proxy, sum(cpu_seconds(d.process.pid) for d in self.daemons)

    def stop(self):
        if self.proxy:
            self.proxy.stop()
        for daemon in self.daemons:
            daemon.stop()


def round_of(target, parallel, size, timeout):
    """``parallel`` transfers at once; (aggregate MB/s, proxy CPU s/GiB, daemons' CPU s/GiB)."""
    errors = []

    def one():
        try:
            transfer(target.url("bench-%s" % uuid.uuid4().hex), size, timeout)
        except TransferFailed as error:
            errors.append(error)

    threads = [threading.Thread(target=one) for _ in range(parallel)]
    proxy0, daemons0 = target.cpu()
    t0 = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - t0
    proxy1, daemons1 = target.cpu()
    if errors:
        raise TransferFailed("; ".join(map(str, errors)))
    gib = parallel * size / GIB
    return parallel * size / elapsed / 1e6, (proxy1 - proxy0) / gib, (daemons1 - daemons0) / gib


def main():
    parser = argument_parser(__doc__)
    parser.add_argument("--size", type=parse_size, default="256M", help="bytes per transfer (default 256M)")
    parser.add_argument("--parallel", type=int, default=4, help="transfers at once (default 4)")
    parser.add_argument("--runs", type=int, default=5, help="rounds per target (default 5)")
    parser.add_argument("--only", default=",".join(TARGETS), help="comma-separated subset of: " + ", ".join(TARGETS))
    parser.add_argument("--timeout", type=float, default=300, help="seconds allowed per transfer (default 300)")
    args = parser.parse_args()
    names = [t.strip() for t in args.only.split(",") if t.strip()]
    if set(names) - set(TARGETS) or not names:
        parser.error("--only: use some of " + ", ".join(TARGETS))
    exit_on_sigterm()
    where = Path(tempfile.mkdtemp(prefix="hoodypipe-bench-cluster-"))
    (where / "redis").mkdir()
    redis = Redis(where / "redis")
    targets = []
    failures = 0
    try:
        for name in TARGETS:
            if name in names:
                targets.append(Target(name, where, redis))
                print("started %s" % name, flush=True)
        for target in targets:  # warm-up, untimed
            round_of(target, args.parallel, min(args.size, 64 * MIB), args.timeout)
        for run in range(1, args.runs + 1):
            for target in targets:
                try:
                    rate, proxy, daemons = round_of(target, args.parallel, args.size, args.timeout)
                except TransferFailed as error:
                    failures += 1
                    print("run %d %-10s FAILED: %s" % (run, target.name, error), flush=True)
                    continue
                target.rates.append(rate)
                target.proxy_cpu.append(proxy)
                target.daemon_cpu.append(daemons)
                print(
                    "run %d %-10s %7.0f MB/s  haproxy %.2f s/GiB  daemons %.2f s/GiB"
                    % (run, target.name, rate, proxy, daemons),
                    flush=True,
                )
        print("\n%d x %d MiB at once, %d rounds; median aggregate and CPU per GiB relayed" % (
            args.parallel, args.size // MIB, args.runs))  # fmt: skip
        print("%-10s %9s %9s %9s %14s %14s" % ("target", "MB/s", "min", "max", "haproxy s/GiB", "daemons s/GiB"))
        for target in targets:
            if target.rates:
                print("%-10s %9.0f %9.0f %9.0f %14.2f %14.2f" % (
                    target.name, statistics.median(target.rates), min(target.rates), max(target.rates),
                    statistics.median(target.proxy_cpu), statistics.median(target.daemon_cpu)))  # fmt: skip
    finally:
        for target in targets:
            target.stop()
        redis.stop()
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
