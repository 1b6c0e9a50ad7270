"""Receipts: what a finished transfer looked like, by its id, for a while.

A pipe stores nothing, so after a transfer the only evidence of what moved is
what the parties saw. A transfer with a digest (``?sha256``) or a chosen id
(``?transfer=``) leaves a receipt, whatever its outcome: its ``?status``
snapshot, for ``RECEIPT_SECONDS``, the newest ``MAX_RECEIPTS`` of them, held
as compact JSON. ``?status&transfer=<id>`` reads it (KIT.md section 4).
"""

from __future__ import annotations

import json
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from twisted.internet.interfaces import IReactorTime

RECEIPT_SECONDS = 600.0
MAX_RECEIPTS = 1000


class Receipts:
    """Receipts by transfer id: bounded in number and in time, oldest out."""

    def __init__(self, clock: IReactorTime, seconds: float = RECEIPT_SECONDS, capacity: int = MAX_RECEIPTS) -> None:
        self.clock = clock
        self.seconds = seconds
        self.capacity = capacity
        self._kept: OrderedDict[str, tuple[float, str, str]] = OrderedDict()

    def put(self, transfer_id: str, name: str, snapshot: dict[str, Any]) -> None:
        self._kept[transfer_id] = (self.clock.seconds(), name, json.dumps(snapshot, separators=(",", ":")))
        self._kept.move_to_end(transfer_id)
        while len(self._kept) > self.capacity:
            self._kept.popitem(last=False)

    def get(self, transfer_id: str) -> tuple[str, dict[str, Any]] | None:
        """The receipt's pipe name and snapshot, if it is kept and not expired."""
        self._expire()
        kept = self._kept.get(transfer_id)
        if kept is None:
            return None
        _, name, text = kept
        snapshot: dict[str, Any] = json.loads(text)
        return name, snapshot

    def __contains__(self, transfer_id: object) -> bool:
        self._expire()
        return transfer_id in self._kept

    def __len__(self) -> int:
        self._expire()
        return len(self._kept)

    def _expire(self) -> None:
        now = self.clock.seconds()
        while self._kept:
            at = next(iter(self._kept.values()))[0]
            if now - at <= self.seconds:
                break
            self._kept.popitem(last=False)
