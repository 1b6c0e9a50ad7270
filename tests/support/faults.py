"""The fault harness: parties that get killed, closed, reset or stalled, and the checks of
what every one of them got (issue 4, "Faults").

Used by tests/e2e/test_faults.py (rounds of concurrent pipes, SIGTERM and SIGKILL mid-transfer)
and bench/soak.py (the same pipes, for minutes). The contract checked (DESIGN.md sections 3, 4):

- every receiver that ends cleanly got exactly the bytes sent (sha256), and whatever a receiver
  got, even of a broken transfer, is a prefix of them;
- every broken transfer is visibly broken at its receivers: curl exits non-zero, a raw socket
  sees no terminating chunk (or fewer bytes than its ``Content-Length``): httpwire's
  ``read_body`` says which;
- every failure shows on the side channel: the ``done`` event of an SSE spectator opened before
  the transfer says ``failed`` with a reason, and ``?status`` right after agrees;
- the sender is told how it ended.

A party is a thread driving one connection (raw sockets through tests/support/httpwire.py, or
curl through tests/e2e/_helpers.py); ``PipeRun`` runs one ``Plan`` (sizes, n, who comes first,
which fault where) and ``check`` lists its ``Finding``s.

The faults of issue 9 ("one client must not hurt everyone") are clients that are valid, slow or
sly rather than broken: a sender that half-closes (``shutdown(SHUT_WR)``) after its whole body
while it waits for its receivers (or once it streams), which must be delivered; a waiting receiver that pipelines more
than 16 KiB of another request behind its GET and closes, whose slot must be freed at once; a
sender that trickles below ``--min-rate``, which must fail visibly as ``Idle timeout``.

A ``Target`` with a ``source`` address makes every raw-socket party of a run connect from it
(another loopback address, 127.0.0.N, is another client to the daemon's fair shares).
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import select
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from tests.e2e._helpers import Curl, Sender, fetch, wait_for
from tests.e2e._helpers import receiver as curl_receiver
from tests.e2e._sidechannel import SSEParser

from .httpwire import LAST_CHUNK, Broken, Connection, chunk, request

MiB = 1024 * 1024
PREFIX = "/api/v1/pipe/"
IDLE_TIMEOUT = 2  # the daemon's --idle-timeout that the stalls are sized for, unless told
# A waiting receiver that pipelined behind its GET and left: its slot must be free this soon.
FREED_WITHIN = 2.0
PIPELINED_AT_LEAST = 16 * 1024  # what such a receiver pipelines behind its GET, at least
# curl's exit codes for a download cut short: partial file, receive error.
BROKEN_CURL = {18, 56}
CURL_REFUSED = 22  # curl --fail: the answer was an HTTP error
REASONS = {
    "Sender disconnected",
    "All receivers disconnected",
    "Timed out",
    "Idle timeout",
    "Malformed upload",
    "Server is shutting down",
}
# The sender's last line for each reason (DESIGN.md section 3).
SENDER_LINE = {
    "All receivers disconnected": "[ERROR] All receivers disconnected before transfer completed.",
    "Idle timeout": "[ERROR] Idle timeout.",
    "Malformed upload": "[ERROR] Malformed upload.",
    "Server is shutting down": "[ERROR] Server is shutting down.",
}


@dataclass
class Target:
    """Where a daemon listens: what the parties need (the tests' Daemon does as well), and the
    address raw-socket parties connect from (None: the kernel's choice)."""

    host: str
    port: int
    source: str | None = None

    def url(self, name: str, query: str = "") -> str:
        return f"http://{self.host}:{self.port}{PREFIX}{name}" + (f"?{query}" if query else "")


class Finding(str):
    """One problem found by ``check``, with its kind: corruption, truncation (a clean end
    after partial data), refused, side-channel (what the daemon says disagrees), party (a
    party saw what the outcome forbids), harness (the run itself went wrong)."""

    kind: str

    def __new__(cls, kind: str, text: str) -> Finding:
        finding = super().__new__(cls, text)
        finding.kind = kind
        return finding


def sha(data: bytes | memoryview) -> str:
    return hashlib.sha256(data).hexdigest()


def reset(sock: socket.socket) -> None:
    """Close with an RST (SO_LINGER 0), like a crashed peer or ``abortConnection``."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    sock.close()


def connect(daemon, rcvbuf: int | None = None, timeout: float = 30) -> Connection:
    return Connection(daemon.host, daemon.port, timeout, rcvbuf=rcvbuf, source=getattr(daemon, "source", None))


def curl_source(daemon) -> list[str]:
    """curl's options to connect from the target's source address, if it has one."""
    source = getattr(daemon, "source", None)
    return ["--interface", source] if source else []


def http_request(method: str, target: str, daemon, headers: dict[str, str] | None = None) -> bytes:
    return request(method, target, headers or {}, host=f"{daemon.host}:{daemon.port}")


# -- the parties ------------------------------------------------------------------------------


class Party:
    """A thread driving one connection; ``error`` keeps what went wrong in the test itself."""

    role = "party"

    def __init__(self) -> None:
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._guarded, daemon=True)

    def start(self) -> Party:
        self.thread.start()
        return self

    def _guarded(self) -> None:
        try:
            self.run()
        except BaseException as error:  # reported by the checks
            self.error = error

    def run(self) -> None:
        raise NotImplementedError

    def join(self, timeout: float) -> bool:
        self.thread.join(timeout)
        return not self.thread.is_alive()


class RawReceiver(Party):
    """A GET that checks every byte against ``data`` as it arrives.

    ``action`` at ``at`` bytes: "close" (FIN), "rst" (RST), "stall" (stop
    reading, with a small receive window, until ``resume`` is set or
    ``stall_for`` seconds pass, then read on to the end).
    """

    role = "receiver"

    def __init__(
        self,
        daemon,
        name: str,
        n: int,
        data: bytes,
        action: str | None = None,
        at: int = 0,
        stall_for: float = 0.0,
        extra_query: str = "",
    ) -> None:
        super().__init__()
        self.daemon, self.name, self.n, self.data = daemon, name, n, memoryview(data)
        self.action, self.at, self.stall_for = action, at, stall_for
        self.extra_query = extra_query
        self.resume = threading.Event()
        self.status: int | None = None
        self.headers: dict[str, str] = {}
        self.got = 0
        self.sha = hashlib.sha256()
        self.mismatch_at: int | None = None
        self.clean = False  # the response ended as HTTP says
        self.broken: str | None = None  # how the connection ended early
        self.acted = False  # the fault was injected
        self.stalled_at: int | None = None
        self.error_body = b""
        self.sock: socket.socket | None = None

    @property
    def faulted(self) -> bool:
        return self.acted and self.action in ("close", "rst")

    def run(self) -> None:
        rcvbuf = 8192 if self.action == "stall" else None
        conn = connect(self.daemon, rcvbuf=rcvbuf, timeout=60)
        self.sock = sock = conn.sock
        try:
            query = f"n={self.n}{self.extra_query}"
            sock.sendall(http_request("GET", f"{PREFIX}{self.name}?{query}", self.daemon, {"Connection": "close"}))
            try:
                head = conn.read_head()
                self.status, self.headers = head.status, {k.lower(): v for k, v in head.headers}
                if self.status != 200:
                    conn.read_body(lambda p: bool(setattr(self, "error_body", self.error_body + p)) or True)
                    return
                self.clean = conn.read_body(self._piece)
            except Broken as why:
                self.broken = str(why)
        finally:
            if self.action == "rst" and self.acted:
                reset(sock)
            else:
                sock.close()

    def _piece(self, piece: bytes) -> bool:
        start = self.got
        expected = bytes(self.data[start : start + len(piece)])  # bytes: compared with memcmp
        if self.mismatch_at is None and expected != piece:
            self.mismatch_at = start + next(
                (i for i, (a, b) in enumerate(zip(piece, expected, strict=False)) if a != b),
                min(len(piece), len(expected)),
            )
        self.got += len(piece)
        self.sha.update(piece)
        if self.action and not self.acted and self.got >= self.at:
            self.acted = True
            if self.action in ("close", "rst"):
                return False
            if self.action == "stall":
                self.stalled_at = self.got
                self.resume.wait(self.stall_for)
        return True

    @property
    def digest(self) -> str:
        return self.sha.hexdigest()


class CurlReceiver(Party):
    """``curl --fail URL``; ``kill_at`` bytes SIGKILLs it (driven by the pipe's fault thread).
    A refusal (an HTTP error status) is curl's exit status 22, not a body to check."""

    role = "receiver"

    def __init__(self, daemon, name: str, n: int, data: bytes) -> None:
        super().__init__()
        self.daemon, self.name, self.n, self.data = daemon, name, n, data
        self.curl: Curl | None = None
        self.acted = False
        self.alive_when_killed = False

    def run(self) -> None:
        self.curl = curl_receiver(self.daemon.url(self.name, f"n={self.n}"), "--fail", *curl_source(self.daemon))
        self.curl.wait(90)

    def started(self) -> Curl:
        return wait_for(lambda: self.curl, 10, "curl to start")

    def kill(self) -> None:
        curl = self.started()
        self.acted = True
        self.alive_when_killed = curl.proc.poll() is None
        curl.kill()

    @property
    def faulted(self) -> bool:
        return self.acted and self.alive_when_killed

    @property
    def got(self) -> int:
        return self.curl.nbytes if self.curl else 0


# The sender actions injected at ``at`` bytes of the body.
MID_BODY = ("close", "rst", "malformed", "trickle")


class RawSender(Party):
    """A PUT over a raw socket: chunked or with ``Content-Length``.

    With ``wait_streaming`` the body is held back until the daemon says
    ``Streaming``, so that ``at`` counts bytes of a running transfer. ``action``
    at ``at`` bytes: "close" (FIN), "rst", "malformed" (a bad chunk-size line),
    "leave" (hang up while still waiting for receivers), "trickle" (from there on
    one byte every ``trickle_every`` seconds, until the daemon answers or
    ``trickle_for`` seconds pass, then the rest at once). "half_close" (at the end
    of the body): ``shutdown(SHUT_WR)``, then read the status lines; ``body_sent``
    is set then. A half-closing or trickling sender is a valid client: it is told
    how its transfer ended, like any other (``faulted`` stays False).

    ``hold_until`` (a line's start, e.g. "[INFO] Waiting") holds the body back
    until that line was read (``wait_streaming`` means "[INFO] Streaming");
    ``one_write`` sends the head and the whole body, terminator included, in one
    ``sendall``, so the daemon may read it all with the head.
    """

    role = "sender"

    def __init__(
        self,
        daemon,
        name: str,
        n: int,
        data: bytes,
        chunked: bool,
        rng: random.Random,
        action: str | None = None,
        at: int = 0,
        wait_streaming: bool = True,
        headers: dict[str, str] | None = None,
        trickle_every: float = 0.5,
        trickle_for: float = 30.0,
        hold_until: str | None = None,
        one_write: bool = False,
    ) -> None:
        super().__init__()
        self.daemon, self.name, self.n, self.data = daemon, name, n, memoryview(data)
        self.chunked, self.action, self.at = chunked, action, at
        self.hold_until = hold_until or ("[INFO] Streaming" if wait_streaming else None)
        self.one_write = one_write
        self.trickle_every, self.trickle_for = trickle_every, trickle_for
        self.trickled = 0  # bytes sent one by one
        self.body_sent = threading.Event()
        self.extra_headers = headers or {}
        self.steps = self._steps(rng, len(data))
        self.status: int | None = None
        self.lines: list[str] = []
        self.clean = False
        self.broken: str | None = None
        self.acted = False
        self.sent = 0
        self.said_waiting = threading.Event()

    @staticmethod
    def _steps(rng: random.Random, size: int) -> list[int]:
        steps, left = [], size
        while left:
            step = min(left, rng.choice((1, 100, 4096, 65536, 300_000, MiB)))
            steps.append(step)
            left -= step
        return steps

    @property
    def faulted(self) -> bool:
        return self.acted and self.action not in ("half_close", "trickle")

    def run(self) -> None:
        try:
            self._run()
        finally:
            self.body_sent.set()

    def _run(self) -> None:
        wire = connect(self.daemon, timeout=60)
        sock = wire.sock
        buffer = bytearray()
        try:
            headers = {"Content-Type": "application/octet-stream", **self.extra_headers}
            headers["Transfer-Encoding" if self.chunked else "Content-Length"] = (
                "chunked" if self.chunked else str(len(self.data))
            )
            head = http_request("PUT", f"{PREFIX}{self.name}?n={self.n}", self.daemon, headers)
            steps = self.steps
            if self.one_write:
                body = self._frame(self.data) if self.data else b""
                sock.sendall(head + body + (LAST_CHUNK if self.chunked else b""))
                self.sent, steps = len(self.data), []
            else:
                sock.sendall(head)
            if self.hold_until is not None or self.action == "leave":
                self.status = wire.read_head().status
                assert self.status == 200, f"sender got {self.status}"
                want = "[INFO] Waiting" if self.action == "leave" else self.hold_until
                self._read_lines_until(wire, buffer, want)
                if self.action == "leave":
                    self.said_waiting.set()
                    if self.data:
                        sock.sendall(self._frame(self.data[:1]))
                    self.acted = True
                    reset(sock) if self.at % 2 else sock.close()
                    return
            for step in steps:
                if self.action in MID_BODY and not self.acted and self.sent + step > self.at:
                    part = self.at - self.sent
                    if part:
                        sock.sendall(self._frame(self.data[self.sent : self.sent + part]))
                        self.sent += part
                    self.acted = True
                    if self.action == "close":
                        sock.shutdown(socket.SHUT_RDWR)
                        sock.close()
                        return
                    if self.action == "rst":
                        reset(sock)
                        return
                    if self.action == "malformed":
                        sock.sendall(b"zz\r\nnot a chunk\r\n")
                        break
                    if self.action == "trickle" and self._trickle(sock):
                        break  # the daemon answered: read what it said
                # What is left of the step (a trickle took some of it); never an empty chunk.
                step = min(step, len(self.data) - self.sent)
                if step:
                    sock.sendall(self._frame(self.data[self.sent : self.sent + step]))
                    self.sent += step
            else:
                if self.chunked and not self.one_write:
                    sock.sendall(LAST_CHUNK)
                if self.action == "half_close":
                    sock.shutdown(socket.SHUT_WR)  # nc -N: all sent, nothing more to say
                    self.acted = True
                self.body_sent.set()
            if self.status is None:
                self.status = wire.read_head().status
            try:
                self._read_lines_until(wire, buffer, None)
            except Broken as why:
                self.broken = str(why)
        except Broken as why:
            self.broken = str(why)
        except OSError as error:  # the daemon closed or reset the upload
            self.broken = f"{type(error).__name__}: {error}"
            try:
                if self.status is not None:
                    self._read_lines_until(wire, buffer, None)
            except (Broken, OSError, AssertionError):
                pass
        finally:
            sock.close()

    def _frame(self, piece: memoryview) -> bytes:
        return chunk(piece) if self.chunked else bytes(piece)

    def _trickle(self, sock: socket.socket) -> bool:
        """One byte every ``trickle_every`` s; True once the daemon says something (or hangs
        up), False after ``trickle_for`` s without a word (the caller sends the rest)."""
        until = time.monotonic() + self.trickle_for
        while self.sent < len(self.data) - 1 and time.monotonic() < until:
            if select.select([sock], [], [], self.trickle_every)[0]:
                return True
            sock.sendall(self._frame(self.data[self.sent : self.sent + 1]))
            self.sent += 1
            self.trickled += 1
        return bool(select.select([sock], [], [], 0)[0])

    def _read_lines_until(self, wire: Connection, buffer: bytearray, want: str | None) -> None:
        """Collect the sender's status lines; stop after one starting with ``want``."""
        state = {"stop": False}

        def piece(data: bytes) -> bool:
            buffer.extend(data)
            while b"\n" in buffer:
                line, _, rest = bytes(buffer).partition(b"\n")
                buffer[:] = rest
                self.lines.append(line.decode("utf-8", "replace"))
                if want is not None and self.lines[-1].startswith(want):
                    state["stop"] = True
            return not state["stop"]

        if buffer and want is not None:
            piece(b"")
            if state["stop"]:
                return
        ended = wire.read_body(piece)
        if want is None:
            self.clean = ended
        elif not state["stop"]:
            raise AssertionError(f"the sender never read {want!r}: {self.lines}")


class CurlSender(Party):
    """``curl -T -`` fed from the test; ``kill()`` SIGKILLs it."""

    role = "sender"

    def __init__(self, daemon, name: str, n: int, data: bytes, hold_back_from: int | None = None) -> None:
        super().__init__()
        self.daemon, self.name, self.n, self.data = daemon, name, n, data
        self.hold_back_from = hold_back_from
        self.curl: Sender | None = None
        self.acted = False

    def run(self) -> None:
        self.curl = Sender(self.daemon.url(self.name, f"n={self.n}"), *curl_source(self.daemon))
        if self.hold_back_from is None:
            self.curl.feed_async(self.data, close=True)
        else:
            self.curl.feed_async(self.data[: self.hold_back_from], close=False)
        self.curl.wait(90)

    def kill(self) -> None:
        curl = wait_for(lambda: self.curl, 10, "curl to start")
        self.acted = True
        curl.kill()

    @property
    def faulted(self) -> bool:
        return self.acted

    @property
    def lines(self) -> list[str]:
        return self.curl.lines if self.curl else []


class Spectator(Party):
    """An SSE ``?progress`` stream read until its ``done`` event."""

    role = "spectator"

    def __init__(self, daemon, name: str, timeout: float = 60) -> None:
        super().__init__()
        self.daemon, self.name, self.timeout = daemon, name, timeout
        self.parser = SSEParser()
        self.greeted = threading.Event()
        self.done: dict[str, Any] | None = None
        self.states: list[str] = []
        self.broken: str | None = None
        self.status: int | None = None
        self.sock: socket.socket | None = None

    def stop(self) -> None:
        """Hang up a stream that is still waiting for its ``done`` (its run ends, broken)."""
        sock = self.sock
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # closed already

    def run(self) -> None:
        wire = connect(self.daemon, timeout=self.timeout)
        sock = self.sock = wire.sock
        try:
            sock.sendall(
                http_request("GET", f"{PREFIX}{self.name}?progress", self.daemon, {"Accept": "text/event-stream"})
            )
            self.status = wire.read_head().status
            assert self.status == 200, f"spectator got {self.status}"
            try:
                wire.read_body(self._piece)
            except Broken as why:
                self.broken = str(why)
        finally:
            self.greeted.set()
            sock.close()

    def _piece(self, data: bytes) -> bool:
        for event in self.parser.feed(data):
            if event.kind == "state":
                self.states.append(event.data["state"])
                self.greeted.set()
            elif event.kind == "done":
                self.done = event.data
                return False
        return True


class StalledSpectator:
    """An SSE stream that is never read (a small window), closed with an RST at the end."""

    def __init__(self, daemon, name: str) -> None:
        self.sock = connect(daemon, rcvbuf=4096).sock
        self.sock.sendall(http_request("GET", f"{PREFIX}{name}?progress", daemon, {"Accept": "text/event-stream"}))

    def close(self) -> None:
        reset(self.sock)


# -- one pipe of the chaos run ------------------------------------------------------------------

SENDER_FAULTS = ("sender_kill_curl", "sender_close", "sender_rst", "sender_malformed")
RECEIVER_FAULTS = ("receiver_kill_curl", "receiver_close", "receiver_rst", "receiver_stall", "all_receivers_close")
WAITING_FAULTS = (
    "sender_leaves_waiting",
    "receiver_leaves_waiting",
    "receiver_resets_waiting",
    "receiver_pipelines_leaves",
)
SIDE_FAULTS = ("spectator_stall", "spectator_reset")
# Issue 9: valid but sly clients. A sender that half-closes after its whole body while it
# waits (delivered), a waiting receiver that pipelined > 16 KiB behind its GET and closes (its
# slot freed at once), a sender trickling below --min-rate (fails as Idle timeout).
SLY_FAULTS = ("sender_half_close", "sender_trickle", "receiver_pipelines_leaves")
# Faults that need a raw-socket sender (curl cannot be told to do them).
RAW_SENDER_FAULTS = ("sender_close", "sender_rst", "sender_malformed", "sender_leaves_waiting", *SLY_FAULTS[:2])
FAULTS = ("none",) * 6 + SENDER_FAULTS * 2 + RECEIVER_FAULTS * 2 + WAITING_FAULTS + SIDE_FAULTS + SLY_FAULTS * 2


@dataclass
class Plan:
    index: int
    name: str
    size: int
    n: int
    fault: str
    at: int
    receivers_first: bool
    curl_sender: bool
    curl_receivers: list[bool]
    chunked: bool
    victim: int = 0  # which receiver the receiver faults hit
    variant: str = ""  # how an issue 9 fault goes about it (see shape)

    def describe(self) -> str:
        kinds = "".join("c" if c else "r" for c in self.curl_receivers)
        return (
            f"#{self.index} {self.name} size={self.size} n={self.n} fault={self.fault}@{self.at}"
            f"{'/' + self.variant if self.variant else ''} "
            f"{'recv-first' if self.receivers_first else 'send-first'} "
            f"sender={'curl' if self.curl_sender else ('raw-chunked' if self.chunked else 'raw-fixed')} "
            f"receivers={kinds} victim={self.victim}"
        )


# How a half-closing sender goes about it (``Plan.variant``):
# - "paused": its head, then (once told it waits) its whole body and the half-close: the FIN
#   comes behind bytes the daemon has not read;
# - "one_write": head, whole body and half-close at once: the daemon may read the whole body
#   with the head, and then sees the FIN;
# - "streaming": its receivers are there first; its whole body (4-16 MiB) once it streams,
#   then the half-close, which reaches the daemon behind what the relay has not read yet.
HALF_CLOSE_VARIANTS = ("paused", "one_write", "streaming")
# What a pipelining receiver sends behind its GET: a PUT to another name with its body, or a
# GET with one long header.
PIPELINE_VARIANTS = ("put", "get")


def shape(rng: random.Random, plan: Plan, half_close: tuple[str, ...] = HALF_CLOSE_VARIANTS) -> Plan:
    """Fit ``plan`` to its fault, if it is one of issue 9's (sizes, variant, order, raw
    sender); any other plan is left as it is. ``half_close``: the variants to draw from."""
    if plan.fault == "sender_half_close":
        plan.variant = rng.choice(half_close)
        if plan.variant == "streaming":
            plan.size = rng.randrange(4 * MiB, 16 * MiB)
        elif plan.variant == "paused":  # fits the socket buffers of a sender nobody reads yet
            plan.size = rng.randrange(1, 96 * 1024)  # (0 bytes of a fixed length: no body to pause before)
        else:
            plan.size = rng.randrange(0, 96 * 1024)
        plan.at = plan.size
        plan.receivers_first = plan.variant == "streaming"
    elif plan.fault == "sender_trickle":
        # Up to 256 KiB at full speed, then more left than the trickle can send.
        plan.at = rng.randrange(0, 256 * 1024)
        plan.size = plan.at + rng.randrange(1024, 64 * 1024)
    elif plan.fault == "receiver_pipelines_leaves":
        plan.variant = rng.choice(PIPELINE_VARIANTS)
        plan.at = rng.randrange(PIPELINED_AT_LEAST + 1, 4 * PIPELINED_AT_LEAST)  # bytes behind the GET
    else:
        return plan
    if plan.fault in RAW_SENDER_FAULTS:
        plan.curl_sender = False
    return plan


def make_plan(rng: random.Random, index: int, half_close: tuple[str, ...] = HALF_CLOSE_VARIANTS) -> Plan:
    n = rng.choice((1, 1, 2, 3))
    roll = rng.random()
    if roll < 0.1:
        size = 0
    elif roll < 0.3:
        size = rng.randrange(1, 64 * 1024)
    else:
        size = rng.randrange(64 * 1024, 8 * MiB + 1)
    fault = rng.choice(FAULTS)
    if size == 0 and fault in SENDER_FAULTS + RECEIVER_FAULTS:
        fault = "none"
    if fault == "receiver_stall":
        # Enough left after the stall to fill every buffer on the way.
        size = max(size, rng.randrange(12 * MiB, 16 * MiB))
    at = rng.randrange(0, size) if size else 0
    if fault in RECEIVER_FAULTS:
        at = max(1, at // 2)
    curl_sender = fault == "sender_kill_curl" or (fault not in RAW_SENDER_FAULTS and rng.random() < 0.4)
    curl_receivers = [rng.random() < 0.3 for _ in range(n)]
    victim = rng.randrange(n)
    if fault == "receiver_kill_curl":
        curl_receivers[victim] = True
    elif fault in ("receiver_close", "receiver_rst", "receiver_stall"):
        curl_receivers[victim] = False
    elif fault == "all_receivers_close":
        curl_receivers = [False] * n
    plan = Plan(
        index=index,
        name=f"fault-{index}-{rng.getrandbits(40):010x}",
        size=size,
        n=n,
        fault=fault,
        at=at,
        receivers_first=rng.random() < 0.6,
        curl_sender=curl_sender,
        curl_receivers=curl_receivers,
        chunked=fault == "sender_malformed" or rng.random() < 0.6,
        victim=victim,
    )
    return shape(rng, plan, half_close)


@dataclass
class Outcome:
    plan: Plan
    data: bytes
    spectator: Spectator
    sender: Party | None = None
    receivers: list[Party] = field(default_factory=list)
    first_parties: list[Party] = field(default_factory=list)  # who left while waiting
    stalled_spectator: StalledSpectator | None = None
    status: dict[str, Any] | None = None
    problems: list[Finding] = field(default_factory=list)
    # receiver_pipelines_leaves: seconds from its close until the pipe had no receiver.
    freed_after: float | None = None
    # sender_half_close ("paused", "one_write"): whether the pipe still waited with it as its
    # sender 0.1 s after its half-close (False too if it had not half-closed within 2 s).
    half_closed_waiting: bool | None = None

    @property
    def done(self) -> dict[str, Any] | None:
        return self.spectator.done


class PipeRun:
    """Runs one plan in a thread: spectator first, then the parties, then the fault.

    ``data``: the bytes to send (by default ``plan.size`` random ones); ``timeout``: how long
    the parties may take (the fault waits up to half of it); ``idle_timeout``: the daemon's,
    which a stalled receiver outlasts; ``freed_within``: how soon a waiting receiver that
    pipelined and left must be forgotten (the ``?status`` polls that see it count too).
    """

    def __init__(
        self,
        daemon,
        plan: Plan,
        rng: random.Random,
        data: bytes | memoryview | None = None,
        timeout: float = 60,
        idle_timeout: float = IDLE_TIMEOUT,
        freed_within: float = FREED_WITHIN,
    ) -> None:
        self.daemon = daemon
        self.plan = plan
        self.rng = random.Random(rng.getrandbits(64))
        self.data = self.rng.randbytes(plan.size) if data is None else data
        self.timeout, self.idle_timeout, self.freed_within = timeout, idle_timeout, freed_within
        self.outcome = Outcome(plan, self.data, Spectator(daemon, plan.name, timeout=max(60, timeout)))
        self.thread = threading.Thread(target=self._guarded, daemon=True)

    def _guarded(self) -> None:
        try:
            self.run()
        except BaseException as error:
            self.outcome.problems.append(Finding("harness", f"driver error: {error!r}"))

    def _status(self) -> dict[str, Any]:
        answer = fetch(self.daemon, f"{PREFIX}{self.plan.name}?status")
        assert answer.status == 200, answer
        return json.loads(answer.body)

    def run(self) -> None:
        plan, out, daemon = self.plan, self.outcome, self.daemon
        out.spectator.start()
        assert out.spectator.greeted.wait(10), "no first state event"
        if plan.fault == "spectator_stall":
            out.stalled_spectator = StalledSpectator(daemon, plan.name)
        elif plan.fault == "spectator_reset":
            # Another spectator, reset while the transfer runs.
            doomed = StalledSpectator(daemon, plan.name)
            threading.Timer(self.rng.random() * 0.5, doomed.close).start()
        time.sleep(self.rng.random() * 0.5)
        # A party that comes and goes while the pipe is still waiting.
        if plan.fault == "sender_leaves_waiting":
            early = RawSender(
                daemon,
                plan.name,
                plan.n,
                self.rng.randbytes(4096),
                chunked=plan.chunked,
                rng=self.rng,
                action="leave",
                at=self.rng.randrange(2),
            )
            out.first_parties.append(early.start())
            assert early.join(15), "the leaving sender did not leave"
            wait_for(lambda: self._status()["hasSender"] is False, 10, f"{plan.name} to forget its sender")
        elif plan.fault == "receiver_resets_waiting":
            sock = connect(daemon).sock
            sock.sendall(http_request("GET", f"{PREFIX}{plan.name}?n={plan.n}", daemon))
            wait_for(lambda: self._status()["activeReceivers"] == 1, 10, f"{plan.name} to see a receiver")
            reset(sock)
            wait_for(lambda: self._status()["activeReceivers"] == 0, 10, f"{plan.name} to forget the receiver")
        elif plan.fault == "receiver_pipelines_leaves":
            if not self._pipelining_receiver_leaves():
                return
        elif plan.fault == "receiver_leaves_waiting":
            early_curl = CurlReceiver(daemon, plan.name, plan.n, b"")
            out.first_parties.append(early_curl.start())
            wait_for(lambda: self._status()["activeReceivers"] == 1, 10, f"{plan.name} to see a receiver")
            early_curl.kill()
            wait_for(lambda: self._status()["activeReceivers"] == 0, 10, f"{plan.name} to forget the receiver")
        receivers = out.receivers = [self._receiver(i) for i in range(plan.n)]
        sender = out.sender = self._sender()
        parties: list[Party] = [*receivers, sender] if plan.receivers_first else [sender, *receivers]
        for party in parties:
            party.start()
            if party is sender and plan.fault == "sender_half_close" and plan.variant != "streaming":
                self._half_closed(sender)
            time.sleep(self.rng.random() * 0.05)
        self._inject(sender, receivers)
        deadline = time.monotonic() + self.timeout
        for party in parties:
            if not party.join(max(0.1, deadline - time.monotonic())):
                out.problems.append(Finding("harness", f"{party.role} still running after {self.timeout:.0f} s"))
        if not out.spectator.join(max(1.0, deadline - time.monotonic())):
            out.problems.append(Finding("side-channel", f"the spectator saw no done event within {self.timeout:.0f} s"))
            out.spectator.stop()  # a run leaves no connection behind
            out.spectator.join(5)
        out.status = self._status()

    def _pipelining_receiver_leaves(self) -> bool:
        """A waiting receiver with more than 16 KiB of another request pipelined behind its
        GET closes: the pipe must drop it at once (``freed_within``), not at --wait-timeout."""
        plan, out, daemon = self.plan, self.outcome, self.daemon
        get = http_request("GET", f"{PREFIX}{plan.name}?n={plan.n}", daemon)
        if plan.variant == "put":  # to another name, with its body
            body = self.rng.randbytes(plan.at)
            headers = {"Content-Length": str(len(body))}
            behind = http_request("PUT", f"{PREFIX}{plan.name}-behind", daemon, headers) + body
        else:  # a GET with a long header
            pad = "p" * plan.at
            behind = http_request("GET", f"{PREFIX}health", daemon, {"X-Pad": pad})
        sock = connect(daemon).sock
        try:
            sock.sendall(get + behind)
            wait_for(lambda: self._status()["activeReceivers"] == 1, 10, f"{plan.name} to see a receiver")
        finally:
            sock.close()
        left = time.monotonic()
        try:
            wait_for(lambda: self._status()["activeReceivers"] == 0, 10, f"{plan.name} to forget the receiver")
        except AssertionError:
            out.problems.append(
                Finding(
                    "party",
                    f"a waiting receiver that pipelined {plan.at} bytes and closed still holds its slot after 10 s",
                )
            )
            return False
        out.freed_after = time.monotonic() - left
        if out.freed_after > self.freed_within:
            out.problems.append(
                Finding(
                    "party",
                    f"a waiting receiver that pipelined {plan.at} bytes and closed held its slot "
                    f"{out.freed_after:.2f} s more (at most {self.freed_within:g} s)",
                )
            )
        return True

    def _half_closed(self, sender: Party) -> None:
        """Let the half-closing sender send its body and shut down its side before the receivers
        come (its body fits the socket buffers; if it does not, they come after 2 s)."""
        assert isinstance(sender, RawSender)
        if sender.body_sent.wait(2) and sender.acted:
            time.sleep(0.1)  # the daemon sees the FIN
            snap = self._status()
            self.outcome.half_closed_waiting = snap["state"] == "waiting" and snap["hasSender"] is True
        else:
            self.outcome.half_closed_waiting = False

    def _receiver(self, i: int) -> Party:
        plan = self.plan
        if plan.curl_receivers[i]:
            return CurlReceiver(self.daemon, plan.name, plan.n, self.data)
        action = None
        if i == plan.victim and plan.fault in ("receiver_close", "receiver_rst", "receiver_stall"):
            action = plan.fault.split("_")[1]
        if plan.fault == "all_receivers_close":
            action = "close"
        at = plan.at if i == plan.victim else self.rng.randint(plan.size // 2, plan.size)
        stall = 3 * self.idle_timeout + 2
        return RawReceiver(self.daemon, plan.name, plan.n, self.data, action, at, stall_for=stall)

    def _sender(self) -> Party:
        plan = self.plan
        if plan.curl_sender:
            hold = plan.at if plan.fault == "sender_kill_curl" else None
            return CurlSender(self.daemon, plan.name, plan.n, self.data, hold_back_from=hold)
        action = {
            "sender_close": "close",
            "sender_rst": "rst",
            "sender_malformed": "malformed",
            "sender_half_close": "half_close",
            "sender_trickle": "trickle",
        }.get(plan.fault)
        if action == "half_close":
            # Its whole body and the half-close: while it waits, or once it streams.
            hold_until = {"paused": "[INFO] Waiting", "streaming": "[INFO] Streaming"}.get(plan.variant)
        else:
            hold_until = "[INFO] Streaming" if action is not None or self.rng.random() < 0.5 else None
        return RawSender(
            self.daemon,
            plan.name,
            plan.n,
            self.data,
            plan.chunked,
            self.rng,
            action,
            plan.at,
            wait_streaming=False,
            hold_until=hold_until,
            one_write=action == "half_close" and plan.variant == "one_write",
            # Below --min-rate (64 B/s by default) whatever the idle timeout: 4 bytes per timeout.
            trickle_every=self.idle_timeout / 4,
            trickle_for=3 * self.idle_timeout + 5,
        )

    def _inject(self, sender: Party, receivers: list[Party]) -> None:
        plan = self.plan
        if plan.fault == "sender_kill_curl":
            # Only ``at`` bytes were fed: once every receiver has them, kill.
            wait_for(
                lambda: self.outcome.spectator.states.count("streaming") and all(r.got >= plan.at for r in receivers),
                self.timeout / 2,
                f"{plan.name}: {plan.at} bytes everywhere",
            )
            time.sleep(self.rng.random() * 0.05)
            sender.kill()
        elif plan.fault == "receiver_kill_curl":
            victim = receivers[plan.victim]
            assert isinstance(victim, CurlReceiver)
            wait_for(
                lambda: victim.got >= plan.at or (victim.curl and victim.curl.proc.poll() is not None),
                self.timeout / 2,
                f"{plan.name}: the victim to get {plan.at} bytes",
            )
            victim.kill()
        elif plan.fault == "receiver_stall":
            victim = receivers[plan.victim]
            assert isinstance(victim, RawReceiver)
            # The stalled receiver reads on once the transfer is over.
            wait_for(
                lambda: self.outcome.spectator.done is not None or not self.outcome.spectator.thread.is_alive(),
                self.timeout / 2,
                f"{plan.name} to end while a receiver stalls",
            )
            victim.resume.set()


# -- the checks ---------------------------------------------------------------------------------


def expected_outcomes(plan: Plan) -> set[tuple[str, str | None]]:
    """What a correct daemon may report for this plan."""
    complete = ("complete", None)
    fault, n = plan.fault, plan.n
    if fault in ("none", "sender_half_close", *WAITING_FAULTS, *SIDE_FAULTS):
        return {complete}
    if fault == "sender_trickle":
        return {("failed", "Idle timeout")}
    if fault == "sender_malformed":
        return {("failed", "Malformed upload")}
    if fault in SENDER_FAULTS:
        return {("failed", "Sender disconnected")}
    if fault == "receiver_stall":
        return {complete, ("failed", "Idle timeout")}
    if fault == "all_receivers_close" or n == 1:
        # The daemon may have handed everything to the kernel before the receiver left.
        return {complete, ("failed", "All receivers disconnected")}
    return {complete}  # one receiver of several left: the others go on


def check(out: Outcome) -> list[Finding]:
    """Everything about one run that breaks the contract: whatever a receiver got is a prefix
    of what was sent, a clean end means all of it (sha256), a transfer the side channel calls
    complete reached every remaining receiver and failed ones are visibly broken, the failure
    and its reason are on the side channel, and the sender was told as DESIGN.md says."""
    plan, data = out.plan, out.data
    problems: list[Finding] = [p if isinstance(p, Finding) else Finding("harness", p) for p in out.problems]

    def add(kind: str, text: str) -> None:
        problems.append(Finding(kind, text))

    full = sha(data)
    done = out.done
    if done is None:
        add(
            "side-channel",
            f"no done event (spectator: {out.spectator.broken or out.spectator.error!r}, "
            f"states {out.spectator.states})",
        )
        return problems
    state, reason = done.get("state"), done.get("reason")
    if state == "failed" and (not isinstance(reason, str) or reason not in REASONS):
        add("side-channel", f"failed without a known reason: {done}")
    if (state, reason) not in expected_outcomes(plan):
        add("side-channel", f"done says {state}/{reason}, expected one of {sorted(map(str, expected_outcomes(plan)))}")
    if out.status and (out.status.get("state"), out.status.get("reason")) != (state, reason):
        add(
            "side-channel",
            f"?status says {out.status.get('state')}/{out.status.get('reason')}, done said {state}/{reason}",
        )
    if state == "complete" and done.get("bytes") != plan.size:
        add("side-channel", f"done reports {done.get('bytes')} bytes of {plan.size}")
    for i, r in enumerate(out.receivers):
        who = f"receiver {i}"
        if r.error is not None:
            add("harness", f"{who}: test error {r.error!r}")
            continue
        if isinstance(r, RawReceiver):
            if r.status != 200:
                add("refused", f"{who}: HTTP {r.status} {r.error_body[:200]!r}")
                continue
            if r.mismatch_at is not None:
                add("corruption", f"{who}: CORRUPTION at byte {r.mismatch_at}")
            whole = r.got == plan.size and r.digest == full
            if r.clean and r.got != plan.size:
                add("truncation", f"{who}: CLEAN END AFTER PARTIAL DATA ({r.got} of {plan.size} bytes)")
            elif r.clean and not whole:
                add("corruption", f"{who}: CLEAN END, but its sha256 differs from the data sent")
            if r.faulted:
                continue
            if state == "complete" and not (r.clean and whole):
                add(
                    "party",
                    f"{who}: transfer complete but it got {r.got}/{plan.size} bytes, "
                    f"clean={r.clean}, broken={r.broken}",
                )
            if state == "failed":
                chunked = r.headers.get("transfer-encoding", "").lower() == "chunked"
                # A fixed-length receiver may hold every byte already when a peer stalls.
                if r.clean and (chunked or not whole):
                    add("party", f"{who}: transfer failed ({reason}) but it saw a clean end")
        else:
            assert isinstance(r, CurlReceiver)
            curl = r.curl
            if curl is None:
                add("harness", f"{who}: curl never started")
                continue
            rc = curl.returncode
            got = curl.out
            if rc == CURL_REFUSED:
                add("refused", f"{who}: curl --fail exited {rc}: {curl.stderr.strip()}")
                continue
            if got != data[: len(got)]:
                add("corruption", f"{who}: CORRUPTION (curl got {len(got)} bytes that are not a prefix)")
            if rc == 0 and (len(got) != plan.size or curl.digest != full):
                add(
                    "truncation" if len(got) != plan.size else "corruption",
                    f"{who}: curl exited 0 with {len(got)}/{plan.size} bytes (sha differs)",
                )
            if r.faulted:
                continue
            if state == "complete" and rc != 0:
                add("party", f"{who}: transfer complete but curl exited {rc}: {curl.stderr.strip()}")
            if state == "failed" and rc == 0:
                add("party", f"{who}: transfer failed ({reason}) but curl exited 0 with {len(got)} bytes")
            if state == "failed" and rc not in BROKEN_CURL:
                add("party", f"{who}: curl exited {rc} on a broken transfer: {curl.stderr.strip()}")
    sender = out.sender
    if sender is not None and sender.error is not None:
        add("harness", f"sender: test error {sender.error!r}")
    elif sender is not None and not sender.faulted:
        lines = sender.lines
        last = lines[-1] if lines else ""
        if state == "complete" and last != "[INFO] Transfer complete.":
            add("party", f"sender: transfer complete but its last line is {last!r} ({lines})")
        if state == "failed" and reason in SENDER_LINE and last != SENDER_LINE[reason]:
            add("party", f"sender: transfer failed ({reason}) but its last line is {last!r} ({lines})")
        if isinstance(sender, CurlSender) and state == "complete" and sender.curl.returncode != 0:
            add("party", f"sender: curl exited {sender.curl.returncode}: {sender.curl.stderr.strip()}")
    if plan.fault == "sender_malformed" and sender is not None and sender.lines[-1:] != ["[ERROR] Malformed upload."]:
        add("party", f"malformed sender: last line {sender.lines[-1:]!r}, broken={sender.broken}")
    if plan.fault == "sender_half_close" and isinstance(sender, RawSender) and sender.error is None:
        if not sender.acted:
            add("harness", f"the sender never half-closed (broken={sender.broken})")
        elif sender.broken is not None:
            add("party", f"half-closed sender: its response broke ({sender.broken}), lines {sender.lines}")
    trickler = plan.fault == "sender_trickle" and isinstance(sender, RawSender)
    if trickler and sender.error is None and not sender.acted:
        add("harness", f"the sender never trickled (broken={sender.broken})")
    return problems


def assert_no_traceback(daemon) -> None:
    """The daemon logged no error; show the first traceback in full if it did."""
    text = daemon.log_text()
    at = text.find("Traceback")
    if at >= 0:
        start = text.rfind("\n", 0, max(0, text.rfind("\n", 0, at) - 1)) + 1
        raise AssertionError(
            f"the daemon logged {text.count('Traceback')} traceback(s); the first:\n{text[start : at + 3000]}"
        )


def metrics(daemon) -> dict[str, float]:
    answer = fetch(daemon, f"{PREFIX}metrics")
    assert answer.status == 200
    values = {}
    for line in answer.text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            values[key] = float(value)
    return values


def wait_registry_empty(daemon, timeout: float = 15) -> dict[str, float]:
    keys = ("hoodypipe_pending_pipes", "hoodypipe_active_pipes", "hoodypipe_spectators")
    last: dict[str, float] = {}

    def empty():
        nonlocal last
        last = metrics(daemon)
        return all(last.get(k) == 0 for k in keys)

    try:
        wait_for(empty, timeout, "the registry to empty", 0.1)
    except AssertionError:
        raise AssertionError(
            f"registry not empty after {timeout}s: " + ", ".join(f"{k}={last.get(k)}" for k in keys)
        ) from None
    return last


def outcomes_of(m: dict[str, float]) -> dict[str, float]:
    found = {}
    for key, value in m.items():
        match = re.fullmatch(r'hoodypipe_transfers_total\{kind="[^"]*",outcome="([^"]*)"\}', key)
        if match:
            found[match.group(1)] = value
    return found


def warm_up(daemon) -> None:
    """One small transfer, so that the baseline RSS includes the code paths' first use."""
    name = f"warm-{random.getrandbits(32):08x}"
    r = RawReceiver(daemon, name, 1, b"w" * 70000).start()
    wait_for(lambda: state_of(daemon, name) == "waiting", 10, "the warm-up receiver")
    s = RawSender(daemon, name, 1, b"w" * 70000, chunked=True, rng=random.Random(0)).start()
    assert r.join(20) and s.join(20) and r.clean


def state_of(daemon, name: str) -> str | None:
    answer = fetch(daemon, f"{PREFIX}{name}?status")
    return json.loads(answer.body)["state"] if answer.status == 200 else None


def status_of(daemon, name: str) -> dict[str, Any]:
    answer = fetch(daemon, f"{PREFIX}{name}?status")
    assert answer.status == 200
    return json.loads(answer.body)


# -- the tests ----------------------------------------------------------------------------------
