"""Verified in-memory parties for the pipe state machine."""

from __future__ import annotations

from twisted.internet.interfaces import IPushProducer
from twisted.web.http_headers import Headers

from hoodypipe.errors import HTTPError
from hoodypipe.headers import SenderHeaders


class FakeSender:
    def __init__(
        self, n: int = 1, wait: float = 300, headers: Headers | None = None, address: str | None = None
    ) -> None:
        self.n = n
        self.wait = wait
        self.address = address
        self.sha256 = False
        self.transfer: str | None = None
        self.headers = SenderHeaders.read(headers or Headers())
        self.lines: list[str] = []
        self.reading = True
        self.ended: str | bool | None = False

    def say(self, text: str) -> None:
        self.lines.append(f"[INFO] {text}")

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def read_in(self, step: int) -> None:
        self.step = step

    def end(self, error: str | None) -> None:
        assert self.ended is False, "ended twice"
        self.ended = error
        self.lines.append("[INFO] Transfer complete." if error is None else f"[ERROR] {error}.")


class FakeReceiver:
    def __init__(self, n: int = 1, wait: float = 300, address: str | None = None) -> None:
        self.n = n
        self.wait = wait
        self.address = address
        self.sha256 = False
        self.body = b""
        self.begun = False
        self.finished = False
        self.aborted = False
        self.refused: HTTPError | None = None
        self.producer: IPushProducer | None = None

    def begin(self, headers: SenderHeaders, transfer_id: str) -> None:
        self.begun = True
        self.transfer_id = transfer_id

    def write(self, frame) -> None:
        assert self.begun and not (self.finished or self.aborted)
        self.body += frame.plain()

    def finish(self) -> None:
        self.finished = True

    def abort(self) -> None:
        self.aborted = True

    def refuse(self, error: HTTPError) -> None:
        self.refused = error

    # Bytes the fake client's kernel has not acknowledged: tests set it.
    unacked = 0

    def unacknowledged(self) -> int:
        return self.unacked

    # A test says whether it closed having acknowledged every byte.
    had_everything = False

    def left_with_everything(self) -> bool:
        return self.had_everything

    def watch_flow(self, producer: IPushProducer, step: int) -> None:
        assert IPushProducer.providedBy(producer)
        self.producer = producer
        self.step = step
