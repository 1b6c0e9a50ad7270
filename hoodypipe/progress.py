"""Figures about a transfer: the rate meter and the side channel's JSON objects.

Every object carries the documented field names and the story's short ones
side by side (``bytesTransferred``/``bytes``, ``eta``/``etaSec``, ...).
"""

from __future__ import annotations

import json
from collections import deque
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hoodypipe.pipes import Pipe

SPEED_WINDOW = 5.0


def rfc3339(seconds: float | None) -> str | None:
    if seconds is None:
        return None
    stamp = datetime.fromtimestamp(seconds, tz=UTC)
    return stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _r(value: float, digits: int = 1) -> float:
    return round(value, digits)


class Meter:
    """Speed over a sliding window of samples, so the figure settles."""

    def __init__(self, window: float = SPEED_WINDOW) -> None:
        self.window = window
        self.samples: deque[tuple[float, int]] = deque()

    def sample(self, now: float, total: int) -> None:
        self.samples.append((now, total))
        while len(self.samples) > 2 and now - self.samples[1][0] >= self.window:
            self.samples.popleft()

    def speed(self) -> float:
        """Bytes per second over the window (0 until two samples)."""
        if len(self.samples) < 2:
            return 0.0
        (t0, b0), (t1, b1) = self.samples[0], self.samples[-1]
        return (b1 - b0) / (t1 - t0) if t1 > t0 else 0.0


def eta(done: int, total: int | None, speed: float) -> float | None:
    if total is None:
        return None
    if done >= total:
        return 0.0
    if speed <= 0:
        return None
    return _r((total - done) / speed)


def percent(done: int, total: int | None) -> float | None:
    if total is None:
        return None
    if total == 0:
        return 100.0
    return _r(min(100.0, done * 100.0 / total))


def state_event(pipe: Pipe | None) -> dict[str, Any]:
    if pipe is None:
        return {"state": "idle", "hasSender": False, "activeReceivers": 0, "totalReceivers": 0, "receivers": 0}
    active = pipe.active_receivers if not pipe.finished else 0
    return {
        "state": pipe.state.value,
        "hasSender": pipe.has_sender and not pipe.finished,
        "activeReceivers": active,
        "totalReceivers": pipe.n,
        "receivers": active,
    }


def _elapsed(pipe: Pipe, now: float) -> float:
    start = pipe.streaming_at
    if start is None:
        return 0.0
    end = pipe.finished_at if pipe.finished_at is not None else now
    return _r(max(0.0, end - start), 3)


def progress_event(pipe: Pipe, meter: Meter | None, now: float) -> dict[str, Any]:
    done = pipe.bytes_transferred
    speed = meter.speed() if meter is not None and not pipe.finished else 0.0
    left = eta(done, pipe.total_bytes, speed)
    return {
        "bytesTransferred": done,
        "bytes": done,
        "totalBytes": pipe.total_bytes,
        "speed": round(speed),
        "mbps": _r(speed / 1e6),
        "eta": left,
        "etaSec": left,
        "percent": percent(done, pipe.total_bytes),
        "elapsed": _elapsed(pipe, now),
        "activeReceivers": pipe.active_receivers,
        "receivers": pipe.active_receivers,
    }


def done_event(pipe: Pipe) -> dict[str, Any]:
    done = pipe.bytes_transferred
    start = pipe.streaming_at if pipe.streaming_at is not None else pipe.started_at
    duration = max(0.0, (pipe.finished_at or start) - start)
    average = done / duration if duration > 0 else 0.0
    return {
        "state": pipe.state.value,
        "bytesTransferred": done,
        "bytes": done,
        "duration": _r(duration, 3),
        "durationSec": _r(duration, 3),
        "avgSpeed": round(average),
        "mbps": _r(average / 1e6),
        "reason": pipe.reason,
        "sha256": pipe.sha256,
        "transferId": pipe.transfer_id,
    }


IDLE_SNAPSHOT: dict[str, Any] = {
    "state": "idle",
    "hasSender": False,
    "activeReceivers": 0,
    "totalReceivers": 0,
    "receivers": 0,
    "bytesTransferred": 0,
    "bytes": 0,
    "totalBytes": None,
    "speed": 0,
    "mbps": 0.0,
    "eta": None,
    "etaSec": None,
    "percent": None,
    "elapsed": 0.0,
    "durationSec": None,
    "reason": None,
    "startedAt": None,
    "finishedAt": None,
    "history": [],
    "kind": None,
    "peers": None,
    "transferId": None,
    "sha256": None,
}


def snapshot(pipe: Pipe | None, meter: Meter | None, now: float) -> dict[str, Any]:
    """The ``?status`` object: state, figures and history in one."""
    if pipe is None:
        return dict(IDLE_SNAPSHOT, history=[])
    body = state_event(pipe)
    body.update(progress_event(pipe, meter, now))
    body["activeReceivers"] = body["receivers"] = state_event(pipe)["activeReceivers"]
    body["durationSec"] = done_event(pipe)["durationSec"] if pipe.finished else None
    body["reason"] = pipe.reason
    # The mean since streaming began, frozen with elapsed at the end (KIT.md section 4).
    elapsed = body["elapsed"]
    mean = pipe.bytes_transferred / elapsed if elapsed > 0 else 0.0
    body["speed"], body["mbps"] = round(mean), _r(mean / 1e6)
    body["kind"], body["peers"] = "pipe", None
    body["transferId"], body["sha256"] = pipe.transfer_id, pipe.sha256
    body["startedAt"] = rfc3339(pipe.started_at)
    body["finishedAt"] = rfc3339(pipe.finished_at)
    body["history"] = [{"state": state.value, "at": rfc3339(at)} for state, at in pipe.history]
    return body


class Final:
    """A finished transfer's last word, kept for latecomers.

    Up to 10,000 of these are kept, so they hold compact JSON text (about
    1 KiB each, a third of the dicts) and give dicts back when asked.

    ``done_id`` is the SSE id its ``done`` was broadcast with (D in KIT.md
    section 1): a client whose ``Last-Event-ID`` reaches it has seen the end.
    ``last_id`` is the name's latest event id, kept with the state so that
    ids stay increasing while nobody watches.
    """

    __slots__ = ("_done", "_progress", "_snapshot", "_state", "at", "done_id", "last_id")

    def __init__(
        self,
        state: dict[str, Any],
        progress: dict[str, Any],
        done: dict[str, Any],
        snapshot: dict[str, Any],
        at: float,
        done_id: int = 0,
    ) -> None:
        self._state, self._progress, self._done, self._snapshot = map(_compact, (state, progress, done, snapshot))
        self.at = at
        self.done_id = done_id
        self.last_id = done_id

    @classmethod
    def of(cls, pipe: Pipe, meter: Meter | None, now: float, done_id: int = 0) -> Final:
        return cls(
            state=state_event(pipe),
            progress=progress_event(pipe, meter, now),
            done=done_event(pipe),
            snapshot=snapshot(pipe, meter, now),
            at=now,
            done_id=done_id,
        )

    @property
    def state(self) -> dict[str, Any]:
        return _loads(self._state)

    @property
    def progress(self) -> dict[str, Any]:
        return _loads(self._progress)

    @property
    def done(self) -> dict[str, Any]:
        return _loads(self._done)

    @property
    def snapshot(self) -> dict[str, Any]:
        return _loads(self._snapshot)


def _compact(data: dict[str, Any]) -> str:
    return json.dumps(data, separators=(",", ":"))


def _loads(text: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(text)
    return data


def human_bytes(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


def human_seconds(s: float | None) -> str:
    if s is None:
        return "unknown"
    s = int(s)
    if s >= 3600:
        return f"{s // 3600}h {s % 3600 // 60}m"
    if s >= 60:
        return f"{s // 60}m {s % 60}s"
    return f"{s}s"


def text_line(snap: dict[str, Any]) -> str:
    """One human line for ``?progress&format=text``."""
    state = snap["state"]
    done = human_bytes(snap["bytes"])
    if state in ("complete", "failed"):
        line = f"[{state}] {done} in {human_seconds(snap.get('durationSec') or 0)}, avg {snap.get('mbps', 0):.1f} MB/s"
        if snap.get("reason"):
            line += f" ({snap['reason']})"
        return line
    if state == "streaming":
        total = (
            f" of {human_bytes(snap['totalBytes'])} ({snap['percent']:.1f}%)"
            if snap.get("totalBytes") is not None
            else ""
        )
        return (
            f"[streaming] {done}{total}, {snap['mbps']:.1f} MB/s, ETA {human_seconds(snap['eta'])}, "
            f"{snap['receivers']} receiver(s)"
        )
    sender = "sender connected" if snap.get("hasSender") else "no sender"
    return f"[{state}] {sender}, {snap['receivers']} of {snap['totalReceivers']} receiver(s)"
