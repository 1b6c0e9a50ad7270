"""Three daemons behind HAProxy (etc/haproxy-hoodypipe-cluster.cfg) sharing one Redis.

- every party of a name meets on one node, whatever the URL form; names spread
  over all the nodes; bytes arrive intact through the proxy;
- a node killed mid-transfer fails its own transfers visibly, the others
  finish, its names go to the others, and what it finished is still shown;
- a draining node leaves the pool, and its spectators get their ``done``;
- a restarted node keeps showing latecomers the final line, ids increasing;
- Redis stopped and started mid-run: transfers go on, /health says so, the
  writes that waited go out.

Real redis-server and haproxy from Debian, on loopback (see _cluster.py): a
missing one skips these tests on a developer machine and fails them under CI.
"""

from __future__ import annotations

import re
import signal
import time
import urllib.request
from collections import Counter, defaultdict

import pytest

from ._cluster import Cluster, Redis, get_json, metric, node_state, wait_until
from ._helpers import Curl, Sender, deterministic_bytes, receiver, sha256, unique
from ._sidechannel import CurlSSE, is_kind

MIB = 1 << 20


@pytest.fixture
def cluster(tmp_path):
    made: list[Cluster] = []

    def make(*extra: str) -> Cluster:
        made.append(Cluster(tmp_path / f"cluster{len(made)}", extra=extra))
        return made[-1]

    yield make
    for each in made:
        bad = each.close()
        assert not bad, "a daemon logged a traceback:\n" + "\n".join(bad)


def paced(sender: Sender, data: bytes, pieces: int, gap: float) -> None:
    """Feed ``data`` in ``pieces`` with ``gap`` seconds between them, then end it."""
    step = -(-len(data) // pieces)

    def run() -> None:
        for i in range(0, len(data), step):
            sender.proc.stdin.write(data[i : i + step])
            sender.proc.stdin.flush()
            time.sleep(gap)

    sender.feed_async(run, close=True)


def served_by(c: Cluster) -> dict[str, set[str]]:
    """Which HAProxy server carried each name's requests (from its log: one line per request)."""
    seen: dict[str, set[str]] = defaultdict(set)
    for server, target in re.findall(r"hoodypipe/(node\d) .*\"[A-Z]+ (\S+) HTTP", c.proxy.log.read_text()):
        path = target.split("?", 1)[0].removeprefix("/api/v1/pipe/").lstrip("/")
        seen[path.lower()].add(server)
    return seen


def finish(sender: Sender, receivers: list[Curl], data: bytes, timeout: float = 60) -> None:
    assert sender.wait(timeout) == 0, sender.stderr
    assert sender.lines[-1] == "[INFO] Transfer complete.", sender.lines
    for got in receivers:
        assert got.wait(timeout) == 0, got.stderr
        assert got.digest == sha256(data), f"{got.args[-1]}: {got.nbytes} bytes, not the sender's"


# -- routing -------------------------------------------------------------------------------------------


def test_every_party_of_a_name_meets_on_one_node_and_names_spread_over_all(cluster):
    c = cluster()
    names = [unique("spread") for _ in range(30)]
    data = {name: deterministic_bytes(256 * 1024, seed=i) for i, name in enumerate(names)}
    for batch in (names[:10], names[10:20], names[20:]):
        runs = []
        for i, name in enumerate(batch):
            # Each party in another URL form, every flag on one node.
            spectator = CurlSSE(c.url(name, "progress", prefix=i % 2 == 0))
            got = [
                receiver(c.url(name, "n=2")),
                receiver(c.url(name, "n=2&download=1", prefix=False)),
            ]
            sender = Sender(c.url(name, "n=2", prefix=i % 2 == 1), data=data[name])
            runs.append((name, spectator, sender, got))
        for name, spectator, sender, got in runs:
            finish(sender, got, data[name])
            done = spectator.wait_for(is_kind("done"), 20, f"{name}'s done").data
            assert (done["state"], done["bytes"]) == ("complete", len(data[name]))
            assert get_json(c.url(name, "status", prefix=False))[1]["state"] == "complete"
            spectator.kill()
    per_node = [metric(node, "hoodypipe_transfers_total") for node in c.nodes]
    assert sum(per_node) == 30 and all(count > 0 for count in per_node), per_node
    carried = served_by(c)
    assert all(len(carried[name]) == 1 for name in names), {n: carried[n] for n in names}
    assert len({server for name in names for server in carried[name]}) == 3


def test_percent_escapes_in_either_case_are_one_name_on_one_node(cluster):
    c = cluster()
    for i in range(6):
        tail = f"{unique()}-{i}"
        data = deterministic_bytes(64 * 1024, seed=i)
        got = receiver(c.url(f"caf%C3%A9-{tail}", prefix=False))
        sender = Sender(c.url(f"caf%c3%a9-{tail}"), data=data)
        finish(sender, [got], data)


def test_a_large_transfer_through_the_proxy_is_byte_exact(cluster):
    c = cluster()
    name = unique("big")
    data = deterministic_bytes(48 * MIB, seed=7)
    got = receiver(c.url(name), keep=False)
    sender = Sender(c.url(name, prefix=False), data=data)
    finish(sender, [got], data, timeout=120)


# -- a node dies -----------------------------------------------------------------------------------------


def live_transfers(c: Cluster, count: int, seconds: float) -> list[dict]:
    """``count`` transfers through the proxy that run for about ``seconds``, each watched."""
    runs = []
    for i in range(count):
        name = unique("live")
        data = deterministic_bytes(2 * MIB, seed=100 + i)
        got = receiver(c.url(name, prefix=i % 2 == 0), keep=False)
        spectator = CurlSSE(c.url(name, "progress"))
        sender = Sender(c.url(name))
        paced(sender, data, pieces=40, gap=seconds / 40)
        runs.append({"name": name, "data": data, "receiver": got, "spectator": spectator, "sender": sender})
    for run in runs:
        run["spectator"].wait_for(lambda e: e.kind == "state" and e.data["state"] == "streaming", 20, "streaming")
        run["node"] = c.owner(run["name"])
    return runs


def finished_names(c: Cluster, count: int) -> list[str]:
    names = []
    for i in range(count):
        name = unique("kept")
        data = deterministic_bytes(10_000 + i, seed=i)
        got = receiver(c.url(name))
        finish(Sender(c.url(name), data=data), [got], data)
        names.append(name)
    return names


def test_a_killed_node_fails_its_transfers_visibly_and_the_rest_go_on(cluster):
    c = cluster()
    kept = finished_names(c, 9)
    runs = live_transfers(c, 12, seconds=6)
    carried = served_by(c)
    kept_by = Counter(c.proxy.servers.index(next(iter(carried[name.lower()]))) for name in kept)
    running = Counter(run["node"] for run in runs)
    # The victim: a node that runs transfers now and finished some before.
    victim = max(running, key=lambda node: (kept_by[node] > 0, running[node]))
    doomed = [run for run in runs if run["node"] == victim]
    spared = [run for run in runs if run["node"] != victim]
    kept_on_victim = [name for name in kept if carried[name.lower()] == {c.proxy.servers[victim]}]
    assert doomed and spared and kept_on_victim
    c.nodes[victim].stop(signal.SIGKILL)

    for run in doomed:
        assert run["receiver"].wait(30) != 0, "a receiver of a killed node got a clean end"
        run["sender"].wait(30)
        run["spectator"].wait_end(30)
        assert not run["spectator"].named("done"), "a spectator of a killed node saw a done it cannot have"
    for run in spared:
        finish(run["sender"], [run["receiver"]], run["data"])
        done = run["spectator"].wait_for(is_kind("done"), 20, "done").data
        assert done["state"] == "complete"

    c.proxy.wait_states({c.proxy.servers[victim]: "DOWN"})
    # Its names are served by the others now, and what it finished is still shown.
    for run in doomed[:3]:
        data = b"after the crash\n"
        got = receiver(c.url(run["name"]))
        finish(Sender(c.url(run["name"], prefix=False), data=data), [got], data)
    for name in kept:
        status = get_json(c.url(name, "status"))[1]
        assert status["state"] == "complete", (name, status)
    for name in kept_on_victim:
        late = CurlSSE(c.url(name, "progress"))
        late.wait_end(20)
        assert [e.data["state"] for e in late.events if e.kind == "done"] == ["complete"]


def test_a_draining_node_leaves_the_pool_and_tells_its_spectators(cluster):
    c = cluster("--drain-timeout", "2")
    runs = live_transfers(c, 6, seconds=20)
    victim = runs[0]["node"]
    doomed = [run for run in runs if run["node"] == victim]
    spared = [run for run in runs if run["node"] != victim]
    node = c.nodes[victim]
    node.process.send_signal(signal.SIGTERM)
    _, health = wait_until(lambda: (got := get_json(node.url("health")))[0] == 503 and got, 5, "a 503 health")
    assert health["status"] == "draining" and health["store"] == "redis"
    c.proxy.wait_states({c.proxy.servers[victim]: "DOWN"}, timeout=10)
    # While it drains, its names are another node's.
    name = doomed[0]["name"]
    got = receiver(c.url(name, "wait=10"))
    finish(Sender(c.url(name), data=b"elsewhere\n"), [got], b"elsewhere\n")
    for run in doomed:
        done = run["spectator"].wait_for(is_kind("done"), 20, "the drained transfer's done").data
        assert (done["state"], done["reason"]) == ("failed", "Server is shutting down")
        assert run["receiver"].wait(20) != 0
        run["sender"].kill()
    assert node.process.wait(30) is not None
    for run in spared:
        run["sender"].kill()
        run["receiver"].kill()


# -- restarts ---------------------------------------------------------------------------------------------


def test_a_restarted_node_keeps_final_states_for_latecomers_and_ids_increase(cluster):
    c = cluster()
    names = [unique("restart") for _ in range(6)]
    ends = {}
    for i, name in enumerate(names):
        watcher = CurlSSE(c.url(name, "progress"))
        watcher.wait_for(is_kind("state"), 10, "the first state")
        data = deterministic_bytes(100_000, seed=i)
        got = receiver(c.url(name))
        finish(Sender(c.url(name, "sha256" if i == 0 else ""), data=data), [got], data)
        watcher.wait_end(10)
        ends[name] = watcher.named("done")[-1]
    hashed = get_json(c.url(names[0], "status"))[1]
    assert hashed["sha256"] == sha256(deterministic_bytes(100_000, seed=0)) and hashed["transferId"]
    owners = {name: served_by(c)[name.lower()] for name in names}
    # Every node, one after another, dies without a word and comes back empty.
    for index in range(len(c.nodes)):
        c.restart(index, signal.SIGKILL)
    c.proxy.wait_states({server: "UP" for server in c.proxy.servers})
    for name in names:
        late = CurlSSE(c.url(name, "progress", prefix=False))
        late.wait_end(20)
        kinds = [(e.kind, e.data.get("state")) for e in late.events if e.kind != "retry"]
        assert kinds == [("state", "complete"), ("progress", None), ("done", "complete")], (name, late.describe())
        first = ends[name]
        assert late.named("done")[0].data == first.data
        ids = [e.id for e in late.events if e.id is not None]
        assert ids == sorted(ids) and ids[0] > first.id
        # A reconnect that saw the end stops there, on whichever node.
        again = Curl(["-o", "/dev/null", "-w", "%{http_code}", "-H", "Accept: text/event-stream",
                      "-H", f"Last-Event-ID: {first.id}", c.url(name, "progress")])  # fmt: skip
        assert again.wait(10) == 0 and again.out == b"204"
        # And the next transfer's ids are above them all.
        watcher = CurlSSE(c.url(name, "progress"))
        data = b"again\n"
        got = receiver(c.url(name))
        finish(Sender(c.url(name), data=data), [got], data)
        watcher.wait_end(10)
        assert min(e.id for e in watcher.events if e.id is not None) > ids[-1]
    assert all(len(servers) == 1 for servers in owners.values())
    # The hashed transfer's receipt outlived its final (the name has had another transfer since).
    code, receipt = get_json(c.url(names[0], f"status&transfer={hashed['transferId']}"))
    assert code == 200 and receipt["sha256"] == hashed["sha256"], receipt


# -- Redis goes away -------------------------------------------------------------------------------------


def healths(c: Cluster) -> list[str]:
    return [get_json(node.url("health"))[1]["store"] for node in c.nodes]


def test_redis_stopped_and_started_mid_run(cluster):
    c = cluster()
    before = finished_names(c, 3)
    runs = live_transfers(c, 3, seconds=4)
    c.redis.stop()
    wait_until(lambda: healths(c) == ["degraded"] * 3, 10, "every node to say degraded")
    for run in runs:
        finish(run["sender"], [run["receiver"]], run["data"])
        assert run["spectator"].wait_for(is_kind("done"), 20, "done").data["state"] == "complete"
        # Retention falls back to memory: the node that ran it still shows it.
        status = get_json(c.url(run["name"], "status"))[1]
        assert status["state"] == "complete"
    # While Redis is away its writes wait, counted.
    queued = sum(metric(node, "hoodypipe_store_queued") for node in c.nodes)
    assert queued == len(runs)
    during = finished_names(c, 2)
    c.redis.start()
    wait_until(lambda: healths(c) == ["redis"] * 3, 30, "every node to reconnect")
    wait_until(lambda: all(c.redis.final(r["name"]) for r in runs), 10, "the waiting writes to reach Redis")
    for name in [*before, *during]:
        record = c.redis.final(name)
        assert record is not None and record["snapshot"]["state"] == "complete", name
    assert sum(metric(node, "hoodypipe_store_queued") for node in c.nodes) == 0
    with urllib.request.urlopen(c.url(before[0], "status"), timeout=10) as answer:
        assert answer.status == 200
    assert all(node_state(node, runs[0]["name"]) == "complete" for node in c.nodes)


def test_a_redis_that_refuses_the_daemon_leaves_it_in_memory_mode_and_says_why(tmp_path, daemon_factory):
    redis = Redis(tmp_path)
    try:
        node = daemon_factory("--store", f"redis+unix://{redis.socket}?db=999")
        wait_until(lambda: metric(node, "hoodypipe_store_errors_total") == 1, 10, "the refusal to be counted")
        assert get_json(node.url("health"))[1]["store"] == "degraded"
        assert "refused us" in node.log_text() and "DB index is out of range" in node.log_text()
        name = unique("refused")
        got = receiver(node.url(name))
        finish(Sender(node.url(name), data=b"fine\n"), [got], b"fine\n")
        assert get_json(node.url(name, "status"))[1]["state"] == "complete"
    finally:
        redis.stop()
