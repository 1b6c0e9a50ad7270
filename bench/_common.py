"""Shared helpers for the hoodypipe benchmarks (stdlib only, loopback only).

The benchmarks run from the checkout (`python bench/x.py`): this module puts the
repository root on sys.path, once, so that they share tests/support/ (HTTP on
the wire, the fault harness, the fuzz grammar) with the tests.
"""

import os
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

HOST = "127.0.0.1"
BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(BENCH_DIR)
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from tests.support import httpwire  # noqa: E402

PIPE_PREFIX = "/api/v1/pipe/"
HEALTH_PATH = PIPE_PREFIX + "health"
MIB = 1 << 20


def default_twistd():
    """`twistd` next to the running interpreter (i.e. in the same venv)."""
    return os.path.join(os.path.dirname(sys.executable), "twistd")


def parse_size(text):
    """'1G' -> 1073741824, '256M' -> 268435456, '1000' -> 1000 (binary units)."""
    m = re.fullmatch(r"\s*(\d+)\s*([kmgt]?)i?b?\s*", text, re.IGNORECASE)
    if not m:
        raise ValueError("bad size: %r" % text)
    return int(m.group(1)) << (10 * "_kmgt".index(m.group(2).lower() or "_"))


def exit_on_sigterm():
    """Turn SIGTERM into SystemExit so `finally` blocks clean up children."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))


class Child:
    """A child process in its own process group, output sent to a log file.

    `port_file` is a path in a fresh directory where a child that binds port 0
    can say which port the kernel gave it (see `wait_port_file`).
    """

    def __init__(self, name, argv, **popen_kwargs):
        self.name = name
        self.workdir = tempfile.mkdtemp(prefix="hoodypipe-bench-%s-" % name)
        self.port_file = os.path.join(self.workdir, "port")
        argv = [self.port_file if a is PORT_FILE else a for a in argv]
        self.log = tempfile.NamedTemporaryFile(  # noqa: SIM115 (open as long as the child runs)
            prefix="hoodypipe-bench-%s-" % name, suffix=".log", delete=False
        )
        popen_kwargs.setdefault("stdin", subprocess.DEVNULL)
        popen_kwargs.setdefault("stdout", self.log)
        popen_kwargs.setdefault("stderr", self.log)
        try:
            self.proc = subprocess.Popen(argv, start_new_session=True, **popen_kwargs)
        except BaseException:
            self.log.close()
            os.unlink(self.log.name)
            shutil.rmtree(self.workdir, ignore_errors=True)
            raise
        self.pid = self.proc.pid

    def log_tail(self, nbytes=1000):
        with open(self.log.name, "rb") as f:
            f.seek(max(0, os.path.getsize(self.log.name) - nbytes))
            return f.read().decode(errors="replace")

    def stop(self):
        kill_group(self.proc)
        self.log.close()
        os.unlink(self.log.name)
        shutil.rmtree(self.workdir, ignore_errors=True)


# Stands for the child's port file in a Child's argv.
PORT_FILE = object()


def wait_port_file(child, timeout=15.0):
    """The port a child wrote to its port file ("HOST PORT" or "PORT" on the first
    line; written whole, then renamed into place); raise if it dies first."""
    deadline = time.monotonic() + timeout
    while not os.path.exists(child.port_file):
        if child.proc.poll() is not None:
            raise RuntimeError(
                "%s exited with %s before listening:\n%s" % (child.name, child.proc.returncode, child.log_tail())
            )
        if time.monotonic() > deadline:
            raise RuntimeError("%s wrote no port after %.0f s:\n%s" % (child.name, timeout, child.log_tail()))
        time.sleep(0.02)
    with open(child.port_file) as f:
        return int(f.readline().split()[-1])


def kill_group(proc, grace=3.0):
    """SIGTERM the process group of `proc`, SIGKILL it if still alive after `grace`."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        if proc.poll() is not None:
            break
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(wait)
        except subprocess.TimeoutExpired:
            pass
    # The leader may be gone while other group members linger.
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def http_status(port, path, timeout=1.0):
    request = httpwire.request("GET", path, {"Connection": "close"}, host="%s:%d" % (HOST, port))
    return httpwire.exchange(HOST, port, request, timeout).status


def wait_http_ok(child, port, path, timeout=15.0):
    """Poll GET path until it answers 200; raise if the child dies or time runs out."""
    deadline = time.monotonic() + timeout
    while True:
        if child.proc.poll() is not None:
            raise RuntimeError(
                "%s exited with %s before becoming ready:\n%s" % (child.name, child.proc.returncode, child.log_tail())
            )
        try:
            if http_status(port, path) == 200:
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(
                "%s not ready on port %d after %.0f s:\n%s" % (child.name, port, timeout, child.log_tail())
            )
        time.sleep(0.1)


def uncapped(n=4096):
    """Daemon options that lift every per-address and daemon-wide cap to ``n``:
    for scripts whose many clients all come from one address on purpose."""
    caps = ("max-connections-per-address", "max-waiting-per-address", "max-pending", "max-active", "max-watched-paths")
    return [arg for cap in caps for arg in ("--" + cap, str(n))]


def start_hoodypipe(twistd, extra_args=(), **popen_kwargs):
    """Start the hoodypipe daemon on a port the kernel chooses (it says which in
    its --port-file); returns (Child, port)."""
    child = Child(
        "hoodypipe",
        [
            twistd,
            "-n",
            "--pidfile=",
            "hoodypipe",
            "--listen",
            "tcp:0:interface=%s" % HOST,
            "--port-file",
            PORT_FILE,
            *extra_args,
        ],
        **popen_kwargs,
    )
    try:
        port = wait_port_file(child)
        wait_http_ok(child, port, HEALTH_PATH)
    except BaseException:
        child.stop()
        raise
    return child, port


def pipe_url(port, name):
    return "http://%s:%d%s%s" % (HOST, port, PIPE_PREFIX, name)


def rss_kib(pid):
    """Resident set size of `pid` in KiB, from /proc/PID/status."""
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS for pid %d" % pid)


def sample_rss(pid, count=5, interval=0.2):
    """Median of `count` RSS samples (KiB) taken `interval` seconds apart."""
    samples = []
    for i in range(count):
        if i:
            time.sleep(interval)
        samples.append(rss_kib(pid))
    return statistics.median(samples)


def cpu_seconds(pid):
    """CPU time (user + system, all threads) of `pid` in seconds, from /proc/PID/stat."""
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rpartition(")")[2].split()
    # fields[0] is field 3 (state); utime and stime are fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def raise_fd_limit(needed):
    """Raise RLIMIT_NOFILE (inherited by the daemon) to at least `needed`."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= needed:
        return
    if hard != resource.RLIM_INFINITY and hard < needed:
        hard = needed  # only works with privileges; the error says so
    resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


def generator_argv(nbytes):
    """Command writing `nbytes` of random data to stdout (see _gen.py)."""
    return [sys.executable, os.path.join(BENCH_DIR, "_gen.py"), str(nbytes)]


def wait_all(procs, timeout):
    """Wait for every process; kill the stragglers (and return False) on timeout."""
    deadline = time.monotonic() + timeout
    ok = True
    for p in procs:
        try:
            p.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            ok = False
            kill_group(p, grace=0.5)
    return ok


class TransferFailed(Exception):
    pass


def curl(argv, **popen_kwargs):
    return subprocess.Popen(
        ["curl", "-sS", *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True, **popen_kwargs
    )


def transfer(url, size, timeout, relay=True, receiver_args=()):
    """Stream `size` random bytes: _gen.py | curl -T - url (chunked PUT).

    With `relay`, a receiver `curl url` is started first and must get exactly
    `size` bytes.  Returns the wall time in seconds from starting the first
    curl (once the generator is ready) until all processes exited; raises
    TransferFailed otherwise.
    """
    procs = []
    receiver = None
    try:
        gen = subprocess.Popen(
            generator_argv(size),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        procs.append(gen)
        gen.stderr.readline()  # its start-up is not part of the measurement
        t0 = time.monotonic()
        if relay:
            receiver = curl([*receiver_args, url, "-o", "/dev/null", "-w", "%{http_code} %{size_download}"])
            procs.append(receiver)
        sender = curl(["-T", "-", url, "-o", "/dev/null", "-w", "%{http_code}"], stdin=gen.stdout)
        gen.stdout.close()  # only curl holds the pipe now
        procs.append(sender)
        finished = wait_all(procs, timeout)
        elapsed = time.monotonic() - t0
        if not finished:
            raise TransferFailed("timed out after %.0f s" % timeout)
        _check_curl("sender", sender, None)
        if receiver:
            _check_curl("receiver", receiver, size)
        if gen.returncode != 0:
            raise TransferFailed("generator exited %s" % gen.returncode)
        return elapsed
    finally:
        for p in procs:
            kill_group(p, grace=0.5)
            for stream in (p.stdout, p.stderr):
                if stream:
                    stream.close()


def _check_curl(role, proc, expected_size):
    out, err = proc.stdout.read().decode(), proc.stderr.read().decode().strip()
    fields = out.split()
    if proc.returncode != 0:
        raise TransferFailed("%s curl exited %d: %s" % (role, proc.returncode, err))
    if not fields or not fields[0].startswith("2"):
        raise TransferFailed("%s got HTTP %s" % (role, out))
    # Note: curl's %{size_upload} counts the chunk framing too, so only the
    # receiver's byte count is checked.
    if expected_size is not None and int(fields[1]) != expected_size:
        raise TransferFailed("%s got %s bytes, expected %d" % (role, fields[1], expected_size))


def argument_parser(doc):
    """An ArgumentParser whose --help shows a script's docstring: the first
    paragraph as the description, the rest as the epilog."""
    import argparse

    head, _, rest = doc.partition("\n\n")
    return argparse.ArgumentParser(description=head, epilog=rest, formatter_class=argparse.RawDescriptionHelpFormatter)
