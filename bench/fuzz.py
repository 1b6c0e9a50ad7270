#!/usr/bin/env python3
"""Mutational fuzzing of the request parser through the real daemon.

Valid request templates (GET/HEAD/OPTIONS pages and snapshots, receivers, SSE
spectators, PUT/POST senders with fixed-length and chunked bodies, Expect:
100-continue, pipelined requests, HTTP/1.0) are mutated byte by byte (bit
flips, CR/LF/NUL/SP insertions, truncation, deletions, duplicated headers,
hundreds of headers, huge headers and request lines, bad chunk sizes, both
Content-Length and chunked, conflicting lengths, obs-fold, garbage methods and
versions, splices of two templates) and each input is sent on a fresh
connection, sometimes in fragments, sometimes half-closed, read with a short
timeout. Half of the senders get a valid receiver on the same name first, so
the relay itself sees malformed bodies.

An anomaly is: an answer that is not HTTP, a 5xx (other than 503 while
shutting down), a response header with a control character or an unknown
name (injection), an error answer that is not one ``[ERROR] ... .`` line, a
health check that fails (every --check-every inputs), a traceback or
critical line in the daemon's log, the daemon dying, and, at the end, a
registry that does not empty. Each anomalous input is saved (with its seed)
under --save.

Prints the count of inputs tried, the count per response status, and the
anomalies by kind; exits 1 if there is any.

Examples:
  bench/fuzz.py                      # 60 s, random seed
  bench/fuzz.py --seconds 120 --seed 7
"""

import argparse
import asyncio
import collections
import json
import os
import random
import re
import sys
import time

from _common import (
    HEALTH_PATH,
    HOST,
    default_twistd,
    exit_on_sigterm,
    raise_fd_limit,
    rss_kib,
    start_hoodypipe,
    uncapped,
)

from tests.support.fuzzgrammar import (
    BAD_CHUNK_SIZES,
    BAD_CHUNKED_BODIES,
    BAD_LENGTHS,
    BAD_TE,
    ESCAPES,
    HEADER_VALUES,
    HOSTS,
    METHODS,
    PREFIX,
    SPECIALS,
    VERSIONS,
    read_answers,
)
from tests.support.httpwire import request

DAEMON_ARGS = [
    "--wait-timeout",
    "2",
    "--idle-timeout",
    "2",
    *uncapped(),
]
LOG_ALARMS = re.compile(rb"Traceback|\[[^\]]*#critical\]|Unhandled [Ee]rror")


# -- templates ----------------------------------------------------------------------------------


def _req(method, target, headers=(), body=b"", version=b"HTTP/1.1"):
    """A request; ``headers`` as b"Name: value" lines."""
    return request(method, target, [h.split(b": ", 1) for h in headers], body, HOST, version)


def _chunked(rng, body):
    out, pos = b"", 0
    while pos < len(body):
        step = rng.randint(1, max(1, len(body) - pos))
        out += b"%x\r\n%s\r\n" % (step, body[pos : pos + step])
        pos += step
    return out + b"0\r\n\r\n"


def templates(rng, name):
    """Valid requests on the pipe ``name``: (label, bytes, is_upload)."""
    p = PREFIX + name
    body = rng.randbytes(rng.choice((0, 1, 17, 500, 4096, 70000)))
    q = b"?wait=1"
    return [
        ("health", _req(b"GET", PREFIX + b"health"), False),
        ("metrics", _req(b"GET", PREFIX + b"metrics"), False),
        ("help", _req(b"GET", b"/help", [b"User-Agent: fuzz"]), False),
        ("start", _req(b"GET", b"/", [b"Accept: text/html"]), False),
        ("status", _req(b"GET", p + b"?status", [b"Connection: close"]), False),
        ("status-head", _req(b"HEAD", p + b"?status"), False),
        ("options", _req(b"OPTIONS", p, [b"Origin: http://x", b"Access-Control-Request-Method: PUT"]), False),
        ("progress-json", _req(b"GET", p + b"?progress&format=json"), False),
        ("progress-sse", _req(b"GET", p + b"?progress", [b"Accept: text/event-stream"]), False),
        ("progress-text", _req(b"GET", p + b"?progress", [b"Accept: text/plain"]), False),
        ("receiver", _req(b"GET", p + q + b"&n=1"), False),
        ("receiver-dl", _req(b"GET", p + q + b"&download&filename=r%C3%A9sum%C3%A9.pdf"), False),
        (
            "put-fixed",
            _req(b"PUT", p + q, [b"Content-Type: application/octet-stream", b"Content-Length: %d" % len(body)], body),
            True,
        ),
        (
            "put-chunked",
            _req(
                b"PUT",
                p + q,
                [
                    b"Transfer-Encoding: chunked",
                    b"X-Pipe-Size: %d" % len(body),
                    b'Content-Disposition: inline; filename="a.txt"',
                    b"X-Piping: meta",
                ],
                _chunked(rng, body),
            ),
            True,
        ),
        ("put-expect", _req(b"PUT", p + q, [b"Expect: 100-continue", b"Content-Length: %d" % len(body)], body), True),
        (
            "post-form",
            _req(
                b"POST",
                p + q,
                [b"Content-Type: application/x-www-form-urlencoded", b"Content-Length: %d" % len(body)],
                body,
            ),
            True,
        ),
        ("http10", _req(b"GET", p + b"?status", version=b"HTTP/1.0"), False),
        ("pipelined", _req(b"GET", p + b"?status") + _req(b"GET", PREFIX + b"health"), False),
    ]


# -- mutations ----------------------------------------------------------------------------------


def _head_body(data):
    head, sep, body = data.partition(b"\r\n\r\n")
    return head, sep, body


def _lines(data):
    head, sep, body = _head_body(data)
    return head.split(b"\r\n"), sep, body


def _join(lines, sep, body):
    return b"\r\n".join(lines) + sep + body


def m_flip(rng, data):
    if not data:
        return data
    b = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        i = rng.randrange(len(b))
        b[i] ^= 1 << rng.randrange(8)
    return bytes(b)


def m_byte(rng, data):
    if not data:
        return data
    i = rng.randrange(len(data))
    return data[:i] + bytes([rng.randrange(256)]) + data[i + 1 :]


def m_insert(rng, data):
    i = rng.randint(0, len(data))
    return data[:i] + rng.choice(SPECIALS) * rng.choice((1, 1, 2, 100)) + data[i:]


def m_insert_head(rng, data):
    head, sep, body = _head_body(data)
    i = rng.randint(0, len(head))
    return head[:i] + rng.choice(SPECIALS) + head[i:] + sep + body


def m_delete(rng, data):
    if not data:
        return data
    i = rng.randrange(len(data))
    return data[:i] + data[i + rng.randint(1, 64) :]


def m_truncate(rng, data):
    return data[: rng.randint(0, len(data))]


def m_dup_header(rng, data):
    lines, sep, body = _lines(data)
    if len(lines) < 2:
        return data
    i = rng.randrange(1, len(lines))
    lines.insert(i, lines[i])
    return _join(lines, sep, body)


def m_many_headers(rng, data):
    lines, sep, body = _lines(data)
    n = rng.choice((50, 499, 500, 501, 1000, 3000))
    extra = [b"X-H%d: %s" % (i, b"v" * rng.randint(0, 20)) for i in range(n)]
    return _join(lines[:1] + extra + lines[1:], sep, body)


def m_huge_header(rng, data):
    lines, sep, body = _lines(data)
    size = rng.choice((1000, 8192, 16383, 16384, 16385, 40000, 100000))
    lines.insert(rng.randint(1, len(lines)), b"X-Huge: " + b"a" * size)
    return _join(lines, sep, body)


def m_huge_target(rng, data):
    lines, sep, body = _lines(data)
    parts = lines[0].split(b" ")
    if len(parts) >= 2:
        parts[1] = parts[1] + b"/" + b"b" * rng.choice((1000, 1024, 1025, 4096, 16380, 20000))
        lines[0] = b" ".join(parts)
    return _join(lines, sep, body)


def m_method(rng, data):
    lines, sep, body = _lines(data)
    parts = lines[0].split(b" ", 1)
    lines[0] = rng.choice(METHODS) + b" " + (parts[1] if len(parts) > 1 else b"")
    return _join(lines, sep, body)


def m_version(rng, data):
    lines, sep, body = _lines(data)
    parts = lines[0].rsplit(b" ", 1)
    lines[0] = parts[0] + (b" " + rng.choice(VERSIONS) if rng.random() < 0.9 else b"")
    return _join(lines, sep, body)


def m_target_bytes(rng, data):
    lines, sep, body = _lines(data)
    parts = lines[0].split(b" ")
    if len(parts) >= 2:
        t = bytearray(parts[1])
        for _ in range(rng.randint(1, 3)):
            t.insert(rng.randint(0, len(t)), rng.choice(b"%\x00\x7f\x80\xff#?&=\\;"))
        parts[1] = bytes(t)
        lines[0] = b" ".join(parts)
    return _join(lines, sep, body)


def m_escape(rng, data):
    lines, sep, body = _lines(data)
    parts = lines[0].split(b" ")
    if len(parts) >= 2:
        at = rng.randint(0, len(parts[1]))
        parts[1] = parts[1][:at] + rng.choice(ESCAPES) + parts[1][at:]
        lines[0] = b" ".join(parts)
    return _join(lines, sep, body)


def m_header_value(rng, data):
    lines, sep, body = _lines(data)
    if len(lines) < 2:
        return data
    i = rng.randrange(1, len(lines))
    lines[i] += b"".join(rng.choice(HEADER_VALUES) for _ in range(rng.randint(1, 3)))
    return _join(lines, sep, body)


def m_host(rng, data):
    lines, sep, body = _lines(data)
    lines = [line for line in lines if not line.lower().startswith(b"host:")]
    lines.insert(min(1, len(lines)), b"Host: " + rng.choice(HOSTS))
    return _join(lines, sep, body)


def m_both_lengths(rng, data):
    lines, sep, body = _lines(data)
    extra = [b"Content-Length: %d" % rng.randint(0, 100), b"Transfer-Encoding: chunked"]
    rng.shuffle(extra)
    return _join(lines + extra, sep, body)


def m_bad_length(rng, data):
    lines, sep, body = _lines(data)
    lines = [line for line in lines if not line.lower().startswith(b"content-length")]
    lines.append(b"Content-Length: " + rng.choice(BAD_LENGTHS))
    if rng.random() < 0.3:
        lines.append(b"Content-Length: %d" % rng.randint(0, 10))
    return _join(lines, sep, body)


def m_bad_te(rng, data):
    lines, sep, body = _lines(data)
    lines = [line for line in lines if not line.lower().startswith(b"transfer-encoding")]
    lines.append(b"Transfer-Encoding: " + rng.choice(BAD_TE))
    return _join(lines, sep, body)


def m_bad_chunk(rng, data):
    head, sep, body = _head_body(data)
    if b"chunked" not in head.lower():
        head += b"\r\nTransfer-Encoding: chunked"
        body = b"5\r\nhello\r\n0\r\n\r\n"
    sizes = [m.start() for m in re.finditer(rb"(?:^|\r\n)[0-9a-fA-F]+\r\n", body)]
    if not sizes:
        return head + sep + rng.choice(BAD_CHUNK_SIZES) + b"\r\n" + body
    at = rng.choice(sizes)
    if body[at : at + 2] == b"\r\n":
        at += 2
    end = body.index(b"\r\n", at)
    kind = rng.random()
    if kind < 0.1:
        return head + sep + rng.choice(BAD_CHUNKED_BODIES)
    if kind < 0.5:
        body = body[:at] + rng.choice(BAD_CHUNK_SIZES) + body[end:]
    elif kind < 0.75:  # a size that disagrees with the data that follows
        size = int(body[at:end], 16)
        body = body[:at] + b"%x" % max(0, size + rng.choice((-1, 1, 100))) + body[end:]
    else:  # chunk data not followed by CRLF
        body = body.replace(b"\r\n", b"\r", 1) if rng.random() < 0.5 else body[:-2]
    return head + sep + body


def m_obs_fold(rng, data):
    lines, sep, body = _lines(data)
    if len(lines) < 2:
        return data
    i = rng.randrange(1, len(lines) + 1)
    lines.insert(i, rng.choice((b" folded", b"\tfolded", b" ", b"  X-Injected: 1")))
    return _join(lines, sep, body)


def m_no_colon(rng, data):
    lines, sep, body = _lines(data)
    lines.insert(
        rng.randint(1, len(lines)),
        rng.choice((b"NoColonHere", b"Bad Name: x", b": empty", b"X:\x00", b"X-\xff: v", b"Content-Length : 5")),
    )
    return _join(lines, sep, body)


def m_splice(rng, data, other):
    i, j = rng.randint(0, len(data)), rng.randint(0, len(other))
    return data[:i] + other[j:]


def m_repeat(rng, data):
    if not data:
        return data
    i = rng.randrange(len(data))
    j = min(len(data), i + rng.randint(1, 200))
    return data[:j] + data[i:j] * rng.randint(2, 50) + data[j:]


MUTATIONS = [
    m_flip,
    m_byte,
    m_insert,
    m_insert_head,
    m_delete,
    m_truncate,
    m_dup_header,
    m_many_headers,
    m_huge_header,
    m_huge_target,
    m_method,
    m_version,
    m_target_bytes,
    m_both_lengths,
    m_bad_length,
    m_bad_te,
    m_bad_chunk,
    m_bad_chunk,
    m_obs_fold,
    m_no_colon,
    m_repeat,
    m_escape,
    m_header_value,
    m_host,
    None,
]  # None: splice


def make_input(seed, index):
    """The input number ``index``: reproducible from (seed, index) alone."""
    rng = random.Random(f"{seed}:{index}")
    name = b"fz%d-%d" % (seed % 100000, index)
    options = templates(rng, name)
    label, data, upload = rng.choice(options)
    applied = []
    for _ in range(rng.choice((0, 1, 1, 1, 2, 2, 3, 4))):
        mutation = rng.choice(MUTATIONS)
        if mutation is None:
            data = m_splice(rng, data, rng.choice(options)[1])
            applied.append("splice")
        else:
            data = mutation(rng, data)
            applied.append(mutation.__name__[2:])
    plan = {
        "fragments": rng.choice((1, 1, 1, 2, 3)),
        "half_close": rng.random() < 0.25,
        "read_for": rng.choice((0.2, 0.3, 0.5)),
        "with_receiver": upload and rng.random() < 0.5,
        "reset": rng.random() < 0.2,
    }
    return rng, name, label, applied, data, plan


# -- sending and judging ------------------------------------------------------------------------


class Stats:
    def __init__(self):
        self.inputs = 0
        self.statuses = collections.Counter()
        self.anomalies = collections.Counter()
        self.examples = {}
        self.receiver_ends = collections.Counter()

    def anomaly(self, kind, detail, save_dir, seed, index, data):
        self.anomalies[kind] += 1
        if kind not in self.examples:
            self.examples[kind] = f"input {index}: {detail}"
        if save_dir and self.anomalies[kind] <= 20:
            os.makedirs(save_dir, exist_ok=True)
            safe = re.sub(r"[^A-Za-z0-9_.-]", "_", kind)[:60]
            with open(os.path.join(save_dir, f"{safe}-{index}.bin"), "wb") as f:
                f.write(data)
            with open(os.path.join(save_dir, f"{safe}-{index}.txt"), "w") as f:
                f.write(f"seed {seed} index {index}\n{detail}\n")


async def read_all(reader, seconds, limit=1 << 20):
    """Whatever comes within ``seconds`` (or until EOF); how it ended."""
    data, end = b"", "timeout"
    deadline = time.monotonic() + seconds
    try:
        while len(data) < limit:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            more = await asyncio.wait_for(reader.read(65536), left)
            if not more:
                end = "eof"
                break
            data += more
    except TimeoutError:
        pass
    except (ConnectionResetError, BrokenPipeError):
        end = "reset"
    except OSError as error:
        end = f"error {error.errno}"
    return data, end


def judge(data, end, head_request=False, shutting_down=False):
    """(status label, [anomaly (kind, detail)]) for what came back, judged by
    tests/support/fuzzgrammar.py: pipelined requests get one answer each, and
    nothing may follow an answer that said ``Connection: close``.
    ``head_request``: the first request was a HEAD, so its answer has no body.
    """
    if not data:
        return ("none" if end in ("eof", "timeout") else end), []
    answers, problems = read_answers(data, closed=end == "eof", head_first=head_request, shutting_down=shutting_down)
    finals = [a.status for a in answers if not 100 <= a.status < 200]
    return (finals[0] if finals else "none"), problems


async def one_input(port, seed, index, stats, save_dir):
    rng, name, label, applied, data, plan = make_input(seed, index)
    receiver = None
    try:
        if plan["with_receiver"]:
            r_reader, r_writer = await asyncio.open_connection(HOST, port)
            r_writer.write(_req(b"GET", PREFIX + name + b"?wait=2", [b"Connection: close"]))
            await r_writer.drain()
            receiver = (r_reader, r_writer)
            await asyncio.sleep(0.01)
        reader, writer = await asyncio.open_connection(HOST, port)
    except OSError as error:
        stats.anomaly("cannot connect", repr(error), save_dir, seed, index, data)
        return
    try:
        pieces = []
        cuts = sorted(rng.randint(0, len(data)) for _ in range(plan["fragments"] - 1))
        last = 0
        for cut in [*cuts, len(data)]:
            pieces.append(data[last:cut])
            last = cut
        for i, piece in enumerate(pieces):
            if i:
                await asyncio.sleep(rng.choice((0, 0.001, 0.02)))
            writer.write(piece)
            try:
                await asyncio.wait_for(writer.drain(), 2)
            except (TimeoutError, ConnectionError, OSError):
                break
        if plan["half_close"] and writer.can_write_eof():
            try:
                writer.write_eof()
            except OSError:
                pass
        response, end = await read_all(reader, plan["read_for"])
        status, problems = judge(response, end, head_request=data.startswith(b"HEAD "))
        stats.statuses[status] += 1
        for kind, detail in problems:
            stats.anomaly(kind, f"{label} {applied} -> {detail}", save_dir, seed, index, data)
    finally:
        if plan["reset"]:
            sock = writer.get_extra_info("socket")
            try:
                sock.setsockopt(
                    __import__("socket").SOL_SOCKET, __import__("socket").SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
                )
            except OSError:
                pass
        writer.close()
        if receiver is not None:
            r_data, r_end = await read_all(receiver[0], 0.3)
            r_status, problems = judge(r_data, r_end)
            stats.receiver_ends[r_status] += 1
            for kind, detail in problems:
                stats.anomaly("receiver: " + kind, f"{label} {applied} -> {detail}", save_dir, seed, index, data)
            receiver[1].close()


async def http_get(port, path, timeout=5.0):
    reader, writer = await asyncio.wait_for(asyncio.open_connection(HOST, port), timeout)
    try:
        writer.write(_req(b"GET", path, [b"Connection: close"]))
        await writer.drain()
        data, _ = await read_all(reader, timeout)
    finally:
        writer.close()
    answers, _ = read_answers(data, closed=True)
    final = next((a for a in answers if a.status >= 200), None)
    return (final.status, final.body) if final else (None, b"")


def _normal(alarm):
    """One kind per exception, whatever byte or position it names."""
    alarm = re.sub(r"byte 0x[0-9a-f]+", "byte 0x..", alarm)
    alarm = re.sub(r"position \d+(-\d+)?", "position N", alarm)
    return re.sub(r"\s+", " ", alarm)[:110]


class LogWatch:
    def __init__(self, path):
        self.path = path
        self.offset = 0
        self.tail = b""

    def new_alarms(self):
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            data = f.read()
        self.offset += len(data)
        text = self.tail + data
        alarms = []
        for m in LOG_ALARMS.finditer(text):
            if m.start() < len(self.tail):
                continue
            block = text[m.start() : m.start() + 3000]
            # The exception line: the first unindented-after-traceback "builtins.X: ..." or last frame.
            exc = re.search(rb"\n\t?((?:builtins\.)?[\w.]+(?:Error|Exception|Exit|BadHost)\b[^\n]*)", block)
            alarms.append((exc.group(1) if exc else block[:160]).decode("utf-8", "replace")[:200])
        self.tail = text[-200:]
        return alarms


async def run(args):
    raise_fd_limit(8192)
    child, port = start_hoodypipe(args.twistd, DAEMON_ARGS)
    pid = child.pid
    stats = Stats()
    logwatch = LogWatch(child.log.name)
    save_dir = args.save or f"/tmp/hoodypipe-fuzz-{args.seed}"
    started = time.monotonic()
    deadline = started + args.seconds
    rss_start = rss_kib(pid)
    next_report = started + 10
    index = 0
    alive = True
    traceback_kinds = collections.Counter()
    print(
        f"fuzz: seed {args.seed}, {args.seconds:g} s, concurrency {args.concurrency}, "
        f"daemon pid {pid} on port {port}, anomalies saved under {save_dir}",
        flush=True,
    )
    try:
        while time.monotonic() < deadline and alive:
            batch = []
            for _ in range(args.check_every):
                batch.append(one_input(port, args.seed, index, stats, save_dir))
                index += 1
            # At most --concurrency inputs in flight.
            sem = asyncio.Semaphore(args.concurrency)

            async def guarded(coro, sem=sem):
                async with sem:
                    try:
                        await coro
                    except Exception as error:  # a bug of this script: counted, never hidden
                        stats.anomaly("fuzzer error", repr(error), save_dir, args.seed, -1, b"")

            await asyncio.gather(*(guarded(c) for c in batch))
            stats.inputs = index
            # After every batch: the daemon is alive, healthy, and logged nothing alarming.
            if child.proc.poll() is not None:
                stats.anomaly("daemon died", f"exit {child.proc.returncode}", save_dir, args.seed, index, b"")
                alive = False
                break
            try:
                code, body = await http_get(port, HEALTH_PATH.encode())
                if code != 200 or json.loads(body).get("status") != "ok":
                    stats.anomaly("health", f"{code} {body[:200]!r}", save_dir, args.seed, index, b"")
            except (TimeoutError, OSError, ValueError) as error:
                stats.anomaly("health", repr(error), save_dir, args.seed, index, b"")
            for alarm in logwatch.new_alarms():
                traceback_kinds[alarm] += 1
                stats.anomaly(
                    "daemon log: " + _normal(alarm), f"after input {index}: {alarm}", save_dir, args.seed, index, b""
                )
            if time.monotonic() >= next_report:
                next_report += 10
                print(
                    f"  {time.monotonic() - started:5.0f}s  {index} inputs, {sum(stats.anomalies.values())} "
                    f"anomalies, RSS {rss_kib(pid) / 1024:.1f} MiB",
                    flush=True,
                )
        # Quiesce: waiting parties time out (--wait-timeout 2), connections close.
        gauges = {}
        if alive:
            quiet = time.monotonic() + 15
            while time.monotonic() < quiet:
                code, body = await http_get(port, PREFIX + b"metrics")
                gauges = {
                    k: float(v)
                    for k, v in re.findall(
                        r"^(hoodypipe_(?:pending_pipes|active_pipes|spectators)) (\S+)$", body.decode(), re.M
                    )
                }
                if gauges and all(v == 0 for v in gauges.values()):
                    break
                await asyncio.sleep(0.5)
            else:
                stats.anomaly("registry not empty after 15 s", repr(gauges), save_dir, args.seed, index, b"")
            for alarm in logwatch.new_alarms():
                traceback_kinds[alarm] += 1
                stats.anomaly("daemon log: " + _normal(alarm), f"at the end: {alarm}", save_dir, args.seed, index, b"")
        rss_end = rss_kib(pid) if alive else 0
    finally:
        if sum(stats.anomalies.values()):
            os.makedirs(save_dir, exist_ok=True)
            with open(child.log.name, "rb") as src, open(os.path.join(save_dir, "daemon.log"), "wb") as dst:
                dst.write(src.read())
        child.stop()
    elapsed = time.monotonic() - started
    total_anomalies = sum(stats.anomalies.values())
    print(f"\ninputs tried: {stats.inputs} in {elapsed:.0f} s ({stats.inputs / elapsed:.0f}/s), seed {args.seed}")
    print(
        "responses by status: "
        + ", ".join(f"{k}: {v}" for k, v in sorted(stats.statuses.items(), key=lambda kv: (-kv[1], str(kv[0]))))
    )
    print("paired receivers ended with: " + ", ".join(f"{k}: {v}" for k, v in stats.receiver_ends.most_common()))
    print(f"registry after quiesce: {gauges}; daemon RSS {rss_start / 1024:.1f} -> {rss_end / 1024:.1f} MiB")
    print(f"anomalies: {total_anomalies}")
    for kind, count in stats.anomalies.most_common():
        print(f"  {count:6d}  {kind}\n          e.g. {stats.examples[kind][:300]}")
    return 1 if total_anomalies else 0


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--check-every", type=int, default=200, help="inputs between health/log checks")
    parser.add_argument("--twistd", default=default_twistd())
    parser.add_argument("--save", default=None, help="where anomalous inputs are written")
    parser.add_argument(
        "--show",
        type=int,
        default=None,
        metavar="INDEX",
        help="print input INDEX of --seed and exit (to reproduce an anomaly)",
    )
    args = parser.parse_args()
    if args.seed is None:
        args.seed = random.SystemRandom().randrange(1 << 31)
    if args.show is not None:
        _, _name, label, applied, data, plan = make_input(args.seed, args.show)
        print(f"{label} {applied} {plan}\n{data[:4000]!r}")
        return 0
    exit_on_sigterm()
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
