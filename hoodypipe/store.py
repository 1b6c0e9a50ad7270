"""Where finished transfers' final states are kept for ``--retain`` seconds.

Two tiers. The hub always keeps a ``MemoryStore``: its reads are
synchronous, and it is all one box needs (``--store memory``, the default).
With ``--store redis://...`` a ``RedisStore`` is a second tier shared by
every node of a cluster: each final is also written there (one ``SET key
value PX ms`` per transfer), and a name that is neither live nor in memory
is looked up there (one ``GET``) before its ``?status`` or ``?progress`` is
answered. So a node restarted, replaced, or handed a name by the proxy's
consistent hash still shows latecomers the final line, and the record's
``done_id`` and ``last_id`` travel with it so that SSE ids keep increasing.

Redis is never on the data path and never throws into a transfer: writes
are fire-and-forget, and reads answer ``None`` when Redis is down or slow
(``mode`` is then ``degraded``; the memory tier serves what this node saw).
While Redis is down, writes wait in a bounded queue (the newest per name,
the oldest dropped past ``MAX_QUEUED``) and go out when it is back;
reconnecting backs off (txredisapi's ClientService: jittered, from 0.5 s up
to 10 s). Every failure is counted in ``errors`` (``hoodypipe_store_errors``).

Receipts (KIT.md section 4) go the same way under keys of their own
(``hoodypipe:receipt:<transfer id>``, kept ``RECEIPT_SECONDS``), so that
``?status&transfer=<id>`` finds one on any node.
"""

from __future__ import annotations

import json
from collections import Counter, OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import parse_qsl, unquote, urlsplit

import txredisapi
from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.endpoints import HostnameEndpoint, UNIXClientEndpoint
from twisted.logger import Logger
from twisted.python.failure import Failure

from hoodypipe.progress import Final
from hoodypipe.receipts import RECEIPT_SECONDS

if TYPE_CHECKING:
    from collections.abc import Callable

    from twisted.internet.interfaces import IReactorTime, IStreamClientEndpoint

log = Logger()

MAX_RETAINED = 10_000
# Writes waiting for Redis: one per name (the newest), at most this many.
MAX_QUEUED = 10_000
# Commands sent and not yet answered: writes, and lookups of distinct names.
MAX_WRITES_IN_FLIGHT = 64
MAX_READS_IN_FLIGHT = 1_000
# A lookup that takes longer answers "not kept" (then the memory tier's answer stands).
READ_TIMEOUT = 1.0
# A write that takes longer is queued again. txredisapi itself drops a
# connection that leaves a command unanswered for REPLY_TIMEOUT, and reconnects.
WRITE_TIMEOUT = 3.0
REPLY_TIMEOUT = 2.0
CONNECT_TIMEOUT = 2.0
# On shutdown, how long queued writes may take to reach Redis.
FLUSH_TIMEOUT = 3.0
KEY_PREFIX = "hoodypipe:final:"
RECEIPT_PREFIX = "hoodypipe:receipt:"
RECORD_VERSION = 1

STORE_FORMS = "memory, redis://[[USER]:PASSWORD@]HOST[:PORT][/DB] or redis+unix://[[USER]:PASSWORD@]/PATH[?db=DB]"


class FinalStore(Protocol):
    """Finished transfers' final states by pipe name, for ``--retain`` seconds."""

    @property
    def mode(self) -> str:
        """``memory``, ``redis``, or ``degraded`` (Redis configured, not reachable)."""
        ...

    @property
    def errors(self) -> Counter[str]:
        """Failures by operation (``put``, ``get``, ``dropped``), for /metrics."""
        ...

    @property
    def queued(self) -> int:
        """Writes the store has not acknowledged yet."""
        ...

    def put(self, name: str, record: Final) -> None:
        """Keep ``record`` as the name's final state: never raises, never waits."""
        ...

    def get(self, name: str) -> defer.Deferred[Final | None]:
        """The name's final state, if kept and not expired: never fails."""
        ...

    def put_receipt(self, transfer_id: str, name: str, snapshot: dict[str, Any], at: float) -> None:
        """Share a receipt (KIT.md section 4) taken at ``at``: never raises, never waits."""
        ...

    def get_receipt(self, transfer_id: str) -> defer.Deferred[Receipt | None]:
        """A shared receipt, if kept and not expired: never fails."""
        ...


# -- the records -------------------------------------------------------------------------------


def encode_final(record: Final) -> str:
    """A Final as one JSON text, ids and time included."""
    return json.dumps(
        {
            "v": RECORD_VERSION,
            "at": record.at,
            "doneId": record.done_id,
            "lastId": record.last_id,
            "state": record.state,
            "progress": record.progress,
            "done": record.done,
            "snapshot": record.snapshot,
        },
        separators=(",", ":"),
    )


def decode_final(text: str | bytes) -> Final:
    """A Final from ``encode_final``'s text; ValueError if it is not one."""
    try:
        data = json.loads(text)
        if data["v"] != RECORD_VERSION:
            raise ValueError(f"record version {data['v']!r}")
        parts = [data[key] for key in ("state", "progress", "done", "snapshot")]
        if not all(isinstance(part, dict) for part in parts):
            raise ValueError("not a final state")
        at, done_id, last_id = float(data["at"]), int(data["doneId"]), int(data["lastId"])
    except (KeyError, TypeError) as error:
        raise ValueError(f"not a final state: {error!r}") from None
    state, progress, done, snapshot = parts
    record = Final(state, progress, done, snapshot, at=at, done_id=done_id)
    record.last_id = max(last_id, done_id)
    return record


@dataclass(frozen=True)
class Receipt:
    """A receipt as it is shared: the pipe name, the ``?status`` snapshot, when."""

    name: str
    snapshot: dict[str, Any]
    at: float


def encode_receipt(receipt: Receipt) -> str:
    return json.dumps(
        {"v": RECORD_VERSION, "at": receipt.at, "name": receipt.name, "snapshot": receipt.snapshot},
        separators=(",", ":"),
    )


def decode_receipt(text: str | bytes) -> Receipt:
    """A Receipt from ``encode_receipt``'s text; ValueError if it is not one."""
    try:
        data = json.loads(text)
        if data["v"] != RECORD_VERSION or not isinstance(data["name"], str) or not isinstance(data["snapshot"], dict):
            raise ValueError("not a receipt")
        return Receipt(data["name"], data["snapshot"], float(data["at"]))
    except (KeyError, TypeError) as error:
        raise ValueError(f"not a receipt: {error!r}") from None


@dataclass(eq=False)
class _Write:
    """A value waiting for Redis, kept ``keep`` seconds from ``at``: a final
    (encoded when it is sent, so that its latest ``last_id`` goes) or a receipt."""

    at: float
    keep: float
    final: Final | None = None
    receipt: Receipt | None = None

    def text(self) -> str:
        if self.final is not None:
            return encode_final(self.final)
        assert self.receipt is not None
        return encode_receipt(self.receipt)


# -- this process's memory ------------------------------------------------------------------------


class MemoryStore:
    """The newest ``capacity`` finals, each for ``retain`` seconds: synchronous.

    ``on_drop`` hears of every name whose record is gone (expired or pushed
    out), so that the hub can forget its last event id.
    """

    mode = "memory"
    queued = 0

    def __init__(
        self,
        clock: IReactorTime,
        retain: float,
        capacity: int = MAX_RETAINED,
        on_drop: Callable[[str], None] | None = None,
    ) -> None:
        self.clock = clock
        self.retain = retain
        self.capacity = capacity
        self.on_drop = on_drop or (lambda name: None)
        self.errors: Counter[str] = Counter()
        # Oldest first: put() moves a name to the end.
        self._records: OrderedDict[str, Final] = OrderedDict()

    def __contains__(self, name: object) -> bool:
        return name in self._records

    def __len__(self) -> int:
        return len(self._records)

    def _expired(self, record: Final, now: float) -> bool:
        return now - record.at > self.retain

    def _drop(self, name: str) -> None:
        del self._records[name]
        self.on_drop(name)

    def peek(self, name: str) -> Final | None:
        """The name's record now, if it has one that has not expired."""
        record = self._records.get(name)
        if record is not None and self._expired(record, self.clock.seconds()):
            self._drop(name)
            return None
        return record

    def get(self, name: str) -> defer.Deferred[Final | None]:
        return defer.succeed(self.peek(name))

    # This process's receipts are the hub's Receipts: one box shares none.
    def put_receipt(self, transfer_id: str, name: str, snapshot: dict[str, Any], at: float) -> None:
        pass

    def get_receipt(self, transfer_id: str) -> defer.Deferred[Receipt | None]:
        return defer.succeed(None)

    def put(self, name: str, record: Final) -> None:
        self._records[name] = record
        self._records.move_to_end(name)
        while len(self._records) > self.capacity:
            self._drop(next(iter(self._records)))

    def adopt(self, name: str, record: Final) -> bool:
        """Keep a record read from a shared store, unless this one knows a newer end."""
        mine = self.peek(name)
        if (mine is not None and mine.at >= record.at) or self._expired(record, self.clock.seconds()):
            return False
        self.put(name, record)
        return True

    def expire(self) -> None:
        """Drop expired records from the oldest on (records read from a shared
        store may be older than their neighbours: ``peek`` drops those)."""
        now = self.clock.seconds()
        while self._records:
            name, record = next(iter(self._records.items()))
            if not self._expired(record, now):
                break
            self._drop(name)


# -- --store ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RedisAddress:
    """Where Redis is: a TCP host and port, or a unix socket's path; and a database."""

    host: str | None = None
    port: int = 6379
    path: str | None = None
    db: int = 0
    username: str | None = None
    password: str | None = None

    def endpoint(self, reactor: Any) -> IStreamClientEndpoint:
        if self.path is not None:
            return UNIXClientEndpoint(reactor, self.path, timeout=CONNECT_TIMEOUT)
        assert self.host is not None
        return HostnameEndpoint(reactor, self.host, self.port, timeout=CONNECT_TIMEOUT)

    def __str__(self) -> str:
        """For logs and health: never the password."""
        where = f"redis+unix://{self.path}" if self.path is not None else f"redis://{self.host}:{self.port}"
        return f"{where} db {self.db}"


def _db(text: str) -> int:
    if not text.isdigit() or len(text) > 5:
        raise ValueError(f"the database must be a number, not {text!r}")
    return int(text)


def parse_store(text: str) -> RedisAddress | None:
    """``--store``: None for ``memory``, else where Redis is. ValueError says what is wrong."""
    if text == "memory":
        return None
    parts = urlsplit(text)
    scheme = parts.scheme.lower()
    username = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password is not None else None
    if scheme == "redis":
        if parts.query or parts.fragment:
            raise ValueError("redis:// takes the database as its path (redis://HOST:PORT/DB), nothing after it")
        if not parts.hostname:
            raise ValueError("redis:// needs a host")
        try:
            port = parts.port or 6379
        except ValueError:
            raise ValueError("the port must be a number from 1 to 65535") from None
        path = parts.path.strip("/")
        return RedisAddress(
            host=parts.hostname, port=port, db=_db(path) if path else 0, username=username, password=password
        )
    if scheme == "redis+unix":
        if parts.hostname:
            raise ValueError("redis+unix:// takes an absolute path after its slashes: redis+unix:///run/redis.sock")
        if not parts.path.startswith("/") or parts.path == "/":
            raise ValueError("redis+unix:// needs the socket's absolute path")
        query = dict(parse_qsl(parts.query, keep_blank_values=True))
        if set(query) - {"db"}:
            raise ValueError("redis+unix:// takes only ?db=N")
        return RedisAddress(
            path=unquote(parts.path), db=_db(query.get("db", "0")), username=username, password=password
        )
    raise ValueError(f"unknown store {text!r}: use {STORE_FORMS}")


# -- Redis ----------------------------------------------------------------------------------------


class Pool(Protocol):
    """What the store needs of its connection: txredisapi's command handler."""

    @property
    def handler(self) -> Any: ...

    def disconnect(self) -> defer.Deferred[None]: ...


class _Factory(txredisapi.RedisFactory):  # type: ignore[misc]  # txredisapi ships no type hints
    """txredisapi's reconnecting pool, of one connection, that tells the store
    when it is ready (after AUTH and SELECT) and when it is gone."""

    initialDelay = 0.5
    maxDelay = 10.0

    def __init__(self, store: RedisStore, address: RedisAddress) -> None:
        super().__init__(
            str(address),
            address.db,
            1,
            isLazy=True,
            handler=txredisapi.ConnectionHandler,
            charset="utf-8",
            password=address.password,
            replyTimeout=REPLY_TIMEOUT,
            convertNumbers=False,
            username=address.username,
        )
        self.store = store
        # Fails once if Redis refuses AUTH or SELECT (txredisapi then stops
        # trying): nobody else listens to it in a lazy pool.
        self.deferred.addErrback(store.refused)

    def addConnection(self, conn: Any) -> None:
        super().addConnection(conn)
        if self.size:
            self.store.connection_made()

    def delConnection(self, conn: Any) -> None:
        super().delConnection(conn)
        if not self.size:
            self.store.connection_lost()


def connect(store: RedisStore) -> Pool:
    """Connect to ``store.address``, and keep reconnecting (with backoff) until told to stop."""
    factory = _Factory(store, store.address)
    factory.startConnecting(store.address.endpoint(store.reactor))
    return factory


class RedisStore(Service):
    """Finals and receipts in Redis, shared by the nodes of a cluster; a
    Twisted service (started and stopped with the daemon, after its drain)."""

    def __init__(
        self, reactor: Any, address: RedisAddress, retain: float, pool: Callable[[RedisStore], Pool] = connect
    ) -> None:
        self.reactor = reactor
        self._connect = pool
        self.address = address
        self.retain = retain
        self.errors: Counter[str] = Counter()
        self.connected = False
        self._pool: Pool | None = None
        # Waiting to be written (oldest first), and written but not acknowledged.
        # By Redis key: waiting to be written (oldest first), and written but
        # not yet acknowledged.
        self._queue: OrderedDict[str, _Write] = OrderedDict()
        self._writing: dict[str, _Write] = {}
        self._in_flight = 0
        self._reading: dict[str, list[defer.Deferred[Any]]] = {}
        self._flushed: list[defer.Deferred[None]] = []

    @property
    def mode(self) -> str:
        return "redis" if self.connected else "degraded"

    @property
    def queued(self) -> int:
        return len(self._queue) + self._in_flight

    # -- the service -------------------------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        self._pool = self._connect(self)
        log.info("retained state goes to {address}", address=str(self.address))

    @defer.inlineCallbacks
    def stopService(self) -> Any:
        super().stopService()
        if self.connected and self.queued:
            # The drain's last finals (transfers failed at shutdown) go out first.
            flushed: defer.Deferred[None] = defer.Deferred()
            self._flushed.append(flushed)
            flushed.addTimeout(FLUSH_TIMEOUT, self.reactor)
            try:
                yield flushed
            except defer.TimeoutError:
                log.warn("{count} final state(s) not written to Redis at shutdown", count=self.queued)
        if self._pool is not None:
            pool, self._pool = self._pool, None
            yield pool.disconnect()

    # -- the connection -----------------------------------------------------------------------------

    def connection_made(self) -> None:
        """Redis is there (after AUTH and SELECT): send what waits."""
        if not self.connected:
            self.connected = True
            log.info("connected to {address}", address=str(self.address))
        self._pump()

    def connection_lost(self) -> None:
        """No connection: reads answer "not kept", writes wait."""
        if self.connected:
            self.connected = False
            if self.running:
                log.warn(
                    "lost {address}: retained state falls back to memory until it is back", address=str(self.address)
                )

    def refused(self, failure: Failure) -> None:
        """Redis refused AUTH or SELECT: txredisapi has stopped trying."""
        self.errors["connect"] += 1
        log.warn(
            "{address} refused us ({why}): retained state stays in memory",
            address=str(self.address),
            why=failure.getErrorMessage(),
        )

    def _command(self, timeout: float, command: str, *args: object, **options: object) -> defer.Deferred[Any]:
        """Send one command (a txredisapi method); its answer, or a failure
        after ``timeout`` at the latest.

        The library's own Deferred is never cancelled: a late answer is ignored.
        """
        result: defer.Deferred[Any] = defer.Deferred()

        def settle(outcome: object) -> None:
            if timer.active():
                timer.cancel()
            if not result.called:
                if isinstance(outcome, Failure):
                    result.errback(outcome)
                else:
                    result.callback(outcome)

        def late() -> None:
            if not result.called:
                result.errback(txredisapi.TimeoutError(f"no answer from Redis in {timeout:g} s"))

        timer = self.reactor.callLater(timeout, late)
        assert self._pool is not None
        defer.maybeDeferred(getattr(self._pool.handler, command), *args, **options).addBoth(settle)
        return result

    # -- writes ---------------------------------------------------------------------------------------

    def put(self, name: str, record: Final) -> None:
        self._enqueue(KEY_PREFIX + name, _Write(record.at, self.retain, final=record))

    def put_receipt(self, transfer_id: str, name: str, snapshot: dict[str, Any], at: float) -> None:
        self._enqueue(RECEIPT_PREFIX + transfer_id, _Write(at, RECEIPT_SECONDS, receipt=Receipt(name, snapshot, at)))

    def _enqueue(self, key: str, write: _Write) -> None:
        self._queue.pop(key, None)
        self._queue[key] = write
        while len(self._queue) > MAX_QUEUED:
            self._queue.popitem(last=False)
            self.errors["dropped"] += 1
        self._pump()

    def _pump(self) -> None:
        while self.connected and self._queue and self._in_flight < MAX_WRITES_IN_FLIGHT:
            key, write = self._queue.popitem(last=False)
            ttl = int((write.keep - (self.reactor.seconds() - write.at)) * 1000)
            if ttl <= 0:
                continue
            self._in_flight += 1
            self._writing[key] = write
            written = self._command(WRITE_TIMEOUT, "set", key, write.text(), pexpire=ttl)
            written.addCallbacks(self._written, self._not_written, callbackArgs=(key, write), errbackArgs=(key, write))
        self._maybe_flushed()

    def _settled(self, key: str, write: _Write) -> None:
        self._in_flight -= 1
        if self._writing.get(key) is write:
            del self._writing[key]

    def _written(self, answer: object, key: str, write: _Write) -> None:
        self._settled(key, write)
        self._pump()

    def _not_written(self, failure: Failure, key: str, write: _Write) -> None:
        latest = self._writing.get(key) is write
        self._settled(key, write)
        self.errors["put"] += 1
        if isinstance(failure.value, txredisapi.ResponseError):
            # Redis said no (out of memory, a read-only replica): not retried.
            log.warn("Redis refused a write: {why}", why=failure.getErrorMessage())
        elif latest and key not in self._queue:
            # The connection failed: again once it is back, unless a newer one came.
            self._queue[key] = write
            self._queue.move_to_end(key, last=False)
        self._maybe_flushed()

    def _maybe_flushed(self) -> None:
        if self._flushed and not self.queued:
            flushed, self._flushed = self._flushed, []
            for each in flushed:
                if not each.called:
                    each.callback(None)

    # -- reads ----------------------------------------------------------------------------------------

    def _pending(self, key: str) -> _Write | None:
        """A value not yet acknowledged by Redis: read your own writes."""
        return self._queue.get(key) or self._writing.get(key)

    def get(self, name: str) -> defer.Deferred[Final | None]:
        pending = self._pending(KEY_PREFIX + name)
        if pending is not None:
            return defer.succeed(pending.final)
        return self._lookup(KEY_PREFIX + name, decode_final, self.retain)

    def get_receipt(self, transfer_id: str) -> defer.Deferred[Receipt | None]:
        pending = self._pending(RECEIPT_PREFIX + transfer_id)
        if pending is not None:
            return defer.succeed(pending.receipt)
        return self._lookup(RECEIPT_PREFIX + transfer_id, decode_receipt, RECEIPT_SECONDS)

    def _lookup(self, key: str, decode: Callable[[str | bytes], Any], keep: float) -> defer.Deferred[Any]:
        """One ``GET`` of ``key`` for every reader that asks meanwhile; None when Redis is away."""
        if not self.connected:
            return defer.succeed(None)
        readers = self._reading.get(key)
        if readers is None:
            if len(self._reading) >= MAX_READS_IN_FLIGHT:
                self.errors["get"] += 1
                return defer.succeed(None)
            readers = self._reading[key] = []
            read = self._command(READ_TIMEOUT, "get", key)
            read.addBoth(self._read, key, decode, keep)
        waiting: defer.Deferred[Any] = defer.Deferred()
        readers.append(waiting)
        return waiting

    def _read(self, answer: object, key: str, decode: Callable[[str | bytes], Any], keep: float) -> None:
        readers = self._reading.pop(key, [])
        value: Any = None
        if isinstance(answer, Failure):
            self.errors["get"] += 1
            log.info("nothing read from Redis: {why}", why=answer.getErrorMessage())
        elif isinstance(answer, str | bytes):
            try:
                value = decode(answer)
            except ValueError as error:
                self.errors["get"] += 1
                log.warn("a value in Redis is unreadable: {why}", why=str(error))
            if value is not None and self.reactor.seconds() - value.at > keep:
                value = None
        for waiting in readers:
            if not waiting.called:  # cancelled when its client left
                waiting.callback(value)
