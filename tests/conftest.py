"""Shared fixtures: a real daemon for end-to-end tests, and error hygiene."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

TWISTD = os.environ.get("HOODYPIPE_TWISTD") or str(Path(sys.executable).with_name("twistd"))


@dataclass
class Daemon:
    """A ``twistd -n hoodypipe`` child on 127.0.0.1, port chosen by the kernel."""

    process: subprocess.Popen
    host: str
    port: int
    log: Path
    workdir: Path
    args: list[str] = field(default_factory=list)

    @property
    def base(self) -> str:
        return f"http://{self.host}:{self.port}"

    def url(self, name: str, query: str = "") -> str:
        return f"{self.base}/api/v1/pipe/{name}" + (f"?{query}" if query else "")

    def rss(self) -> int:
        """Resident set size in bytes, from /proc."""
        with open(f"/proc/{self.process.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        raise RuntimeError("no VmRSS")

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process.stderr is not None and not self.process.stderr.closed:
            self.process.stderr.close()
        return self.process.returncode


def daemon_command(log: Path, port_file: Path, *args: str) -> list[str]:
    """``twistd -n hoodypipe`` on a kernel-chosen loopback port, announced in ``port_file``."""
    listen = ["--listen", "tcp:0:interface=127.0.0.1", "--port-file", str(port_file)]
    return [TWISTD, "-n", "--pidfile=", "--logfile", str(log), "hoodypipe", *listen, *args]


def start_daemon(*args: str, timeout: float = 20.0) -> Daemon:
    """Start the installed daemon and learn its port from its --port-file."""
    workdir = Path(tempfile.mkdtemp(prefix="hoodypipe-test-"))
    port_file = workdir / "port"
    log = workdir / "twistd.log"
    command = daemon_command(log, port_file, *args)
    process = subprocess.Popen(command, cwd=workdir, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + timeout
    while not port_file.exists():
        if process.poll() is not None:
            error = process.stderr.read().decode()
            process.stderr.close()
            raise RuntimeError(f"daemon exited {process.returncode}: {error}")
        if time.monotonic() > deadline:
            process.kill()
            raise RuntimeError("daemon did not start listening")
        time.sleep(0.02)
    host, port = port_file.read_text().split()[:2]
    daemon = Daemon(process, host, int(port), log, workdir, list(args))
    with urllib.request.urlopen(daemon.url("health"), timeout=10) as answer:
        assert answer.status == 200
    return daemon


def _stop_and_check(daemon: Daemon) -> None:
    daemon.stop()
    text = daemon.log_text()
    shutil.rmtree(daemon.workdir, ignore_errors=True)
    assert "Traceback" not in text, f"the daemon logged an error:\n{text[-4000:]}"


def _daemons() -> Iterator:
    """A factory of daemons; each is stopped, and its log checked, afterwards."""
    started: list[Daemon] = []

    def factory(*args: str) -> Daemon:
        started.append(start_daemon(*args))
        return started[-1]

    yield factory
    for daemon in started:
        _stop_and_check(daemon)


@pytest.fixture
def daemon_factory() -> Iterator:
    """Start daemons with options, for one test."""
    yield from _daemons()


@pytest.fixture(scope="module")
def module_daemon_factory() -> Iterator:
    """Start daemons with options, shared by a module's tests."""
    yield from _daemons()


@pytest.fixture(scope="module")
def daemon() -> Iterator[Daemon]:
    """One daemon with short timeouts shared by a module's tests."""
    daemon = start_daemon("--wait-timeout", "30", "--idle-timeout", "30")
    yield daemon
    _stop_and_check(daemon)


@pytest.fixture(autouse=True)
def _fail_on_logged_errors():
    """Fail any in-process test that logged an error through twisted.logger."""
    from twisted.logger import LogLevel, globalLogPublisher

    errors: list[dict] = []

    def observer(event: dict) -> None:
        if event.get("log_level") in (LogLevel.error, LogLevel.critical) or event.get("isError"):
            errors.append(event)

    globalLogPublisher.addObserver(observer)
    yield
    globalLogPublisher.removeObserver(observer)
    if errors:
        from twisted.logger import formatEvent

        pytest.fail("logged errors:\n" + "\n".join(formatEvent(e) + str(e.get("log_failure", "")) for e in errors))
