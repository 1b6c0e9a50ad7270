"""The spectator hub: who watches which name, and what they are sent.

Spectators are never on the data path. The pipes only tell the hub that
something changed (``changed``/``ended``); figures are read on the hub's one
``LoopingCall`` for the whole daemon, and every event is encoded once per
name, not once per spectator. A spectator whose socket is full is skipped:
it gets the latest figures when it drains (latest wins), and its ``state``
and ``done`` events are kept, one of each, so its memory stays bounded.

The lifecycle of a stream (KIT.md section 1): ids are ``max(last id + 1,
Unix time in microseconds)`` per name, so they increase across streams,
transfers and restarts; a plain stream carries one transfer and ends right
after its ``done``; a reconnect that has seen the latest ``done`` gets 204
(see ``Hub.seen_end``); ``follow`` streams stay open across transfers.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IPushProducer, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from zope.interface import implementer

from hoodypipe import sse
from hoodypipe.errors import HTTPError
from hoodypipe.fairshare import Shares
from hoodypipe.pipes import State
from hoodypipe.progress import Final, Meter, progress_event, snapshot, state_event, text_line
from hoodypipe.receipts import Receipts
from hoodypipe.store import MAX_RETAINED, MemoryStore

if TYPE_CHECKING:
    from collections.abc import Callable

    from twisted.web.server import Request

    from hoodypipe.pipes import Pipe
    from hoodypipe.store import FinalStore, Receipt

log = Logger()

HEARTBEAT_SECONDS = 15.0
TEXT_SECONDS = 1.0
RETRY_LATER = {b"Retry-After": b"30"}


@dataclass
class HubLimits:
    max_spectators: int = 50
    max_watched_paths: int = 500
    window: float = 300.0
    interval: float = 0.25
    retain: float = 86400.0


@implementer(IPushProducer)
class Spectator:
    """One open ``?progress`` stream (SSE or text)."""

    def __init__(
        self,
        hub: Hub,
        name: str,
        request: Request,
        kind: str,
        opened: float,
        follow: bool = False,
        client: str | None = None,
    ) -> None:
        self.hub = hub
        self.client = client
        self.name = name
        self.request = request
        self.kind = kind  # "sse" or "text"
        self.follow = follow  # stays open across transfers
        self.opened = opened
        self.full = False
        self.closed = False
        # What a full socket could not take yet: the latest of each kind, but
        # every ``done`` (a one-shot trigger is never merged away).
        self.held: dict[str, bytes] = {}
        self._dones = 0
        self.done: Deferred[None] = Deferred(lambda _: self.hub._left(self))

    # Twisted pauses us while the client's socket buffer is full.
    def pauseProducing(self) -> None:
        self.full = True

    def resumeProducing(self) -> None:
        self.full = False
        self._flush_held()

    def stopProducing(self) -> None:
        pass

    def _flush_held(self) -> None:
        held, self.held = self.held, {}
        # In the order they came (so ids keep increasing).
        for data in held.values():
            self.request.write(data)

    def send(self, kind: str, data: bytes) -> None:
        if self.closed:
            return
        if self.full:
            if kind == "done":
                self._dones += 1
                kind = f"done {self._dones}"
            self.held.pop(kind, None)  # re-inserted last: held keeps arrival order
            self.held[kind] = data
        else:
            self.request.write(data)

    def close(self) -> None:
        """End the stream at an event boundary, after what it still holds.

        What is held is at most one event of each kind, so handing it to the
        transport of a slow reader keeps memory bounded, and a ``done`` that
        was due still reaches it.
        """
        if self.closed:
            return
        self.closed = True
        self._flush_held()
        self.request.unregisterProducer()
        self.request.finish()
        self.hub._left(self)
        if not self.done.called:
            self.done.callback(None)


class Watch:
    """The spectators of one name, and whose share of the caps they hold."""

    def __init__(self, max_spectators: int, opener: str | None) -> None:
        self.spectators: list[Spectator] = []
        self.last_state: dict[str, Any] | None = None
        # The client whose share of --max-watched-paths this name takes.
        self.opener = opener
        self.shares = Shares(max_spectators)


def parse_last_event_id(value: bytes | None) -> int | None:
    """A ``Last-Event-ID`` that is one of our ids (a decimal integer), else None."""
    if value is None:
        return None
    value = value.strip()
    if not value or len(value) > 19 or not value.isdigit():
        return None
    return int(value)


class Hub:
    """Feeds ``?progress`` streams and answers ``?status`` for every name."""

    def __init__(
        self,
        clock: IReactorTime,
        lookup: Callable[[str], Pipe | None],
        limits: HubLimits | None = None,
        store: FinalStore | None = None,
    ) -> None:
        self.clock = clock
        # The live pipe of a name (Registry.pipes.get): the hub only reads it.
        self._lookup = lookup
        self.limits = limits or HubLimits()
        self.watches: dict[str, Watch] = {}
        self.meters: dict[Pipe, Meter] = {}
        # Finals this process keeps (synchronous), and where they are shared:
        # the same MemoryStore on one box, Redis in a cluster (see store.py).
        self.finals = MemoryStore(clock, self.limits.retain, MAX_RETAINED, on_drop=self._forget_id)
        self.receipts = Receipts(clock)
        # The transfer ids of the retained finals, both ways (a chosen id they
        # hold may not be taken again).
        self._retained_ids: dict[str, str] = {}
        self._retained_id_of: dict[str, str] = {}
        self.store: FinalStore = store or self.finals
        self.watched = Shares(self.limits.max_watched_paths)
        # The last event id of every name that is watched, live or retained
        # (a retained one also keeps it on its Final, for a shared store).
        self.last_ids: dict[str, int] = {}
        self.ticks = 0
        self._loop = LoopingCall(self.tick)
        self._loop.clock = clock

    def start(self) -> None:
        self._loop.start(self.limits.interval, now=False)

    def stop(self) -> None:
        if self._loop.running:
            self._loop.stop()

    @property
    def running(self) -> bool:
        return bool(self._loop.running)

    # -- what a name looks like now -------------------------------------------------

    def live(self, name: str) -> Pipe | None:
        return self._lookup(name)

    def final(self, name: str) -> Final | None:
        return self.finals.peek(name)

    def needs_recall(self, name: str, transfer_id: str | None = None) -> bool:
        """Whether only the shared store may know how ``name``'s last transfer
        ended (or, for ``?status&transfer=``, that transfer's receipt)."""
        if self.store is self.finals:
            return False
        if transfer_id is not None and self.transfer(name, transfer_id) is None:
            return True
        return self.live(name) is None and self.finals.peek(name) is None

    def recall(self, name: str, transfer_id: str | None = None) -> Deferred[None]:
        """Bring ``name``'s final state, and the receipt of ``transfer_id``,
        from the shared store into memory, if it has them."""
        # One after the other: a Deferred that Klein cancels (its client left)
        # must fail with CancelledError itself, which gatherResults would wrap.
        asked: Deferred[None] = succeed(None)
        if self.live(name) is None and self.finals.peek(name) is None:
            asked = self.store.get(name).addCallback(self._adopt, name)
        if transfer_id is not None:
            asked.addCallback(self._recall_receipt, name, transfer_id)
        return asked

    def _recall_receipt(self, _: None, name: str, transfer_id: str) -> Deferred[None] | None:
        if self.transfer(name, transfer_id) is not None:
            return None  # the final just recalled is that transfer's
        return self.store.get_receipt(transfer_id).addCallback(self._adopt_receipt, transfer_id, name)

    def _adopt(self, record: Final | None, name: str) -> None:
        if record is not None and self.finals.adopt(name, record):
            transfer_id = record.snapshot.get("transferId")
            self._unindex(name)
            if transfer_id is not None:
                self._retained_ids[transfer_id] = name
                self._retained_id_of[name] = transfer_id

    def _adopt_receipt(self, receipt: Receipt | None, transfer_id: str, name: str) -> None:
        if receipt is not None and receipt.name == name and transfer_id not in self.receipts:
            self.receipts.put(transfer_id, name, receipt.snapshot)

    def snapshot(self, name: str) -> dict[str, Any]:
        pipe = self.live(name)
        if pipe is None:
            record = self.final(name)
            if record is not None:
                return record.snapshot
        return snapshot(pipe, self.meters.get(pipe) if pipe else None, self.clock.seconds())

    # -- from the pipes (PipeObserver) ---------------------------------------------

    def changed(self, pipe: Pipe) -> None:
        if pipe.state is State.STREAMING and pipe not in self.meters:
            meter = self.meters[pipe] = Meter()
            meter.sample(self.clock.seconds(), 0)
        watch = self.watches.get(pipe.name)
        if watch is None:
            self._forget_id(pipe.name)
            return
        current = self.live(pipe.name)
        if current is not None and current is not pipe:
            return  # an old transfer's news; watchers follow the new one
        self._send_state(pipe.name, watch, state_event(current))

    def ended(self, pipe: Pipe) -> None:
        meter = self.meters.pop(pipe, None)
        watch = self.watches.get(pipe.name)
        broadcast = watch is not None and self.live(pipe.name) is None
        # The final state and progress go out before the done, so they take
        # the lower ids; D is the done's id, watched or not.
        first_ids = (self.next_id(pipe.name), self.next_id(pipe.name)) if broadcast else None
        record = Final.of(pipe, meter, self.clock.seconds(), done_id=self.next_id(pipe.name))
        self._unindex(pipe.name)
        self.finals.put(pipe.name, record)
        if pipe.transfer_id is not None:
            self._retained_ids[pipe.transfer_id] = pipe.name
            self._retained_id_of[pipe.name] = pipe.transfer_id
            if pipe.hashed or pipe.chosen_id:
                self.receipts.put(pipe.transfer_id, pipe.name, record.snapshot)
                self.store.put_receipt(pipe.transfer_id, pipe.name, record.snapshot, record.at)
        if self.store is not self.finals:
            self.store.put(pipe.name, record)
        if watch is not None and first_ids is not None:
            self._send_final(pipe.name, watch, record, first_ids)

    def knows_transfer(self, transfer_id: str) -> bool:
        """Whether a retained final or a receipt holds this id (PipeObserver)."""
        name = self._retained_ids.get(transfer_id)
        return transfer_id in self.receipts or (name is not None and self.finals.peek(name) is not None)

    def transfer(self, name: str, transfer_id: str) -> dict[str, Any] | None:
        """``?status&transfer=``: the name's live or retained transfer with this id, else its receipt."""
        pipe = self.live(name)
        if pipe is not None and pipe.transfer_id == transfer_id:
            return snapshot(pipe, self.meters.get(pipe), self.clock.seconds())
        record = self.finals.peek(name)
        if record is not None and self._retained_id_of.get(name) == transfer_id:
            return record.snapshot
        receipt = self.receipts.get(transfer_id)
        if receipt is not None and receipt[0] == name:
            return receipt[1]
        return None

    def _unindex(self, name: str) -> None:
        old = self._retained_id_of.pop(name, None)
        if old is not None and self._retained_ids.get(old) == name:
            del self._retained_ids[old]

    # -- ids ------------------------------------------------------------------------

    def next_id(self, name: str) -> int:
        """A fresh event id for ``name``: above all its earlier ones, and at
        least the Unix time in microseconds, so a restart (which forgets the
        last id unless it was retained) still goes upwards."""
        record = self.finals.peek(name)
        last = max(self.last_ids.get(name, 0), record.last_id if record else 0)
        new = max(last + 1, int(self.clock.seconds() * 1_000_000))
        self.last_ids[name] = new
        if record is not None:
            record.last_id = new
        return new

    def _forget_id(self, name: str) -> None:
        """Nothing of ``name`` is left to number: its ids may start from the clock."""
        if name not in self.watches and name not in self.finals and self.live(name) is None:
            self.last_ids.pop(name, None)
        if name not in self.finals:
            self._unindex(name)

    def seen_end(self, name: str, last_event_id: int | None) -> bool:
        """Whether a reconnecting plain stream has already seen the name's
        latest ``done`` and nothing newer has begun: it gets 204."""
        if last_event_id is None or self.live(name) is not None:
            return False
        record = self.final(name)
        return record is not None and last_event_id >= record.done_id

    # -- sending -------------------------------------------------------------------

    def _send_state(self, name: str, watch: Watch, state: dict[str, Any]) -> None:
        if state == watch.last_state:
            return
        watch.last_state = state
        data = sse.event("state", state, self.next_id(name))
        line = self._text(name)
        for spectator in list(watch.spectators):
            spectator.send("state", data) if spectator.kind == "sse" else spectator.send("line", line)

    def _send_final(self, name: str, watch: Watch, record: Final, ids: tuple[int, int]) -> None:
        watch.last_state = record.state
        state = sse.event("state", record.state, ids[0])
        progress = sse.event("progress", record.progress, ids[1])
        done = sse.event("done", record.done, record.done_id)
        line = self._final_line(record)
        for spectator in list(watch.spectators):
            if spectator.kind == "sse":
                spectator.send("state", state)
                spectator.send("progress", progress)
                spectator.send("done", done)
            else:
                spectator.send("line", line)
            if not spectator.follow:
                spectator.close()  # a plain stream carries one transfer

    @staticmethod
    def _final_line(record: Final) -> bytes:
        return (text_line({**record.snapshot, **record.done}) + "\n").encode()

    def _text(self, name: str) -> bytes:
        record = self.final(name) if self.live(name) is None else None
        if record is not None:
            return self._final_line(record)
        return (text_line(self.snapshot(name)) + "\n").encode()

    def tick(self) -> None:
        """Every ``--progress-interval``: sample meters, send figures, keep time."""
        self.ticks += 1
        now = self.clock.seconds()
        for streaming, meter in self.meters.items():
            meter.sample(now, streaming.bytes_transferred)
        text_due = self.ticks % max(1, round(TEXT_SECONDS / self.limits.interval)) == 0
        beat_due = self.ticks % max(1, round(HEARTBEAT_SECONDS / self.limits.interval)) == 0
        for name, watch in list(self.watches.items()):
            pipe = self.live(name)
            if pipe is not None and pipe.state is State.STREAMING:
                data = sse.event("progress", progress_event(pipe, self.meters.get(pipe), now), self.next_id(name))
                for spectator in watch.spectators:
                    if spectator.kind == "sse":
                        spectator.send("progress", data)
            if text_due:
                line = self._text(name)
                for spectator in watch.spectators:
                    if spectator.kind == "text":
                        spectator.send("line", line)
            for spectator in list(watch.spectators):
                if now - spectator.opened >= self.limits.window:
                    spectator.close()
                elif beat_due and spectator.kind == "sse":
                    spectator.send("beat", sse.HEARTBEAT)
        if self.ticks % max(1, round(60 / self.limits.interval)) == 0:
            self.finals.expire()

    # -- spectators coming and going ---------------------------------------------------

    def watch(
        self,
        name: str,
        request: Request,
        kind: str,
        follow: bool = False,
        last_event_id: int | None = None,
        client: str | None = None,
    ) -> Spectator:
        """Open a stream on ``name``; 429 past the caps or past ``client``'s fair share of them."""
        watch = self.watches.get(name)
        if watch is None:
            refused = self.watched.refusal(client)
            if refused == "full":
                raise HTTPError(429, "Too many watched pipes on this server; try again later.", RETRY_LATER)
            if refused is not None:
                raise HTTPError(429, "Too many watched pipes from your address; try again later.", RETRY_LATER)
            watch = Watch(self.limits.max_spectators, client)
        refused = watch.shares.refusal(client)
        if refused == "full":
            raise HTTPError(
                429,
                f"Too many spectators on this pipe (max {self.limits.max_spectators}); try again later.",
                RETRY_LATER,
            )
        if refused is not None:
            raise HTTPError(429, "Too many spectators from your address on this pipe; try again later.", RETRY_LATER)
        if name not in self.watches:
            self.watches[name] = watch
            self.watched.take(client)
        spectator = Spectator(self, name, request, kind, self.clock.seconds(), follow, client)
        watch.shares.take(client)
        watch.spectators.append(spectator)
        request.registerProducer(spectator, True)
        self._greet(name, spectator, last_event_id)
        return spectator

    def _greet(self, name: str, spectator: Spectator, last_event_id: int | None) -> None:
        """What a new stream gets at once: where things stand, or how they ended.

        Every event here is for this stream alone, so each takes a fresh id.
        """
        pipe = self.live(name)
        record = self.final(name)
        if spectator.kind == "text":
            spectator.send("line", self._text(name))
            if pipe is None and record is not None and not spectator.follow:
                spectator.close()
            return
        spectator.send("retry", sse.retry())
        missed_done = record is not None and (last_event_id is None or last_event_id < record.done_id)
        if pipe is None and record is not None:
            spectator.send("state", sse.event("state", record.state, self.next_id(name)))
            if not missed_done:
                return  # follow only: a plain stream that saw the end got 204
            spectator.send("progress", sse.event("progress", record.progress, self.next_id(name)))
            spectator.send("done", sse.event("done", record.done, self.next_id(name)))
            if not spectator.follow:
                spectator.close()
            return
        if pipe is not None and record is not None and spectator.follow and last_event_id is not None and missed_done:
            # A follower that was away when the previous transfer ended.
            spectator.send("done", sse.event("done", record.done, self.next_id(name)))
        spectator.send("state", sse.event("state", state_event(pipe), self.next_id(name)))
        if pipe is not None and pipe.state is State.STREAMING:
            figures = progress_event(pipe, self.meters.get(pipe), self.clock.seconds())
            spectator.send("progress", sse.event("progress", figures, self.next_id(name)))

    def _left(self, spectator: Spectator) -> None:
        spectator.closed = True
        watch = self.watches.get(spectator.name)
        if watch is None or spectator not in watch.spectators:
            return
        watch.spectators.remove(spectator)
        watch.shares.give(spectator.client)
        if not watch.spectators:
            del self.watches[spectator.name]
            self.watched.give(watch.opener)
            self._forget_id(spectator.name)

    def close_all(self) -> None:
        for watch in list(self.watches.values()):
            for spectator in list(watch.spectators):
                spectator.close()

    @property
    def spectator_count(self) -> int:
        return sum(len(w.spectators) for w in self.watches.values())


def json_body(data: dict[str, Any]) -> bytes:
    return json.dumps(data, separators=(",", ":")).encode() + b"\n"
