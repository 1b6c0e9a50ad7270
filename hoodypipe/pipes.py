"""One transfer's lifecycle (Pipe) and the daemon's table of them (Registry).

No I/O here: the parties are small objects the web layer hands in (see
``parties.SenderParty`` and ``parties.ReceiverParty``), and time comes from an injected
``IReactorTime``. Every transition goes through ``Pipe._enter`` so the
lifecycle can be read off ``TRANSITIONS``.
"""

from __future__ import annotations

import enum
import secrets
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, TypeVar

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from hoodypipe.digest import InlineDigest
from hoodypipe.errors import HTTPError
from hoodypipe.fairshare import Shares
from hoodypipe.parties import Party, ReceiverParty, SenderParty
from hoodypipe.refusal import Rejections
from hoodypipe.relay import Relay, step_for
from hoodypipe.waiting import Waiters

if TYPE_CHECKING:
    from collections.abc import Callable

    from hoodypipe.digest import Hasher
    from hoodypipe.frame import Payload

log = Logger()

P = TypeVar("P", SenderParty, ReceiverParty)


class State(enum.StrEnum):
    IDLE = "idle"
    WAITING = "waiting"
    STREAMING = "streaming"
    COMPLETE = "complete"
    FAILED = "failed"


TRANSITIONS: dict[State, frozenset[State]] = {
    State.IDLE: frozenset({State.WAITING}),
    # WAITING -> IDLE: every waiting party left before the start.
    State.WAITING: frozenset({State.STREAMING, State.FAILED, State.IDLE}),
    State.STREAMING: frozenset({State.COMPLETE, State.FAILED}),
    State.COMPLETE: frozenset(),
    State.FAILED: frozenset(),
}


class Reason:
    """Why a transfer failed, as spectators see it (``done.reason``)."""

    SENDER_DISCONNECTED = "Sender disconnected"
    RECEIVERS_DISCONNECTED = "All receivers disconnected"
    TIMED_OUT = "Timed out"
    IDLE = "Idle timeout"
    MALFORMED = "Malformed upload"
    SHUTDOWN = "Server is shutting down"


class PipeObserver(Protocol):
    """Who wants to know about transitions (the progress hub)."""

    def changed(self, pipe: Pipe) -> None: ...

    def ended(self, pipe: Pipe) -> None: ...

    def knows_transfer(self, transfer_id: str) -> bool:
        """Whether a retained transfer or a receipt holds this id."""
        ...


class _NoObserver:
    def changed(self, pipe: Pipe) -> None:
        pass

    def ended(self, pipe: Pipe) -> None:
        pass

    def knows_transfer(self, transfer_id: str) -> bool:
        return False


@dataclass
class Limits:
    max_receivers: int = 256
    max_pending: int = 1000
    max_active: int = 1000
    max_waiting_per_address: int = 100
    max_active_per_address: int = 100
    wait_timeout: float = 300.0
    idle_timeout: float = 300.0
    # A streaming transfer that moves less than this, on average over
    # --idle-timeout, counts as idle: one byte every few minutes is no transfer.
    min_rate: float = 64.0


RETRY_AFTER = {b"Retry-After": b"5"}
# How often the end of a transfer asks whether the receivers' kernels have
# acknowledged every byte: soon, then less and less often.
DELIVERY_POLL_FIRST = 0.002
DELIVERY_POLL_MAX = 0.25


class Pipe:
    """One name's transfer, from the first party to ``complete`` or ``failed``."""

    def __init__(self, name: str, n: int, registry: Registry, client: str | None = None) -> None:
        self.name = name
        self.n = n
        self.registry = registry
        # Whose share of the caps this pipe takes: the client that opened it
        # (while waiting), then its sender's (while streaming).
        self.client = client
        self.clock = registry.clock
        self.state = State.IDLE
        self.history: list[tuple[State, float]] = []
        self.sender: SenderParty | None = None
        self.receivers: list[ReceiverParty] = []
        self.relay: Relay | None = None
        self.reason: str | None = None
        self.started_at = self.clock.seconds()
        self.streaming_at: float | None = None
        self.finished_at: float | None = None
        self.total_bytes: int | None = None
        # The transfer's id: the sender's ?transfer= from its arrival, else a
        # random one from the start. A receipt is kept for a chosen id or a digest.
        self.transfer_id: str | None = None
        self.chosen_id = False
        # ?sha256 (the sender's, or a receiver's there at the start): hashed as relayed.
        self.sha256: str | None = None
        self.hashed = False
        # Bytes read before the start: reading is paused from the end of the
        # sender's headers, so this is at most what one socket read brought.
        self._early: list[Payload] = []
        self._upload_done = False
        self._timers: dict[Party, IDelayedCall] = {}
        self._idle_check: IDelayedCall | None = None
        self._idle_mark = 0
        self._idle_since = 0.0
        self._rate_mark = 0
        self._rate_since = 0.0
        self._delivery_check: IDelayedCall | None = None
        self._delivery_poll = DELIVERY_POLL_FIRST / 2
        self._unacknowledged = 2**63
        # The end: every byte is written; receivers that close now had them all.
        self._delivering = False
        self._delivered = 0
        # Who took the slot of each cap, so that the same one is given back.
        self.client_of: dict[State, str | None] = {}
        self._enter(State.WAITING)

    # -- what spectators read ------------------------------------------------

    @property
    def bytes_transferred(self) -> int:
        return self.relay.bytes if self.relay else 0

    @property
    def has_sender(self) -> bool:
        return self.sender is not None

    @property
    def active_receivers(self) -> int:
        # Receivers that already closed with every byte still count: they got it.
        return len(self.relay.receivers) + self._delivered if self.relay else len(self.receivers)

    @property
    def finished(self) -> bool:
        return self.state in (State.COMPLETE, State.FAILED)

    # -- arrivals --------------------------------------------------------------

    def _check_join(self, party: Party, n: int) -> None:
        if self.state is not State.WAITING:
            raise HTTPError(400, f"The pipe '{self.name}' is already streaming.")
        if n != self.n:
            raise HTTPError(
                400,
                f"The number of receivers does not match: this pipe was opened with n={self.n}, not n={n}.",
            )

    def add_sender(self, sender: SenderParty) -> None:
        self._check_join(sender, sender.n)
        if self.sender is not None:
            raise HTTPError(400, f"Another sender is already connected to '{self.name}'.")
        if len(self.receivers) < self.n:
            self.registry.check_address(sender)
        if sender.transfer is not None:
            self.registry.claim_transfer_id(sender.transfer, self)
            self.chosen_id = True
        # Not a byte is read from the sender until its receivers are here.
        sender.pause_reading()
        self.sender = sender
        self.total_bytes = sender.headers.total_bytes
        sender.say(f"Waiting for {self.n} receiver(s) to connect...")
        if self.receivers:
            sender.say(f"{len(self.receivers)} receiver(s) already connected.")
        refused = self.registry.why_not_start(sender) if len(self.receivers) == self.n else None
        if refused is not None:
            self._sender_gone()
            sender.end(refused)
            return
        self._wait(sender, sender.wait, self._sender_timed_out)
        self.registry.observer.changed(self)
        self._maybe_start()

    def add_receiver(self, receiver: ReceiverParty) -> None:
        self._check_join(receiver, receiver.n)
        if len(self.receivers) >= self.n:
            raise HTTPError(400, f"The pipe '{self.name}' already has {self.n} receiver(s).")
        starts = self.sender is not None and len(self.receivers) + 1 == self.n
        refused = self.registry.why_not_start(self.sender) if starts and self.sender is not None else None
        if refused is not None:
            raise HTTPError(429, f"{refused}.", RETRY_AFTER)
        if not starts:
            self.registry.check_address(receiver)
        self.receivers.append(receiver)
        self._wait(receiver, receiver.wait, self._receiver_timed_out)
        self.registry.observer.changed(self)
        self._maybe_start()

    def _wait(self, party: Party, seconds: float, expire: Callable[..., object]) -> None:
        """A party waits for its peers: its timer runs and its address holds a slot."""
        self._timers[party] = self.clock.callLater(seconds, expire, party)
        self.registry.hold(party)

    def _unwait(self, party: Party) -> None:
        timer = self._timers.pop(party, None)
        if timer is None:
            return
        if timer.active():
            timer.cancel()
        self.registry.release(party)

    def _sender_timed_out(self, sender: SenderParty) -> None:
        self._unwait(sender)
        self._sender_gone(keep_id=not self.receivers)  # alone, it fails with its id
        sender.end("Timed out waiting for receivers")
        self._after_waiting_party_left(timed_out=True)

    def _sender_gone(self, keep_id: bool = False) -> None:
        """A waiting sender left: the receivers wait on for another, with no id of its."""
        self.sender = None
        if self.chosen_id and not keep_id:
            self.registry.release_transfer_id(self)
            self.chosen_id = False

    def _receiver_timed_out(self, receiver: ReceiverParty) -> None:
        self._unwait(receiver)
        self.receivers.remove(receiver)
        missing = "sender" if self.sender is None else "receivers"
        receiver.refuse(HTTPError(408, f"Timed out waiting for {missing}."))
        if self.sender is not None:
            self.sender.say("A receiver disconnected.")  # and it waits on for another
        self._after_waiting_party_left(timed_out=True)

    def _after_waiting_party_left(self, timed_out: bool = False) -> None:
        if self.sender is None and not self.receivers:
            if timed_out:
                self._fail(Reason.TIMED_OUT)
            else:
                self._enter(State.IDLE)
                self.registry.forget(self)
        else:
            self.registry.observer.changed(self)

    # -- the transfer ----------------------------------------------------------

    def _maybe_start(self) -> None:
        if self.sender is None or len(self.receivers) < self.n:
            return
        for party in list(self._timers):
            self._unwait(party)
        self.streaming_at = self.clock.seconds()
        self.hashed = self.sender.sha256 or any(receiver.sha256 for receiver in self.receivers)
        self.relay = Relay(self.sender, self.receivers, self.registry.hasher() if self.hashed else None)
        self.receivers = []
        if self.transfer_id is None:
            self.registry.claim_transfer_id(secrets.token_urlsafe(16), self)
        self.client = self.sender.address
        self._enter(State.STREAMING)
        log.info("transfer started: {name} to {n} receiver(s)", event="transfer_start", name=self.name, n=self.n)
        self.sender.say(f"Streaming to {self.n} receiver(s)...")
        assert self.transfer_id is not None
        for receiver in self.relay.receivers:
            receiver.begin(self.sender.headers, self.transfer_id)
        self.relay.start(self._early, step_for(self.registry.streaming_receivers))
        self._early = []
        self._schedule_idle_check()
        if self._upload_done:
            self._finish_upload()

    def data(self, data: Payload) -> None:
        """What one socket read brought of the sender's body: the hot path."""
        if self.relay is not None:
            self.relay.write(data)
        elif not self.finished:
            self._early.append(data)

    def upload_complete(self) -> None:
        """The sender's body arrived in full."""
        self._upload_done = True
        if self.state is State.STREAMING:
            self._finish_upload()

    def _finish_upload(self) -> None:
        assert self.relay is not None
        if self.sender is not None:
            self.sender.say("Upload complete.")
        # Every byte is written to every receiver's transport: one that closes
        # from now on, having acknowledged them all, had the whole stream.
        self._delivering = True
        self.relay.when_flushed(self._await_delivery)

    def _await_delivery(self) -> None:
        """Say complete only once every receiver's kernel has acknowledged the
        bytes (the transports have handed them all to the kernel by now).

        A few polls of each receiver's send queue, then of the stragglers,
        never longer apart than DELIVERY_POLL_MAX; progress of the queues counts
        as activity, so a receiver that stops acknowledging meets the idle
        timeout like any stalled transfer.
        """
        self._delivery_check = None
        if self.state is not State.STREAMING:
            return
        assert self.relay is not None
        unacknowledged = sum(receiver.unacknowledged() for receiver in self.relay.receivers)
        if unacknowledged == 0:
            if self.relay.digest is not None and self.sha256 is None:
                self.relay.digest.result(self._hashed)  # at once, or when the hashing thread is through
            else:
                self._complete()
            return
        if unacknowledged < self._unacknowledged:
            self.relay.activity += 1
        self._unacknowledged = unacknowledged
        self._delivery_poll = min(self._delivery_poll * 2, DELIVERY_POLL_MAX)
        self._delivery_check = self.clock.callLater(self._delivery_poll, self._await_delivery)

    def _hashed(self, hexdigest: str) -> None:
        self.sha256 = hexdigest
        self._complete()

    def _complete(self) -> None:
        if self.state is not State.STREAMING:
            return
        assert self.relay is not None
        self.finished_at = self.clock.seconds()
        self._enter(State.COMPLETE)
        self._stop_idle_check()
        if self.sender is not None and self.sha256 is not None:
            self.sender.say(f"SHA-256: {self.sha256}")
        # The final state and the receipt are kept before the receivers'
        # bodies end, so a receiver can verify its download at once.
        self.registry.ended(self)
        for receiver in self.relay.receivers:
            receiver.finish()
        if self.sender is not None:
            self.sender.end(None)

    def fail(self, reason: str, sender_error: str | None = None) -> None:
        """End the transfer as failed: receivers' downloads break visibly."""
        if self.finished or self.state is State.IDLE:
            return
        self._fail(reason, sender_error)

    def _fail(self, reason: str, sender_error: str | None = None) -> None:
        for party in list(self._timers):
            self._unwait(party)
        self.reason = reason
        self.finished_at = self.clock.seconds()
        was_streaming = self.state is State.STREAMING
        if self.relay is not None and self.relay.digest is not None:
            self.relay.digest.cancel()
        self._enter(State.FAILED)
        self._stop_idle_check()
        receivers = self.relay.receivers if self.relay else self.receivers
        for receiver in list(receivers):
            if was_streaming:
                receiver.abort()
            else:
                receiver.refuse(HTTPError(503 if reason == Reason.SHUTDOWN else 408, f"{reason}."))
        sender, self.sender = self.sender, None
        if sender is not None:
            sender.end(sender_error or reason)
        self.registry.ended(self)

    # -- departures --------------------------------------------------------------

    def sender_lost(self) -> None:
        """The sender's connection went away."""
        if self.sender is None:
            return
        if self.state is State.WAITING:
            self._unwait(self.sender)
            self._sender_gone()
            self._early = []
            self._after_waiting_party_left()
        elif self.state is State.STREAMING:
            self.sender = None
            if not self._upload_done:
                self._fail(Reason.SENDER_DISCONNECTED)
            else:
                self.registry.observer.changed(self)

    def receiver_lost(self, receiver: ReceiverParty) -> None:
        """A receiver's connection went away (or its client gave up)."""
        if self.state is State.WAITING and receiver in self.receivers:
            self._unwait(receiver)
            self.receivers.remove(receiver)
            self._after_waiting_party_left()
        elif self.state is State.STREAMING and self.relay is not None:
            if receiver not in self.relay.receivers:
                return
            if self._delivering and receiver.left_with_everything():
                # It had every byte (a client of a known length closes when it
                # has): delivered, not lost.
                self.relay.remove(receiver)  # the delivery poll, or the relay's flush, goes on
                self._delivered += 1
                return
            if len(self.relay.receivers) == 1 and not self._delivered:
                # Fail before removing it: removing the last blocked receiver
                # would look like a flushed, complete transfer. (If others
                # already left with every byte, it was delivered to them.)
                self._fail(
                    Reason.RECEIVERS_DISCONNECTED,
                    "All receivers disconnected before transfer completed",
                )
                return
            if self.sender is not None:
                self.sender.say("A receiver disconnected.")
            self.relay.remove(receiver)  # may complete the transfer: the rest had drained
            if self.state is State.STREAMING:
                self.registry.observer.changed(self)

    # -- idle timeout ------------------------------------------------------------

    def _schedule_idle_check(self) -> None:
        # One timer per pipe compares the relay's activity counter, instead
        # of re-arming a timer for every chunk on the hot path; a stall is
        # caught within a quarter of the timeout after it is due.
        self._idle_since = self._rate_since = self.clock.seconds()
        self._idle_check = self.clock.callLater(self._idle_step(), self._check_idle)

    def _idle_step(self) -> float:
        return max(self.registry.limits.idle_timeout / 4, 0.001)

    def _check_idle(self) -> None:
        assert self.relay is not None
        now = self.clock.seconds()
        if self.relay.activity != self._idle_mark:
            self._idle_mark = self.relay.activity
            self._idle_since = now
        limits = self.registry.limits
        too_slow = False
        if now - self._rate_since >= limits.idle_timeout:
            # A trickle keeps the activity counter moving: judge the rate too.
            too_slow = self.relay.bytes - self._rate_mark < limits.min_rate * (now - self._rate_since)
            self._rate_mark, self._rate_since = self.relay.bytes, now
        if too_slow or now - self._idle_since >= limits.idle_timeout:
            self._idle_check = None
            self._fail(Reason.IDLE)
            return
        self._idle_check = self.clock.callLater(self._idle_step(), self._check_idle)

    def _stop_idle_check(self) -> None:
        for check in (self._idle_check, self._delivery_check):
            if check is not None and check.active():
                check.cancel()
        self._idle_check = self._delivery_check = None

    # -- lifecycle ---------------------------------------------------------------

    def _enter(self, state: State) -> None:
        if state not in TRANSITIONS[self.state]:
            raise AssertionError(f"pipe {self.name!r}: {self.state.value} -> {state.value}")
        self.state = state
        self.history.append((state, self.clock.seconds()))
        self.registry.transition(self)
        if state is State.STREAMING:
            self.registry.observer.changed(self)


class Registry:
    """The live pipes by name, the daemon-wide caps, and who to tell."""

    def __init__(
        self,
        clock: IReactorTime,
        limits: Limits | None = None,
        observer: PipeObserver | None = None,
        hasher: Callable[[], Hasher] = InlineDigest,
    ):
        self.clock = clock
        # Makes the ?sha256 hasher of a transfer (see digest.py).
        self.hasher = hasher
        self.limits = limits or Limits()
        self.observer: PipeObserver = observer or _NoObserver()
        self.pipes: dict[str, Pipe] = {}
        # Live pipes by transfer id (retained ones and receipts: the observer's).
        self.transfers: dict[str, Pipe] = {}
        # Fair shares of the daemon-wide caps (see fairshare.py): pipes
        # waiting for their parties, and transfers streaming, by client.
        self.pending = Shares(self.limits.max_pending)
        self.active = Shares(self.limits.max_active, per_client=self.limits.max_active_per_address)
        # Receivers of the transfers streaming now: the step budget counts them.
        self.streaming_receivers = 0
        self.shutting_down = False
        self._quiet = Waiters()  # for when_idle
        # Read by the metrics at scrape time.
        self.outcomes: Counter[str] = Counter()
        self.rejections = Rejections()
        self.bytes_relayed = 0
        # Waiting parties by client address, so one client cannot hold
        # every pending slot.
        self.waiting_by_address: Counter[str] = Counter()

    def claim_transfer_id(self, transfer_id: str, pipe: Pipe) -> None:
        """Give ``pipe`` this id: 409 if a live, retained or receipted transfer holds it."""
        if transfer_id in self.transfers or self.observer.knows_transfer(transfer_id):
            raise HTTPError(409, "Transfer id already in use.")
        self.transfers[transfer_id] = pipe
        pipe.transfer_id = transfer_id

    def release_transfer_id(self, pipe: Pipe) -> None:
        if pipe.transfer_id is not None and self.transfers.get(pipe.transfer_id) is pipe:
            del self.transfers[pipe.transfer_id]
        pipe.transfer_id = None

    def _pipe_for(self, name: str, n: int, client: str | None) -> Pipe:
        if self.shutting_down:
            raise HTTPError(503, "Server is shutting down.")
        pipe = self.pipes.get(name)
        if pipe is None:
            refused = self.pending.refusal(client)
            if refused == "full":
                raise HTTPError(429, "Server at maximum pending pipe capacity.", RETRY_AFTER)
            if refused is not None:
                raise HTTPError(429, "Too many waiting pipes from your address.", RETRY_AFTER)
            pipe = self.pipes[name] = Pipe(name, n, self, client)
        return pipe

    @property
    def waiting(self) -> int:
        """Pipes waiting for their parties."""
        return self.pending.taken

    @property
    def streaming(self) -> int:
        """Transfers streaming."""
        return self.active.taken

    def add_sender(self, name: str, sender: SenderParty) -> Pipe:
        return self._join(name, sender, Pipe.add_sender)

    def add_receiver(self, name: str, receiver: ReceiverParty) -> Pipe:
        return self._join(name, receiver, Pipe.add_receiver)

    def _join(self, name: str, party: P, add: Callable[[Pipe, P], None]) -> Pipe:
        pipe = self._pipe_for(name, party.n, party.address)
        try:
            add(pipe, party)
        finally:
            self._drop_if_empty(pipe)
        return pipe

    def _drop_if_empty(self, pipe: Pipe) -> None:
        if pipe.state is State.WAITING and pipe.sender is None and not pipe.receivers:
            pipe._enter(State.IDLE)
            self.forget(pipe)

    def check_address(self, party: Party) -> None:
        address = party.address
        if address is not None and self.waiting_by_address[address] >= self.limits.max_waiting_per_address:
            raise HTTPError(429, "Too many waiting pipes from your address.", RETRY_AFTER)

    def hold(self, party: Party) -> None:
        address = party.address
        if address is not None:
            self.waiting_by_address[address] += 1

    def release(self, party: Party) -> None:
        address = party.address
        if address is not None:
            self.waiting_by_address[address] -= 1
            if self.waiting_by_address[address] <= 0:
                del self.waiting_by_address[address]

    def why_not_start(self, sender: SenderParty) -> str | None:
        """Why a transfer from this sender may not start now, or None."""
        refused = self.active.refusal(sender.address)
        if refused == "full":
            return "Server at maximum active transfer capacity"
        if refused is not None:
            return "Too many active transfers from your address"
        return None

    def transition(self, pipe: Pipe) -> None:
        old = pipe.history[-2][0] if len(pipe.history) > 1 else State.IDLE
        new = pipe.state
        for state, shares in ((State.WAITING, self.pending), (State.STREAMING, self.active)):
            if old is state and new is not state:
                shares.give(pipe.client_of[state])
            elif new is state and old is not state:
                pipe.client_of[state] = pipe.client
                shares.take(pipe.client)
        if new is State.STREAMING:
            self.streaming_receivers += pipe.n
        elif old is State.STREAMING:
            self.streaming_receivers -= pipe.n

    def when_idle(self) -> Deferred[None]:
        """Fires once no transfer is streaming."""
        return self._quiet.wait(not self.streaming)

    def forget(self, pipe: Pipe) -> None:
        self.release_transfer_id(pipe)
        if self.pipes.get(pipe.name) is pipe:
            del self.pipes[pipe.name]
        self.observer.changed(pipe)

    def ended(self, pipe: Pipe) -> None:
        """A transfer finished or failed: its name is free again at once.

        Its id stays on the pipe: the observer keeps it with the final state."""
        if pipe.transfer_id is not None and self.transfers.get(pipe.transfer_id) is pipe:
            del self.transfers[pipe.transfer_id]
        if self.pipes.get(pipe.name) is pipe:
            del self.pipes[pipe.name]
        self.outcomes[pipe.reason or pipe.state.value] += 1
        self.bytes_relayed += pipe.bytes_transferred
        log.info(
            "transfer {outcome}: {name} {bytes} bytes in {duration:.3f}s",
            event="transfer_end",
            outcome=pipe.state.value,
            name=pipe.name,
            bytes=pipe.bytes_transferred,
            duration=(pipe.finished_at or 0) - pipe.started_at,
            reason=pipe.reason,
        )
        self.observer.ended(pipe)
        # Last: whoever waits for quiet (the drain) hears of it once the
        # transfer has told everyone how it ended.
        if not self.streaming:
            self._quiet.fire()
