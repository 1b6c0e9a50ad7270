#!/usr/bin/env python3
"""The cost of many waiting senders, and how soon one that leaves frees its name.

For each hang-up watch (hoodypipe/hangup.py: `epoll`, the event-driven
default on Linux, and `poll`, the once-a-second fallback, chosen through the
daemon's HOODYPIPE_HANGUP environment variable), a fresh daemon is started
and:

  idle      the daemon's CPU (utime+stime from /proc/PID/stat) over --period
            seconds with nothing connected, in % of one core;
  waiting   --senders raw sockets each send the headers and a first chunk of
            a chunked `PUT /api/v1/pipe/wait-<i>` and read up to their
            `[INFO] Waiting for 1 receiver(s) to connect...` line; then the
            daemon's CPU over --period seconds, in % of one core;
  reaccept  --trials times, after a random pause of up to 1 s (so that the
            closes fall at random points of the poll's second): one of those
            senders closes its socket, and a new sender on the same name is
            tried at once, again and again (a 400 "Another sender is already
            connected" means not yet), until one is accepted; the time from
            the close to that 200, and the refusals before it (median and
            max over the trials).

The watch in use is checked through /proc/PID/fd: the epoll watch adds an
eventpoll descriptor to the reactor's own while senders are waiting.
With --runs N the whole comparison is repeated N times and medians are
reported.  The daemon's caps (--max-pending, --max-connections-per-address,
--max-waiting-per-address) are raised to fit, and the file-descriptor limit
with them.  The exit status is non-zero if a sender was refused or dropped.

Examples:
  bench/waiting.py                                  # both watches, about 2.5 min
  bench/waiting.py --runs 3                         # medians of 3 runs
  bench/waiting.py --impl epoll --period 5 --trials 5
"""

import os
import random
import statistics
import sys
import time

from _common import (
    HOST,
    PIPE_PREFIX,
    argument_parser,
    cpu_seconds,
    default_twistd,
    exit_on_sigterm,
    raise_fd_limit,
    start_hoodypipe,
)

from tests.support.httpwire import Connection

IMPLS = ("poll", "epoll")
WAITING = b"[INFO] Waiting for 1 receiver(s) to connect...\n"
HEAD = b"PUT " + PIPE_PREFIX.encode() + b"%s HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n"
GIVE_UP = 10.0


class Refused(Exception):
    pass


# --- senders -----------------------------------------------------------------


def open_sender(port, name):
    """A sender on `name`: its status, and its connection, read up to the
    Waiting line if it was accepted."""
    conn = Connection(HOST, port, 10)
    try:
        conn.send(HEAD % name.encode())
        code = conn.read_head("PUT").status
        if code == 200:
            said = bytearray()

            def until_waiting(piece):
                said.extend(piece)
                return WAITING not in said

            conn.read_body(until_waiting)
    except BaseException:
        conn.close()
        raise
    return code, conn


def open_waiting(port, names):
    """One waiting sender per name, each answered before the next connects (a
    burst of connections would overflow the listen backlog and wait out SYN
    retransmits)."""
    conns = []
    try:
        for name in names:
            code, conn = open_sender(port, name)
            conns.append(conn)
            if code != 200:
                raise Refused("sender %s answered %d" % (name, code))
    except BaseException:
        close_all(conns)
        raise
    return conns


def close_all(conns):
    for conn in conns:
        conn.close()


def reaccept(port, name, conn):
    """Close `conn` (a waiting sender on `name`), then retry a new sender on
    `name` until accepted; returns (seconds, refusals, the new connection)."""
    closed_at = time.monotonic()
    conn.close()
    refused = 0
    while True:
        code, conn = open_sender(port, name)
        if code == 200:
            return time.monotonic() - closed_at, refused, conn
        conn.close()
        if code != 400:
            raise Refused("retry on %s answered %d" % (name, code))
        refused += 1
        if time.monotonic() - closed_at > GIVE_UP:
            raise Refused("%s still refused %.0f s after its sender left" % (name, GIVE_UP))
        time.sleep(0.001)


# --- figures -----------------------------------------------------------------


def cpu_percent(pid, period):
    t0, c0 = time.monotonic(), cpu_seconds(pid)
    time.sleep(period)
    return 100 * (cpu_seconds(pid) - c0) / (time.monotonic() - t0)


def eventpolls(pid):
    """How many epoll descriptors the process holds."""
    count = 0
    for fd in os.listdir("/proc/%d/fd" % pid):
        try:
            count += os.readlink("/proc/%d/fd/%s" % (pid, fd)) == "anon_inode:[eventpoll]"
        except OSError:
            pass  # closed meanwhile
    return count


def measure(impl, args):
    """One daemon with the `impl` watch: a dict of figures."""
    env = dict(os.environ, HOODYPIPE_HANGUP=impl)
    # Twice the senders: one client may take only 90% of the pending slots
    # (hoodypipe/fairshare.py), and the retries need connections of their own.
    caps = str(2 * args.senders + 100)
    daemon, port = start_hoodypipe(
        args.twistd,
        [
            "--max-pending",
            caps,
            "--max-connections-per-address",
            caps,
            "--max-waiting-per-address",
            caps,
            "--wait-timeout",
            "3600",
        ],
        env=env,
    )
    conns = []
    try:
        base = eventpolls(daemon.pid)
        time.sleep(1)  # start-up done
        idle = cpu_percent(daemon.pid, args.period)
        names = ["wait-%d-%s" % (i, impl) for i in range(args.senders)]
        t0 = time.monotonic()
        conns = open_waiting(port, names)
        opened = time.monotonic() - t0
        extra = eventpolls(daemon.pid) - base
        if extra != (impl == "epoll"):
            raise RuntimeError(
                "%s: expected the %s watch, the daemon holds %d more eventpoll fds" % (impl, impl, extra)
            )
        time.sleep(1)  # the answers are out, the watch is idle
        waiting = cpu_percent(daemon.pid, args.period)
        delays, refusals = [], []
        phases = random.Random(0)
        for trial in range(args.trials):
            # Each retry is accepted just after a poll: without a pause, the
            # next close would always come a whole interval before the next poll.
            time.sleep(phases.random())
            i = trial * len(conns) // args.trials
            delay, refused, conns[i] = reaccept(port, names[i], conns[i])
            delays.append(delay)
            refusals.append(refused)
        print(
            "  %-5s idle %.2f%%  %d waiting %.2f%% (opened in %.1f s)  reaccept "
            "median %.1f ms, max %.1f ms, median %d refusals"
            % (
                impl,
                idle,
                args.senders,
                waiting,
                opened,
                1000 * statistics.median(delays),
                1000 * max(delays),
                statistics.median(refusals),
            ),
            flush=True,
        )
        return {
            "idle": idle,
            "waiting": waiting,
            "reaccept": statistics.median(delays),
            "reaccept_max": max(delays),
            "refusals": statistics.median(refusals),
        }
    finally:
        close_all(conns)
        daemon.stop()


def report(impls, runs):
    def med(impl, key):
        return statistics.median(r[impl][key] for r in runs)

    print("\nmedian of %d run(s)          %s" % (len(runs), "".join("%14s" % i for i in impls)))
    rows = [
        ("CPU idle (% of a core)", "idle", "%.2f"),
        ("CPU waiting (% of a core)", "waiting", "%.2f"),
        ("close -> reaccept (ms)", "reaccept", None),
        ("  max over trials (ms)", "reaccept_max", None),
        ("  refusals before it", "refusals", "%.0f"),
    ]
    for label, key, fmt in rows:
        cells = []
        for impl in impls:
            value = med(impl, key)
            cells.append("%14s" % ("%.1f" % (1000 * value) if fmt is None else fmt % value))
        print("%-28s%s" % (label, "".join(cells)))


def main():
    parser = argument_parser(__doc__)
    parser.add_argument(
        "--impl", choices=(*IMPLS, "both"), default="both", help="hang-up watch to measure (default both)"
    )
    parser.add_argument("--senders", type=int, default=1000, help="waiting senders (default 1000)")
    parser.add_argument(
        "--period", type=float, default=20, help="seconds each CPU figure is measured over (default 20)"
    )
    parser.add_argument("--trials", type=int, default=20, help="close-and-reaccept trials (default 20)")
    parser.add_argument("--runs", type=int, default=1, help="repeat the comparison, report medians (default 1)")
    parser.add_argument(
        "--twistd",
        default=default_twistd(),
        help="twistd with the hoodypipe plugin (default: twistd next to sys.executable)",
    )
    args = parser.parse_args()
    exit_on_sigterm()
    raise_fd_limit(2 * args.senders + 256)  # ours and the daemon's (inherited)
    impls = IMPLS if args.impl == "both" else (args.impl,)
    runs = []
    try:
        for run in range(args.runs):
            print("run %d" % (run + 1), flush=True)
            runs.append({impl: measure(impl, args) for impl in impls})
    except Refused as error:
        print("FAILED: %s" % error)
        return 1
    report(impls, runs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
