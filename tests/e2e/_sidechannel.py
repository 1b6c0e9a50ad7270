"""Tools for the side-channel tests (``?progress`` / ``?status``): SSE parsing,
spectator streams (curl, treq, raw sockets), paced senders and receivers.

Generic tools (``fetch``, ``wait_for``, curl children) live in ``_helpers``.
Every wait is bounded; conditions are polled instead of slept on.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import random
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tests.support.httpwire import LAST_CHUNK, Connection, chunk, request

from ._helpers import LIVE, fetch, wait_for

PREFIX = "/api/v1/pipe/"

# Every field of DESIGN.md section 4, documented names and the seed's short ones.
STATE_FIELDS = {"state", "hasSender", "activeReceivers", "totalReceivers", "receivers"}
PROGRESS_FIELDS = {
    "bytesTransferred",
    "bytes",
    "totalBytes",
    "speed",
    "mbps",
    "eta",
    "etaSec",
    "percent",
    "elapsed",
    "activeReceivers",
    "receivers",
}
DONE_FIELDS = {"state", "bytesTransferred", "bytes", "duration", "durationSec", "avgSpeed", "mbps", "reason"}
STATUS_FIELDS = {
    "state",
    "hasSender",
    "activeReceivers",
    "totalReceivers",
    "bytesTransferred",
    "totalBytes",
    "speed",
    "eta",
    "elapsed",
    "reason",
    "percent",
    "startedAt",
    "finishedAt",
    "history",
    "bytes",
    "mbps",
    "etaSec",
    "durationSec",
    "receivers",
}

BROWSER_ACCEPT = "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8"


# -- SSE -------------------------------------------------------------------------------


@dataclass
class Event:
    """One SSE block: an event, a ``retry:`` line or a ``:`` comment."""

    kind: str  # the event name, or "retry" / "comment"
    data: Any = None
    id: int | None = None
    retry: int | None = None
    at: float = 0.0  # time.monotonic() when it arrived
    raw: str = ""

    def __repr__(self) -> str:
        return f"<{self.kind} id={self.id} {self.data if self.data is not None else self.retry}>"


class SSEParser:
    """Incremental text/event-stream parser (one JSON object per ``data``)."""

    def __init__(self) -> None:
        self.buffer = b""
        self.events: list[Event] = []

    def feed(self, data: bytes, at: float | None = None) -> list[Event]:
        at = time.monotonic() if at is None else at
        self.buffer += data.replace(b"\r\n", b"\n")
        new: list[Event] = []
        while b"\n\n" in self.buffer:
            block, self.buffer = self.buffer.split(b"\n\n", 1)
            event = self._parse(block.decode("utf-8"), at)
            if event is not None:
                new.append(event)
        self.events.extend(new)
        return new

    @staticmethod
    def _parse(block: str, at: float) -> Event | None:
        name = None
        data: list[str] = []
        event_id = None
        retry = None
        comments = []
        for line in block.split("\n"):
            if not line:
                continue
            if line.startswith(":"):
                comments.append(line[1:].strip())
                continue
            key, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if key == "event":
                name = value
            elif key == "data":
                data.append(value)
            elif key == "id":
                event_id = int(value)
            elif key == "retry":
                retry = int(value)
            else:
                raise AssertionError(f"unknown SSE field {key!r} in {block!r}")
        if data or name:
            return Event(name or "message", json.loads("\n".join(data)) if data else None, event_id, retry, at, block)
        if retry is not None:
            return Event("retry", None, event_id, retry, at, block)
        if comments:
            return Event("comment", " ".join(comments), None, None, at, block)
        return None


class EventLog:
    """Events as they arrive, with waits on them (shared by the curl and treq streams)."""

    def __init__(self) -> None:
        self.parser = SSEParser()
        self.raw = b""
        self.ended = False
        self.opened_at = time.monotonic()
        self.ended_at: float | None = None
        self.lock = threading.Lock()

    @property
    def events(self) -> list[Event]:
        with self.lock:
            return list(self.parser.events)

    def named(self, kind: str) -> list[Event]:
        return [e for e in self.events if e.kind == kind]

    def got(self, data: bytes) -> None:
        with self.lock:
            self.raw += data
            self.parser.feed(data)

    def end(self) -> None:
        self.ended = True
        self.ended_at = time.monotonic()

    def find(self, predicate: Callable[[Event], Any], after: int = 0) -> Event | None:
        for event in self.events[after:]:
            if predicate(event):
                return event
        return None

    def describe(self) -> str:
        return "\n".join(repr(e) for e in self.events[-15:]) or "(no events)"


def is_state(state: str, **fields: Any) -> Callable[[Event], bool]:
    def match(event: Event) -> bool:
        if event.kind != "state" or event.data.get("state") != state:
            return False
        return all(event.data.get(k) == v for k, v in fields.items())

    return match


def is_kind(kind: str) -> Callable[[Event], bool]:
    return lambda event: event.kind == kind


class CurlSSE(EventLog):
    """``curl -N`` on a ``?progress`` URL, parsed as it arrives."""

    def __init__(self, url: str, accept: str | None = "text/event-stream", *args: str) -> None:
        super().__init__()
        command = ["curl", "-sS", "-N", *args]
        if accept is not None:
            command += ["-H", f"Accept: {accept}"]
        self.stderr = ""
        self.proc = subprocess.Popen([*command, url], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        LIVE.append(self)  # killed by the e2e conftest if a test leaves it running
        self._thread = threading.Thread(target=self._drain, daemon=True)
        self._thread.start()

    def _drain(self) -> None:
        try:
            while True:
                data = self.proc.stdout.read1(65536)
                if not data:
                    break
                self.got(data)
            self.stderr = self.proc.stderr.read().decode("utf-8", "replace")
        except (OSError, ValueError):
            pass
        finally:
            self.proc.stdout.close()
            self.proc.stderr.close()
            self.end()

    def wait_for(
        self, predicate: Callable[[Event], Any], timeout: float = 10, what: str = "an event", after: int = 0
    ) -> Event:
        try:
            return wait_for(lambda: self.find(predicate, after), timeout, what, 0.01)
        except AssertionError as error:
            raise AssertionError(f"{error}; events so far:\n{self.describe()}") from None

    def wait_end(self, timeout: float = 10) -> None:
        wait_for(lambda: self.ended, timeout, "the stream to end", 0.01)
        self.proc.wait(timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        self._thread.join(10)

    close = kill


# -- raw spectators (they never read) ----------------------------------------------------------


def open_spectator(
    daemon,
    name: str,
    query: str = "progress",
    accept: str = "text/event-stream",
    rcvbuf: int | None = None,
    timeout: float = 10,
    source: str | None = None,
) -> tuple[socket.socket, int, dict[str, str]]:
    """Open a ``?progress`` request on a raw socket; read only the status line and headers.

    ``source`` (127.0.0.N) makes it another client: the caps keep a share for each.
    """
    conn = Connection(daemon.host, daemon.port, timeout, rcvbuf=rcvbuf, source=source)
    try:
        conn.send(request("GET", f"{PREFIX}{name}?{query}", {"Accept": accept}, host=f"{daemon.host}:{daemon.port}"))
        head = conn.read_head(most=1)  # one byte at a time: leave the body unread
    except BaseException:
        conn.close()
        raise
    return conn.sock, head.status, {k.lower(): v for k, v in head.headers}


def stream_head(
    daemon,
    name: str,
    query: str = "progress",
    headers: dict[str, str] | None = None,
    want: bytes = b"\n\n",
    timeout: float = 10,
) -> tuple[int, dict[str, str], bytes]:
    """Status, headers and the first bytes of a streaming answer; then hang up."""
    conn = http.client.HTTPConnection(daemon.host, daemon.port, timeout=timeout)
    try:
        conn.putrequest("GET", f"{PREFIX}{name}?{query}", skip_accept_encoding=True)
        for key, value in (headers or {}).items():
            conn.putheader(key, value)
        conn.endheaders()
        answer = conn.getresponse()
        found = {k.lower(): v for k, v in answer.getheaders()}
        body = b""
        deadline = time.monotonic() + timeout
        while want not in body and time.monotonic() < deadline:
            data = answer.read1(65536)
            if not data:
                break
            body += data
        return answer.status, found, body
    finally:
        conn.close()


def snapshot_json(daemon, name: str, query: str = "status", headers: dict[str, str] | None = None) -> dict[str, Any]:
    answer = fetch(daemon, f"{PREFIX}{name}?{query}", headers=headers)
    assert answer.status == 200, (answer.status, answer.body)
    assert (answer.header("Content-Type") or "").startswith("application/json"), answer.headers
    return json.loads(answer.body)


# -- a paced sender and a receiver, in threads ------------------------------------------------


class PacedSender:
    """A PUT whose body goes out in steps over ``duration`` seconds.

    ``sized=True`` sends a ``Content-Length``; otherwise the body is chunked (and
    ``pipe_size`` adds ``X-Pipe-Size``). With ``wait_streaming`` the body starts only
    once ``?status`` shows the transfer streaming, so the kernel's socket buffers do
    not soak up the first seconds of the pacing.
    """

    def __init__(
        self,
        daemon,
        name: str,
        total: int,
        duration: float,
        *,
        sized: bool = True,
        pipe_size: int | None = None,
        query: str = "",
        step: int = 32 * 1024,
        wait_streaming: bool = True,
        seed: int = 1,
    ) -> None:
        self.daemon = daemon
        self.name = name
        self.total = total
        self.duration = duration
        self.sized = sized
        self.pipe_size = pipe_size
        self.query = query
        self.step = step
        self.wait_streaming = wait_streaming
        self.rng = random.Random(seed)
        self.sha = hashlib.sha256()
        self.sent = 0
        self.status: int | None = None
        self.lines: list[str] = []
        self.error: BaseException | None = None
        self.killed = threading.Event()
        self.sock = socket.create_connection((daemon.host, daemon.port), timeout=60)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            headers = [
                ("Content-Type", "application/octet-stream"),
                ("Connection", "close"),
                ("Content-Length", str(self.total)) if self.sized else ("Transfer-Encoding", "chunked"),
            ]
            if self.pipe_size is not None:
                headers.append(("X-Pipe-Size", str(self.pipe_size)))
            target = f"{PREFIX}{self.name}{'?' + self.query if self.query else ''}"
            self.sock.sendall(request("PUT", target, headers, host=f"{self.daemon.host}:{self.daemon.port}"))
            if self.wait_streaming:
                wait_for(
                    lambda: self.killed.is_set() or _state(self.daemon, self.name) == "streaming",
                    60,
                    f"{self.name} to stream",
                    0.02,
                )
            steps = max(1, -(-self.total // self.step))
            start = time.monotonic()
            for i in range(steps):
                if self.killed.is_set():
                    return
                size = min(self.step, self.total - self.sent)
                block = self.rng.randbytes(size)
                self.sha.update(block)
                frame = block if self.sized else chunk(block)
                self.sock.sendall(frame)
                self.sent += size
                pause = start + (i + 1) * self.duration / steps - time.monotonic()
                if pause > 0 and i + 1 < steps:
                    self.killed.wait(pause)
            if not self.sized:
                self.sock.sendall(LAST_CHUNK)
            answer = http.client.HTTPResponse(self.sock)
            answer.begin()
            self.status = answer.status
            self.lines = answer.read().decode().splitlines()
            answer.close()
        except BaseException as error:  # reported by join()
            if not self.killed.is_set():
                self.error = error
        finally:
            self.sock.close()

    def kill(self) -> None:
        """Drop the connection mid-stream, like a crashed client."""
        self.killed.set()
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()

    def join(self, timeout: float = 30) -> None:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), f"sender {self.name} still running after {timeout}s"
        if self.error is not None:
            raise AssertionError(f"sender {self.name} failed: {self.error!r}")

    @property
    def digest(self) -> str:
        return self.sha.hexdigest()


class Receiver:
    """A GET on the pipe that hashes what it gets; ``leave_after`` hangs up early."""

    def __init__(self, daemon, name: str, query: str = "", leave_after: int | None = None) -> None:
        self.daemon = daemon
        self.name = name
        self.query = query
        self.leave_after = leave_after
        self.sha = hashlib.sha256()
        self.received = 0
        self.status: int | None = None
        self.headers: dict[str, str] = {}
        self.complete = False
        self.error: BaseException | None = None
        self.conn = http.client.HTTPConnection(daemon.host, daemon.port, timeout=60)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            target = f"{PREFIX}{self.name}{'?' + self.query if self.query else ''}"
            self.conn.request("GET", target)
            answer = self.conn.getresponse()
            self.status = answer.status
            self.headers = {k.lower(): v for k, v in answer.getheaders()}
            while True:
                data = answer.read1(65536)
                if not data:
                    break
                self.sha.update(data)
                self.received += len(data)
                if self.leave_after is not None and self.received >= self.leave_after:
                    self.close()
                    return
            self.complete = True
        except BaseException as error:
            self.error = error
        finally:
            self.conn.close()

    def close(self) -> None:
        try:
            if self.conn.sock is not None:
                self.conn.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.conn.close()

    def join(self, timeout: float = 30) -> None:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), f"receiver {self.name} still running after {timeout}s"

    @property
    def digest(self) -> str:
        return self.sha.hexdigest()


def _state(daemon, name: str) -> str | None:
    try:
        return snapshot_json(daemon, name)["state"]
    except (OSError, AssertionError, ValueError):
        return None


# -- checks shared by the tests ------------------------------------------------------------


def check_ids_increase(events: list[Event]) -> None:
    ids = [e.id for e in events if e.kind in ("state", "progress", "done")]
    assert all(i is not None for i in ids), f"an event without id: {events}"
    assert ids == sorted(ids) and len(set(ids)) == len(ids), f"ids do not increase: {ids}"


def check_fields(events: list[Event]) -> None:
    wanted = {"state": STATE_FIELDS, "progress": PROGRESS_FIELDS, "done": DONE_FIELDS}
    for event in events:
        if event.kind in wanted:
            missing = wanted[event.kind] - set(event.data)
            assert not missing, f"{event.kind} event lacks {sorted(missing)}: {event.data}"
    for event in events:
        data = event.data or {}
        pairs = [
            ("bytesTransferred", "bytes"),
            ("eta", "etaSec"),
            ("activeReceivers", "receivers"),
            ("duration", "durationSec"),
        ]
        for long, short in pairs:
            if long in data and short in data:
                assert data[long] == data[short], f"{long} != {short} in {event}"
        if event.kind == "progress" and data.get("speed") is not None:
            assert abs(data["mbps"] - data["speed"] / 1e6) <= 0.051, f"mbps does not match speed: {data}"


@dataclass
class RSSWatch:
    """The daemon's peak RSS, sampled in a thread."""

    daemon: Any
    interval: float = 0.05
    peak: int = 0
    samples: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                rss = self.daemon.rss()
            except (OSError, RuntimeError):
                return
            self.samples.append(rss)
            self.peak = max(self.peak, rss)
            self._stop.wait(self.interval)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join(5)
        return self.peak
