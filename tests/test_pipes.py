"""The pipe lifecycle and registry, with fake parties and a Clock."""

from __future__ import annotations

import pytest
from twisted.internet.task import Clock

from hoodypipe.errors import HTTPError
from hoodypipe.pipes import TRANSITIONS, Limits, Reason, Registry, State
from tests.fakes import FakeReceiver, FakeSender


class Recorder:
    def __init__(self) -> None:
        self.changes: list[str] = []
        self.ends: list[tuple[str, str | None]] = []

    def changed(self, pipe) -> None:
        self.changes.append(pipe.state.value)

    def ended(self, pipe) -> None:
        self.ends.append((pipe.state.value, pipe.reason))

    def knows_transfer(self, transfer_id: str) -> bool:
        return False


def registry(**limits) -> tuple[Registry, Clock, Recorder]:
    clock = Clock()
    observer = Recorder()
    return Registry(clock, Limits(**limits), observer), clock, observer


def test_transition_table_ends_in_complete_or_failed():
    assert TRANSITIONS[State.COMPLETE] == TRANSITIONS[State.FAILED] == frozenset()
    assert State.STREAMING in TRANSITIONS[State.WAITING]


def test_full_lifecycle_and_counts():
    reg, clock, observer = registry()
    sender = FakeSender()
    pipe = reg.add_sender("x", sender)
    assert (pipe.state, reg.waiting, reg.streaming) == (State.WAITING, 1, 0)
    assert not sender.reading
    receiver = FakeReceiver()
    reg.add_receiver("x", receiver)
    assert (pipe.state, reg.waiting, reg.streaming) == (State.STREAMING, 0, 1)
    assert sender.reading and receiver.producer is not None
    pipe.data(b"abc")
    clock.advance(2)
    pipe.upload_complete()
    assert receiver.finished and receiver.body == b"abc"
    assert sender.lines == [
        "[INFO] Waiting for 1 receiver(s) to connect...",
        "[INFO] Streaming to 1 receiver(s)...",
        "[INFO] Upload complete.",
        "[INFO] Transfer complete.",
    ]
    assert (pipe.state, reg.streaming, "x" in reg.pipes) == (State.COMPLETE, 0, False)
    assert [s for s, _ in pipe.history] == [State.WAITING, State.STREAMING, State.COMPLETE]
    assert observer.ends == [("complete", None)]
    assert reg.outcomes["complete"] == 1 and reg.bytes_relayed == 3


def test_name_is_reusable_at_once():
    reg, _clock, _ = registry()
    first = reg.add_sender("x", FakeSender())
    reg.add_receiver("x", FakeReceiver())
    first.upload_complete()
    second = reg.add_sender("x", FakeSender())
    assert second is not first and second.state is State.WAITING


@pytest.mark.parametrize(
    "setup, party, code",
    [
        ("sender", FakeSender(), 400),  # a second sender
        ("sender", FakeReceiver(n=2), 400),  # n mismatch
        ("receiver", FakeReceiver(), 400),  # one receiver too many
        ("streaming", FakeReceiver(), 400),  # already streaming
        ("streaming", FakeSender(), 400),
    ],
)
def test_refusals(setup, party, code):
    reg, _, _ = registry()
    if setup in ("sender", "streaming"):
        reg.add_sender("x", FakeSender())
    if setup in ("receiver", "streaming"):
        reg.add_receiver("x", FakeReceiver())
    with pytest.raises(HTTPError) as caught:
        if isinstance(party, FakeSender):
            reg.add_sender("x", party)
        else:
            reg.add_receiver("x", party)
    assert caught.value.code == code


def test_early_bytes_and_early_end_are_delivered_at_the_start():
    reg, _, _ = registry()
    pipe = reg.add_sender("x", sender := FakeSender())
    pipe.data(b"early")
    pipe.upload_complete()
    assert sender.lines == ["[INFO] Waiting for 1 receiver(s) to connect..."]
    receiver = FakeReceiver()
    reg.add_receiver("x", receiver)
    assert receiver.body == b"early" and receiver.finished
    assert sender.lines[-2:] == ["[INFO] Upload complete.", "[INFO] Transfer complete."]


def test_fan_out_is_lockstep_and_paced_by_the_slowest():
    reg, _, _ = registry()
    receivers = [FakeReceiver(n=3) for _ in range(3)]
    for receiver in receivers:
        reg.add_receiver("x", receiver)
    sender = FakeSender(n=3)
    pipe = reg.add_sender("x", sender)
    pipe.data(b"1")
    receivers[1].producer.pauseProducing()
    assert not sender.reading
    receivers[2].producer.pauseProducing()
    receivers[1].producer.resumeProducing()
    assert not sender.reading
    receivers[2].producer.resumeProducing()
    assert sender.reading
    pipe.data(b"2")
    assert all(r.body == b"12" for r in receivers)


def test_a_paused_receiver_leaving_unblocks_the_rest():
    reg, _, _ = registry()
    a, b = FakeReceiver(n=2), FakeReceiver(n=2)
    reg.add_receiver("x", a)
    reg.add_receiver("x", b)
    pipe = reg.add_sender("x", sender := FakeSender(n=2))
    a.producer.pauseProducing()
    pipe.receiver_lost(a)
    assert sender.reading
    assert "[INFO] A receiver disconnected." in sender.lines


def test_wait_timeouts():
    reg, clock, observer = registry(wait_timeout=10)
    reg.add_receiver("x", receiver := FakeReceiver(wait=5))
    clock.advance(5)
    assert receiver.refused.code == 408 and receiver.refused.message == "Timed out waiting for sender."
    assert "x" not in reg.pipes and observer.ends == [("failed", Reason.TIMED_OUT)]
    reg.add_sender("y", sender := FakeSender(n=2, wait=10))
    reg.add_receiver("y", other := FakeReceiver(n=2, wait=3))
    clock.advance(3)
    assert other.refused.message == "Timed out waiting for receivers."
    clock.advance(7)
    assert sender.ended == "Timed out waiting for receivers"
    assert reg.waiting == 0


def test_waiting_party_leaving_returns_the_name_to_idle():
    reg, clock, observer = registry()
    pipe = reg.add_sender("x", FakeSender())
    pipe.sender_lost()
    assert pipe.state is State.IDLE and "x" not in reg.pipes and reg.waiting == 0
    assert observer.ends == []
    assert not clock.getDelayedCalls()


def test_sender_lost_mid_stream_aborts_receivers():
    reg, clock, observer = registry()
    pipe = reg.add_sender("x", FakeSender())
    reg.add_receiver("x", receiver := FakeReceiver())
    pipe.data(b"part")
    pipe.sender_lost()
    assert receiver.aborted and not receiver.finished
    assert observer.ends == [("failed", Reason.SENDER_DISCONNECTED)]
    assert not clock.getDelayedCalls()


def test_sender_lost_after_its_whole_body_still_completes():
    reg, _, _ = registry()
    pipe = reg.add_sender("x", FakeSender())
    reg.add_receiver("x", receiver := FakeReceiver())
    receiver.producer.pauseProducing()
    pipe.data(b"all")
    pipe.upload_complete()
    pipe.sender_lost()
    receiver.producer.resumeProducing()
    assert receiver.finished and pipe.state is State.COMPLETE


def test_idle_timeout_counts_from_the_last_activity():
    reg, clock, _observer = registry(idle_timeout=8, min_rate=0)  # no minimum rate: any byte counts
    pipe = reg.add_sender("x", sender := FakeSender())
    reg.add_receiver("x", receiver := FakeReceiver())
    for _ in range(5):
        clock.pump([0.5] * 12)  # 6 s of quiet, then a byte
        pipe.data(b".")
    assert pipe.state is State.STREAMING
    clock.pump([0.5] * 15)  # 7.5 s of quiet
    assert pipe.state is State.STREAMING
    clock.pump([0.5] * 5)  # past 8 s, within a quarter of the timeout
    assert pipe.state is State.FAILED and pipe.reason == Reason.IDLE
    assert receiver.aborted and sender.ended == "Idle timeout"
    assert not clock.getDelayedCalls()


def test_a_trickle_below_the_minimum_rate_is_idle():
    reg, clock, _ = registry(idle_timeout=8, min_rate=1)  # 8 bytes per 8 s
    pipe = reg.add_sender("x", sender := FakeSender())
    reg.add_receiver("x", receiver := FakeReceiver())
    for _ in range(3):
        clock.pump([0.5] * 12)  # a byte every 6 s keeps the activity counter moving
        if pipe.state is State.STREAMING:
            pipe.data(b".")
    assert pipe.state is State.FAILED and pipe.reason == Reason.IDLE
    assert receiver.aborted and sender.ended == "Idle timeout"


def test_a_transfer_at_the_minimum_rate_goes_on():
    reg, clock, _ = registry(idle_timeout=8, min_rate=1)
    pipe = reg.add_sender("x", FakeSender())
    reg.add_receiver("x", FakeReceiver())
    for _ in range(10):
        clock.pump([0.5] * 4)
        pipe.data(b"...")  # 3 bytes every 2 s: above the minimum of 1 per second
    assert pipe.state is State.STREAMING


def test_caps():
    reg, _, _ = registry(max_pending=1, max_active=1)
    reg.add_sender("a", FakeSender())
    with pytest.raises(HTTPError) as caught:
        reg.add_sender("b", FakeSender())
    assert caught.value.code == 429 and caught.value.headers[b"Retry-After"]
    reg.add_receiver("a", FakeReceiver())  # a starts: 1 active, 0 pending
    reg.add_sender("b", FakeSender())
    with pytest.raises(HTTPError) as caught:
        reg.add_receiver("b", FakeReceiver())
    assert caught.value.code == 429
    assert reg.pipes["b"].state is State.WAITING


def test_shutdown_refuses_new_parties():
    reg, _, _ = registry()
    reg.shutting_down = True
    with pytest.raises(HTTPError) as caught:
        reg.add_receiver("x", FakeReceiver())
    assert caught.value.code == 503


def test_last_receiver_leaving_while_the_end_drains_is_a_failure():
    reg, _, observer = registry()
    pipe = reg.add_sender("x", sender := FakeSender())
    reg.add_receiver("x", receiver := FakeReceiver())
    receiver.producer.pauseProducing()
    pipe.data(b"body")
    pipe.upload_complete()  # waits for the receiver to drain
    pipe.receiver_lost(receiver)
    assert pipe.state is State.FAILED and observer.ends == [("failed", Reason.RECEIVERS_DISCONNECTED)]
    assert sender.lines[-1] == "[ERROR] All receivers disconnected before transfer completed."


def test_the_step_shrinks_as_more_transfers_stream():
    from hoodypipe.relay import MAX_STEP, MIN_STEP, step_for

    assert step_for(1) == MAX_STEP and step_for(10_000) == MIN_STEP
    reg, _, _ = registry()
    steps = []
    for i in range(200):
        reg.add_sender(f"p{i}", sender := FakeSender())
        reg.add_receiver(f"p{i}", receiver := FakeReceiver())
        assert sender.step == receiver.step
        steps.append(sender.step)
    assert steps[0] == MAX_STEP and steps[-1] < MAX_STEP and steps == sorted(steps, reverse=True)


def test_complete_only_once_every_receivers_kernel_acknowledged_the_bytes():
    reg, clock, _ = registry(idle_timeout=8)
    pipe = reg.add_sender("x", sender := FakeSender(n=2))
    first, second = FakeReceiver(n=2), FakeReceiver(n=2)
    reg.add_receiver("x", first)
    reg.add_receiver("x", second)
    first.unacked, second.unacked = 1000, 5000  # still in their kernels' send queues
    pipe.data(b"payload")
    pipe.upload_complete()
    assert pipe.state is State.STREAMING and sender.ended is False
    first.unacked = 0
    clock.advance(0.5)
    assert pipe.state is State.STREAMING and not first.finished  # the other is not there yet
    second.unacked = 0
    clock.advance(0.25)
    assert pipe.state is State.COMPLETE and first.finished and second.finished
    assert sender.lines[-1] == "[INFO] Transfer complete."
    assert not clock.getDelayedCalls()


def test_a_receiver_lost_before_acknowledging_is_not_told_complete():
    reg, clock, _ = registry(idle_timeout=8)
    pipe = reg.add_sender("x", sender := FakeSender())
    reg.add_receiver("x", receiver := FakeReceiver())
    receiver.unacked = 4096
    pipe.data(b"payload")
    pipe.upload_complete()
    clock.advance(0.1)
    pipe.receiver_lost(receiver)  # killed with bytes unacknowledged
    assert pipe.state is State.FAILED
    assert sender.lines[-1] == "[ERROR] All receivers disconnected before transfer completed."


def test_a_receiver_that_never_acknowledges_meets_the_idle_timeout():
    reg, clock, _ = registry(idle_timeout=8)
    pipe = reg.add_sender("x", _sender := FakeSender())
    reg.add_receiver("x", receiver := FakeReceiver())
    receiver.unacked = 4096
    pipe.data(b"payload")
    pipe.upload_complete()
    clock.pump([0.25] * 40)
    assert pipe.state is State.FAILED and pipe.reason == Reason.IDLE and receiver.aborted
    assert not clock.getDelayedCalls()


def test_a_fast_receiver_that_closes_with_everything_while_a_slow_one_blocks_is_delivered():
    reg, _clock, _ = registry(idle_timeout=8)
    pipe = reg.add_sender("x", sender := FakeSender(n=3))
    fast, slow, gone = FakeReceiver(n=3), FakeReceiver(n=3), FakeReceiver(n=3)
    for receiver in (fast, slow, gone):
        reg.add_receiver("x", receiver)
    pipe.data(b"payload")
    slow.producer.pauseProducing()  # its buffer is full: the relay waits for it
    gone.unacked = 100
    pipe.receiver_lost(gone)  # reset mid-way
    pipe.upload_complete()
    fast.had_everything = True
    pipe.receiver_lost(fast)  # a client of a known length closes once it has it all
    assert pipe.state is State.STREAMING
    slow.producer.resumeProducing()
    assert pipe.state is State.COMPLETE and slow.finished
    assert sender.lines[-1] == "[INFO] Transfer complete."
    assert sender.lines.count("[INFO] A receiver disconnected.") == 1


def test_the_last_receiver_lost_after_others_left_with_everything_is_one_disconnected():
    reg, clock, _ = registry(idle_timeout=8)
    pipe = reg.add_sender("x", sender := FakeSender(n=3))
    receivers = [FakeReceiver(n=3) for _ in range(3)]
    for receiver in receivers:
        reg.add_receiver("x", receiver)
    pipe.data(b"payload")
    receivers[2].producer.pauseProducing()  # the slow one
    pipe.upload_complete()
    for fast in receivers[:2]:
        fast.had_everything = True
        pipe.receiver_lost(fast)  # clients of a known length close once they have it all
    receivers[2].unacked = 100
    pipe.receiver_lost(receivers[2])  # then the slow one resets
    clock.advance(1)
    assert pipe.state is State.COMPLETE
    assert sender.lines[-2:] == ["[INFO] A receiver disconnected.", "[INFO] Transfer complete."]
