#!/usr/bin/env python3
"""Relay throughput on loopback: hoodypipe vs piping-server vs "the limit".

Each transfer streams --size bytes (a 16 MiB random block, repeated, from
_gen.py) into `curl -sS -T - URL` (a chunked PUT) and, for the two relays,
out of `curl -sS URL -o /dev/null` started just before the sender.  Wall time
runs from starting the first curl (the generator's own start-up excluded)
until all have exited; the curls must exit 0 with a 2xx status and the
receiver must report exactly --size bytes.

Targets (measured interleaved in one run: A, B, C, A, B, C, ...):
  hoodypipe      `twistd -n hoodypipe` from --twistd, URL /api/v1/pipe/NAME
  hoodypipe-sha256  the same, URL /api/v1/pipe/NAME?sha256 (the daemon hashes the stream)
  hoodypipe-sha256-thread  the same, hashing in a thread of its own (HOODYPIPE_SHA256=thread)
  piping-server  the npm package, installed into --npm-dir if missing
  limit          curl uploading into a discarding HTTP server (_sink.py)

Reported: median MB/s (10^6 bytes/s) per target, and the ratios
hoodypipe/piping-server (target >= 1.2) and hoodypipe/limit (target >= 0.85).
The exit status is non-zero if any transfer failed, not if a target is missed.

Examples:
  bench/throughput.py                                  # 1 GiB, 5 runs, all
  bench/throughput.py --only piping-server,limit --size 256M --runs 2
  bench/throughput.py --twistd /work/venv/bin/twistd
"""

import json
import os
import shutil
import statistics
import subprocess
import sys
import uuid

from _common import (
    HOST,
    MIB,
    PORT_FILE,
    Child,
    TransferFailed,
    argument_parser,
    default_twistd,
    exit_on_sigterm,
    parse_size,
    pipe_url,
    start_hoodypipe,
    transfer,
    wait_http_ok,
    wait_port_file,
)

TARGETS = ("hoodypipe", "hoodypipe-sha256", "hoodypipe-sha256-thread", "piping-server", "limit")
RATIO_TARGETS = {"piping-server": 1.2, "limit": 0.85}
WARMUP_SIZE = 64 * MIB
# Run as `node -e REPORT_PORT PORT_FILE SCRIPT ARGS...`: SCRIPT runs as if started
# itself, and the port the kernel gave its server (it is told port 0) goes to
# PORT_FILE, so no port has to be picked (and raced for) beforehand.
REPORT_PORT = r"""
const fs = require("fs"), net = require("net"), path = require("path");
const file = process.argv.splice(1, 1)[0];
const listen = net.Server.prototype.listen;
net.Server.prototype.listen = function (...args) {
  this.once("listening", () => {
    fs.writeFileSync(file + ".tmp", "127.0.0.1 " + this.address().port + "\n");
    fs.renameSync(file + ".tmp", file);
  });
  return listen.apply(this, args);
};
require(path.resolve(process.argv[1]));
"""


# --- targets -----------------------------------------------------------------
# Each start_* returns (Child, url_for(name)).


def start_piping_server(npm_dir):
    package = os.path.join(npm_dir, "node_modules", "piping-server")
    if not os.path.exists(os.path.join(package, "package.json")):
        os.makedirs(npm_dir, exist_ok=True)
        print("installing piping-server into %s ..." % npm_dir, flush=True)
        subprocess.run(
            ["npm", "install", "--no-audit", "--no-fund", "piping-server"],
            cwd=npm_dir,
            check=True,
            stdout=subprocess.DEVNULL,
        )
    with open(os.path.join(package, "package.json")) as f:
        meta = json.load(f)
    bin_entry = meta["bin"]
    if isinstance(bin_entry, dict):
        bin_entry = bin_entry["piping-server"]
    child = Child(
        "piping-server",
        [
            shutil.which("node") or "node",
            "-e",
            REPORT_PORT,
            PORT_FILE,
            os.path.join(package, bin_entry),
            "--http-port",
            "0",
            "--host",
            HOST,
        ],
    )
    child.version = meta.get("version", "?")
    try:
        port = wait_port_file(child)
        wait_http_ok(child, port, "/version")
    except BaseException:
        child.stop()
        raise
    return child, lambda name: "http://%s:%d/%s" % (HOST, port, name)


def start_limit():
    child = Child("limit", [sys.executable, os.path.join(os.path.dirname(__file__), "_sink.py"), PORT_FILE])
    try:
        port = wait_port_file(child)
        wait_http_ok(child, port, "/")
    except BaseException:
        child.stop()
        raise
    return child, lambda name: "http://%s:%d/%s" % (HOST, port, name)


def start_target(target, args):
    if target == "hoodypipe":
        child, port = start_hoodypipe(args.twistd)
        return child, lambda name: pipe_url(port, name)
    if target in ("hoodypipe-sha256", "hoodypipe-sha256-thread"):
        # The same relay with ?sha256: the daemon hashes every byte it relays,
        # in the reactor's thread (its default), or in a thread of its own.
        env = dict(os.environ, HOODYPIPE_SHA256="thread") if target.endswith("thread") else None
        child, port = start_hoodypipe(args.twistd, env=env)
        return child, lambda name: pipe_url(port, name) + "?sha256"
    if target == "piping-server":
        return start_piping_server(args.npm_dir)
    return start_limit()


# --- report ------------------------------------------------------------------


def mbps(size, seconds):
    return size / seconds / 1e6


def report(results, size, runs):
    print()
    print("%-24s %6s %9s %9s %9s  %s" % ("target", "ok", "median", "min", "max", "runs (MB/s)"))
    medians = {}
    for target, rates in results.items():
        if not rates:
            print("%-24s %3d/%-2d %9s" % (target, 0, runs, "-"))
            continue
        medians[target] = statistics.median(rates)
        print(
            "%-24s %3d/%-2d %9.0f %9.0f %9.0f  %s"
            % (target, len(rates), runs, medians[target], min(rates), max(rates), " ".join("%.0f" % r for r in rates))
        )
    parts = ["%s %.0f MB/s" % (t, medians[t]) for t in results if t in medians]
    if "hoodypipe" in medians:
        for other, goal in RATIO_TARGETS.items():
            if other in medians:
                ratio = medians["hoodypipe"] / medians[other]
                parts.append(
                    "ratio vs %s %.2f%s" % (other, ratio, "" if ratio >= goal else " MISSED (target >= %.2f)" % goal)
                )
    if "hoodypipe" in medians and "hoodypipe-sha256" in medians:
        parts.append("?sha256 on/off %.2f" % (medians["hoodypipe-sha256"] / medians["hoodypipe"]))
    if "hoodypipe" in medians and "hoodypipe-sha256-thread" in medians:
        parts.append("thread on/off %.2f" % (medians["hoodypipe-sha256-thread"] / medians["hoodypipe"]))
    print("\nsize %d bytes (%.0f MiB), %d runs" % (size, size / MIB, runs))
    print(" | ".join(parts))


def main():
    parser = argument_parser(__doc__)
    parser.add_argument("--size", type=parse_size, default="1G", help="bytes per transfer, e.g. 256M, 1G (default 1G)")
    parser.add_argument("--runs", type=int, default=5, help="transfers per target (default 5)")
    parser.add_argument("--only", default=",".join(TARGETS), help="comma-separated subset of: " + ", ".join(TARGETS))
    parser.add_argument(
        "--twistd",
        default=default_twistd(),
        help="twistd with the hoodypipe plugin (default: twistd next to sys.executable)",
    )
    parser.add_argument(
        "--npm-dir", default="/tmp/hoodypipe-bench-npm", help="where piping-server is (or gets) installed"
    )
    parser.add_argument("--timeout", type=float, default=300, help="seconds allowed per transfer (default 300)")
    parser.add_argument(
        "--no-warmup",
        action="store_true",
        help="skip the untimed %d MiB warm-up transfer per target" % (WARMUP_SIZE // MIB),
    )
    args = parser.parse_args()
    targets = [t.strip() for t in args.only.split(",") if t.strip()]
    unknown = set(targets) - set(TARGETS)
    if unknown or not targets:
        parser.error("--only: unknown target(s) %s" % ", ".join(sorted(unknown)))
    targets = [t for t in TARGETS if t in targets]
    exit_on_sigterm()

    servers = {}
    results = {t: [] for t in targets}
    failures = 0
    try:
        for target in targets:
            try:
                servers[target] = start_target(target, args)
            except (RuntimeError, OSError, subprocess.CalledProcessError) as e:
                failures += 1
                print("%s: could not start, skipped: %s" % (target, e), flush=True)
                continue
            child = servers[target][0]
            print(
                "started %s (pid %d)%s"
                % (target, child.pid, " version " + child.version if hasattr(child, "version") else ""),
                flush=True,
            )
        warmup = [] if args.no_warmup else [(0, min(args.size, WARMUP_SIZE))]
        for run, size in warmup + [(r, args.size) for r in range(1, args.runs + 1)]:
            for target in servers:
                url = servers[target][1]("bench-%d-%s" % (run, uuid.uuid4().hex))
                label = "run %d" % run if run else "warm-up"
                try:
                    seconds = transfer(url, size, args.timeout, relay=target != "limit")
                except TransferFailed as e:
                    failures += 1
                    print("%-7s %-14s FAILED: %s" % (label, target, e), flush=True)
                    continue
                rate = mbps(size, seconds)
                if run:
                    results[target].append(rate)
                print("%-7s %-14s %7.2f s %8.0f MB/s" % (label, target, seconds, rate), flush=True)
        report(results, args.size, args.runs)
    finally:
        for child, _ in servers.values():
            child.stop()
    if failures:
        print("%d failure(s)" % failures)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
