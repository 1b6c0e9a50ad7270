#!/usr/bin/env python3
"""Soak: hundreds of concurrent pipes of random sizes, with random faults, for minutes.

Every pipe has a sender and n (1..3) receivers on raw asyncio sockets; the
bytes are slices of one random pool at a random offset, so every receiver
checks each byte as it arrives (a prefix of a broken download is checked
too) and the sha256 of every completed download against the sender's. A
share of the transfers (--fault-rate) gets one fault: the sender hangs up
(FIN) or resets (RST) mid-body, a receiver hangs up or resets, or a receiver
stops reading for longer than the idle timeout. After each transfer its
``?status`` must agree with what the parties saw.

Every 10 s one line: elapsed, transfers done, bytes moved, corruptions,
failures by kind, daemon RSS. At the end: totals, corruptions, leaks
(registry gauges after quiesce, fds and RSS at the end vs the start), and the
RSS curve. Exit status 1 on any corruption, silent truncation, side-channel
mismatch, hung transfer, leak or daemon traceback.

Examples:
  bench/soak.py                       # 10 minutes, 200 concurrent pipes
  bench/soak.py --minutes 1 --concurrency 100 --seed 3
"""

import argparse
import asyncio
import collections
import hashlib
import json
import os
import random
import re
import socket
import statistics
import struct
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import (HOST, MIB, default_twistd, exit_on_sigterm,  # noqa: E402
                     raise_fd_limit, rss_kib, start_hoodypipe)

PREFIX = "/api/v1/pipe/"
POOL_SIZE = 64 * MIB
PIECE = 256 * 1024
FAULTS = ("sender_close", "sender_reset", "receiver_close", "receiver_reset", "receiver_stall")
REASONS = {"Sender disconnected", "All receivers disconnected", "Timed out", "Idle timeout", "Malformed upload",
           "Server is shutting down"}


def linger0(sock):
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass


class Pool:
    """The bytes of every stream: a random pool read from an offset, wrapping around."""

    def __init__(self, seed):
        self.data = memoryview(random.Random(seed).randbytes(POOL_SIZE))

    def pieces(self, offset, start, length, step=PIECE):
        pos = start
        end = start + length
        while pos < end:
            at = (offset + pos) % POOL_SIZE
            take = min(step, end - pos, POOL_SIZE - at)
            yield self.data[at:at + take]
            pos += take

    def matches(self, offset, start, data):
        """True if ``data`` is what the stream holds at ``start``."""
        pos = 0
        for piece in self.pieces(offset, start, len(data), step=1 << 30):
            if piece != data[pos:pos + len(piece)]:
                return False
            pos += len(piece)
        return True


class Totals:
    def __init__(self):
        self.done = 0
        self.bytes = 0
        self.corruptions = 0
        self.truncations = 0  # a clean end after partial data
        self.mismatches = 0  # the side channel disagrees with what the parties saw
        self.hung = 0
        self.failures = collections.Counter()  # by reason (failed transfers)
        self.faults = collections.Counter()  # injected, by kind
        self.refusals = collections.Counter()  # parties refused (HTTP status)
        self.unexpected = 0  # failed transfers without an injected fault
        self.examples = []

    def problem(self, text):
        if len(self.examples) < 30:
            self.examples.append(text)


# -- HTTP by hand ---------------------------------------------------------------------------------

async def connect(port, rcvbuf=None):
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.setblocking(False)
    try:
        await loop.sock_connect(sock, (HOST, port))
    except BaseException:
        sock.close()
        raise
    return await asyncio.open_connection(sock=sock, limit=1 << 20)


async def read_head(reader):
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    code = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
    return code, headers


async def read_body(reader, headers, on_piece):
    """Feed the body to ``on_piece`` (a coroutine returning False to stop). True on a clean end."""
    if headers.get("transfer-encoding", "").lower() == "chunked":
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                while await reader.readuntil(b"\r\n") != b"\r\n":
                    pass
                return True
            while size:
                piece = await reader.read(min(size, PIECE))
                if not piece:
                    raise asyncio.IncompleteReadError(b"", size)
                size -= len(piece)
                if not await on_piece(piece):
                    return False
            if await reader.readexactly(2) != b"\r\n":
                raise ValueError("chunk not followed by CRLF")
    left = int(headers.get("content-length", "-1"))
    if left < 0:
        while piece := await reader.read(PIECE):
            if not await on_piece(piece):
                return False
        return False  # an end by close cannot be told from a cut
    while left:
        piece = await reader.read(min(left, PIECE))
        if not piece:
            raise asyncio.IncompleteReadError(b"", left)
        left -= len(piece)
        if not await on_piece(piece):
            return False
    return True


async def fetch_json(port, target, timeout=10):
    reader, writer = await asyncio.wait_for(connect(port), timeout)
    try:
        writer.write(f"GET {target} HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n".encode())
        code, headers = await asyncio.wait_for(read_head(reader), timeout)
        body = bytearray()

        async def keep(piece):
            body.extend(piece)
            return True

        await asyncio.wait_for(read_body(reader, headers, keep), timeout)
        return code, bytes(body)
    finally:
        writer.close()


# -- one transfer -------------------------------------------------------------------------------

class Receiver:
    def __init__(self, pool, offset, size, action=None, at=0, stall_for=0.0):
        self.pool, self.offset, self.size = pool, offset, size
        self.action, self.at, self.stall_for = action, at, stall_for
        self.got = 0
        self.sha = hashlib.sha256()
        self.corrupt_at = None
        self.clean = False
        self.broken = None
        self.status = None
        self.acted = False
        self.chunked = False

    async def run(self, port, name, n):
        reader, writer = await connect(port, rcvbuf=16384 if self.action == "stall" else None)
        try:
            writer.write(f"GET {PREFIX}{name}?n={n} HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n".encode())
            try:
                self.status, headers = await read_head(reader)
                self.chunked = headers.get("transfer-encoding", "").lower() == "chunked"
                if self.status != 200:
                    return
                self.clean = await read_body(reader, headers, self._piece)
            except (asyncio.IncompleteReadError, ConnectionError, OSError, ValueError) as error:
                self.broken = type(error).__name__
        finally:
            if self.acted and self.action == "reset":
                linger0(writer.get_extra_info("socket"))
            writer.close()

    async def _piece(self, piece):
        if self.corrupt_at is None and not self.pool.matches(self.offset, self.got, piece):
            self.corrupt_at = self.got
        self.got += len(piece)
        self.sha.update(piece)
        if self.action and not self.acted and self.got >= self.at:
            self.acted = True
            if self.action in ("close", "reset"):
                return False
            await asyncio.sleep(self.stall_for)  # "stall": stop reading for a while
        return True


class Sender:
    def __init__(self, pool, offset, size, chunked, action=None, at=0):
        self.pool, self.offset, self.size, self.chunked = pool, offset, size, chunked
        self.action, self.at = action, at
        self.sha = hashlib.sha256()
        self.sent = 0
        self.lines = []
        self.status = None
        self.acted = False
        self.broken = None

    async def run(self, port, name, n):
        reader, writer = await connect(port)
        buffer = bytearray()
        lines_done = False
        try:
            framing = "Transfer-Encoding: chunked" if self.chunked else f"Content-Length: {self.size}"
            writer.write((f"PUT {PREFIX}{name}?n={n} HTTP/1.1\r\nHost: {HOST}\r\n"
                          f"Content-Type: application/octet-stream\r\n{framing}\r\n\r\n").encode())
            headers = None
            if self.action:
                # Place the fault in a running transfer: wait for "Streaming".
                self.status, headers = await read_head(reader)
                if self.status != 200:
                    return
                await self._lines(reader, headers, buffer, until="[INFO] Streaming")
            for piece in self.pool.pieces(self.offset, 0, self.size):
                if self.action and not self.acted and self.sent + len(piece) > self.at:
                    part = piece[:self.at - self.sent]
                    if part:
                        self._write(writer, part)
                        await writer.drain()
                    self.acted = True
                    if self.action == "reset":
                        linger0(writer.get_extra_info("socket"))
                    writer.close()
                    return
                self._write(writer, piece)
                await writer.drain()
            if self.chunked:
                writer.write(b"0\r\n\r\n")
                await writer.drain()
            if headers is None:
                self.status, headers = await read_head(reader)
            if self.status == 200:
                lines_done = await self._lines(reader, headers, buffer, until=None)
        except (asyncio.IncompleteReadError, ConnectionError, OSError, ValueError) as error:
            self.broken = type(error).__name__
            if headers is not None and not lines_done:
                try:  # the [ERROR] line may still be in our receive buffer
                    await asyncio.wait_for(self._lines(reader, headers, buffer, until=None), 2)
                except (asyncio.IncompleteReadError, ConnectionError, OSError, ValueError, asyncio.TimeoutError):
                    pass
        finally:
            writer.close()

    def _write(self, writer, piece):
        self.sha.update(piece)
        self.sent += len(piece)
        if self.chunked:
            writer.write(b"%x\r\n" % len(piece))
            writer.write(piece)
            writer.write(b"\r\n")
        else:
            writer.write(piece)

    async def _lines(self, reader, headers, buffer, until):
        stop = False

        async def piece(data):
            nonlocal stop
            buffer.extend(data)
            while b"\n" in buffer:
                line, _, rest = bytes(buffer).partition(b"\n")
                buffer[:] = rest
                self.lines.append(line.decode("utf-8", "replace"))
                if until and self.lines[-1].startswith(until):
                    stop = True
            return not stop

        return await read_body(reader, headers, piece)


async def transfer(args, port, pool, rng, index, totals):
    name = f"soak-{index}-{rng.getrandbits(32):08x}"
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
    offset = rng.randrange(POOL_SIZE)
    fault = rng.choice(FAULTS) if size and rng.random() < args.fault_rate else None
    at = rng.randrange(size) if size else 0
    if fault == "receiver_stall":
        size = max(size, 8 * MIB)  # more than the buffers on the way hold
        at = min(at, size // 4)
    victim = rng.randrange(n)
    stall_for = args.idle_timeout * rng.uniform(1.2, 2.0)
    receivers = []
    for i in range(n):
        action = None
        if fault and fault.startswith("receiver") and i == victim:
            action = fault.split("_")[1]
        receivers.append(Receiver(pool, offset, size, action, at, stall_for))
    sender_action = fault.split("_")[1] if fault and fault.startswith("sender") else None
    sender = Sender(pool, offset, size, chunked=rng.random() < 0.6, action=sender_action, at=at)
    parties = [(r.run(port, name, n)) for r in receivers]
    send = sender.run(port, name, n)
    if rng.random() < 0.6:
        coros = parties + [send]
    else:
        coros = [send] + parties
    tasks = []
    for coro in coros:
        tasks.append(asyncio.ensure_future(coro))
        await asyncio.sleep(rng.random() * 0.02)
    timeout = 90 + size / (2 * MIB) + (stall_for if fault == "receiver_stall" else 0)
    done, pending = await asyncio.wait(tasks, timeout=timeout)
    for task in pending:
        task.cancel()
    if pending:
        totals.hung += 1
        totals.problem(f"{name}: {len(pending)} party(ies) still running after {timeout:.0f} s "
                       f"(size {size}, n {n}, fault {fault})")
    for task in done:
        if task.exception() is not None:
            totals.hung += 1
            totals.problem(f"{name}: a party failed to run: {task.exception()!r}")
    if fault:
        totals.faults[fault] += 1
    # What the side channel says, and whether the parties agree.
    try:
        code, body = await fetch_json(port, f"{PREFIX}{name}?status")
        status = json.loads(body)
    except (OSError, ValueError, asyncio.TimeoutError, asyncio.IncompleteReadError) as error:
        totals.mismatches += 1
        totals.problem(f"{name}: ?status failed: {error!r}")
        return
    state, reason = status.get("state"), status.get("reason")
    full = sender.sha.hexdigest() if sender.sent == size else None
    totals.done += 1
    for i, r in enumerate(receivers):
        totals.bytes += r.got
        who = f"{name} receiver {i} (size {size}, n {n}, fault {fault}@{at}, state {state}/{reason})"
        if r.status not in (None, 200):
            totals.refusals[r.status] += 1
        if r.corrupt_at is not None:
            totals.corruptions += 1
            totals.problem(f"{who}: CORRUPTED at byte {r.corrupt_at}")
        whole = r.got == size and (full is None or r.sha.hexdigest() == full)
        if r.clean and r.got != size:
            totals.truncations += 1
            totals.problem(f"{who}: CLEAN END AFTER {r.got} of {size} bytes")
        elif r.clean and full is not None and r.sha.hexdigest() != full:
            totals.corruptions += 1
            totals.problem(f"{who}: sha256 differs from the sender's")
        if r.acted and r.action in ("close", "reset"):
            continue
        if state == "complete" and not (r.clean and whole):
            totals.mismatches += 1
            totals.problem(f"{who}: the transfer is complete but it got {r.got} bytes, clean={r.clean}, "
                           f"broken={r.broken}, HTTP {r.status}")
        if state == "failed" and r.clean and (r.chunked or not whole):
            totals.mismatches += 1
            totals.problem(f"{who}: the transfer failed but it saw a clean end")
    if state == "failed":
        totals.failures[reason] += 1
        if reason not in REASONS:
            totals.mismatches += 1
            totals.problem(f"{name}: failed without a known reason: {status}")
        if not fault:
            totals.unexpected += 1
            totals.problem(f"{name}: failed ({reason}) with no fault injected (size {size}, n {n})")
    elif state == "complete":
        if not sender.acted and sender.lines[-1:] != ["[INFO] Transfer complete."]:
            totals.mismatches += 1
            totals.problem(f"{name}: complete, but the sender's last line is {sender.lines[-1:]}")
        if sender.acted:
            totals.mismatches += 1
            totals.problem(f"{name}: complete although its sender hung up after {sender.sent} of {size} bytes")
    elif sender.status not in (None, 200) or any(r.status not in (None, 200) for r in receivers):
        totals.failures[f"refused {sender.status}/{[r.status for r in receivers]}"] += 1
    else:
        totals.mismatches += 1
        totals.problem(f"{name}: ended {state} (size {size}, n {n}, fault {fault})")


# -- the run ------------------------------------------------------------------------------------

async def health(port):
    code, body = await fetch_json(port, PREFIX + "health")
    return json.loads(body) if code == 200 else {}


async def gauges(port):
    code, body = await fetch_json(port, PREFIX + "metrics")
    return {k: float(v) for k, v in re.findall(
        r"^(hoodypipe_(?:pending_pipes|active_pipes|spectators)) (\S+)$", body.decode(), re.M)}


def fmt_bytes(n):
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n} B"
        n /= 1024


async def run(args):
    raise_fd_limit(max(8192, args.concurrency * 10))
    daemon_args = ["--max-connections-per-address", "4096", "--max-waiting-per-address", "4096",
                   "--max-pending", "4096", "--max-active", "4096", "--idle-timeout", str(args.idle_timeout),
                   "--wait-timeout", "60"]
    child, port = start_hoodypipe(args.twistd, daemon_args)
    pid = child.pid
    pool = Pool(args.seed)
    rng = random.Random(args.seed)
    totals = Totals()
    start_health = await health(port)
    rss_start = rss_kib(pid) * 1024
    samples = []  # (elapsed, rss) every second
    curve = []  # RSS at each report line
    started = time.monotonic()
    deadline = started + args.minutes * 60
    print(f"soak: seed {args.seed}, {args.minutes:g} min, {args.concurrency} concurrent pipes, sizes 0..{fmt_bytes(args.max_size)} "
          f"(3% up to {fmt_bytes(4 * args.max_size)}), faults {args.fault_rate:.0%}, idle timeout {args.idle_timeout:g} s; "
          f"daemon pid {pid} on port {port}, RSS {fmt_bytes(rss_start)}", flush=True)

    async def sampler():
        next_line = started + args.report_every
        while True:
            await asyncio.sleep(1)
            try:
                rss = rss_kib(pid) * 1024
            except (OSError, RuntimeError):
                return
            now = time.monotonic()
            samples.append((now - started, rss))
            if now >= next_line:
                next_line += args.report_every
                curve.append(rss)
                kinds = ", ".join(f"{k}: {v}" for k, v in sorted(totals.failures.items())) or "none"
                print(f"{now - started:6.0f}s  done {totals.done:6d}  moved {fmt_bytes(totals.bytes):>10}  "
                      f"corruptions {totals.corruptions + totals.truncations}  failures [{kinds}]  "
                      f"RSS {fmt_bytes(rss)}", flush=True)

    sampling = asyncio.ensure_future(sampler())
    index = 0
    running = set()
    try:
        while time.monotonic() < deadline:
            while len(running) < args.concurrency and time.monotonic() < deadline:
                task = asyncio.ensure_future(transfer(args, port, pool, random.Random(rng.getrandbits(64)),
                                                      index, totals))
                running.add(task)
                index += 1
            done, running = await asyncio.wait(running, timeout=1, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if task.exception() is not None:
                    totals.hung += 1
                    totals.problem(f"a transfer crashed the soak: {task.exception()!r}")
            if child.proc.poll() is not None:
                totals.problem(f"the daemon exited {child.proc.returncode}")
                break
        print(f"{time.monotonic() - started:6.0f}s  time is up: waiting for {len(running)} transfers in flight",
              flush=True)
        if running:
            done, running = await asyncio.wait(running, timeout=300)
            for task in running:
                task.cancel()
                totals.hung += 1
        # Quiesce: every connection closes, lingering uploads (10 s) end.
        quiet_deadline = time.monotonic() + 30
        last = {}
        while time.monotonic() < quiet_deadline:
            last = await gauges(port)
            if last and all(v == 0 for v in last.values()):
                break
            await asyncio.sleep(0.5)
        await asyncio.sleep(12)  # lingering uploads are dropped within 10 s
        end_health = await health(port)
        rss_end = rss_kib(pid) * 1024
        samples.append((time.monotonic() - started, rss_end))
    finally:
        sampling.cancel()
        with open(child.log.name, "rb") as f:
            log = f.read()
        child.stop()
    tracebacks = log.count(b"Traceback")
    if tracebacks:
        kinds = collections.Counter(m.decode("utf-8", "replace")[:160] for m in re.findall(
            rb"\n\t?((?:builtins\.)?[\w.]+(?:Error|Exception|BadHost)\b[^\n]*)", log))
        saved = f"/tmp/hoodypipe-soak-{args.seed}.log"
        with open(saved, "wb") as f:
            f.write(log)
        totals.problem(f"daemon tracebacks (log saved as {saved}): " + "; ".join(
            f"{v}x {k}" for k, v in kinds.most_common(5)))
    elapsed = time.monotonic() - started
    rss_values = [r for _, r in samples] or [rss_end]
    leak_registry = not last or any(v != 0 for v in last.values())
    fds_start, fds_end = start_health.get("fds"), end_health.get("fds")
    leak_fds = fds_start is not None and fds_end is not None and fds_end > fds_start + 5
    leak_rss = rss_end - rss_start > args.rss_slack * MIB
    corruptions = totals.corruptions + totals.truncations
    print(f"\ntotals: {totals.done} transfers in {elapsed / 60:.1f} min, {fmt_bytes(totals.bytes)} received "
          f"({totals.bytes / elapsed / MIB:.1f} MiB/s), {sum(totals.faults.values())} faults injected "
          f"({', '.join(f'{k}: {v}' for k, v in sorted(totals.faults.items()))})")
    print(f"failures by reason: {dict(sorted(totals.failures.items()))}; failed without a fault: {totals.unexpected}; "
          f"parties refused: {dict(totals.refusals)}")
    print(f"corruptions: {totals.corruptions}; clean ends after partial data: {totals.truncations}; "
          f"side-channel mismatches: {totals.mismatches}; hung: {totals.hung}; daemon tracebacks: {tracebacks}")
    print(f"leaks: registry after quiesce {last} ({'LEAK' if leak_registry else 'ok'}); fds {fds_start} -> {fds_end} "
          f"({'LEAK' if leak_fds else 'ok'}); RSS {fmt_bytes(rss_start)} at start -> {fmt_bytes(rss_end)} at the end "
          f"({'+' if rss_end >= rss_start else ''}{fmt_bytes(abs(rss_end - rss_start)) if rss_end >= rss_start else '-' + fmt_bytes(rss_start - rss_end)}; "
          f"{'LEAK' if leak_rss else 'ok'}, slack {args.rss_slack} MiB)")
    third = max(1, len(rss_values) // 3)
    growth = statistics.median(rss_values[-third:]) - statistics.median(rss_values[:third])
    print(f"RSS curve: min {fmt_bytes(min(rss_values))}, median {fmt_bytes(statistics.median(rss_values))}, "
          f"max {fmt_bytes(max(rss_values))}; last third vs first third of the run: "
          f"{'+' if growth >= 0 else '-'}{fmt_bytes(abs(growth))}; every {args.report_every:g} s, then at the end "
          f"(MiB): " + " ".join(f"{r / MIB:.0f}" for r in curve + [rss_end]))
    if totals.examples:
        print("problems:")
        for text in totals.examples:
            print("  " + text)
    bad = corruptions or totals.mismatches or totals.hung or tracebacks or leak_registry or leak_fds or leak_rss
    print("RESULT: " + ("FAIL" if bad else "ok"))
    return 1 if bad else 0


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--concurrency", type=int, default=200)
    parser.add_argument("--max-size", type=lambda t: int(float(t) * MIB), default=32 * MIB, metavar="MIB",
                        help="largest usual size in MiB (3%% of transfers go up to 4x)")
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
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
