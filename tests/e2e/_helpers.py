"""Small tools for the end-to-end tests: curl children, polling, raw sockets.

Every wait here is bounded; nothing sleeps where a condition can be polled.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import re
import subprocess
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support.httpwire import Connection, Headers, Response, last_final_head

CURL = "curl"
CHUNK = 1 << 20
ERROR_LINE = re.compile(rb"^\[ERROR\] [^\r\n]+\.\n$")

# Every curl child started here, so that a failing test leaves none behind.
LIVE: list[Curl] = []


def unique(prefix: str = "p") -> str:
    """A fresh pipe name."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def deterministic_bytes(size: int, seed: int = 0) -> bytes:
    """Incompressible test data without the cost of os.urandom for large sizes."""
    import random

    return random.Random(seed).randbytes(size)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# -- plain HTTP requests (http.client sends the target as given) -------------------


def fetch(
    daemon,
    target: str,
    method: str = "GET",
    headers: dict[str, str] | None = None,
    body: bytes | None = None,
    timeout: float = 10,
) -> Response:
    """One request on a fresh connection; ``target`` is a path like ``/api/v1/pipe/x?n=2``."""
    conn = http.client.HTTPConnection(daemon.host, daemon.port, timeout=timeout)
    try:
        conn.putrequest(method, target, skip_host="Host" in (headers or {}), skip_accept_encoding=True)
        for k, v in (headers or {}).items():
            conn.putheader(k, v)
        if body is not None:
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        answer = conn.getresponse()
        data = answer.read()
        return Response(answer.status, Headers(answer.getheaders()), data, complete=True)
    finally:
        conn.close()


def status(daemon, name: str) -> dict[str, Any]:
    answer = fetch(daemon, f"/api/v1/pipe/{name}?status")
    assert answer.status == 200, answer
    return json.loads(answer.body)


def wait_for(predicate: Callable[[], Any], timeout: float = 10, what: str = "condition", interval: float = 0.02) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def wait_status(daemon, name: str, timeout: float = 10, **expected: Any) -> dict[str, Any]:
    """Poll ``?status`` until every expected field has its value."""
    last: dict[str, Any] = {}

    def check():
        nonlocal last
        last = status(daemon, name)
        return last if all(last.get(k) == v for k, v in expected.items()) else None

    try:
        return wait_for(check, timeout, f"{name} to show {expected}")
    except AssertionError as error:
        raise AssertionError(f"{error}; last status: {last}") from None


# -- curl children ----------------------------------------------------------------------


class Curl:
    """A curl child whose stdout is drained by a thread (kept, or only hashed)."""

    def __init__(self, args: list[str], stdin: Any = subprocess.DEVNULL, keep: bool = True):
        self.args = [CURL, "-sS", "-N", *args]
        self.keep = keep
        self.proc = subprocess.Popen(self.args, stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        LIVE.append(self)
        self._chunks: list[bytes] = []
        self._hash = hashlib.sha256()
        self.nbytes = 0
        self.ended_at: float | None = None
        self.started_at = time.monotonic()
        self._err = b""
        self._readers = [
            threading.Thread(target=self._drain, daemon=True),
            threading.Thread(target=self._drain_err, daemon=True),
        ]
        for t in self._readers:
            t.start()

    def _drain(self) -> None:
        out = self.proc.stdout
        while True:
            data = out.read1(CHUNK)
            if not data:
                break
            self._hash.update(data)
            if self.keep:
                self._chunks.append(data)
            self.nbytes += len(data)
        self.ended_at = time.monotonic()
        out.close()

    def _drain_err(self) -> None:
        self._err = self.proc.stderr.read()
        self.proc.stderr.close()

    def wait(self, timeout: float = 30) -> int:
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"curl did not finish within {timeout}s: {self.args}") from None
        for t in self._readers:
            t.join(timeout)
        return rc

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def wait_bytes(self, count: int, timeout: float = 10) -> None:
        wait_for(lambda: self.nbytes >= count, timeout, f"{count} bytes at {self.args[-1]} (have {self.nbytes})", 0.005)

    @property
    def out(self) -> bytes:
        assert self.keep
        return b"".join(self._chunks)

    @property
    def lines(self) -> list[str]:
        return self.out.decode("utf-8", "replace").splitlines()

    @property
    def digest(self) -> str:
        return self._hash.hexdigest()

    @property
    def stderr(self) -> str:
        return self._err.decode("utf-8", "replace")

    @property
    def returncode(self) -> int | None:
        return self.proc.returncode


class Sender(Curl):
    """``curl -T -`` (chunked) fed from a pipe that the test controls."""

    def __init__(self, url: str, *args: str, data: bytes | None = None):
        super().__init__(["-T", "-", *args, url], stdin=subprocess.PIPE)
        self._writer: threading.Thread | None = None
        self.fed_at: float | None = None
        if data is not None:
            self.feed_async(data, close=True)

    def feed(self, data: bytes) -> None:
        view = memoryview(data)
        for i in range(0, len(view), CHUNK):
            self.proc.stdin.write(view[i : i + CHUNK])
        self.proc.stdin.flush()

    def feed_async(self, data: bytes | Callable[[], Any], close: bool = True) -> None:
        """Write ``data`` (or call a producer writing to ``self.proc.stdin``) in a thread."""

        def run():
            try:
                if callable(data):
                    data()
                else:
                    self.feed(data)
                if close:
                    self.proc.stdin.close()
            except (BrokenPipeError, ValueError, OSError):
                pass
            self.fed_at = time.monotonic()

        self._writer = threading.Thread(target=run, daemon=True)
        self._writer.start()

    def close_stdin(self) -> None:
        try:
            self.proc.stdin.close()
        except (BrokenPipeError, OSError):
            pass

    def join_writer(self, timeout: float = 30) -> None:
        if self._writer is not None:
            self._writer.join(timeout)
            assert not self._writer.is_alive(), "the sender's feeder is still writing"


def receiver(url: str, *args: str, keep: bool = True) -> Curl:
    return Curl([*args, url], keep=keep)


def kill_all() -> None:
    while LIVE:
        child = LIVE.pop()
        try:
            if isinstance(child, Sender):
                child.close_stdin()
            child.kill()
            for t in child._readers:
                t.join(5)
        except Exception:
            pass


@dataclass
class CurlResult:
    returncode: int
    status: int
    headers: list[tuple[str, str]]
    body: bytes
    stderr: str

    def header(self, name: str) -> str | None:
        values = [v for k, v in self.headers if k.lower() == name.lower()]
        return values[0] if values else None

    def has(self, name: str) -> bool:
        return self.header(name) is not None

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")


def parse_header_dump(raw: bytes) -> tuple[int, list[tuple[str, str]]]:
    """The last non-1xx header block of a ``curl -D`` dump: ``(0, [])`` when there is none."""
    final = last_final_head(raw)
    return (final.status, list(final.headers)) if final is not None else (0, [])


def run_curl(*args: str, input: bytes | None = None, timeout: float = 30, tmp: Path | None = None) -> CurlResult:
    """Run curl to the end, returning status, headers (of the final response) and body."""
    import tempfile

    with tempfile.TemporaryDirectory(dir=tmp) as d:
        dump = Path(d) / "headers"
        command = [CURL, "-sS", "-D", str(dump), *args]
        try:
            done = subprocess.run(command, input=input, capture_output=True, timeout=timeout, check=False)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"curl did not finish within {timeout}s: {command}") from None
        raw = dump.read_bytes() if dump.exists() else b""
    code, headers = parse_header_dump(raw)
    return CurlResult(done.returncode, code, headers, done.stdout, done.stderr.decode("utf-8", "replace"))


# -- raw sockets ---------------------------------------------------------------------------


RawResponse = Response


class RawConnection(Connection):
    """One TCP connection to the daemon, speaking HTTP/1.1 by hand (tests/support/httpwire.py)."""

    def __init__(self, daemon, timeout: float = 10):
        super().__init__(daemon.host, daemon.port, timeout)


def raw_request(daemon, data: bytes, timeout: float = 10) -> Response:
    with RawConnection(daemon, timeout) as conn:
        return conn.request(data)
