#!/usr/bin/env python3
"""Relay throughput with 0 and with 50 stalled `?progress` spectators.

One hoodypipe daemon; runs A (no spectators) and B (stalled spectators)
alternate in the same run: warm-up, A, B, A, B, ...  Each run streams --size
bytes (a 16 MiB random block, repeated, from _gen.py) through
`curl -sS -T - URL` -> daemon -> `curl -sS URL -o /dev/null`; wall time runs
from starting the first curl until all have exited, the curls must exit 0
with a 2xx status and the receiver must report exactly --size bytes.

A stalled spectator (run B) is a raw socket with a small SO_RCVBUF (set
before connecting), bound to a loopback source address of its own
(127.0.0.2, 127.0.0.3, ...: the daemon gives one client address at most 90%
of a name's spectator slots, docs/fairness.md), that sends
  GET /api/v1/pipe/NAME?progress HTTP/1.1 / Host: x / Accept: text/event-stream
on the run's pipe name and never reads.  All of them are open and answered
(`HTTP/1.1 200`, seen with MSG_PEEK) before the transfer starts and stay open
until it has ended.  After each B run the script reports how much of the
event stream is stuck in the sockets: bytes queued unread at the spectators
(SIOCINQ) and in the daemon's send queues (tx_queue in /proc/net/tcp).
At four progress events (~1.3 KB) a second, a transfer of a few seconds
does not fill the spectator's receive buffer and then the daemon's kernel
send buffer (on loopback the kernel sizes it in MiB): a daemon send queue of
0 means the daemon never had to hold or skip an event for them.

Reported: median MB/s (10^6 bytes/s) of A and of B, the ratio of the
medians B/A (target >= 0.95; also the median of the per-run B/A, which
drifts less with the machine's load), and the daemon's RSS
(/proc/PID/status) just before the spectators of each B run connect and
just after its transfer (spectators still open), and the daemon's CPU time
per transfer (utime+stime from /proc/PID/stat), less sensitive than wall
time to other load on the machine.
The exit status is non-zero if a transfer failed or the spectators were
refused, not if the target is missed.

Examples:
  bench/spectators.py --twistd /work/venv/bin/twistd     # 1 GiB, 5 + 5 runs
  bench/spectators.py --size 256M --runs 2                # quicker
"""

import fcntl
import select
import socket
import statistics
import struct
import sys
import termios
import time
import uuid

from _common import (
    HOST,
    MIB,
    PIPE_PREFIX,
    TransferFailed,
    argument_parser,
    cpu_seconds,
    default_twistd,
    exit_on_sigterm,
    parse_size,
    pipe_url,
    rss_kib,
    sample_rss,
    start_hoodypipe,
    transfer,
)

from tests.support.httpwire import BadMessage, request, status_code

RATIO_TARGET = 0.95
WARMUP_SIZE = 64 * MIB
# Each spectator is a client of its own: one address may hold only 90% of a
# name's --max-spectators (hoodypipe/fairshare.py).
SOURCES = ["127.0.0.%d" % k for k in range(2, 251)]


def spectator_request(name):
    return request("GET", PIPE_PREFIX + name + "?progress", {"Accept": "text/event-stream"})


class SpectatorsRefused(Exception):
    pass


def open_stalled(port, name, count, rcvbuf, timeout=10.0):
    """`count` spectators of `name` that never read; returns once all are answered."""
    socks = []
    try:
        for i in range(count):
            s = socket.socket()
            socks.append(s)
            # Before connect(), so that the advertised window is small from the start.
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            s.bind((SOURCES[i % len(SOURCES)], 0))
            s.settimeout(timeout)
            s.connect((HOST, port))
            s.sendall(spectator_request(name))
        waiting = {s.fileno(): s for s in socks}
        poller = select.poll()
        for fd in waiting:
            poller.register(fd, select.POLLIN | select.POLLERR | select.POLLHUP)
        deadline = time.monotonic() + timeout
        while waiting:
            left = deadline - time.monotonic()
            if left <= 0:
                raise SpectatorsRefused(
                    "%d of %d spectators not answered after %.0f s" % (len(waiting), count, timeout)
                )
            for fd, _ in poller.poll(left * 1000):
                head = waiting[fd].recv(13, socket.MSG_PEEK)
                try:
                    code = status_code(head) if head else 0
                except BadMessage:
                    code = 0
                if code is None:
                    continue  # status line still arriving
                if code != 200:
                    raise SpectatorsRefused("a spectator got %r" % head)
                poller.unregister(fd)
                del waiting[fd]
        return socks
    except BaseException:
        for s in socks:
            s.close()
        raise


def daemon_send_queues(port):
    """{client (address, port): tx_queue bytes} of the daemon's established sockets on `port`."""
    queues = {}
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            fields = line.split()
            local, remote, state = fields[1], fields[2], fields[3]
            if state == "01" and int(local.rsplit(":", 1)[1], 16) == port:
                address, _, remote_port = remote.partition(":")
                # /proc/net/tcp prints the address as one 32-bit word in host byte order.
                client = (socket.inet_ntoa(struct.pack("=I", int(address, 16))), int(remote_port, 16))
                queues[client] = int(fields[4].split(":")[0], 16)
    return queues


def stuck_bytes(port, socks):
    """(max unread at a spectator, max in the daemon's send queue for one), bytes."""
    unread = []
    for s in socks:
        buf = fcntl.ioctl(s.fileno(), termios.FIONREAD, b"\0\0\0\0")
        unread.append(struct.unpack("i", buf)[0])
    queues = daemon_send_queues(port)
    sent = [queues.get(s.getsockname(), 0) for s in socks]
    return max(unread), max(sent)


def mbps(size, seconds):
    return size / seconds / 1e6


def mib(kib):
    return "%.1f MiB" % (kib / 1024)


def run_a(daemon, port, name, args):
    """One transfer; returns (seconds, daemon CPU seconds)."""
    cpu = cpu_seconds(daemon.pid)
    seconds = transfer(pipe_url(port, name), args.size, args.timeout)
    return seconds, cpu_seconds(daemon.pid) - cpu


def run_b(daemon, port, name, args):
    """One transfer with stalled spectators; returns (seconds, daemon CPU
    seconds, RSS before, RSS after, bytes stuck at a spectator, in the daemon)."""
    rss_before = rss_kib(daemon.pid)
    socks = open_stalled(port, name, args.spectators, args.rcvbuf)
    try:
        seconds, cpu = run_a(daemon, port, name, args)
        rss_after = rss_kib(daemon.pid)
        unread, queued = stuck_bytes(port, socks)
    finally:
        for s in socks:
            s.close()
    return seconds, cpu, rss_before, rss_after, unread, queued


def report(results, pairs, cpus, rss_pairs, args, rss_start, rss_end):
    """`pairs`: (A rate, B rate) of each run, None where one failed."""
    print()
    print("%-16s %6s %9s %9s %9s  %s" % ("", "ok", "median", "min", "max", "runs (MB/s)"))
    medians = {}
    for label, rates in results.items():
        if not rates:
            print("%-16s %3d/%-2d %9s" % (label, 0, args.runs, "-"))
            continue
        medians[label] = statistics.median(rates)
        print(
            "%-16s %3d/%-2d %9.0f %9.0f %9.0f  %s"
            % (
                label,
                len(rates),
                args.runs,
                medians[label],
                min(rates),
                max(rates),
                " ".join("%.0f" % r for r in rates),
            )
        )
    print(
        "\nsize %d bytes (%.0f MiB), %d runs each, %d spectators per B run, "
        "SO_RCVBUF %d" % (args.size, args.size / MIB, args.runs, args.spectators, args.rcvbuf)
    )
    a, b = (medians.get(k) for k in results)
    if cpus["A"] and cpus["B"]:
        ca, cb = statistics.median(cpus["A"]), statistics.median(cpus["B"])
        print(
            "daemon CPU per transfer, median: A %.2f s, B %.2f s (B/A %.3f)" % (ca, cb, cb / ca if ca else float("nan"))
        )
    if rss_pairs:
        growth = [after - before for before, after in rss_pairs]
        print(
            "daemon RSS: %s at start, before/after B median %s / %s "
            "(median growth %+.0f KiB), %s at the end"
            % (
                mib(rss_start),
                mib(statistics.median(p[0] for p in rss_pairs)),
                mib(statistics.median(p[1] for p in rss_pairs)),
                statistics.median(growth),
                mib(rss_end),
            )
        )
    if a and b:
        ratio = b / a
        pairs = [rb / ra for ra, rb in pairs if ra and rb]
        print(
            "A %.0f MB/s | B %.0f MB/s | ratio B/A %.3f%s | per run pair B/A: "
            "median %.3f, %s"
            % (
                a,
                b,
                ratio,
                "" if ratio >= RATIO_TARGET else " MISSED (target >= %.2f)" % RATIO_TARGET,
                statistics.median(pairs),
                " ".join("%.2f" % r for r in pairs),
            )
        )


def main():
    parser = argument_parser(__doc__)
    parser.add_argument("--size", type=parse_size, default="1G", help="bytes per transfer, e.g. 256M, 1G (default 1G)")
    parser.add_argument("--runs", type=int, default=5, help="transfers of each kind, A and B (default 5)")
    parser.add_argument(
        "--spectators",
        type=int,
        default=50,
        help="stalled spectators in each B run (default 50, the daemon's --max-spectators)",
    )
    parser.add_argument(
        "--rcvbuf",
        type=int,
        default=4096,
        help="SO_RCVBUF of each spectator socket (default 4096; the kernel doubles it)",
    )
    parser.add_argument(
        "--twistd",
        default=default_twistd(),
        help="twistd with the hoodypipe plugin (default: twistd next to sys.executable)",
    )
    parser.add_argument("--timeout", type=float, default=300, help="seconds allowed per transfer (default 300)")
    parser.add_argument(
        "--no-warmup", action="store_true", help="skip the untimed %d MiB warm-up transfer" % (WARMUP_SIZE // MIB)
    )
    args = parser.parse_args()
    exit_on_sigterm()

    labels = {"A": "A no spectators", "B": "B %d stalled" % args.spectators}
    results = {labels["A"]: [], labels["B"]: []}
    rss_pairs = []
    failures = 0
    daemon, port = start_hoodypipe(args.twistd)
    try:
        print("hoodypipe pid %d, port %d" % (daemon.pid, port), flush=True)
        if not args.no_warmup:
            try:
                transfer(pipe_url(port, "warmup-" + uuid.uuid4().hex), min(args.size, WARMUP_SIZE), args.timeout)
            except TransferFailed as e:
                failures += 1
                print("warm-up FAILED: %s" % e, flush=True)
        rss_start = sample_rss(daemon.pid)
        pairs = []
        cpus = {"A": [], "B": []}
        for run in range(1, args.runs + 1):
            pairs.append([None, None])
            for kind in "AB":
                name = "spect-%s%d-%s" % (kind, run, uuid.uuid4().hex)
                label = "run %d %s" % (run, kind)
                try:
                    if kind == "A":
                        seconds, cpu = run_a(daemon, port, name, args)
                        extra = ""
                    else:
                        seconds, cpu, before, after, unread, queued = run_b(daemon, port, name, args)
                        rss_pairs.append((before, after))
                        extra = (
                            "  RSS %s -> %s; stuck: %d B unread at a spectator, "
                            "%d B in a daemon send queue (max)" % (mib(before), mib(after), unread, queued)
                        )
                except (TransferFailed, SpectatorsRefused, OSError) as e:
                    failures += 1
                    print("%-9s FAILED: %s" % (label, e), flush=True)
                    continue
                rate = mbps(args.size, seconds)
                results[labels[kind]].append(rate)
                cpus[kind].append(cpu)
                pairs[-1]["AB".index(kind)] = rate
                print("%-9s %7.2f s %8.0f MB/s, daemon CPU %.2f s%s" % (label, seconds, rate, cpu, extra), flush=True)
        time.sleep(0.5)
        report(results, pairs, cpus, rss_pairs, args, rss_start, sample_rss(daemon.pid))
    finally:
        daemon.stop()
    if failures:
        print("%d failure(s)" % failures)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
