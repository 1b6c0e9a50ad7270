#!/usr/bin/env python3
"""Attacks on the daemon (issue 9, "Nobody can take the daemon down"): what one heavy client costs everyone else.

Each case runs for --seconds against a fresh daemon (`twistd -n hoodypipe` from --twistd,
default caps unless the case says otherwise). Attackers come from 127.0.0.2-11; a
separate process polls /api/v1/pipe/health every 0.1 s from 127.0.0.50 throughout
(a fresh connection each, 5 s timeout); a victim, a new well-behaved client, comes
from 127.0.0.99 once the attack is in place. Per case the table says: the daemon's
RSS growth (peak during the attack over the RSS just before it, from /proc), the
/health latency p50/p99 during the attack (and how many polls failed), and whether
the victim was served.

  pipelined  4 connections (SO_RCVBUF 4096) pipelining `GET .../x?progress&format=html`
             and `GET /help` without reading, as fast as the kernel takes them
             (reconnecting when the daemon closes them, unless --no-reconnect);
             victim: an 8 MiB transfer.
  fanout     200 receivers of one `?n=200` pipe that never read (SO_RCVBUF 4096),
             20 per address, and a sender pushing; RSS per receiver; victim: a
             256 MiB transfer, its speed next to the same transfer before the attack.
  pending    10 addresses x 100 waiting senders (`?wait=3600`), --max-pending 1000
             (default); victim: a new sender is accepted, then its receiver comes and
             the 1 MiB transfer completes.
  watched    2 addresses x 250 SSE streams on distinct names (`?progress`, Accept:
             text/event-stream), --max-watched-paths 500 (default); victim: its own
             `?progress` stream is accepted (200).
  spectators 60 SSE streams on one name from one address (--max-spectators 50, the
             default); victim: a stream on that name is accepted.
  trickle    a sender sending one byte every --trickle-every seconds (2) to a
             receiver, with --idle-timeout 5: whether and when it was failed, and
             the reason `?status` gives.

An option the daemon under test does not have (an older hoodypipe) is left out, and
said so. Victims that are transfers use curl (`--interface 127.0.0.99`). RSS growth
is capped by --rss-limit: past it an attack stops early (the table says so), so an
old daemon cannot take the machine down with it.

Examples:
  bench/attack.py                                  # every case, 15 s each (~2.5 min)
  bench/attack.py --only pending,watched --seconds 10
  bench/attack.py --twistd /tmp/venv-before/bin/twistd
"""

import errno
import json
import multiprocessing
import re
import socket
import statistics
import subprocess
import sys
import threading
import time
import uuid

from _common import (
    HEALTH_PATH,
    HOST,
    MIB,
    PIPE_PREFIX,
    argument_parser,
    default_twistd,
    exit_on_sigterm,
    generator_argv,
    kill_group,
    raise_fd_limit,
    rss_kib,
    sample_rss,
    start_hoodypipe,
)

from tests.support import httpwire

HEAVY = ["127.0.0.%d" % n for n in range(2, 12)]
HEALTH_SOURCE = "127.0.0.50"
VICTIM = "127.0.0.99"
HEALTH_INTERVAL = 0.1
HEALTH_TIMEOUT = 5.0
CASES = ("pipelined", "fanout", "pending", "watched", "spectators", "trickle")


# --- sockets from a chosen source address -------------------------------------------------


def connect_from(source, port, rcvbuf=None, timeout=10.0):
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        if rcvbuf is not None:  # before connect(), so that the window is small from the start
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.bind((source, 0))
        sock.settimeout(timeout)
        sock.connect((HOST, port))
    except BaseException:
        sock.close()
        raise
    return sock


def read_until(sock, marker, limit=65536):
    data = b""
    while marker not in data and len(data) < limit:
        more = sock.recv(65536)
        if not more:
            break
        data += more
    return data


def first_line(data):
    return data.split(b"\r\n", 1)[0].decode("latin-1", "replace") or "(no answer)"


def fetch(source, port, target, timeout=5.0):
    """GET `target` on a fresh connection from `source`: the response, body and all."""
    sock = connect_from(source, port, timeout=timeout)
    with httpwire.Connection.over(sock) as conn:
        return conn.request(httpwire.request("GET", target, {"Connection": "close"}))


def pipe_status(port, name, source=VICTIM):
    return json.loads(fetch(source, port, PIPE_PREFIX + name + "?status").body)


def url(port, name, query=""):
    return "http://%s:%d%s%s%s" % (HOST, port, PIPE_PREFIX, name, "?" + query if query else "")


def sse_request(name):
    return httpwire.request("GET", PIPE_PREFIX + name + "?progress", {"Accept": "text/event-stream"})


# --- what runs beside the attack: /health polls, RSS samples --------------------------------


def _poll_health(port, stop, out):
    samples = []
    while not stop.is_set():
        started = time.monotonic()
        try:
            ok = fetch(HEALTH_SOURCE, port, HEALTH_PATH, timeout=HEALTH_TIMEOUT).status == 200
        except (OSError, httpwire.BadMessage):
            ok = False
        elapsed = time.monotonic() - started
        samples.append((started, elapsed, ok))
        stop.wait(max(0.0, HEALTH_INTERVAL - elapsed))
    out.send(samples)
    out.close()


class HealthPoller:
    """/health polled from another process, so that the attack's own Python loop does not
    delay the polls (a process forked before any thread of ours starts)."""

    def __init__(self, port):
        ctx = multiprocessing.get_context("fork")
        self._stop = ctx.Event()
        self._recv, send = ctx.Pipe(duplex=False)
        self._proc = ctx.Process(target=_poll_health, args=(port, self._stop, send), daemon=True)
        self._proc.start()
        send.close()
        self.samples = []

    def stop(self):
        self._stop.set()
        if self._recv.poll(HEALTH_TIMEOUT + 5):
            self.samples = self._recv.recv()
        self._proc.join(5)
        if self._proc.is_alive():
            self._proc.kill()
        return self.samples


class RssSampler(threading.Thread):
    def __init__(self, pid, interval=0.1):
        super().__init__(daemon=True)
        self.pid, self.interval = pid, interval
        self.peak = self.last = rss_kib(pid)
        self._halt = threading.Event()

    def run(self):
        while not self._halt.wait(self.interval):
            try:
                self.last = rss_kib(self.pid)
            except (OSError, RuntimeError):
                return
            self.peak = max(self.peak, self.last)

    def stop(self):
        self._halt.set()
        self.join()


def percentile(values, fraction):
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * fraction))]


# --- victims ---------------------------------------------------------------------------------


def victim_transfer(port, size, source=VICTIM, sender_first=False, timeout=60.0):
    """A well-behaved transfer of `size` bytes from `source`: _gen.py | curl -T - and a
    receiver curl. Returns (ok, text, MB/s or None)."""
    name = "victim-" + uuid.uuid4().hex[:12]
    procs = []
    try:
        gen = subprocess.Popen(
            generator_argv(size),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        procs.append(gen)
        gen.stderr.readline()
        started = time.monotonic()

        def curl(argv, **kwargs):
            proc = subprocess.Popen(
                ["curl", "-sS", "--interface", source, *argv],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,
                **kwargs,
            )
            procs.append(proc)
            return proc

        def receive():
            return curl([url(port, name), "-o", "/dev/null", "-w", "%{http_code} %{size_download}"])

        receiver = None if sender_first else receive()
        sender = curl(["-T", "-", url(port, name), "-w", "\n%{http_code}"], stdin=gen.stdout)
        gen.stdout.close()
        if sender_first:
            # The receiver comes once the sender waits, or not at all if it was refused.
            deadline = time.monotonic() + 10
            while sender.poll() is None and time.monotonic() < deadline:
                try:
                    if pipe_status(port, name, source)["state"] == "waiting":
                        break
                except (OSError, ValueError, KeyError):
                    pass
                time.sleep(0.05)
            if sender.poll() is None:
                receiver = receive()
        deadline = time.monotonic() + timeout
        for proc in procs:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                try:
                    status = pipe_status(port, name, "127.0.0.1")
                except (OSError, ValueError, httpwire.BadMessage) as e:
                    status = e
                return False, "timed out after %.0f s (?status: %s)" % (timeout, status), None
        elapsed = time.monotonic() - started
        lines = [line for line in sender.stdout.read().decode(errors="replace").splitlines() if line.strip()]
        code = lines[-1] if lines else "?"
        last = lines[-2] if len(lines) > 1 else ""
        if not code.startswith("2"):
            return False, "sender refused %s: %s" % (code, last), None
        if receiver is None:
            return False, "sender ended before a receiver came: %s" % last, None
        got = receiver.stdout.read().decode().split()
        if receiver.returncode or not got or got[0] != "200" or int(got[1]) != size:
            return False, "receiver got %s (curl exit %s)" % (" ".join(got), receiver.returncode), None
        if last != "[INFO] Transfer complete.":
            return False, "sender's last line: %s" % last, None
        rate = size / elapsed / 1e6
        return True, "%d MiB in %.2f s (%.0f MB/s)" % (size // MIB, elapsed, rate), rate
    finally:
        for proc in procs:
            kill_group(proc, grace=0.5)
            for stream in (proc.stdout, proc.stderr):
                if stream:
                    stream.close()


def victim_stream(port, name):
    """The victim's own SSE stream on `name`: (accepted, its status line)."""
    try:
        sock = connect_from(VICTIM, port, timeout=10)
    except OSError as e:
        return False, "connect: %s" % e
    try:
        sock.sendall(sse_request(name))
        head = read_until(sock, b"\r\n\r\n", 8192)
    except OSError as e:
        return False, "%s" % e
    finally:
        sock.close()
    return head.startswith(b"HTTP/1.1 200"), first_line(head)


# --- the attacks -----------------------------------------------------------------------------
# Each case: `extra_args` for the daemon; `warmup(port)` before RSS is sampled; `step()`
# called in a loop for --seconds (it must return within a fraction of a second); `ready`
# once the attack is in place (then `victim()` runs, in a thread); `note()` what the
# attack achieved; `close()`.


class Case:
    extra_args = ()
    ready = False
    victim_size = None  # a transfer of this size before the attack, for a baseline

    def __init__(self, port, args):
        self.port, self.args = port, args
        self.socks = []
        self.procs = []
        self.baseline = None

    def warmup(self):
        ok, text, rate = victim_transfer(self.port, self.victim_size or 8 * MIB, source="127.0.0.1")
        if not ok:
            raise RuntimeError("warm-up transfer failed: %s" % text)
        if self.victim_size:
            self.baseline = rate

    def step(self):
        time.sleep(0.05)

    def victim(self):
        return victim_transfer(self.port, self.victim_size or 8 * MIB)

    def victim_text(self, ok, text):
        if self.baseline is not None and ok:
            text += ", before the attack %.0f MB/s" % self.baseline
        return text

    def note(self):
        return ""

    def close(self):
        for sock in self.socks:
            if sock is None:
                continue
            try:
                sock.close()
            except OSError:
                pass
        for proc in self.procs:
            kill_group(proc, grace=0.5)


class Pipelined(Case):
    CONNECTIONS = 4
    victim_size = 8 * MIB

    def __init__(self, port, args):
        super().__init__(port, args)
        one = httpwire.request("GET", PIPE_PREFIX + "x?progress&format=html") + httpwire.request("GET", "/help")
        self.block = one * 64
        self.view = memoryview(self.block * 2)  # send from any offset, a whole block long
        self.sent = self.reconnects = self.closed = 0
        self.sources = HEAVY[: self.CONNECTIONS]
        self.offsets = [0] * self.CONNECTIONS
        self.socks = [self.connect(s) for s in self.sources]
        self.ready = True

    def connect(self, source):
        sock = connect_from(source, self.port, rcvbuf=4096)
        sock.setblocking(False)
        return sock

    def step(self):
        progressed = False
        for i, sock in enumerate(self.socks):
            if sock is None:  # closed by the daemon
                if self.args.no_reconnect:
                    continue
                try:
                    sock = self.socks[i] = self.connect(self.sources[i])
                except OSError:
                    continue
                self.reconnects += 1
            offset = self.offsets[i]
            try:
                n = sock.send(self.view[offset : offset + len(self.block)])
            except BlockingIOError:
                continue
            except OSError:
                # The daemon closed it; a new one starts over at a request boundary.
                sock.close()
                self.socks[i] = None
                self.offsets[i] = 0
                self.closed += 1
                continue
            self.sent += n
            self.offsets[i] = (offset + n) % len(self.block)
            progressed = True
        if not progressed:
            time.sleep(0.005)

    def note(self):
        if self.args.no_reconnect:
            return "%.1f MiB of requests sent; %d of %d connections closed by the daemon, not reopened" % (
                self.sent / MIB,
                self.closed,
                self.CONNECTIONS,
            )
        return "%.1f MiB of requests sent on %d connections, reopened %d times when the daemon closed them" % (
            self.sent / MIB,
            self.CONNECTIONS,
            self.reconnects,
        )


class Fanout(Case):
    RECEIVERS = 200
    victim_size = 256 * MIB

    def __init__(self, port, args):
        super().__init__(port, args)
        self.name = "fan-" + uuid.uuid4().hex[:12]
        self.relayed = 0
        self.started = False

    def step(self):
        if len(self.socks) < self.RECEIVERS:
            for _ in range(25):
                n = len(self.socks)
                if n == self.RECEIVERS:
                    break
                sock = connect_from(HEAVY[n % len(HEAVY)], self.port, rcvbuf=4096)
                sock.sendall(httpwire.request("GET", PIPE_PREFIX + self.name + "?n=%d" % self.RECEIVERS))
                self.socks.append(sock)
            return
        if not self.started:
            self.started = True
            gen = subprocess.Popen(
                generator_argv(64 << 30),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
            self.procs.append(gen)
            sender = subprocess.Popen(
                ["curl", "-sS", "--interface", HEAVY[0], "-T", "-", url(self.port, self.name, "n=%d" % self.RECEIVERS)],
                stdin=gen.stdout,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
            gen.stdout.close()
            self.procs.append(sender)
            self.since = time.monotonic()
            return
        # Ready once the relay stalls: every receiver's buffers are full.
        time.sleep(0.5)
        try:
            moved = pipe_status(self.port, self.name, "127.0.0.1").get("bytesTransferred") or 0
        except (OSError, ValueError, httpwire.BadMessage):
            return
        if moved and moved == self.relayed and time.monotonic() - self.since > 2:
            self.ready = True
        self.relayed = moved

    def note(self):
        return "%d receivers, %.1f MiB relayed to each before it stalled" % (len(self.socks), self.relayed / MIB)


class Pending(Case):
    PER_ADDRESS = 100

    def __init__(self, port, args):
        super().__init__(port, args)
        self.accepted = {}
        self.refused = {}
        self.todo = [(source, i) for i in range(self.PER_ADDRESS) for source in HEAVY]

    def step(self):
        for _ in range(50):
            if not self.todo:
                self.ready = True
                time.sleep(0.05)
                return
            source, i = self.todo.pop(0)
            name = "wait-%s-%d-%s" % (source, i, uuid.uuid4().hex[:6])
            try:
                sock = connect_from(source, self.port)
                self.socks.append(sock)
                sock.sendall(
                    httpwire.request("PUT", PIPE_PREFIX + name + "?wait=3600", {"Transfer-Encoding": "chunked"})
                )
                line = first_line(read_until(sock, b"\r\n", 4096))
            except OSError as e:
                line = "error %s" % e
            tally = self.accepted if line.startswith("HTTP/1.1 200") else self.refused
            tally[line] = tally.get(line, 0) + 1

    def victim(self):
        return victim_transfer(self.port, MIB, sender_first=True)

    def note(self):
        accepted = sum(self.accepted.values())
        refused = ", ".join("%d %s" % (n, line) for line, n in self.refused.items())
        return "%d of %d waiting senders accepted%s" % (
            accepted,
            len(HEAVY) * self.PER_ADDRESS,
            "; refused: " + refused if refused else "",
        )


class Watched(Case):
    SOURCES = 2
    PER_ADDRESS = 250

    def __init__(self, port, args):
        super().__init__(port, args)
        self.statuses = {}
        self.todo = [(source, i) for i in range(self.PER_ADDRESS) for source in HEAVY[: self.SOURCES]]

    def target(self, source, i):
        return "watch-%s-%d" % (source, i)

    def step(self):
        for _ in range(50):
            if not self.todo:
                self.ready = True
                time.sleep(0.05)
                return
            source, i = self.todo.pop(0)
            try:
                sock = connect_from(source, self.port)
                self.socks.append(sock)
                sock.sendall(sse_request(self.target(source, i)))
                line = first_line(read_until(sock, b"\r\n\r\n", 8192))
            except OSError as e:
                line = "error %s" % e
            code = line.split(" ", 2)[1] if line.startswith("HTTP/") else line
            self.statuses[code] = self.statuses.get(code, 0) + 1

    def victim(self):
        ok, text = victim_stream(self.port, self.victim_name())
        return ok, "its stream: " + text, None

    def victim_name(self):
        return "victim-" + uuid.uuid4().hex[:12]

    def note(self):
        total = self.SOURCES * self.PER_ADDRESS
        return "%d streams asked for: %s" % (
            total,
            ", ".join("%d got %s" % (n, code) for code, n in sorted(self.statuses.items())),
        )


class Spectators(Watched):
    SOURCES = 1
    PER_ADDRESS = 60

    def target(self, source, i):
        return "crowded"

    def victim_name(self):
        return "crowded"


class Trickle(Case):
    extra_args = ("--idle-timeout", "5")

    def __init__(self, port, args):
        super().__init__(port, args)
        self.name = "trickle-" + uuid.uuid4().hex[:12]
        self.bytes = 0
        self.failed_after = self.reason = None
        self.state = "?"
        self.started = time.monotonic()
        self.next_byte = self.next_poll = 0.0

    def step(self):
        now = time.monotonic()
        if not self.procs:
            receiver = subprocess.Popen(
                ["curl", "-sS", "--interface", HEAVY[0], url(self.port, self.name), "-o", "/dev/null"],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
            self.procs.append(receiver)
            time.sleep(0.3)
            sock = connect_from(HEAVY[0], self.port)
            self.socks.append(sock)
            sock.sendall(httpwire.request("PUT", PIPE_PREFIX + self.name, {"Transfer-Encoding": "chunked"}))
            self.started = self.next_byte = time.monotonic()
            self.ready = True  # no victim: what happens to the trickle is the figure
            return
        if self.failed_after is None and now >= self.next_byte:
            try:
                self.socks[0].sendall(httpwire.chunk(b"x"))
                self.bytes += 1
            except OSError:
                pass
            self.next_byte = now + self.args.trickle_every
        if now >= self.next_poll and self.failed_after is None:
            self.next_poll = now + 0.25
            try:
                status = pipe_status(self.port, self.name, "127.0.0.1")
            except (OSError, ValueError, httpwire.BadMessage):
                return
            self.state = status.get("state", "?")
            if self.state == "failed":
                self.failed_after = time.monotonic() - self.started
                self.reason = status.get("reason")
        time.sleep(0.05)

    def warmup(self):
        pass

    def victim(self):
        return None, "n/a", None

    def note(self):
        if self.failed_after is not None:
            return "failed as %r %.1f s after the sender came, after %d bytes (one per %g s)" % (
                self.reason,
                self.failed_after,
                self.bytes,
                self.args.trickle_every,
            )
        return "still %s after %.0f s: %d bytes (one per %g s), never failed" % (
            self.state,
            time.monotonic() - self.started,
            self.bytes,
            self.args.trickle_every,
        )


CASE_CLASSES = {
    "pipelined": Pipelined,
    "fanout": Fanout,
    "pending": Pending,
    "watched": Watched,
    "spectators": Spectators,
    "trickle": Trickle,
}


# --- running a case ----------------------------------------------------------------------------


def supported_options(twistd):
    """The options of the daemon under test, from its --help (an older one has fewer)."""
    out = subprocess.run(
        [twistd, "hoodypipe", "--help"], capture_output=True, text=True, timeout=120, check=False
    ).stdout
    return set(re.findall(r"(--[a-z0-9-]+)=", out))


def daemon_args(extra, supported):
    kept, dropped = [], []
    items = list(extra)
    while items:
        option, value = items.pop(0), items.pop(0)
        (kept if option in supported else dropped).extend([option, value])
    return kept, dropped


def run_case(name, args, supported):
    cls = CASE_CLASSES[name]
    extra, dropped = daemon_args(cls.extra_args, supported)
    if dropped:
        print("  %s: the daemon has no %s; left out" % (name, " ".join(dropped[::2])), flush=True)
    daemon, port = start_hoodypipe(args.twistd, extra)
    case = poller = sampler = None
    row = {"case": name, "stopped": ""}
    try:
        poller = HealthPoller(port)
        case = cls(port, args)
        case.warmup()
        time.sleep(0.5)
        before = sample_rss(daemon.pid)
        sampler = RssSampler(daemon.pid)
        sampler.start()
        start = time.monotonic()
        end = start + args.seconds
        victim_thread = None
        result = {}

        def run_victim():
            result["started"] = time.monotonic()
            try:
                result["victim"] = case.victim()
            except Exception as e:  # reported in the table, not a crash of the bench
                result["victim"] = (False, "error: %r" % e, None)

        while True:
            now = time.monotonic()
            if victim_thread is None and case.ready:
                victim_thread = threading.Thread(target=run_victim, daemon=True)
                victim_thread.start()
            victim_done = victim_thread is not None and not victim_thread.is_alive()
            if now >= end and (victim_done or now >= end + args.seconds):
                break
            if (sampler.peak - before) > args.rss_limit * 1024:
                row["stopped"] = "stopped after %.1f s: RSS limit" % (now - start)
                break
            if daemon.proc.poll() is not None:
                row["stopped"] = "daemon exited %s" % daemon.proc.returncode
                break
            try:
                case.step()
            except OSError as e:
                if e.errno in (errno.EMFILE, errno.ENFILE):
                    raise
                row.setdefault("errors", 0)
                row["errors"] += 1
                time.sleep(0.05)
        attack_end = time.monotonic()
        if victim_thread is not None:
            victim_thread.join(max(0.0, end + args.seconds - time.monotonic()))
        sampler.stop()
        samples = [s for s in poller.stop() if start <= s[0] <= attack_end]
        idle = [s[1] for s in poller.samples if s[0] < start and s[2]]
        ok_times = [s[1] * 1000 for s in samples if s[2]]
        row.update(
            rss_before=before / 1024,
            rss_growth=(sampler.peak - before) / 1024,
            rss_end=(sampler.last - before) / 1024,
            seconds=attack_end - start,
            health_n=len(samples),
            health_failed=sum(not s[2] for s in samples),
            health_p50=statistics.median(ok_times) if ok_times else None,
            health_p99=percentile(ok_times, 0.99) if ok_times else None,
            health_idle=statistics.median(idle) * 1000 if idle else None,
            note=case.note(),
        )
        if "victim" in result:
            ok, text, _ = result["victim"]
            row["victim_ok"], row["victim"] = ok, case.victim_text(ok, text)
        else:
            row["victim_ok"] = False
            row["victim"] = (
                "not served %.0f s after it came" % (time.monotonic() - result["started"])
                if "started" in result
                else "never came (the attack was not in place)"
            )
        if name == "fanout" and case.socks:
            row["note"] += "; RSS %.0f KiB per receiver" % (row["rss_growth"] * 1024 / len(case.socks))
        return row
    finally:
        if sampler is not None and sampler.is_alive():
            sampler.stop()
        if poller is not None and not poller.samples:
            poller.stop()
        if case is not None:
            case.close()
        daemon.stop()


# --- report ----------------------------------------------------------------------------------------


def ms(value):
    return "-" if value is None else "%.1f" % value


def report(rows, args):
    print()
    print("twistd %s, %g s per case" % (args.twistd, args.seconds))
    print()
    print("| case | RSS growth: peak, at the end | /health p50 | p99 | polls failed | victim served | what happened |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for row in rows:
        if "error" in row:
            print("| %s | - | - | - | - | - | bench error: %s |" % (row["case"], row["error"]))
            continue
        served = {True: "yes", False: "**no**", None: "n/a"}[row["victim_ok"]]
        happened = row["note"]
        if row["stopped"]:
            happened += "; " + row["stopped"]
        print(
            "| %s | %.1f MiB, %.1f MiB | %s ms | %s ms | %d of %d | %s: %s | %s |"
            % (
                row["case"],
                row["rss_growth"],
                row["rss_end"],
                ms(row["health_p50"]),
                ms(row["health_p99"]),
                row["health_failed"],
                row["health_n"],
                served,
                row["victim"],
                happened,
            )
        )
    idle = [r["health_idle"] for r in rows if r.get("health_idle") is not None]
    if idle:
        print("\n/health p50 before the attacks (idle daemon): %.1f ms" % statistics.median(idle))


def main():
    parser = argument_parser(__doc__)
    parser.add_argument("--seconds", type=float, default=15, help="attack time per case (default 15)")
    parser.add_argument("--only", default=",".join(CASES), help="comma-separated subset of: " + ", ".join(CASES))
    parser.add_argument(
        "--twistd",
        default=default_twistd(),
        help="twistd with the hoodypipe plugin (default: twistd next to sys.executable)",
    )
    parser.add_argument(
        "--trickle-every", type=float, default=2.0, help="seconds between the trickle's bytes (default 2)"
    )
    parser.add_argument(
        "--no-reconnect",
        action="store_true",
        help="pipelined: a connection the daemon closed stays closed (by default the attacker reconnects)",
    )
    parser.add_argument(
        "--rss-limit",
        type=float,
        default=2048,
        help="MiB of RSS growth past which an attack is stopped early (default 2048)",
    )
    args = parser.parse_args()
    cases = [c.strip() for c in args.only.split(",") if c.strip()]
    unknown = set(cases) - set(CASES)
    if unknown or not cases:
        parser.error("--only: unknown case(s) %s" % ", ".join(sorted(unknown)))
    exit_on_sigterm()
    raise_fd_limit(8192)
    supported = supported_options(args.twistd)
    if not supported:
        parser.error("%s hoodypipe --help lists no options" % args.twistd)
    rows = []
    for name in [c for c in CASES if c in cases]:
        print("%s ..." % name, flush=True)
        try:
            row = run_case(name, args, supported)
        except (RuntimeError, OSError) as e:
            rows.append({"case": name, "error": str(e).splitlines()[0]})
            print("  %s: bench error: %s" % (name, e), flush=True)
            continue
        rows.append(row)
        print(
            "  RSS +%.1f MiB (before %.1f), /health p50 %s p99 %s ms (%d/%d failed); victim: %s; %s %s"
            % (
                row["rss_growth"],
                row["rss_before"],
                ms(row["health_p50"]),
                ms(row["health_p99"]),
                row["health_failed"],
                row["health_n"],
                row["victim"],
                row["note"],
                row["stopped"],
            ),
            flush=True,
        )
    report(rows, args)
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
