"""Retained state: the memory tier, a shared tier seen through the hub, and the
Redis store's queue, all in memory under a fake clock (real Redis: tests/e2e)."""

from __future__ import annotations

import json
from collections import Counter

import pytest
import txredisapi
from twisted.internet import defer
from twisted.internet.testing import MemoryReactorClock
from twisted.python import usage

from hoodypipe.hub import HubLimits
from hoodypipe.progress import Final
from hoodypipe.store import (
    KEY_PREFIX,
    MAX_QUEUED,
    MAX_WRITES_IN_FLIGHT,
    READ_TIMEOUT,
    RECEIPT_PREFIX,
    WRITE_TIMEOUT,
    MemoryStore,
    Receipt,
    RedisAddress,
    RedisStore,
    decode_final,
    decode_receipt,
    encode_final,
    encode_receipt,
    parse_store,
)
from hoodypipe.tap import Options
from tests.memhttp import Conn, MemoryDaemon, parse_response

NOW = 1_780_000_000.0
SSE = {"Accept": "text/event-stream"}


def record(at: float = NOW, done_id: int = 100, state: str = "complete", size: int = 5) -> Final:
    done = {"state": state, "bytes": size, "bytesTransferred": size, "reason": None}
    snap = {"state": state, "bytes": size, "bytesTransferred": size, "durationSec": 1.0, "mbps": 0.0, "reason": None}
    return Final({"state": state}, {"bytes": size}, done, snap, at=at, done_id=done_id)


def clock(at: float = NOW) -> MemoryReactorClock:
    c = MemoryReactorClock()
    c.advance(at)
    return c


# -- the memory tier -------------------------------------------------------------------------------


def test_memory_keeps_the_newest_and_tells_which_names_it_drops():
    dropped: list[str] = []
    store = MemoryStore(clock(), retain=60, capacity=3, on_drop=dropped.append)
    for name in "abcd":
        store.put(name, record())
    assert dropped == ["a"] and len(store) == 3 and "a" not in store
    store.put("b", record())  # a new end moves a name to the newest
    store.put("e", record())
    assert dropped == ["a", "c"] and store.peek("b") is not None


def test_memory_forgets_after_retain():
    c = clock()
    dropped: list[str] = []
    store = MemoryStore(c, retain=60, on_drop=dropped.append)
    store.put("a", record(at=c.seconds()))
    c.advance(30)
    store.put("b", record(at=c.seconds()))
    c.advance(30)
    assert store.peek("a") is not None  # 60 s: still readable
    c.advance(1)
    store.expire()
    assert dropped == ["a"] and store.peek("b") is not None
    c.advance(30)
    assert store.peek("b") is None and dropped == ["a", "b"]
    got = []
    store.get("b").addCallback(got.append)
    assert got == [None]  # the protocol's read is synchronous here


def test_memory_adopts_a_shared_record_unless_it_knows_a_newer_end():
    c = clock()
    store = MemoryStore(c, retain=60)
    assert store.adopt("a", record(at=NOW - 10))
    assert not store.adopt("a", record(at=NOW - 20))  # older than the one it has
    assert store.adopt("a", record(at=NOW - 5, done_id=200))
    assert store.peek("a").done_id == 200
    assert not store.adopt("b", record(at=NOW - 61))  # already expired


def test_a_record_keeps_its_figures_and_ids_through_the_shared_form():
    original = record(done_id=123)
    original.last_id = 456
    copy = decode_final(encode_final(original))
    assert (copy.at, copy.done_id, copy.last_id) == (NOW, 123, 456)
    assert (copy.state, copy.progress, copy.done, copy.snapshot) == (
        original.state,
        original.progress,
        original.done,
        original.snapshot,
    )


@pytest.mark.parametrize(
    "text",
    [
        "",
        "[]",
        "{}",
        '{"v": 2}',
        json.dumps(
            {"v": 1, "at": 1, "doneId": 1, "lastId": 1, "state": [], "progress": {}, "done": {}, "snapshot": {}}
        ),
        json.dumps(
            {"v": 1, "at": "x", "doneId": 1, "lastId": 1, "state": {}, "progress": {}, "done": {}, "snapshot": {}}
        ),
    ],
)
def test_an_unreadable_record_is_refused(text):
    with pytest.raises(ValueError):
        decode_final(text)


# -- --store ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "address"),
    [
        ("memory", None),
        ("redis://127.0.0.1", RedisAddress(host="127.0.0.1")),
        ("redis://redis.internal:6380/3", RedisAddress(host="redis.internal", port=6380, db=3)),
        ("redis://[::1]:7000/", RedisAddress(host="::1", port=7000)),
        ("redis://:s%40cret@h/1", RedisAddress(host="h", db=1, password="s@cret")),
        ("redis://app:pw@h", RedisAddress(host="h", username="app", password="pw")),
        ("redis+unix:///run/redis/redis.sock", RedisAddress(path="/run/redis/redis.sock")),
        ("redis+unix:///tmp/r.sock?db=2", RedisAddress(path="/tmp/r.sock", db=2)),
    ],
)
def test_store_forms(text, address):
    assert parse_store(text) == address
    options = Options()
    options.parseOptions(["--store", text])
    assert options["store"] == text


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("redis:", "needs a host"),
        ("redis://h:notaport", "port"),
        ("redis://h/zero", "database must be a number"),
        ("redis://h/0?db=1", "nothing after it"),
        ("redis+unix://host/tmp/r.sock", "absolute path"),
        ("redis+unix://", "absolute path"),
        ("redis+unix:///tmp/r.sock?timeout=1", "only ?db=N"),
        ("rediss://h", "unknown store"),
        ("unix:/tmp/r.sock", "unknown store"),
        ("Memory", "unknown store"),
    ],
)
def test_a_bad_store_is_a_usage_error(text, why):
    with pytest.raises(usage.UsageError, match="invalid --store") as error:
        Options().parseOptions(["--store", text])
    assert why in str(error.value)


def test_the_password_never_reaches_a_log_line():
    assert "pw" not in str(parse_store("redis://app:pw@h:1/2")) and "h:1 db 2" in str(parse_store("redis://h:1/2"))


# -- the hub with a shared tier --------------------------------------------------------------------


class SharedFake:
    """A shared store as the hub sees one: writes kept as text (a copy, like
    Redis), reads answered when the test says so."""

    mode = "redis"
    queued = 0

    def __init__(self) -> None:
        self.kept: dict[str, str] = {}
        self.asked: list[tuple[str, defer.Deferred]] = []
        self.errors: Counter[str] = Counter()

    def put(self, name: str, record: Final) -> None:
        self.kept[name] = encode_final(record)

    def put_receipt(self, transfer_id: str, name: str, snapshot: dict, at: float) -> None:
        self.kept["receipt " + transfer_id] = encode_receipt(Receipt(name, snapshot, at))

    def get(self, name: str) -> defer.Deferred[Final | None]:
        waiting: defer.Deferred[Final | None] = defer.Deferred()
        self.asked.append((name, waiting))
        return waiting

    def get_receipt(self, transfer_id: str) -> defer.Deferred[Receipt | None]:
        waiting: defer.Deferred[Receipt | None] = defer.Deferred()
        self.asked.append(("receipt " + transfer_id, waiting))
        return waiting

    def answer(self) -> None:
        asked, self.asked = self.asked, []
        for key, waiting in asked:
            if not waiting.called:
                decode = decode_receipt if key.startswith("receipt ") else decode_final
                waiting.callback(decode(self.kept[key]) if key in self.kept else None)


def node(shared: SharedFake, at: float = NOW) -> MemoryDaemon:
    d = MemoryDaemon(hub_limits=HubLimits(retain=600), store=shared)
    d.clock.advance(at)
    d.hub.start()
    return d


def transfer(d: MemoryDaemon, name: str = "x", body: bytes = b"12345") -> None:
    receiver = d.receiver(f"/{name}")
    d.sender(f"/{name}").chunk(body).end_chunks()
    assert receiver.response().complete


def sse(conn: Conn) -> list[tuple[int, str, dict]]:
    body = parse_response(conn.raw).body.decode()
    out = []
    for block in body.split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line and not line.startswith(":"))
        if "event" in fields:
            out.append((int(fields["id"]), fields["event"], json.loads(fields["data"])))
    return out


def body_json(conn: Conn) -> dict:
    return json.loads(parse_response(conn.raw).body)


def test_a_finished_transfer_is_kept_in_both_tiers():
    shared = SharedFake()
    a = node(shared)
    transfer(a)
    assert decode_final(shared.kept["x"]).snapshot["bytes"] == 5
    assert a.hub.final("x") is not None and a.hub.store is shared


def test_live_and_remembered_names_never_wait_for_the_shared_store():
    shared = SharedFake()
    a = node(shared)
    a.receiver("/live")  # waiting: live
    transfer(a, "done")
    for name in ("live", "done"):
        assert parse_response(a.receiver(f"/{name}?status").raw).status == 200
        assert a.receiver(f"/{name}?progress", {"Accept": "application/json"}).raw
    assert shared.asked == []


def test_another_node_shows_a_latecomer_how_it_ended_with_ids_above_the_first_nodes():
    shared = SharedFake()
    a = node(shared)
    watcher = a.receiver("/x?progress", SSE)
    shared.answer()  # nothing is known of x yet: even a's first watcher asks
    transfer(a)
    first = sse(watcher)
    done_id = first[-1][0]
    assert first[-1][1] == "done"
    # A restarted (or replacement) node: nothing in memory, the same clock
    # reading, so only the ids that travelled with the record keep order.
    b = node(shared)
    status = b.receiver("/x?status")
    assert status.raw == b"" and [name for name, _ in shared.asked] == ["x"]
    shared.answer()
    assert body_json(status)["state"] == "complete" and body_json(status)["bytes"] == 5
    late = b.receiver("/x?progress", SSE)
    assert shared.asked == []  # now in b's memory
    events = sse(late)
    assert [(e, d.get("state")) for _, e, d in events] == [
        ("state", "complete"),
        ("progress", None),
        ("done", "complete"),
    ]
    ids = [i for i, _, _ in events]
    assert ids == sorted(ids) and ids[0] > done_id
    # A third node: a plain reconnect that saw the done gets 204 there too.
    c = node(shared)
    again = c.receiver("/x?progress", {**SSE, "Last-Event-ID": str(done_id)})
    shared.answer()
    assert parse_response(again.raw).status == 204


def test_a_name_the_shared_store_does_not_know_is_idle():
    shared = SharedFake()
    b = node(shared)
    status = b.receiver("/nobody?status")
    head = b.connect().request("HEAD", "/nobody?status")
    text = b.receiver("/nobody?progress&format=text")
    shared.answer()
    assert body_json(status)["state"] == "idle"
    assert parse_response(head.raw, "HEAD").status == 200
    assert b"[idle]" in parse_response(text.raw).body
    assert b.hub.final("nobody") is None


def test_a_newer_end_on_this_node_wins_over_a_late_answer():
    shared = SharedFake()
    a = node(shared)
    transfer(a, body=b"old")
    b = node(shared, at=NOW + 5)
    status = b.receiver("/x?status")  # b asks ...
    transfer(b, body=b"newer")  # ... and meanwhile a transfer ends on b
    shared.kept["x"] = encode_final(record(at=NOW, size=3))  # the answer is a's older end
    shared.answer()
    assert body_json(status)["bytes"] == 5


def test_a_spectator_that_leaves_during_the_lookup_costs_nothing():
    shared = SharedFake()
    a = node(shared)
    transfer(a)
    b = node(shared)
    gone = b.receiver("/x?progress", SSE)
    gone.drop()
    shared.answer()  # no error logged (the fixture fails the test otherwise)
    assert b.hub.spectator_count == 0 and b.hub.watches == {}


def test_a_transfer_is_found_by_its_id_on_another_node():
    shared = SharedFake()
    a = node(shared)
    a.receiver("/x?status")
    shared.answer()
    receiver = a.receiver("/x")
    a.sender("/x?sha256").chunk(b"12345").end_chunks()
    assert receiver.response().complete
    first = body_json(a.receiver("/x?status"))["transferId"]
    assert first is not None and decode_receipt(shared.kept["receipt " + first]).name == "x"
    transfer(a, body=b"newer")  # x's final is now another transfer: only the receipt knows the first
    b = node(shared)
    by_final = b.receiver(f"/x?status&transfer={body_json(a.receiver('/x?status'))['transferId']}")
    by_receipt = b.receiver(f"/x?status&transfer={first}")
    unknown = b.receiver("/x?status&transfer=" + "z" * 22)
    shared.answer()  # x's final: by_final is answered
    assert [key for key, _ in shared.asked] == ["receipt " + first, "receipt " + "z" * 22]
    shared.answer()
    assert parse_response(by_final.raw).status == 200 and body_json(by_final)["bytes"] == 5
    assert body_json(by_receipt)["transferId"] == first and body_json(by_receipt)["sha256"] is not None
    assert parse_response(unknown.raw).status == 404
    assert b.receiver(f"/x?status&transfer={first}").raw and shared.asked == []  # now in b's memory
    other = b.receiver(f"/y?status&transfer={first}")  # the receipt is x's: not y's
    shared.answer()
    shared.answer()
    assert parse_response(other.raw).status == 404


def test_errors_in_the_answer_after_a_lookup_are_refusals():
    shared = SharedFake()
    b = node(shared)
    bad = b.receiver("/x?progress&format=xml")
    shared.answer()
    assert parse_response(bad.raw).status == 400


def test_health_names_the_store_and_says_when_it_drains():
    d = MemoryDaemon()
    health = body_json(d.receiver("/api/v1/pipe/health"))
    assert (health["status"], health["store"]) == ("ok", "memory")
    shared_node = node(SharedFake())
    assert body_json(shared_node.receiver("/api/v1/pipe/health"))["store"] == "redis"
    d.registry.shutting_down = True
    draining = d.receiver("/api/v1/pipe/health")
    assert parse_response(draining.raw).status == 503 and body_json(draining)["status"] == "draining"


def test_metrics_count_store_errors_by_operation():
    shared = SharedFake()
    shared.errors.update({"put": 2, "dropped": 1})
    d = node(shared)
    transfer(d)
    text = parse_response(d.receiver("/api/v1/pipe/metrics").raw).body.decode()
    assert 'hoodypipe_store_errors_total{operation="put"} 2.0' in text
    assert 'hoodypipe_store_errors_total{operation="dropped"} 1.0' in text
    assert "hoodypipe_store_queued 0.0" in text and "hoodypipe_retained_finals 1.0" in text


# -- the Redis store's queue, over a fake connection -----------------------------------------------


class FakeRedis:
    """txredisapi's handler as the store uses it: each command waits for the test."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, tuple, dict, defer.Deferred]] = []
        self.disconnected = False

    @property
    def handler(self) -> FakeRedis:
        return self

    def set(self, *args, **kwargs) -> defer.Deferred:
        return self._command("set", args, kwargs)

    def get(self, *args, **kwargs) -> defer.Deferred:
        return self._command("get", args, kwargs)

    def _command(self, name: str, args: tuple, kwargs: dict) -> defer.Deferred:
        answer: defer.Deferred = defer.Deferred()
        self.sent.append((name, args, kwargs, answer))
        return answer

    def disconnect(self) -> defer.Deferred[None]:
        self.disconnected = True
        return defer.succeed(None)

    def reply(self, value: object = "OK") -> None:
        self.sent.pop(0)[3].callback(value)

    def fail(self, error: Exception) -> None:
        self.sent.pop(0)[3].errback(error)


def redis_store(c: MemoryReactorClock | None = None, retain: float = 600) -> tuple[RedisStore, FakeRedis]:
    fake = FakeRedis()
    store = RedisStore(c or clock(), RedisAddress(host="redis"), retain, pool=lambda store: fake)
    store.startService()
    return store, fake


def test_writes_wait_while_redis_is_away_and_go_out_when_it_is_back():
    store, fake = redis_store()
    assert store.mode == "degraded"
    store.put("a", record())
    store.put("a", record(done_id=200))  # the newest per name
    store.put("b", record())
    assert fake.sent == [] and store.queued == 2
    got = []
    store.get("a").addCallback(got.append)  # read your own writes, even now
    assert got[0].done_id == 200
    store.connection_made()
    assert store.mode == "redis"
    assert [(args[0], kwargs) for _, args, kwargs, _ in fake.sent] == [
        (KEY_PREFIX + "a", {"pexpire": 600_000}),
        (KEY_PREFIX + "b", {"pexpire": 600_000}),
    ]
    assert decode_final(fake.sent[0][1][1]).done_id == 200
    fake.reply()
    fake.reply()
    assert store.queued == 0


def test_the_queue_is_bounded_and_counts_what_it_drops():
    store, _fake = redis_store()
    for i in range(MAX_QUEUED + 5):
        store.put(f"n{i}", record())
    assert store.queued == MAX_QUEUED and store.errors["dropped"] == 5
    got = []
    store.get("n0").addCallback(got.append)
    assert got == [None]  # the oldest went; Redis is away, so "not kept"


def test_at_most_so_many_writes_are_unanswered():
    store, fake = redis_store()
    store.connection_made()
    for i in range(MAX_WRITES_IN_FLIGHT + 10):
        store.put(f"n{i}", record())
    assert len(fake.sent) == MAX_WRITES_IN_FLIGHT and store.queued == MAX_WRITES_IN_FLIGHT + 10
    fake.reply()
    assert len(fake.sent) == MAX_WRITES_IN_FLIGHT


def test_a_lost_write_is_sent_again_and_a_refused_one_is_not():
    c = clock()
    store, fake = redis_store(c)
    store.connection_made()
    store.put("lost", record())
    store.put("refused", record())
    store.connection_lost()
    fake.fail(txredisapi.ConnectionError("Lost connection"))
    fake.fail(txredisapi.ResponseError("OOM command not allowed"))
    assert store.errors["put"] == 2 and store.queued == 1
    store.connection_made()
    assert [args[0] for _, args, _, _ in fake.sent] == [KEY_PREFIX + "lost"]
    # A write nobody answers is given up after WRITE_TIMEOUT and queued again.
    c.advance(WRITE_TIMEOUT)
    assert store.queued == 1 and store.errors["put"] == 3
    fake.reply()  # the late answer is ignored


def test_receipts_are_shared_for_their_own_time():
    c = clock()
    store, fake = redis_store(c, retain=86400)
    store.connection_made()
    store.put_receipt("t" * 22, "x", {"state": "complete"}, NOW - 100)
    ((_, args, kwargs, _),) = fake.sent
    assert args[0] == RECEIPT_PREFIX + "t" * 22 and kwargs == {"pexpire": 500_000}
    fake.reply()
    got: list = []
    store.get_receipt("t" * 22).addCallback(got.append)
    fake.reply(args[1])
    assert got == [Receipt("x", {"state": "complete"}, NOW - 100)]
    c.advance(501)
    store.get_receipt("t" * 22).addCallback(got.append)
    fake.reply(args[1])  # Redis would have let it go: so does the store
    assert got[-1] is None


def test_a_record_past_its_retention_is_not_written():
    c = clock()
    store, fake = redis_store(c, retain=10)
    store.put("old", record(at=NOW - 11))
    store.put("young", record(at=NOW - 4))
    store.connection_made()
    assert [(args[0], kwargs["pexpire"]) for _, args, kwargs, _ in fake.sent] == [(KEY_PREFIX + "young", 6000)]


def test_reads_of_one_name_share_one_command_and_a_slow_answer_is_not_kept():
    c = clock()
    store, fake = redis_store(c)
    store.connection_made()
    got: list = []
    store.get("x").addCallback(got.append)
    store.get("x").addCallback(got.append)
    assert len(fake.sent) == 1
    fake.reply(encode_final(record(done_id=9)))
    assert [r.done_id for r in got] == [9, 9]
    store.get("slow").addCallback(got.append)
    c.advance(READ_TIMEOUT)
    assert got[-1] is None and store.errors["get"] == 1
    fake.reply(None)  # late: ignored
    store.get("bad").addCallback(got.append)
    fake.reply("not json")
    assert got[-1] is None and store.errors["get"] == 2


def test_a_read_whose_client_left_is_not_answered_twice():
    store, fake = redis_store()
    store.connection_made()
    waiting = store.get("x")
    waiting.addErrback(lambda f: f.trap(defer.CancelledError))
    waiting.cancel()
    fake.reply(None)


def test_stopping_waits_for_the_last_writes_then_disconnects():
    c = clock()
    store, fake = redis_store(c)
    store.connection_made()
    store.put("x", record())
    stopped = store.stopService()
    assert not stopped.called and not fake.disconnected
    fake.reply()
    assert stopped.called and fake.disconnected


def test_stopping_gives_up_on_writes_after_a_while():
    c = clock()
    store, fake = redis_store(c)
    store.connection_made()
    store.put("x", record())
    stopped = store.stopService()
    c.advance(WRITE_TIMEOUT)  # the write fails, and is queued again
    c.advance(10)
    assert stopped.called and fake.disconnected


# -- the wiring ---------------------------------------------------------------------------------


def test_the_daemon_shares_finals_through_a_redis_store_only_when_told():
    from hoodypipe.tap import makeService

    def service(*argv: str):
        config = Options()
        config.parseOptions(["--listen", "tcp:0", *argv])
        return makeService(config, reactor=MemoryReactorClock())

    alone = service()
    assert alone.parts.hub.store is alone.parts.hub.finals
    assert not [child for child in alone if isinstance(child, RedisStore)]
    shared = service("--store", "redis+unix:///run/redis.sock?db=3", "--retain", "60")
    (store,) = [child for child in shared if isinstance(child, RedisStore)]
    assert shared.parts.hub.store is store and store.retain == 60
    assert store.address == RedisAddress(path="/run/redis.sock", db=3) and store.mode == "degraded"
