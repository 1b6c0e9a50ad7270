"""The parties of a pipe, as the pipe and the relay drive them.

``sender.Sender`` and ``download.Download`` are the real ones; the tests
have verified fakes (``tests/fakes.py``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from twisted.internet.interfaces import IPushProducer

    from hoodypipe.errors import HTTPError
    from hoodypipe.frame import Frame
    from hoodypipe.headers import SenderHeaders


class Party(Protocol):
    """What every party states on arrival."""

    n: int
    wait: float
    # The client's address, for the per-address caps (None in memory).
    address: str | None
    # It asked for ``?sha256``: the stream is hashed as it is relayed.
    sha256: bool


class SenderParty(Party, Protocol):
    """The upload side, as the pipe drives it."""

    headers: SenderHeaders
    # ``?transfer=<id>``, already checked; None for a random one.
    transfer: str | None

    def say(self, text: str) -> None:
        """Write one ``[INFO] text`` line to the sender."""

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...

    def read_in(self, step: int) -> None:
        """Read the sender's socket ``step`` bytes at a time."""

    def end(self, error: str | None) -> None:
        """Close the sender's response: success, or an ``[ERROR] error.`` line."""


class ReceiverParty(Party, Protocol):
    """One download, as the pipe drives it."""

    def begin(self, headers: SenderHeaders, transfer_id: str) -> None: ...

    def write(self, frame: Frame) -> None: ...

    def finish(self) -> None: ...

    def abort(self) -> None:
        """Break the connection so the client cannot mistake it for a complete download."""

    def refuse(self, error: HTTPError) -> None: ...

    def watch_flow(self, producer: IPushProducer, step: int) -> None:
        """Register ``producer`` to be paused while more than ``step`` bytes wait to be sent."""

    def unacknowledged(self) -> int:
        """Bytes written that the client's kernel has not acknowledged yet (0 if it cannot be told)."""
        ...

    def left_with_everything(self) -> bool:
        """It closed after its kernel had acknowledged every byte written to it."""
        ...
