"""What the parties need of their connection, and nothing more.

``channel.PipeChannel`` implements it; it is the only module that touches
Twisted's private names (see ``channel.TWISTED_PRIVATES``). Senders and
receivers talk to their socket through this, never through
``request.channel`` or the transport.
"""

from __future__ import annotations

from typing import Protocol


class Connection(Protocol):
    """One client connection, as a party drives it."""

    def request_line(self) -> tuple[bytes, bytes, bytes]:
        """Method, target and version of the request whose headers just ended."""
        ...

    def send_continue(self) -> None:
        """Write ``100 Continue`` now (the client waits for it to send a body)."""
        ...

    def suspend_idle_timeout(self) -> None:
        """A transfer keeps its own time: the channel's idle timeout stops."""
        ...

    def restore_idle_timeout(self) -> None: ...

    def pause_reading(self) -> None:
        """Stop reading the socket (the kernel's buffers then push back)."""
        ...

    def resume_reading(self) -> None: ...

    def read_in(self, step: int) -> None:
        """Read the socket up to ``step`` bytes at a time."""
        ...

    def write_in(self, step: int) -> None:
        """Pause the producer past ``step`` unsent bytes, and send whole steps."""
        ...

    def write_raw(self, data: bytes) -> None:
        """Bytes straight to the socket, already framed."""
        ...

    def fileno(self) -> int | None:
        """The socket, for the hang-up watch; None in memory."""
        ...

    def abort(self) -> None:
        """Reset the connection: the client sees an error, never a clean end."""
        ...

    def linger_and_close(self) -> None:
        """Close our side, drop what the client still sends for a while, then go."""
        ...

    def close_after_response(self) -> None:
        """No keep-alive after this response."""
        ...

    def reset_on_close(self, reset: bool) -> None:
        """Whether closing the socket (or the daemon dying) resets it (SO_LINGER 0)."""
        ...

    def unacknowledged(self) -> int:
        """Bytes written and not yet acknowledged by the client's kernel: still
        buffered here, plus the socket's send queue (0 where it cannot be told)."""
        ...

    def unacknowledged_at_close(self) -> int | None:
        """``unacknowledged()`` when the client closed its side; None if it
        reset the connection or it is still open."""
        ...
