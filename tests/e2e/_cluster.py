"""A cluster on loopback for the tests and bench/cluster.py: Debian's redis-server
and haproxy, started here, and hoodypipe daemons (tests/conftest.py's start_daemon).

Nothing picks a port beforehand: Redis listens on a unix socket only (``port
0``); HAProxy's frontend is a socket bound to port 0 here and handed over as
``fd@N``; the daemons' ports come from their --port-file, and HAProxy learns
a restarted daemon's new port through its runtime API (``set server ...
addr``), as an operator would.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import Daemon, start_daemon

REPO = Path(__file__).resolve().parents[2]
RECIPE = REPO / "etc" / "haproxy-hoodypipe-cluster.cfg"
IN_CI = os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def need(tool: str, package: str) -> str:
    """The path of ``tool``; skip without it, or fail under CI."""
    path = shutil.which(tool) or next(
        (p for p in (f"/usr/sbin/{tool}", f"/sbin/{tool}", f"/usr/bin/{tool}") if os.access(p, os.X_OK)), None
    )
    if path:
        return path
    message = f"{tool} is not installed (Debian package {package})"
    if IN_CI:
        pytest.fail(f"{message}: .ci/run must install it")
    pytest.skip(message)


def wait_until(predicate, timeout: float, what: str, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def stop_process(process: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 20) -> int:
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


# -- Redis ----------------------------------------------------------------------------------------


class Redis:
    """redis-server on a unix socket in ``where``; its data is saved on a clean stop."""

    def __init__(self, where: Path) -> None:
        self.binary = need("redis-server", "redis-server")
        self.where = where
        self.socket = where / "redis.sock"
        self.log = where / "redis.log"
        self.process: subprocess.Popen | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"redis+unix://{self.socket}?db=0"

    def start(self) -> None:
        command = [
            self.binary, "--port", "0", "--unixsocket", str(self.socket), "--unixsocketperm", "700",
            "--dir", str(self.where), "--dbfilename", "dump.rdb", "--save", "3600 1", "--appendonly", "no",
            "--logfile", str(self.log), "--daemonize", "no",
        ]  # fmt: skip
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(self.ping, 15, "redis-server to answer on its socket")

    def ping(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            raise AssertionError(f"redis-server exited {self.process.returncode}:\n{self.log.read_text()[-2000:]}")
        try:
            return self.command("PING") == "PONG"
        except OSError:
            return False

    def command(self, *args: str) -> str | None:
        """One command over RESP; the reply as text (None for a null reply)."""
        payload = f"*{len(args)}\r\n" + "".join(f"${len(a.encode())}\r\n{a}\r\n" for a in args)
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(5)
            s.connect(str(self.socket))
            s.sendall(payload.encode())
            reply = b""
            while not _whole(reply):
                piece = s.recv(65536)
                if not piece:
                    raise OSError("Redis closed the connection")
                reply += piece
        if reply.startswith(b"$-1"):
            return None
        if reply.startswith(b"$"):
            return reply.split(b"\r\n", 1)[1][:-2].decode()
        if reply.startswith(b"-"):
            raise AssertionError(f"Redis said {reply!r}")
        return reply[1:-2].decode()

    def final(self, name: str) -> dict | None:
        text = self.command("GET", f"hoodypipe:final:{name}")
        return json.loads(text) if text is not None else None

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process)
            self.process = None


def _whole(reply: bytes) -> bool:
    """Whether ``reply`` is one complete RESP reply (simple, error, integer or bulk)."""
    head, sep, rest = reply.partition(b"\r\n")
    if not sep:
        return False
    if not head.startswith(b"$") or head == b"$-1":
        return True
    return len(rest) >= int(head[1:]) + 2


# -- HAProxy --------------------------------------------------------------------------------------


class HAProxy:
    """HAProxy running etc/haproxy-hoodypipe-cluster.cfg in front of ``ports``."""

    def __init__(self, where: Path, ports: list[int]) -> None:
        self.binary = need("haproxy", "haproxy")
        self.where = where
        self.admin_socket = where / "admin.sock"
        self.log = where / "haproxy.log"
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.bind(("127.0.0.1", 0))
        listener.listen(1024)
        self.port = listener.getsockname()[1]
        cfg = RECIPE.read_text()
        servers = "".join(f"    server node{i} 127.0.0.1:{port} id {i}\n" for i, port in enumerate(ports, 1))
        replacements = [
            (r"(?m)^(\s*)bind :80$", rf"\g<1>bind fd@{listener.fileno()}"),
            (r"(?m)^    server node1 .*\n    server node2 .*\n    server node3 .*\n", servers),
            (r"stats socket /run/haproxy/hoodypipe\.sock", f"stats socket {self.admin_socket}"),
            (r"log /dev/log local0", "log stderr format raw local0"),
            (r"(?m)^(\s*)maxconn 20000$", r"\g<1>maxconn 2000"),  # within any fd limit
        ]
        for pattern, replacement in replacements:
            cfg, count = re.subn(pattern, replacement, cfg)
            assert count == 1, f"{RECIPE.name} no longer has {pattern!r}"
        self.cfg = where / "haproxy.cfg"
        self.cfg.write_text(cfg)
        fds = [listener.fileno()]
        check = subprocess.run([self.binary, "-c", "-f", str(self.cfg)], pass_fds=fds, capture_output=True,
                               text=True, timeout=30, check=False)  # fmt: skip
        assert check.returncode == 0, check.stdout + check.stderr
        with open(self.log, "wb") as out:
            self.process = subprocess.Popen([self.binary, "-db", "-f", str(self.cfg)], cwd=where, stdout=out,
                                            stderr=subprocess.STDOUT, pass_fds=fds)  # fmt: skip
        listener.close()  # HAProxy holds its own copy; connections queue in its backlog meanwhile
        self.servers = [f"node{i}" for i in range(1, len(ports) + 1)]
        self.wait_states({name: "UP" for name in self.servers})

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def admin(self, command: str) -> str:
        wait_until(self.admin_socket.exists, 15, "HAProxy's runtime API")
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(5)
            s.connect(str(self.admin_socket))
            s.sendall(command.encode() + b"\n")
            out = b""
            while piece := s.recv(65536):
                out += piece
        return out.decode()

    def states(self) -> dict[str, str]:
        """Each server's status (UP, DOWN, MAINT, ...) from ``show stat``."""
        if self.process.poll() is not None:
            raise AssertionError(f"haproxy exited {self.process.returncode}:\n{self.log.read_text()[-3000:]}")
        lines = self.admin("show stat").splitlines()
        header = lines[0].lstrip("# ").split(",")
        rows = [dict(zip(header, line.split(","), strict=False)) for line in lines[1:] if line]
        return {
            r["svname"]: r["status"].split()[0]
            for r in rows
            if r["pxname"] == "hoodypipe" and r["svname"] in self.servers
        }

    def wait_states(self, expected: dict[str, str], timeout: float = 20) -> None:
        last: dict[str, str] = {}

        def check() -> bool:
            nonlocal last
            last = self.states()
            return all(last.get(k) == v for k, v in expected.items())

        try:
            wait_until(check, timeout, f"HAProxy to see {expected}")
        except AssertionError as error:
            raise AssertionError(f"{error}; it sees {last}") from None

    def move(self, server: str, port: int) -> None:
        """Point ``server`` at a daemon's new port (a restarted or replaced node)."""
        answer = self.admin(f"set server hoodypipe/{server} addr 127.0.0.1 port {port}")
        assert "changed" in answer or "no need to change" in answer, answer

    def stop(self) -> None:
        stop_process(self.process)
        text = self.log.read_text(errors="replace")
        assert "[ALERT]" not in text, text[-3000:]


# -- the cluster ------------------------------------------------------------------------------------


DAEMON_ARGS = ("--trusted-proxy", "127.0.0.1", "--wait-timeout", "30", "--idle-timeout", "30",
               "--progress-interval", "0.1")  # fmt: skip


@dataclass
class Cluster:
    """Redis, N daemons sharing it, HAProxy in front."""

    where: Path
    size: int = 3
    extra: tuple[str, ...] = ()
    redis: Redis = field(init=False)
    nodes: list[Daemon] = field(init=False)
    proxy: HAProxy = field(init=False)
    retired: list[Daemon] = field(default_factory=list)

    def __post_init__(self) -> None:
        (self.where / "redis").mkdir(parents=True)
        (self.where / "haproxy").mkdir(parents=True)
        self.redis = Redis(self.where / "redis")
        self.nodes = [self.start_node() for _ in range(self.size)]
        self.proxy = HAProxy(self.where / "haproxy", [node.port for node in self.nodes])

    def start_node(self) -> Daemon:
        return start_daemon("--store", self.redis.url, *DAEMON_ARGS, *self.extra)

    def url(self, name: str, query: str = "", prefix: bool = True) -> str:
        path = f"/api/v1/pipe/{name}" if prefix else f"/{name}"
        return self.proxy.base + path + (f"?{query}" if query else "")

    def owner(self, name: str) -> int:
        """The index of the node whose registry holds ``name`` now (asked directly)."""
        live = [i for i, node in enumerate(self.nodes) if node_state(node, name) in ("waiting", "streaming")]
        assert len(live) == 1, f"{name} is live on nodes {live}"
        return live[0]

    def restart(self, index: int, sig: int = signal.SIGTERM) -> Daemon:
        old = self.nodes[index]
        old.stop(sig)
        self.retired.append(old)
        new = self.start_node()
        self.nodes[index] = new
        self.proxy.move(self.proxy.servers[index], new.port)
        return new

    def close(self) -> list[str]:
        """Stop everything; the daemons' logs that show a traceback."""
        bad = []
        self.proxy.stop()
        for node in [*self.nodes, *self.retired]:
            node.stop()
            if "Traceback" in node.log_text():
                bad.append(node.log_text()[-4000:])
            shutil.rmtree(node.workdir, ignore_errors=True)
        self.redis.stop()
        return bad


def get_json(url: str, timeout: float = 10) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def node_state(node: Daemon, name: str) -> str:
    return get_json(node.url(name, "status"))[1]["state"]


def metric(node: Daemon, name: str) -> float:
    """The sum of a metric's samples on one node (/metrics)."""
    with urllib.request.urlopen(node.url("metrics"), timeout=10) as answer:
        text = answer.read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and not line.startswith("#"):
            total += float(line.rsplit(" ", 1)[1])
    return total
