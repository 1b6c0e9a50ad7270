"""The deployment side, exercised against the installed daemon (issue 4, "Operations").

- TLS through an ``ssl:`` endpoint (self-signed certificate): transfers and an SSE watch over https;
- a ``unix:`` endpoint, driven with ``curl --unix-socket``;
- the ``--port-file``: one line per listening endpoint;
- systemd socket activation with ``systemd-socket-activate`` and the very ``ExecStart=`` of
  etc/hoodypipe.service; the units checked by ``systemd-analyze``; the unit's
  ``MemoryDenyWriteExecute=yes`` reproduced with ``PR_SET_MDWE``;
- a real nginx with etc/nginx-hoodypipe-proxy.conf (and the whole etc/nginx.conf site) and a
  real HAProxy with etc/haproxy.cfg in front: a 64 MiB transfer that streams, and an SSE watch
  whose ``progress`` events arrive live.

A tool that is missing skips its tests on a developer machine and fails them under ``CI=true``.
Ports are the kernel's choice, never picked beforehand: the daemon binds port 0 and says which
in its ``--port-file``; nginx and HAProxy inherit a socket bound to port 0 (``NGINX=fd;``, ``bind
fd@N``). Only the socket activator must be told a port number (see the comment there).
"""

from __future__ import annotations

import http.client
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from ..conftest import TWISTD, Daemon, daemon_command
from ._helpers import Sender, deterministic_bytes, receiver, sha256, status, unique, wait_for, wait_status
from ._sidechannel import CurlSSE, is_kind

REPO = Path(__file__).resolve().parents[2]
ETC = REPO / "etc"
IN_CI = os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")
MIB = 1 << 20

# Why an upload through nginx stalls with a daemon that answers senders at once.
NGINX_STALL = (
    "nginx stops forwarding a request body to the upstream once the upstream's response "
    "has begun (ngx_http_upstream_send_request_handler: header_sent && !preserve_output); "
    "the daemon must hold the sender's status lines while X-Pipe-Defer-Response is set "
    "(etc/nginx-hoodypipe-proxy.conf sets it)"
)


# -- tools -----------------------------------------------------------------------------------------


def need(tool: str, package: str) -> str:
    """The path of ``tool``; skip without it, or fail under CI."""
    path = shutil.which(tool) or next(
        (p for p in (f"/usr/sbin/{tool}", f"/sbin/{tool}") if os.access(p, os.X_OK)), None
    )
    if path:
        return path
    message = f"{tool} is not installed (Debian package {package})"
    if IN_CI:
        pytest.fail(f"{message}: .ci/run must install it")
    pytest.skip(message)


def listening_socket(host: str = "127.0.0.1") -> socket.socket:
    """A socket listening on a port the kernel chose, for a proxy to inherit (pass_fds)."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, 0))
    sock.listen(511)
    return sock


def port_of(sock: socket.socket) -> int:
    return sock.getsockname()[1]


def wait_answering(
    port: int, process: subprocess.Popen, what: str, log: Path | None = None, timeout: float = 15
) -> None:
    """Until a request to ``port`` gets an answer, any answer: an inherited socket listens (and
    queues connections) before the server that holds it reads them."""
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            text = log.read_text(errors="replace")[-3000:] if log and log.exists() else ""
            raise AssertionError(f"{what} exited {process.returncode} before serving:\n{text}")
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
        try:
            conn.request("GET", "/api/v1/pipe/health")
            conn.getresponse().read()
            return
        except (OSError, http.client.HTTPException):
            if time.monotonic() > deadline:
                raise AssertionError(f"{what} does not answer on port {port} after {timeout}s") from None
            time.sleep(0.05)
        finally:
            conn.close()


def ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


def stop(process: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 20) -> int:
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


def unit_values(path: Path, key: str) -> list[str]:
    """Every value of ``key=`` in a systemd unit file (comments skipped)."""
    values = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if line.startswith(("#", ";")) or "=" not in line:
            continue
        name, _, value = line.partition("=")
        if name.strip() == key:
            values.append(value.strip())
    return values


# -- daemons that read every line of the --port-file ---------------------------------------------------


def read_port_file(path: Path) -> list[tuple[str, str]]:
    """One ``(host, port-or-path)`` per listening endpoint, in --listen order."""
    lines = []
    for line in path.read_text().splitlines():
        host, _, rest = line.partition(" ")
        lines.append((host, rest))
    return lines


class Launcher:
    """Starts ``twistd -n hoodypipe`` children (optionally under a wrapper); checks their logs at the end.

    Like tests/conftest.py's start_daemon, with the extra endpoints' lines of the port file kept.
    """

    def __init__(self) -> None:
        self.started: list[Daemon] = []

    def __call__(
        self, *args: str, prefix: tuple[str, ...] = (), timeout: float = 30
    ) -> tuple[Daemon, list[tuple[str, str]]]:
        workdir = Path(tempfile.mkdtemp(prefix="hoodypipe-deploy-"))
        port_file = workdir / "port"
        log = workdir / "twistd.log"
        command = [*prefix, *daemon_command(log, port_file, *args)]
        with open(workdir / "stderr", "wb") as errors:
            process = subprocess.Popen(command, cwd=workdir, stdout=subprocess.DEVNULL, stderr=errors)
        daemon = Daemon(process, "127.0.0.1", 0, log, workdir, list(args))
        self.started.append(daemon)
        deadline = time.monotonic() + timeout
        while not port_file.exists():
            if process.poll() is not None:
                raise AssertionError(
                    f"daemon exited {process.returncode}: {(workdir / 'stderr').read_text(errors='replace')}"
                    f"\n{log.read_text(errors='replace') if log.exists() else ''}"
                )
            if time.monotonic() > deadline:
                raise AssertionError("daemon did not start listening")
            time.sleep(0.02)
        lines = read_port_file(port_file)
        daemon.host, daemon.port = lines[0][0], int(lines[0][1])
        with urllib.request.urlopen(daemon.url("health"), timeout=10) as answer:
            assert answer.status == 200
        return daemon, lines

    def close(self) -> None:
        problems = []
        for daemon in self.started:
            daemon.stop()
            text = daemon.log_text() if daemon.log.exists() else ""
            shutil.rmtree(daemon.workdir, ignore_errors=True)
            if "Traceback" in text:
                problems.append(text[-4000:])
        assert not problems, "a daemon logged an error:\n" + "\n".join(problems)


@pytest.fixture
def launcher() -> Iterator[Launcher]:
    launch = Launcher()
    yield launch
    launch.close()


@pytest.fixture(scope="module")
def module_launcher() -> Iterator[Launcher]:
    launch = Launcher()
    yield launch
    launch.close()


# -- a self-signed certificate ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_cert(tmp_path_factory) -> tuple[str, str]:
    """(key, cert) PEM files for CN=localhost, SAN localhost and 127.0.0.1."""
    where = tmp_path_factory.mktemp("tls")
    key, cert = where / "key.pem", where / "cert.pem"
    openssl = shutil.which("openssl")
    if openssl:
        subprocess.run(
            [
                openssl,
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                str(key),
                "-out",
                str(cert),
                "-days",
                "2",
                "-subj",
                "/CN=localhost",
                "-addext",
                "subjectAltName=DNS:localhost,IP:127.0.0.1",
            ],
            check=True,
            capture_output=True,
            timeout=60,
        )
    else:  # twisted[tls] brings cryptography
        import datetime
        import ipaddress

        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import rsa
        from cryptography.x509.oid import NameOID

        private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
        now = datetime.datetime.now(datetime.UTC)
        certificate = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(private.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(
                x509.SubjectAlternativeName(
                    [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
                ),
                critical=False,
            )
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(private, hashes.SHA256())
        )
        key.write_bytes(
            private.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
            )
        )
        cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    return str(key), str(cert)


# -- transfers ------------------------------------------------------------------------------------------


def transfer(
    send_url: str,
    receive_url: str,
    data: bytes,
    send_args: tuple[str, ...] = (),
    receive_args: tuple[str, ...] = (),
    timeout: float = 30,
    what: str = "",
) -> list[str]:
    """Receiver first, then ``curl -T -``: bytes intact, both curls clean; the sender's lines."""
    got = receiver(receive_url, *receive_args, keep=False)
    sender = Sender(send_url, *send_args, data=data)
    assert sender.wait(timeout) == 0, f"{what} sender: {sender.stderr}"
    assert got.wait(timeout) == 0, f"{what} receiver: {got.stderr}"
    assert got.nbytes == len(data), f"{what}: {got.nbytes} of {len(data)} bytes"
    assert got.digest == sha256(data), f"{what}: corrupted"
    assert sender.lines[-1] == "[INFO] Transfer complete.", (what, sender.lines)
    return sender.lines


def paced(sender: Sender, data: bytes, pieces: int, gap: float) -> None:
    """Feed ``data`` to a curl sender in ``pieces`` steps, ``gap`` seconds apart, then close."""

    def run() -> None:
        step = -(-len(data) // pieces)
        for start in range(0, len(data), step):
            sender.proc.stdin.write(data[start : start + step])
            sender.proc.stdin.flush()
            time.sleep(gap)

    sender.feed_async(run, close=True)


def watch_live_transfer(
    spectator_url: str,
    receive_url: str,
    send_url: str,
    *,
    spectator_args=(),
    receive_args=(),
    send_args=(),
    pieces: int = 10,
    gap: float = 0.2,
) -> None:
    """A spectator on ``?progress``, then a paced transfer: ``progress`` events arrive while the
    sender is still sending (not in one burst at the end), then ``done``."""
    data = deterministic_bytes(pieces * 128 * 1024, seed=7)
    sse = CurlSSE(spectator_url, "text/event-stream", *spectator_args)
    sse.wait_for(is_kind("state"), what="the first state event")
    got = receiver(receive_url, *receive_args, keep=False)
    sender = Sender(send_url, *send_args)
    paced(sender, data, pieces, gap)
    done = sse.wait_for(is_kind("done"), timeout=30, what="done")
    assert sender.wait(30) == 0, sender.stderr
    assert got.wait(30) == 0, got.stderr
    assert got.digest == sha256(data)
    sse.kill()
    assert done.data["state"] == "complete" and done.data["bytes"] == len(data), done.data
    fed_at = sender.fed_at
    assert fed_at is not None
    progress = sse.named("progress")
    live = [e for e in progress if e.at < fed_at]
    assert len(live) >= 3, (
        f"only {len(live)} progress events arrived while the sender was sending "
        f"({len(progress)} in all): the stream is buffered\n{sse.describe()}"
    )
    assert live[-1].at - live[0].at >= 0.3, f"progress events came in one burst:\n{sse.describe()}"
    counts = [e.data["bytes"] for e in progress]
    assert counts == sorted(counts) and counts[0] < len(data), counts
    assert done.at >= progress[-1].at


def streamed_transfer(
    send_url: str,
    receive_url: str,
    *,
    size: int = 64 * MIB,
    daemon: Daemon,
    name: str,
    stall_hint: str = "",
    timeout: float = 40,
) -> None:
    """A ``size`` transfer, receiver first; the receiver must hold a good share of the bytes
    while the sender still has half of them to send (nothing spools the whole body)."""
    data = deterministic_bytes(size, seed=11)
    half = size // 2
    got = receiver(receive_url, keep=False)
    wait_status(daemon, name, state="waiting", activeReceivers=1)
    sender = Sender(send_url)
    gate = threading.Event()

    def feed() -> None:
        view = memoryview(data)
        for start in range(0, half, MIB):
            sender.proc.stdin.write(view[start : start + MIB])
        sender.proc.stdin.flush()
        gate.wait(60)
        for start in range(half, size, MIB):
            sender.proc.stdin.write(view[start : start + MIB])

    sender.feed_async(feed, close=True)
    try:
        try:
            got.wait_bytes(4 * MIB, timeout=20)
        except AssertionError as error:
            raise AssertionError(
                f"the receiver got {got.nbytes} bytes while the sender held back half of "
                f"{size}: the upload or the download is buffered ({error})"
            ) from None
        assert sender.proc.poll() is None and sender.fed_at is None, "the sender finished early"
    finally:
        gate.set()
    deadline = time.monotonic() + timeout
    while got.proc.poll() is None or sender.proc.poll() is None:
        if time.monotonic() > deadline:
            snapshot = status(daemon, name)
            raise AssertionError(
                f"the transfer stalled at {got.nbytes} of {size} bytes (daemon: {snapshot['state']}, "
                f"{snapshot['bytes']} bytes, {snapshot.get('reason')}). {stall_hint}"
            )
        time.sleep(0.05)
    assert got.wait(5) == 0 and got.nbytes == size, (
        f"the receiver got {got.nbytes} of {size} bytes: {got.stderr.strip()} "
        f"(daemon: {status(daemon, name)}). {stall_hint}"
    )
    assert got.digest == sha256(data), "corrupted"
    assert sender.wait(5) == 0, sender.stderr
    assert sender.lines[-2:] == ["[INFO] Upload complete.", "[INFO] Transfer complete."], sender.lines


# -- TLS, unix socket and the port file ------------------------------------------------------------------


@pytest.fixture(scope="module")
def endpoints(module_launcher, tls_cert):
    """One daemon on tcp, ssl and unix endpoints (all on port 0 or a fresh path)."""
    key, cert = tls_cert
    sock = Path(tempfile.mkdtemp(prefix="hp-unix-")) / "hoodypipe.sock"
    daemon, lines = module_launcher(
        "--listen",
        f"ssl:0:interface=127.0.0.1:privateKey={key}:certKey={cert}",
        "--listen",
        f"unix:{sock}",
        "--progress-interval",
        "0.05",
        "--wait-timeout",
        "30",
        "--idle-timeout",
        "30",
    )
    yield daemon, lines, sock, cert
    shutil.rmtree(sock.parent, ignore_errors=True)


def test_port_file_has_a_line_per_endpoint(endpoints):
    daemon, lines, sock, _ = endpoints
    assert len(lines) == 3, lines
    assert lines[0] == ("127.0.0.1", str(daemon.port))
    assert lines[1][0] == "127.0.0.1" and lines[1][1].isdigit() and int(lines[1][1]) not in (0, daemon.port), lines
    # A script must be able to use the unix line as it is: the path, not a bytes repr.
    assert lines[2][1].split()[-1] == str(sock), f"unix endpoint line: {lines[2]!r}"


def test_tls_transfers(endpoints):
    daemon, lines, _, cert = endpoints
    tls = f"https://localhost:{lines[1][1]}/api/v1/pipe"
    plain = f"{daemon.base}/api/v1/pipe"
    verify = ("--cacert", cert)  # the certificate is checked, host name included
    data = deterministic_bytes(16 * MIB, seed=3)
    name = unique("tls")
    transfer(f"{tls}/{name}", f"{tls}/{name}", data, verify, verify, what="https -> https")
    small = data[: 2 * MIB]
    name = unique("tls")
    transfer(f"{tls}/{name}", f"{plain}/{name}", small, verify, (), what="https -> http")
    name = unique("tls")
    transfer(f"{plain}/{name}", f"{tls}/{name}", small, (), verify, what="http -> https")
    # The help page's examples name the URL the client used, scheme included.
    help_text = subprocess.run(
        ["curl", "-sS", *verify, f"https://localhost:{lines[1][1]}/help"], capture_output=True, timeout=10, check=False
    ).stdout.decode()
    assert f"https://localhost:{lines[1][1]}/" in help_text, help_text[:500]


def test_tls_sse_watch(endpoints):
    _, lines, _, cert = endpoints
    tls = f"https://localhost:{lines[1][1]}/api/v1/pipe"
    name = unique("tls-sse")
    verify = ("--cacert", cert)
    watch_live_transfer(
        f"{tls}/{name}?progress",
        f"{tls}/{name}",
        f"{tls}/{name}",
        spectator_args=verify,
        receive_args=verify,
        send_args=verify,
    )


def test_unix_socket(endpoints):
    daemon, _, sock, _ = endpoints
    via = ("--unix-socket", str(sock))
    base = "http://localhost/api/v1/pipe"
    data = deterministic_bytes(16 * MIB, seed=5)
    name = unique("unix")
    transfer(f"{base}/{name}", f"{base}/{name}", data, via, via, what="unix -> unix")
    name = unique("unix")
    transfer(f"{base}/{name}", f"{daemon.base}/api/v1/pipe/{name}", data[:MIB], via, (), what="unix -> tcp")
    answer = subprocess.run(
        ["curl", "-sS", *via, "http://localhost/api/v1/pipe/health"], capture_output=True, timeout=10, check=False
    )
    assert b'"status":"ok"' in answer.stdout, answer


# -- systemd -----------------------------------------------------------------------------------------------


def test_systemd_socket_activation(tmp_path):
    """The unit's own ExecStart= arguments, handed a socket the way systemd hands it."""
    activate = need("systemd-socket-activate", "systemd")
    unit = ETC / "hoodypipe.service"
    (exec_start,) = unit_values(unit, "ExecStart")
    argv = shlex.split(exec_start)
    assert argv[0] == "/opt/hoodypipe/bin/twistd", argv
    assert "systemd:domain=INET6:index=0" in argv, argv
    (fdname,) = unit_values(ETC / "hoodypipe.socket", "FileDescriptorName")
    if ipv6_loopback():  # ListenStream=8080 is a dual-stack IPv6 socket: the unit's domain=INET6
        host, args = "::1", argv[1:]
    else:
        host, args = "127.0.0.1", [a.replace("domain=INET6", "domain=INET") for a in argv[1:]]
    # The activator must be told a port number (it refuses port 0) and cannot be handed a
    # socket, so this one port is picked by binding port 0 and letting it go: another process
    # could take it in between, and then the activator fails to listen and the test fails.
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        port = probe.getsockname()[1]
    bracketed = f"[{host}]" if ":" in host else host
    journal = tmp_path / "journal"  # twistd -n logs to stdout, which systemd hands to the journal
    with open(journal, "wb") as out:
        # Real systemd always sets LISTEN_FDNAMES (FileDescriptorName=); the activator only with
        # --fdname, and without it Twisted's systemd: endpoint sees no descriptor at all.
        process = subprocess.Popen(
            [activate, "-l", f"{bracketed}:{port}", f"--fdname={fdname}", TWISTD, *args],
            cwd=tmp_path,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for(
            lambda: b"Listening on" in journal.read_bytes() or process.poll() is not None, 10, "the activator to listen"
        )
        # The first connection starts the daemon, which adopts the socket and answers it.
        conn = http.client.HTTPConnection(host, port, timeout=30)
        try:
            conn.request("GET", "/api/v1/pipe/health")
            answer = conn.getresponse()
            assert answer.status == 200 and b'"ok"' in answer.read()
        finally:
            conn.close()
        base = f"http://{bracketed}:{port}/api/v1/pipe"
        name = unique("sd")
        transfer(
            f"{base}/{name}",
            f"{base}/{name}",
            deterministic_bytes(8 * MIB, seed=9),
            ("-g",),
            ("-g",),
            what="socket-activated",
        )
    finally:
        code = stop(process)
    text = journal.read_text(errors="replace")
    assert "hoodypipe listening on" in text and "transfer complete" in text, text[-3000:]
    assert "Traceback" not in text, text[-4000:]
    # twistd ends a SIGTERM stop by re-raising the signal: systemd counts it clean (no restart).
    assert code == -signal.SIGTERM, (code, text[-2000:])


def test_systemd_endpoint_without_a_socket_is_a_usage_error(tmp_path):
    """hoodypipe.service started without its socket: a clear usage error, not a traceback."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LISTEN_")}
    done = subprocess.run(
        [TWISTD, "-n", "--pidfile=", "hoodypipe", "--listen", "systemd:domain=INET6:index=0"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    output = done.stdout + done.stderr
    assert done.returncode != 0, output[-2000:]
    assert "Traceback" not in output and "invalid --listen endpoint" in output, output[-600:]


def test_systemd_units_verify(tmp_path):
    analyze = need("systemd-analyze", "systemd")
    service = (ETC / "hoodypipe.service").read_text()
    (tmp_path / "hoodypipe.service").write_text(service.replace("/opt/hoodypipe/bin/twistd", TWISTD))
    shutil.copy(ETC / "hoodypipe.socket", tmp_path / "hoodypipe.socket")
    done = subprocess.run(
        [analyze, "verify", "--man=no", "./hoodypipe.socket", "./hoodypipe.service"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    complaints = [line for line in (done.stdout + done.stderr).splitlines() if "hoodypipe." in line]
    assert done.returncode == 0 and not complaints, done.stdout + done.stderr
    security = subprocess.run(
        [analyze, "security", "--offline=true", "--no-pager", "./hoodypipe.service"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    found = re.search(r"Overall exposure level for hoodypipe\.service: ([\d.]+)", security.stdout)
    if security.returncode == 0 and found:
        assert float(found.group(1)) <= 2.0, security.stdout[-3000:]

    # The stop timeout outlasts the drain the daemon does on SIGTERM.
    from hoodypipe.service import FLUSH_SECONDS
    from hoodypipe.tap import Options

    (stop_after,) = unit_values(ETC / "hoodypipe.service", "TimeoutStopSec")
    assert float(stop_after) > Options()["drain-timeout"] + FLUSH_SECONDS + 10
    assert unit_values(ETC / "hoodypipe.socket", "ListenStream") == ["8080"]


MDWE_WRAPPER = """
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
if libc.prctl(65, 1, 0, 0, 0) != 0:  # PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN (Linux 6.3+)
    sys.exit("PR_SET_MDWE: " + os.strerror(ctypes.get_errno()))
if len(sys.argv) > 1:
    os.execv(sys.argv[1], sys.argv[1:])
"""


def test_memory_deny_write_execute(launcher, tmp_path):
    """MemoryDenyWriteExecute=yes (the unit's) holds for plain HTTP: a transfer and an SSE watch
    under the kernel's equivalent, PR_SET_MDWE, inherited across exec."""
    # The wrapper sets the flag, then execs; the flag must survive the exec (PR_GET_MDWE is 66).
    probe = subprocess.run(
        [
            sys.executable,
            "-c",
            MDWE_WRAPPER,
            sys.executable,
            "-c",
            "import ctypes; print(ctypes.CDLL(None).prctl(66, 0, 0, 0, 0))",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    if probe.returncode != 0:
        pytest.skip(f"this kernel cannot refuse W+X memory per process ({probe.stderr.strip()})")
    assert probe.stdout.strip() == "1", probe
    sock = Path(tempfile.mkdtemp(prefix="hp-mdwe-")) / "s.sock"
    try:
        daemon, _ = launcher(
            "--listen", f"unix:{sock}", "--progress-interval", "0.05", prefix=(sys.executable, "-c", MDWE_WRAPPER)
        )
        name = unique("mdwe")
        transfer(daemon.url(name), daemon.url(name), deterministic_bytes(8 * MIB, seed=13), what="under MDWE")
        name = unique("mdwe")
        watch_live_transfer(daemon.url(name, "progress"), daemon.url(name), daemon.url(name))
        name = unique("mdwe")
        via = ("--unix-socket", str(sock))
        transfer(f"http://localhost/{name}", daemon.url(name), deterministic_bytes(MIB), via, (), what="unix, MDWE")
    finally:
        shutil.rmtree(sock.parent, ignore_errors=True)


# -- behind nginx ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def proxied(module_launcher):
    """One daemon shared by the proxy tests, trusting them as the recipes say; short idle timeout
    so a stall fails fast."""
    daemon, _ = module_launcher(
        "--progress-interval", "0.05", "--wait-timeout", "30", "--idle-timeout", "10", "--trusted-proxy", "127.0.0.1"
    )
    return daemon


class Nginx:
    """nginx on ``sockets`` (bound to port 0 here): it takes the ones its ``listen`` lines name
    from the ``NGINX`` variable, its own way of inheriting sockets across an upgrade."""

    def __init__(self, binary: str, conf_text: str, where: Path, sockets: list[socket.socket]) -> None:
        self.where = where
        self.conf = where / "nginx.conf"
        self.error_log = where / "error.log"
        self.conf.write_text(conf_text)
        fds = [s.fileno() for s in sockets]
        with open(where / "stderr", "wb") as errors:
            self.process = subprocess.Popen(
                [binary, "-c", str(self.conf), "-p", str(where), "-e", str(self.error_log)],
                cwd=where,
                stdout=subprocess.DEVNULL,
                stderr=errors,
                pass_fds=fds,
                env={**os.environ, "NGINX": "".join(f"{fd};" for fd in fds)},
            )
        for sock in sockets:
            port = port_of(sock)
            sock.close()  # nginx holds it now
            wait_answering(port, self.process, "nginx", self.error_log)

    def close(self) -> None:
        stop(self.process)
        text = self.error_log.read_text(errors="replace") if self.error_log.exists() else ""
        bad = [line for line in text.splitlines() if "[emerg]" in line or "[crit]" in line]
        assert not bad, "\n".join(bad)


def nginx_main(where: Path, http_body: str) -> str:
    """A minimal main configuration around ``http_body``, every path in ``where``."""
    temps = "\n".join(
        f"    {kind}_temp_path {where}/{kind}_temp;" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    user = "user root;\n" if os.geteuid() == 0 else ""
    return (
        f"daemon off;\n{user}worker_processes 1;\npid {where}/nginx.pid;\nerror_log {where}/error.log info;\n"
        f"events {{ worker_connections 512; }}\n"
        f"http {{\n    access_log off;\n{temps}\n{http_body}\n}}\n"
    )


@pytest.fixture(scope="module")
def nginx(proxied, tmp_path_factory) -> Iterator[str]:
    """nginx on a loopback port, proxying through etc/nginx-hoodypipe-proxy.conf."""
    binary = need("nginx", "nginx-light")
    where = tmp_path_factory.mktemp("nginx")
    sock = listening_socket()
    port = port_of(sock)
    body = f"""
    upstream hoodypipe {{ server 127.0.0.1:{proxied.port}; keepalive 8; }}
    server {{
        listen 127.0.0.1:{port};
        location / {{ include {ETC}/nginx-hoodypipe-proxy.conf; }}
    }}"""
    server = Nginx(binary, nginx_main(where, body), where, [sock])
    yield f"http://127.0.0.1:{port}"
    server.close()


def test_nginx_streams_a_64_mib_transfer(proxied, nginx):
    name = unique("nginx")
    url = f"{nginx}/api/v1/pipe/{name}"
    streamed_transfer(url, url, daemon=proxied, name=name, stall_hint=NGINX_STALL)


def test_nginx_sse_is_live(proxied, nginx):
    # The sender goes straight to the daemon: this test is about the download side of nginx.
    name = unique("nginx-sse")
    url = f"{nginx}/api/v1/pipe/{name}"
    watch_live_transfer(f"{url}?progress", url, proxied.url(name))


def test_nginx_site_recipe(proxied, tls_cert, tmp_path):
    """etc/nginx.conf as shipped (addresses and paths rewritten): TLS, redirect, a transfer, Host."""
    binary = need("nginx", "nginx-light")
    key, cert = tls_cert
    sockets = [listening_socket(), listening_socket()]
    http_port, https_port = (port_of(s) for s in sockets)
    site = (ETC / "nginx.conf").read_text()
    replacements = [
        (r"include /etc/nginx/snippets/hoodypipe-proxy\.conf;", f"include {ETC}/nginx-hoodypipe-proxy.conf;"),
        (r"server 127\.0\.0\.1:8080;", f"server 127.0.0.1:{proxied.port};"),
        (r"ssl_certificate\s+/\S+;", f"ssl_certificate {cert};"),
        (r"ssl_certificate_key\s+/\S+;", f"ssl_certificate_key {key};"),
        (r"access_log /\S+;", f"access_log {tmp_path}/access.log;"),
        (r"listen \[::\]:\d+( ssl)?;\n", ""),
        (r"listen 80;", f"listen 127.0.0.1:{http_port};"),
        (r"listen 443 ssl;", f"listen 127.0.0.1:{https_port} ssl;"),
    ]
    for pattern, replacement in replacements:
        site, count = re.subn(pattern, replacement, site)
        assert count, f"etc/nginx.conf no longer has {pattern!r}"
    server = Nginx(binary, nginx_main(tmp_path, site), tmp_path, sockets)
    try:
        redirect = subprocess.run(
            ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code} %{redirect_url}", f"http://127.0.0.1:{http_port}/x"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
        assert redirect.stdout.startswith("308 https://127.0.0.1/x"), redirect
        base = f"https://localhost:{https_port}"
        verify = ("--cacert", cert)
        name = unique("site")
        data = deterministic_bytes(4 * MIB, seed=17)
        try:
            transfer(f"{base}/{name}", f"{base}/{name}", data, verify, verify, timeout=20, what="nginx site")
        except AssertionError as error:
            raise AssertionError(f"{error}\n(daemon: {status(proxied, name)}) {NGINX_STALL}") from None
        # Host with its port reaches the daemon ($http_host), and X-Forwarded-Proto from a trusted
        # proxy: /help names the proxy's address, https included.
        help_text = subprocess.run(
            ["curl", "-sS", *verify, f"{base}/help"], capture_output=True, timeout=10, check=False
        ).stdout.decode()
        assert f"https://localhost:{https_port}/" in help_text, help_text[:500]
    finally:
        server.close()


# -- behind HAProxy ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def haproxy(proxied, tmp_path_factory) -> Iterator[str]:
    """HAProxy with etc/haproxy.cfg, its bind and server rewritten to loopback test ports."""
    binary = need("haproxy", "haproxy")
    where = tmp_path_factory.mktemp("haproxy")
    check = subprocess.run(
        [binary, "-c", "-f", str(ETC / "haproxy.cfg")], capture_output=True, text=True, timeout=30, check=False
    )
    assert check.returncode == 0, check.stdout + check.stderr
    sock = listening_socket()  # HAProxy inherits it: "bind fd@N"
    port = port_of(sock)
    cfg = (ETC / "haproxy.cfg").read_text()
    replacements = [
        (r"(?m)^(\s*)bind :80$", rf"\g<1>bind fd@{sock.fileno()}"),
        (r"server hoodypipe1 127\.0\.0\.1:8080", f"server hoodypipe1 127.0.0.1:{proxied.port}"),
        (r"log /dev/log", "log stderr"),
        (r"(?m)^(\s*)maxconn \d+$", r"\g<1>maxconn 1000"),  # global: within any fd limit
    ]
    for pattern, replacement in replacements:
        cfg, count = re.subn(pattern, replacement, cfg)
        assert count, f"etc/haproxy.cfg no longer has {pattern!r}"
    (where / "haproxy.cfg").write_text(cfg)
    log = where / "haproxy.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [binary, "-db", "-f", str(where / "haproxy.cfg")],
            cwd=where,
            stdout=out,
            stderr=subprocess.STDOUT,
            pass_fds=[sock.fileno()],
        )
    sock.close()  # HAProxy holds it now
    wait_answering(port, process, "haproxy", log)
    yield f"http://127.0.0.1:{port}"
    stop(process)
    text = log.read_text(errors="replace")
    assert "[ALERT]" not in text, text[-3000:]


def test_haproxy_streams_a_64_mib_transfer(proxied, haproxy):
    name = unique("haproxy")
    url = f"{haproxy}/api/v1/pipe/{name}"
    streamed_transfer(url, url, daemon=proxied, name=name)


def test_haproxy_sse_is_live(proxied, haproxy):
    name = unique("haproxy-sse")
    url = f"{haproxy}/api/v1/pipe/{name}"
    watch_live_transfer(f"{url}?progress", url, url)


def test_haproxy_sender_with_a_slow_first_byte(proxied, haproxy):
    """The Expect work-around in etc/haproxy.cfg (wait-for-body) must not turn away a sender
    whose producer is silent for a while."""
    name = unique("haproxy-slow")
    url = f"{haproxy}/api/v1/pipe/{name}"
    sender = Sender(url)

    def late() -> None:
        time.sleep(1.5)
        sender.proc.stdin.write(b"hello\n")

    sender.feed_async(late, close=True)
    got = receiver(url)
    assert sender.wait(30) == 0, sender.stderr
    assert got.wait(30) == 0 and got.out == b"hello\n", (got.out, got.stderr)
    assert sender.lines[-1] == "[INFO] Transfer complete.", sender.lines
