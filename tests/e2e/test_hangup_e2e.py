"""A waiting sender that leaves frees its name at once, end to end (issue 7).

The daemon does not read a waiting sender's socket, so it only learns of the
hang-up through ``hangup.py``; a client retrying straight away must be let
in within 100 ms of its first connection closing, not refused with "Another
sender is already connected".
"""

from __future__ import annotations

import socket
import time

import pytest

from ._helpers import RawConnection, unique

WAITING = b"[INFO] Waiting for 1 receiver(s) to connect...\n"
# The requirement: the name is free again this soon after the close.
BUDGET = 0.1
# How long the retry loop may run, so that a failure shows the real delay.
GIVE_UP = 5.0


def put_head(name: str) -> bytes:
    return (
        f"PUT /api/v1/pipe/{name} HTTP/1.1\r\nHost: pipe.test\r\nTransfer-Encoding: chunked\r\n\r\n"
    ).encode() + b"5\r\nfirst\r\n"


def open_sender(daemon, name: str, body: bytes = b"") -> tuple[int, RawConnection]:
    """Send the headers and a first chunk (and ``body``); return the status and the
    connection, read up to the Waiting line when the sender was accepted."""
    conn = RawConnection(daemon)
    try:
        conn.send(put_head(name) + body)
        code = conn.read_head("PUT").status
        if code == 200:
            said = bytearray()

            def until_waiting(piece: bytes) -> bool:
                said.extend(piece)
                return WAITING not in said

            conn.read_body(until_waiting)
        return code, conn
    except BaseException:
        conn.close()
        raise


def accepted_after(daemon, name: str, closed_at: float) -> tuple[float, int]:
    """Retry a second sender on ``name`` until it is accepted; return the delay
    from ``closed_at`` to its acceptance, and how many tries were refused."""
    refused = 0
    while True:
        code, conn = open_sender(daemon, name)
        try:
            if code == 200:
                return time.monotonic() - closed_at, refused
            assert code == 400, code
            refused += 1
        finally:
            conn.close()
        if time.monotonic() - closed_at > GIVE_UP:
            raise AssertionError(f"{name} still refused {GIVE_UP} s after the first sender left ({refused} tries)")
        time.sleep(0.002)


@pytest.mark.parametrize(
    "leave, body",
    [
        pytest.param(RawConnection.close, b"", id="close"),
        pytest.param(RawConnection.reset, b"", id="reset"),
        # Mid-body: after its whole body a FIN is a half-close (nc -N), and the sender is delivered.
        pytest.param(RawConnection.close, b"5\r\nab", id="close-mid-body"),
    ],
)
def test_post_and_cancel_frees_the_name_within_100_ms(daemon, leave, body):
    name = unique("cancel")
    code, first = open_sender(daemon, name, body)
    assert code == 200, first.buffer
    closed_at = time.monotonic()
    leave(first)
    delay, refused = accepted_after(daemon, name, closed_at)
    assert delay < BUDGET, f"the name was free again only {delay * 1000:.0f} ms after the close ({refused} refusals)"


def test_a_sender_that_stays_keeps_its_name(daemon):
    """The watch must not mistake a quiet sender for a gone one."""
    name = unique("stay")
    code, first = open_sender(daemon, name)
    try:
        assert code == 200
        time.sleep(0.3)
        code, second = open_sender(daemon, name)
        second.close()
        assert code == 400
        first.sock.settimeout(0.2)
        with pytest.raises(socket.timeout):
            first.sock.recv(1)  # still open, nothing more said
    finally:
        first.close()
