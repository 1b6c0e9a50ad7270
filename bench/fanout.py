#!/usr/bin/env python3
"""Fan-out cost of the side channel: 50 pipes x 50 SSE spectators during live transfers.

One hoodypipe daemon (`--max-connections-per-address 10000
--max-waiting-per-address 10000`, RLIMIT_NOFILE raised; the limit is
inherited by every child).  Every pipe's parties and each spectator come
from a loopback source address of their own, spread over 127.0.0.2-250 (no
two spectators of a pipe share one): the daemon gives one client address at
most 90% of a cap, e.g. 45 of a name's 50 spectator slots (docs/fairness.md).
A load process (asyncio, raw sockets) runs --pipes live transfers for the
whole benchmark: per pipe a receiver (`GET`, reads and discards) and a
sender (chunked `PUT`) paced at --rate bytes/s, with a per-pipe pattern
that the receiver checks byte for byte.
The same transfers are measured in three phases of --seconds each:

  a1  transfers only
  b   transfers + --spectators streams per pipe (2,500 by default), opened by
      --client-procs asyncio processes (raw sockets, every pipe's spectators
      in one process) that read and parse every event
  a2  transfers only again, after the spectators have left

Daemon CPU is utime+stime from /proc/PID/stat over each phase, divided by the
phase's wall time (1.0 = one core busy).  Side-channel CPU = b - mean(a1, a2),
in % of one core and as a share of the daemon's CPU in b.

Latency, from the progress events of phase b.  Each spectator reads with
recvmsg() and SO_TIMESTAMPNS, so an arrival is stamped with the time the
kernel queued the data for the spectator (on loopback: when the daemon sent
it), not when the client's event loop got round to it (those read times are
shown too).  An event carries no timestamp, but the daemon's tick time is
rebuilt from its `elapsed` (ms, since streaming began) plus the pipe's
streaming time from `?status` history (ms): CLOCK_REALTIME on both sides,
good to about 1 ms.
  tick-to-delivery  daemon tick -> delivery, every (event, spectator): p50/p99
  tick-to-last      per tick: daemon tick -> last delivery to any of the
                    streams, i.e. how long one tick takes to fan out: p50/p99
  spread            per event (one id of one pipe): its first delivery to any
                    of the pipe's spectators -> delivery to each of the others
  gaps              between consecutive progress events at one spectator:
                    p1/p50/p99/max against --progress-interval (250 ms)
  missed            (event, spectator) pairs never delivered (expected 0: the
                    spectators read, so nothing should be coalesced away)

RSS (/proc/PID/status, median of 5 samples) at the end of each phase and
once the spectators are open, before b; per spectator = (RSS at the end of
b - RSS at the end of a1) / streams, in KiB (also shown with the RSS just
after opening).  Client CPU (load and spectator processes) is shown too: a
saturated client would delay reads, though not the kernel's timestamps.

The exit status is non-zero if a transfer fails or its data is corrupted,
or the spectator streams cannot be opened or break; there is no pass/fail
target here.

Examples:
  bench/fanout.py --twistd /work/venv/bin/twistd          # 3 x 30 s, ~2 min
  bench/fanout.py --seconds 10 --pipes 10 --spectators 20 # quicker
"""

import argparse
import asyncio
import http.client
import itertools
import json
import os
import random
import re
import select
import socket
import struct
import subprocess
import sys
import time
import uuid
from datetime import datetime

from _common import (
    HOST,
    PIPE_PREFIX,
    Child,
    argument_parser,
    cpu_seconds,
    default_twistd,
    exit_on_sigterm,
    raise_fd_limit,
    sample_rss,
    start_hoodypipe,
)

from tests.support.httpwire import ResponseParser, request

PATTERN_SIZE = 64 * 1024  # the per-pipe repeating pattern; also the largest chunk
PACE_STEP = 0.05  # a paced sender writes every 50 ms
CONNECT_CONCURRENCY = 16  # spectators opening at once, per client process
SETTLE = 2.0  # seconds before each phase
RECV_SIZE = 65536
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)  # Linux; SCM_ has the same value
TIMESPEC = struct.Struct("@qq")
ANCILLARY_SIZE = socket.CMSG_SPACE(TIMESPEC.size)
ELAPSED = re.compile(rb'"elapsed":([0-9.eE+-]+)')
# Loopback source addresses: each a client of its own to the daemon's fair shares.
SOURCES = ["127.0.0.%d" % k for k in range(2, 251)]


# --- HTTP client side (used by the client processes) ---------------------------


class Pattern:
    """The bytes a pipe carries: one random block per pipe, repeated."""

    def __init__(self, seed):
        block = random.Random(seed).randbytes(PATTERN_SIZE)
        self.doubled = block + block
        self.view = memoryview(self.doubled)

    def at(self, offset, size):
        """`size` (<= PATTERN_SIZE) bytes of the stream at `offset` (a view)."""
        start = offset % PATTERN_SIZE
        return self.view[start : start + size]

    def matches(self, offset, piece):
        """Whether `piece` (<= PATTERN_SIZE bytes) is the stream at `offset`."""
        start = offset % PATTERN_SIZE
        # bytes == bytes is a memcmp; memoryview == memoryview goes byte by byte.
        return bytes(piece) == self.doubled[start : start + len(piece)]


class Party(asyncio.Protocol):
    """A client connection that sends `request` and parses the response."""

    def __init__(self, request):
        self.request = request
        self.transport = None
        self.reader = ResponseParser()
        self.finished = asyncio.get_running_loop().create_future()
        self.error = None
        self.writable = asyncio.Event()
        self.writable.set()

    def connection_made(self, transport):
        self.transport = transport
        transport.write(self.request)

    def data_received(self, data):
        try:
            for piece in self.reader.feed(data):
                self.body(piece)
        except ValueError as e:  # httpwire.BadMessage
            self.fail("bad response: %s" % e)
            return
        if self.reader.done and not self.finished.done():
            self.finished.set_result(None)

    def body(self, piece):
        pass

    def connection_lost(self, exc):
        self.reader.eof()
        if not self.reader.done:
            self.fail("connection closed before the end of the response (%s)" % exc)
        elif not self.finished.done():
            self.finished.set_result(None)
        self.writable.set()

    def fail(self, error):
        if self.error is None:
            self.error = error
        if not self.finished.done():
            self.finished.set_result(None)
        if self.transport is not None:
            self.transport.abort()

    def pause_writing(self):
        self.writable.clear()

    def resume_writing(self):
        self.writable.set()


class Receiver(Party):
    def __init__(self, name, pattern):
        super().__init__(request("GET", PIPE_PREFIX + name))
        self.pattern = pattern
        self.received = 0
        self.started = asyncio.Event()

    def body(self, piece):
        while piece and self.error is None:
            take = min(len(piece), PATTERN_SIZE)
            if not self.pattern.matches(self.received, piece[:take]):
                self.fail("corrupted data near byte %d" % self.received)
                return
            self.received += take
            piece = piece[take:]
        self.started.set()


class Sender(Party):
    def __init__(self, name, pattern, rate):
        super().__init__(request("PUT", PIPE_PREFIX + name, {"Transfer-Encoding": "chunked"}))
        self.pattern = pattern
        self.rate = rate
        self.sent = 0
        self.said = bytearray()
        self.stopping = False

    def body(self, piece):
        if len(self.said) < 4096:
            self.said += piece[: 4096 - len(self.said)]

    async def pace(self):
        """Write `rate` bytes/s in chunks until stopped, then end the body."""
        loop = asyncio.get_running_loop()
        await asyncio.sleep(random.uniform(0, PACE_STEP))  # not all in step
        t0 = loop.time()
        while not self.stopping and self.error is None:
            due = int(self.rate * (loop.time() - t0)) - self.sent
            while due > 0 and self.writable.is_set() and self.error is None:
                size = min(due, PATTERN_SIZE)
                self.transport.writelines([b"%x\r\n" % size, self.pattern.at(self.sent, size), b"\r\n"])
                self.sent += size
                due -= size
            if not self.writable.is_set():
                await self.writable.wait()
            else:
                await asyncio.sleep(PACE_STEP)
        if self.error is None and not self.transport.is_closing():
            self.transport.write(b"0\r\n\r\n")


async def read_commands():
    """Lines from stdin, one at a time (the parent drives the phases)."""
    loop = asyncio.get_running_loop()
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line:
            return
        yield line.strip()


def say(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


async def load_role(cfg):
    """Paced transfers; commands: `stat` -> byte counts, `stop` -> end and verify."""
    loop = asyncio.get_running_loop()
    pipes = []
    for i, name in enumerate(cfg["names"]):
        pattern = Pattern(name)
        source = (SOURCES[i % len(SOURCES)], 0)
        _, receiver = await loop.create_connection(
            lambda name=name, pattern=pattern: Receiver(name, pattern), HOST, cfg["port"], local_addr=source
        )
        _, sender = await loop.create_connection(
            lambda name=name, pattern=pattern: Sender(name, pattern, cfg["rate"]),
            HOST,
            cfg["port"],
            local_addr=source,
        )
        pipes.append((name, sender, receiver, loop.create_task(sender.pace())))
    try:
        await asyncio.wait_for(asyncio.gather(*(r.started.wait() for _, _, r, _ in pipes)), 30)
    except TimeoutError:
        pass  # reported with the results
    say({"ready": sum(r.started.is_set() for _, _, r, _ in pipes)})
    async for command in read_commands():
        if command == "stat":
            say({"sent": sum(s.sent for _, s, _, _ in pipes), "received": sum(r.received for _, _, r, _ in pipes)})
        elif command == "stop":
            break
    for _, sender, _, _ in pipes:
        sender.stopping = True
    await asyncio.wait([t for *_, t in pipes] + [p.finished for _, s, r, _ in pipes for p in (s, r)], timeout=60)
    results = []
    for name, sender, receiver, _ in pipes:
        error = sender.error or receiver.error
        if error is None and not (sender.finished.done() and receiver.finished.done()):
            error = "did not end within 60 s"
        if error is None and receiver.reader.status != 200:
            error = "receiver got HTTP %s" % receiver.reader.status
        if error is None and sender.reader.status != 200:
            error = "sender got HTTP %s" % sender.reader.status
        if error is None and b"[ERROR]" in sender.said:
            error = "sender was told: %s" % sender.said.decode(errors="replace").strip()
        if error is None and receiver.received != sender.sent:
            error = "sent %d bytes, received %d" % (sender.sent, receiver.received)
        results.append({"name": name, "sent": sender.sent, "received": receiver.received, "error": error})
    say({"pipes": results})


class Spectator:
    """One SSE stream on a raw socket: stamps the arrival of every progress event.

    Reads with recvmsg() and SO_TIMESTAMPNS, so each read carries the time
    the kernel got the data (on loopback: when the daemon sent it), whatever
    the client's own event loop was doing then.
    """

    def __init__(self, name, pipe, index, recorder, gate, streaming_at, source):
        self.streaming_at = streaming_at
        self.source = source
        self.request = request("GET", PIPE_PREFIX + name + "?progress", {"Accept": "text/event-stream"})
        self.pipe = pipe
        self.index = index
        self.recorder = recorder
        self.gate = gate  # released when the greeting arrived
        self.reader = ResponseParser()
        self.sock = None
        self.error = None
        self.buffer = b""
        self.stamp = self.seen = 0.0
        self.arrivals = []  # kernel stamps of progress events
        self.greeted = asyncio.Event()
        self.last_bytes = -1

    async def open(self, port):
        loop = asyncio.get_running_loop()
        sock = self.sock = socket.socket()
        sock.setblocking(False)
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        try:
            sock.bind((self.source, 0))
            await loop.sock_connect(sock, (HOST, port))
            await loop.sock_sendall(sock, self.request)
        except OSError as e:
            self.fail("connect: %s" % e)
            return
        loop.add_reader(sock.fileno(), self.readable)

    def readable(self):
        try:
            data, ancillary, _, _ = self.sock.recvmsg(RECV_SIZE, ANCILLARY_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as e:
            self.fail("recv: %s" % e)
            return
        self.seen = self.stamp = time.time()
        if not data:
            self.fail("stream closed by the server")
            return
        for level, kind, value in ancillary:
            if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
                sec, nsec = TIMESPEC.unpack_from(value)
                self.stamp = sec + nsec * 1e-9
                break
        else:
            self.recorder.unstamped += 1  # falls back to the read time
        try:
            for piece in self.reader.feed(data):
                self.body(piece)
        except ValueError as e:  # httpwire.BadMessage
            self.fail("bad response: %s" % e)
            return
        if self.reader.status not in (None, 200):
            self.fail("HTTP %s" % self.reader.status)
        elif self.reader.done:
            self.fail("stream ended")

    def body(self, piece):
        self.buffer += piece
        while True:
            i = self.buffer.find(b"\n\n")
            if i < 0:
                return
            block, self.buffer = self.buffer[:i], self.buffer[i + 2 :]
            self.event(block)

    def event(self, block):
        event_id = kind = data = None
        for line in block.split(b"\n"):
            if line.startswith(b"id: "):
                event_id = int(line[4:])
            elif line.startswith(b"event: "):
                kind = line[7:]
            elif line.startswith(b"data: "):
                data = line[6:]
        if kind == b"state" and not self.greeted.is_set():
            self.greeted.set()
            self.release()
        elif kind == b"progress":
            self.arrivals.append(self.stamp)
            match = ELAPSED.search(data or b"")
            if match is None:
                self.recorder.bad_events += 1
                self.recorder.last_bad = "no elapsed: %r" % data
                return
            tick = self.streaming_at + float(match.group(1))
            self.recorder.arrival(self.pipe, event_id, self.stamp, self.seen, tick)
            if self.index == 0:  # one spectator per pipe checks the payload
                try:
                    figures = json.loads(data)
                    transferred = figures["bytesTransferred"]
                    if transferred < self.last_bytes or figures["bytes"] != transferred:
                        raise ValueError("bytesTransferred %r after %r" % (transferred, self.last_bytes))
                    self.last_bytes = transferred
                except (TypeError, KeyError, ValueError) as e:
                    self.recorder.bad_events += 1
                    self.recorder.last_bad = "%s: %r" % (e, data)
        elif kind == b"done":
            self.recorder.done_events += 1

    def release(self):
        if self.gate is not None:
            self.gate.release()
            self.gate = None

    def fail(self, error):
        if self.error is None and not self.recorder.stopping:
            self.error = error
        self.close()

    def close(self):
        self.release()
        if self.sock is not None:
            try:
                asyncio.get_running_loop().remove_reader(self.sock.fileno())
            except ValueError:
                pass  # never registered
            self.sock.close()
            self.sock = None


class Recorder:
    def __init__(self):
        self.kernel = {}  # (pipe, id) -> [kernel stamps]
        self.client = {}  # (pipe, id) -> [times the client read it]
        self.ticks = {}  # (pipe, id) -> the daemon's time of the tick
        self.stopping = False
        self.bad_events = 0
        self.last_bad = None
        self.done_events = 0
        self.unstamped = 0

    def arrival(self, pipe, event_id, stamp, seen, tick):
        key = (pipe, event_id)
        self.kernel.setdefault(key, []).append(stamp)
        self.client.setdefault(key, []).append(seen)
        self.ticks.setdefault(key, tick)


async def spectators_role(cfg):
    """Open the streams; `record` marks the start, `stop` the end -> figures."""
    recorder = Recorder()
    gate = asyncio.Semaphore(CONNECT_CONCURRENCY)
    spectators, opening = [], []
    t0 = time.monotonic()
    for pipe, name, streaming_at in cfg["pipes"]:
        for index in range(cfg["per_pipe"]):
            try:
                await asyncio.wait_for(gate.acquire(), 30)
            except TimeoutError:
                break  # streams not answered; reported as not ready
            # A pipe's spectators come from distinct addresses (per_pipe <= 50 < len(SOURCES)).
            source = SOURCES[(pipe * cfg["per_pipe"] + index) % len(SOURCES)]
            spectator = Spectator(name, pipe, index, recorder, gate, streaming_at, source)
            spectators.append(spectator)
            opening.append(asyncio.create_task(spectator.open(cfg["port"])))
    try:
        await asyncio.wait_for(asyncio.gather(*(s.greeted.wait() for s in spectators)), 30)
    except TimeoutError:
        pass
    say(
        {
            "ready": sum(s.greeted.is_set() and s.error is None for s in spectators),
            "opened_in": time.monotonic() - t0,
            "errors": sorted({s.error for s in spectators if s.error})[:5],
        }
    )
    start = stop = None
    async for command in read_commands():
        if command == "record":
            start = time.time()
        elif command == "stop":
            stop = time.time()
            break
    await asyncio.sleep(0.5)  # let the last tick's events arrive everywhere
    recorder.stopping = True
    for s in spectators:
        s.close()
    start = start if start is not None else stop

    latency, latency_client, spread, events = [], [], [], []
    for key, stamps in recorder.kernel.items():
        tick = recorder.ticks[key]
        if start <= tick <= stop:
            stamps.sort()
            latency.extend(round(t - tick, 6) for t in stamps)
            latency_client.extend(round(t - tick, 6) for t in recorder.client[key])
            spread.extend(round(t - stamps[0], 6) for t in stamps[1:])
            events.append([key[0], key[1], round(tick, 6), round(stamps[-1], 6), len(stamps)])
    gaps = []
    for s in spectators:
        inside = [t for t in s.arrivals if start <= t <= stop]
        gaps.extend(round(b - a, 6) for a, b in itertools.pairwise(inside))
    say(
        {
            "streams": len(spectators),
            "errors": sorted({s.error for s in spectators if s.error})[:5],
            "failed_streams": sum(1 for s in spectators if s.error),
            "bad_events": recorder.bad_events,
            "last_bad": recorder.last_bad,
            "done_events": recorder.done_events,
            "unstamped": recorder.unstamped,
            "latency": latency,
            "latency_client": latency_client,
            "spread": spread,
            "events": events,
            "gaps": gaps,
        }
    )


def client_main(role, cfg):
    main_coro = load_role if role == "load" else spectators_role
    asyncio.run(main_coro(json.loads(cfg)))
    return 0


# --- the benchmark (parent) --------------------------------------------------------


class Worker:
    """A client process of this script, driven by lines on stdin / JSON on stdout."""

    def __init__(self, name, role, cfg):
        self.child = Child(
            name,
            [sys.executable, os.path.abspath(__file__), "--role", role, "--config", json.dumps(cfg)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        self.buffer = b""

    @property
    def pid(self):
        return self.child.pid

    def send(self, command):
        self.child.proc.stdin.write(command.encode() + b"\n")
        self.child.proc.stdin.flush()

    def answer(self, timeout):
        """The next JSON line it prints; RuntimeError if it dies or takes too long."""
        fd = self.child.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise RuntimeError(
                    "%s: no answer after %.0f s:\n%s" % (self.child.name, timeout, self.child.log_tail())
                )
            more = os.read(fd, 1 << 20)
            if not more:
                raise RuntimeError(
                    "%s exited (%s):\n%s" % (self.child.name, self.child.proc.wait(), self.child.log_tail())
                )
            self.buffer += more
        line, _, self.buffer = self.buffer.partition(b"\n")
        return json.loads(line)

    def ask(self, command, timeout=30):
        self.send(command)
        return self.answer(timeout)

    def stop(self):
        for stream in (self.child.proc.stdin, self.child.proc.stdout):
            try:
                stream.close()
            except OSError:
                pass
        self.child.stop()


def pct(values, q):
    """The q-th percentile (0-100), linear interpolation; None if empty."""
    if not values:
        return None
    values = sorted(values)
    pos = (len(values) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (pos - lo)


def ms(seconds):
    return "-" if seconds is None else "%.1f ms" % (seconds * 1000)


class Phase:
    """CPU, wall time, RSS and bytes moved over one measured phase."""

    def __init__(self, name, daemon_pid, load, clients):
        self.name = name
        self.pids = {
            "daemon": daemon_pid,
            "load": load.pid,
            **{"spectators%d" % i: c.pid for i, c in enumerate(clients)},
        }
        self.load = load

    def measure(self, seconds):
        bytes0 = self.load.ask("stat")["received"]
        cpu0 = {k: cpu_seconds(p) for k, p in self.pids.items()}
        t0 = time.monotonic()
        time.sleep(seconds)
        cpu1 = {k: cpu_seconds(p) for k, p in self.pids.items()}
        self.wall = time.monotonic() - t0
        self.cores = {k: (cpu1[k] - cpu0[k]) / self.wall for k in self.pids}
        self.mbps = (self.load.ask("stat")["received"] - bytes0) / self.wall / 1e6
        self.rss = sample_rss(self.pids["daemon"])
        clients = ", ".join("%s %.0f%%" % (k, v * 100) for k, v in self.cores.items() if k != "daemon")
        print(
            "phase %-3s %5.1f s: daemon CPU %5.1f%% of a core, RSS %.1f MiB, "
            "relayed %.1f MB/s (clients: %s)"
            % (self.name, self.wall, self.cores["daemon"] * 100, self.rss / 1024, self.mbps, clients),
            flush=True,
        )
        return self


def tick_spans(events, interval, pipes):
    """Group all pipes' events by the daemon's tick time; for each tick that
    has every pipe: last delivery - tick time.  Also returns how many ticks
    were left out as incomplete (at the edges of the phase) and the largest
    disagreement between the tick times of one tick (the error of the
    reconstruction, normally about 1 ms)."""
    ticks = []
    for pipe, _, tick, last, _ in sorted(events, key=lambda e: e[2]):
        if ticks and tick - ticks[-1][1] < interval / 2:
            ticks[-1][1] = tick
            ticks[-1][2] = max(ticks[-1][2], last)
            ticks[-1][3].add(pipe)
        else:
            ticks.append([tick, tick, last, {pipe}])
    spans = [last - low for low, _, last, seen in ticks if len(seen) == pipes]
    error = max((high - low for low, high, _, _ in ticks), default=0.0)
    return spans, len(ticks) - len(spans), error


def streaming_since(port, name):
    """When the pipe started streaming, daemon clock (from ?status, to 1 ms)."""
    conn = http.client.HTTPConnection(HOST, port, timeout=10)
    try:
        conn.request("GET", "%s%s?status" % (PIPE_PREFIX, name))
        status = json.loads(conn.getresponse().read())
    finally:
        conn.close()
    at = [h["at"] for h in status["history"] if h["state"] == "streaming"][-1]
    # Printed truncated to the millisecond: the middle of that millisecond.
    return datetime.fromisoformat(at.replace("Z", "+00:00")).timestamp() + 0.0005


def report(args, streams, phases, results, rss_open):
    a1, b, a2 = phases
    base = (a1.cores["daemon"] + a2.cores["daemon"]) / 2
    side = b.cores["daemon"] - base
    print(
        "\n== fan-out: %d pipes x %d spectators = %d SSE streams, transfers at "
        "%.2f MB/s each, phases of %.0f s" % (args.pipes, args.spectators, streams, args.rate / 1e6, args.seconds)
    )
    print(
        "daemon CPU (1 core = 100%%): a1 %.1f%%, b %.1f%%, a2 %.1f%%"
        % (a1.cores["daemon"] * 100, b.cores["daemon"] * 100, a2.cores["daemon"] * 100)
    )
    print(
        "side channel CPU: %.1f%% of one core (%.2f ms of CPU per second, "
        "%.0f us per stream-second), %.0f%% of the daemon's CPU in b"
        % (side * 100, side * 1000, side / streams * 1e6, 100 * side / b.cores["daemon"] if b.cores["daemon"] else 0)
    )

    def merged(key):
        return [x for r in results for x in r[key]]

    latency, latency_client, spread, gaps, events = (
        merged(k) for k in ("latency", "latency_client", "spread", "gaps", "events")
    )
    spans, incomplete, error = tick_spans(events, args.interval, args.pipes)
    expected = len(events) * args.spectators
    delivered = sum(e[4] for e in events)
    print(
        "tick-to-delivery, daemon's tick to each spectator's delivery (%d): "
        "p50 %s, p99 %s, max %s (read by the clients: p50 %s, p99 %s)"
        % (
            len(latency),
            ms(pct(latency, 50)),
            ms(pct(latency, 99)),
            ms(max(latency, default=None)),
            ms(pct(latency_client, 50)),
            ms(pct(latency_client, 99)),
        )
    )
    print(
        "tick-to-last, tick to its last delivery over all %d streams (%d ticks, "
        "%d incomplete left out): p50 %s, p99 %s, max %s; tick times agree to %s"
        % (
            streams,
            len(spans),
            incomplete,
            ms(pct(spans, 50)),
            ms(pct(spans, 99)),
            ms(max(spans, default=None)),
            ms(error),
        )
    )
    print(
        "spread, one event's first delivery to each other delivery among a pipe's "
        "spectators (%d): p50 %s, p99 %s, max %s"
        % (len(spread), ms(pct(spread, 50)), ms(pct(spread, 99)), ms(max(spread, default=None)))
    )
    print(
        "gaps between progress events at a spectator (target %s, %d gaps): "
        "p1 %s, p50 %s, p99 %s, max %s"
        % (
            ms(args.interval),
            len(gaps),
            ms(pct(gaps, 1)),
            ms(pct(gaps, 50)),
            ms(pct(gaps, 99)),
            ms(max(gaps) if gaps else None),
        )
    )
    print(
        "events: %d progress events x spectators expected %d, delivered %d "
        "(missed %d)" % (len(events), expected, delivered, expected - delivered)
    )
    print(
        "RSS: a1 %.1f MiB, spectators just open %.1f MiB, end of b %.1f MiB, "
        "a2 %.1f MiB -> per spectator %.1f KiB (end of b), %.1f KiB (just open)"
        % (
            a1.rss / 1024,
            rss_open / 1024,
            b.rss / 1024,
            a2.rss / 1024,
            (b.rss - a1.rss) / streams,
            (rss_open - a1.rss) / streams,
        )
    )
    print(
        "relayed: a1 %.1f MB/s, b %.1f MB/s, a2 %.1f MB/s (paced target %.1f)"
        % (a1.mbps, b.mbps, a2.mbps, args.rate * args.pipes / 1e6)
    )
    if error > 0.003 or (latency and min(latency) < -0.002):
        print(
            "NOTE: tick times look off (disagreement %s, smallest latency %s): "
            "is the daemon's clock time.time()?" % (ms(error), ms(min(latency)))
        )
    unstamped = sum(r["unstamped"] for r in results)
    if unstamped:
        print("NOTE: %d reads came without a kernel timestamp (client read time used)" % unstamped)
    busy = [k for p in phases for k, v in p.cores.items() if k != "daemon" and v > 0.8]
    if busy:
        print(
            "NOTE: client process(es) above 80%% of a core (%s): the client-side "
            "read times include client delay" % ", ".join(sorted(set(busy)))
        )


def main():
    parser = argument_parser(__doc__)
    parser.add_argument("--seconds", type=float, default=30, help="length of each measured phase (default 30)")
    parser.add_argument("--pipes", type=int, default=50, help="live transfers (default 50)")
    parser.add_argument(
        "--spectators", type=int, default=50, help="SSE spectators per pipe (default 50, the daemon's --max-spectators)"
    )
    parser.add_argument("--rate", type=float, default=1e6, help="bytes/s per transfer (default 1e6)")
    parser.add_argument("--client-procs", type=int, default=2, help="spectator client processes (default 2)")
    parser.add_argument("--interval", type=float, default=0.25, help="the daemon's --progress-interval (default 0.25)")
    parser.add_argument(
        "--twistd",
        default=default_twistd(),
        help="twistd with the hoodypipe plugin (default: twistd next to sys.executable)",
    )
    parser.add_argument("--role", help=argparse.SUPPRESS)
    parser.add_argument("--config", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role:
        return client_main(args.role, args.config)
    if args.spectators > 50:
        parser.error("--spectators: at most 50 (the daemon's --max-spectators)")
    exit_on_sigterm()

    streams = args.pipes * args.spectators
    raise_fd_limit(streams + 2 * args.pipes + 512)
    daemon_args = [
        "--max-connections-per-address",
        "10000",
        "--max-waiting-per-address",
        "10000",
        "--max-watched-paths",
        str(max(500, args.pipes)),
        "--progress-interval",
        str(args.interval),
        # Streams must outlive phase b (the default window is 300 s).
        "--spectator-window",
        str(max(300.0, args.seconds + 120)),
    ]
    names = ["fan-%02d-%s" % (i, uuid.uuid4().hex[:12]) for i in range(args.pipes)]
    workers = []
    failures = 0
    daemon, port = start_hoodypipe(args.twistd, daemon_args)
    try:
        print("hoodypipe pid %d, port %d, fd limit %s" % (daemon.pid, port, os.sysconf("SC_OPEN_MAX")), flush=True)
        load = Worker("fanout-load", "load", {"port": port, "names": names, "rate": args.rate})
        workers.append(load)
        ready = load.answer(60)["ready"]
        print("%d/%d transfers streaming" % (ready, args.pipes), flush=True)
        if ready != args.pipes:
            raise RuntimeError("only %d of %d transfers started" % (ready, args.pipes))
        since = [streaming_since(port, name) for name in names]
        time.sleep(SETTLE)
        a1 = Phase("a1", daemon.pid, load, []).measure(args.seconds)

        clients = []
        for c in range(args.client_procs):
            mine = [(i, n, since[i]) for i, n in enumerate(names) if i % args.client_procs == c]
            if mine:
                clients.append(
                    Worker(
                        "fanout-spectators%d" % c,
                        "spectators",
                        {"port": port, "pipes": mine, "per_pipe": args.spectators},
                    )
                )
        workers += clients
        opened = [c.answer(120) for c in clients]
        ready = sum(o["ready"] for o in opened)
        print(
            "%d/%d spectator streams open (in %s s)%s"
            % (
                ready,
                streams,
                "/".join("%.1f" % o["opened_in"] for o in opened),
                "; errors: %s" % [e for o in opened for e in o["errors"]] if ready != streams else "",
            ),
            flush=True,
        )
        if ready != streams:
            raise RuntimeError("only %d of %d spectator streams opened" % (ready, streams))
        time.sleep(SETTLE)
        rss_open = sample_rss(daemon.pid)
        print("spectators open: RSS %.1f MiB" % (rss_open / 1024), flush=True)
        for c in clients:
            c.send("record")
        b = Phase("b", daemon.pid, load, clients).measure(args.seconds)
        for c in clients:
            c.send("stop")
        results = [c.answer(120) for c in clients]
        for c in clients:
            c.child.proc.wait(30)
        for r in results:
            if r["failed_streams"] or r["bad_events"] or r["done_events"]:
                failures += 1
                print(
                    "spectators FAILED: %d streams failed (%s), %d bad events (%s), "
                    "%d done events"
                    % (r["failed_streams"], r["errors"], r["bad_events"], r["last_bad"], r["done_events"])
                )

        time.sleep(SETTLE)
        a2 = Phase("a2", daemon.pid, load, []).measure(args.seconds)

        load.send("stop")
        pipes = load.answer(120)["pipes"]
        bad = [p for p in pipes if p["error"]]
        for p in bad:
            print("transfer %s FAILED: %s" % (p["name"], p["error"]))
        failures += len(bad)
        print(
            "%d/%d transfers complete and verified, %.1f MB relayed in all"
            % (len(pipes) - len(bad), len(pipes), sum(p["received"] for p in pipes) / 1e6),
            flush=True,
        )
        report(args, streams, (a1, b, a2), results, rss_open)
    except (RuntimeError, OSError, ValueError) as e:  # a client or the daemon died
        failures += 1
        print("FAILED: %s" % e)
    finally:
        for w in workers:
            w.stop()
        daemon.stop()
    if failures:
        print("%d failure(s)" % failures)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
