"""Server-Sent Events framing (the text/event-stream wire format)."""

from __future__ import annotations

import json
from typing import Any

RETRY_MS = 1000


def retry(ms: int = RETRY_MS) -> bytes:
    """The reconnect delay, sent first on every stream."""
    return b"retry: %d\n\n" % ms


def event(name: str, data: dict[str, Any], event_id: int | None = None) -> bytes:
    """One event whose ``data`` is one JSON object on one line."""
    body = json.dumps(data, separators=(",", ":"), allow_nan=False)
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {name}\ndata: {body}\n\n".encode()


HEARTBEAT = b": heartbeat\n\n"
