#!/usr/bin/env python3
"""Memory (RSS from /proc/PID/status) of the hoodypipe daemon.

  idle      RSS after start: median of a few samples.
  transfer  --size bytes (default 1 GiB) through one pipe to a receiver
            throttled with `curl --limit-rate` (default 32M), RSS sampled
            every 0.1 s: baseline, peak and peak growth (target < 16 MiB).
            The receiver must get every byte.
  pending   --pipes (default 1000) raw sockets each sending only the headers
            of a chunked `PUT /api/v1/pipe/wait-<i>` and staying open, with no
            receiver; once RSS is stable: RSS and per-pipe cost
            (RSS - idle) / pipes in KiB.  Runs on a fresh daemon.

The daemon is `twistd -n --pidfile= hoodypipe --listen tcp:PORT:...
--max-pending 2000` (and per-address caps to match), started with a file-descriptor limit raised for the
pending sockets.  The exit status is non-zero if the transfer failed or the
pending senders could not be held open, not if a target is missed.

Examples:
  bench/memory.py                                  # about 40 s
  bench/memory.py --size 256M --pipes 200          # quicker
  bench/memory.py --twistd /work/venv/bin/twistd
"""

import select
import socket
import sys
import threading
import time
import uuid

from _common import (
    HEALTH_PATH,
    HOST,
    MIB,
    TransferFailed,
    argument_parser,
    default_twistd,
    exit_on_sigterm,
    http_status,
    parse_size,
    pipe_url,
    raise_fd_limit,
    rss_kib,
    sample_rss,
    start_hoodypipe,
    transfer,
)

from tests.support.httpwire import BadMessage, request, status_code

GROWTH_TARGET_KIB = 16 * 1024


def mib(kib):
    return "%.1f MiB" % (kib / 1024)


def verdict(ok):
    return "" if ok else "  MISSED"


# --- figures -----------------------------------------------------------------


def measure_idle(pid):
    time.sleep(0.5)
    idle = sample_rss(pid)
    print("idle      RSS %s" % mib(idle), flush=True)
    return idle


def measure_transfer(pid, port, size, rate, timeout):
    """Returns True if the transfer succeeded."""
    baseline = sample_rss(pid)
    peak = [baseline]
    done = threading.Event()

    def sampler():
        while not done.wait(0.1):
            try:
                peak[0] = max(peak[0], rss_kib(pid))
            except (OSError, RuntimeError):
                return  # daemon gone; the transfer will fail

    thread = threading.Thread(target=sampler, daemon=True)
    thread.start()
    try:
        seconds = transfer(
            pipe_url(port, "mem-" + uuid.uuid4().hex), size, timeout, receiver_args=["--limit-rate", rate]
        )
        error = None
    except TransferFailed as e:
        error = e
    finally:
        done.set()
        thread.join()
    growth = peak[0] - baseline
    if error:
        print("transfer  FAILED: %s (baseline %s, peak %s)" % (error, mib(baseline), mib(peak[0])))
        return False
    print(
        "transfer  %d MiB at --limit-rate %s in %.1f s: baseline %s, peak %s, "
        "growth %s (target < %s)%s"
        % (
            size // MIB,
            rate,
            seconds,
            mib(baseline),
            mib(peak[0]),
            mib(growth),
            mib(GROWTH_TARGET_KIB),
            verdict(growth < GROWTH_TARGET_KIB),
        ),
        flush=True,
    )
    return True


def wait_stable(pid, interval=0.5, window=4, tolerance_kib=64, timeout=30):
    """Sample RSS until the last `window` samples differ by < tolerance."""
    samples = [rss_kib(pid)]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(interval)
        samples.append(rss_kib(pid))
        recent = samples[-window:]
        if len(recent) == window and max(recent) - min(recent) < tolerance_kib:
            break
    return samples[-1]


def count_dropped(socks):
    """How many sockets the server closed or answered with a non-2xx status.

    An early `100 Continue` or `200` (some relays answer waiting senders
    straight away) still counts as waiting.
    """
    poller = select.poll()
    for s in socks:
        poller.register(s, select.POLLIN | select.POLLERR | select.POLLHUP)
    by_fd = {s.fileno(): s for s in socks}
    dropped = 0
    for fd, _ in poller.poll(0):
        try:
            head = by_fd[fd].recv(16, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except OSError:
            head = b""
        try:
            code = status_code(head) if head else 0
        except BadMessage:
            code = 0
        if code is not None and not 100 <= code < 300:  # None: a status line still arriving
            dropped += 1
    return dropped


def measure_pending(pid, port, idle, pipes):
    """Returns True if all pending senders were held open."""
    socks = []
    try:
        t0 = time.monotonic()
        for i in range(pipes):
            s = socket.create_connection((HOST, port), timeout=10)
            socks.append(s)
            s.sendall(request("PUT", "/api/v1/pipe/wait-%d" % i, {"Transfer-Encoding": "chunked"}))
        opened = time.monotonic() - t0
        rss = wait_stable(pid)
        dropped = count_dropped(socks)
        health = http_status(port, HEALTH_PATH, timeout=5)
        print(
            "pending   %d senders (opened in %.1f s, %d dropped by the server, "
            "health %d): RSS %s, idle %s, per pipe %.1f KiB"
            % (pipes, opened, dropped, health, mib(rss), mib(idle), (rss - idle) / pipes),
            flush=True,
        )
    finally:
        for s in socks:
            s.close()
    time.sleep(1)
    print("pending   after closing them: RSS %s" % mib(sample_rss(pid)))
    if dropped:
        print(
            "pending   FAILED: the server closed or refused %d of the %d "
            "senders (is --max-pending honoured?)" % (dropped, pipes)
        )
    if health != 200:
        print("pending   FAILED: health check answered %d" % health)
    return not dropped and health == 200


def main():
    parser = argument_parser(__doc__)
    parser.add_argument("--size", type=parse_size, default="1G", help="bytes for the throttled transfer (default 1G)")
    parser.add_argument("--rate", default="32M", help="receiver's curl --limit-rate (default 32M)")
    parser.add_argument("--pipes", type=int, default=1000, help="number of waiting senders (default 1000)")
    parser.add_argument("--max-pending", type=int, default=2000, help="the daemon's --max-pending (default 2000)")
    parser.add_argument(
        "--twistd",
        default=default_twistd(),
        help="twistd with the hoodypipe plugin (default: twistd next to sys.executable)",
    )
    parser.add_argument("--timeout", type=float, default=300, help="seconds allowed for the transfer (default 300)")
    args = parser.parse_args()
    exit_on_sigterm()
    raise_fd_limit(args.pipes + 256)
    # Every pending sender comes from 127.0.0.1: lift the per-address caps too.
    daemon_args = [
        "--max-pending",
        str(args.max_pending),
        "--max-connections-per-address",
        str(args.max_pending + 100),
        "--max-waiting-per-address",
        str(args.max_pending),
    ]

    ok = True
    daemon, port = start_hoodypipe(args.twistd, daemon_args)
    try:
        print("hoodypipe pid %d, port %d" % (daemon.pid, port), flush=True)
        measure_idle(daemon.pid)
        ok &= measure_transfer(daemon.pid, port, args.size, args.rate, args.timeout)
    finally:
        daemon.stop()

    # A fresh daemon, so that memory kept by the transfer does not count.
    daemon, port = start_hoodypipe(args.twistd, daemon_args)
    try:
        idle = measure_idle(daemon.pid)
        ok &= measure_pending(daemon.pid, port, idle, args.pipes)
    finally:
        daemon.stop()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
