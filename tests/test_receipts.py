"""Proof of delivery in memory (KIT.md section 4): ?sha256, transfer ids, receipts."""

from __future__ import annotations

import hashlib
import json

import pytest

from hoodypipe.download import Download
from hoodypipe.receipts import MAX_RECEIPTS, RECEIPT_SECONDS, Receipts
from tests.memhttp import Conn, MemoryDaemon

ID = "chosen-id_0123456789"


def status(d: MemoryDaemon, query: str) -> tuple[int, dict]:
    got = d.receiver(f"/x?status{query}").response()
    return got.status, json.loads(got.body) if got.status == 200 else {}


def send(d: MemoryDaemon, body: bytes, sender_query: str = "", receiver_query: str = "") -> tuple[Conn, Conn]:
    receiver = d.receiver(f"/x{receiver_query}")
    sender = d.sender(f"/x{sender_query}").chunk(body).end_chunks()
    return sender, receiver


def lines(conn: Conn) -> list[str]:
    return conn.response().body.decode().splitlines()


def test_a_sender_asks_for_the_digest():
    d = MemoryDaemon()
    body = b"the whole stream" * 1000
    sender, receiver = send(d, body, "?sha256")
    digest = hashlib.sha256(body).hexdigest()
    assert lines(sender)[-3:] == ["[INFO] Upload complete.", f"[INFO] SHA-256: {digest}", "[INFO] Transfer complete."]
    code, snap = status(d, "")
    assert code == 200 and snap["sha256"] == digest and snap["kind"] == "pipe" and snap["peers"] is None
    assert snap["transferId"] == receiver.response().headers["x-hoody-pipe-transfer-id"]


def test_a_receiver_there_at_the_start_asks_for_the_digest():
    d = MemoryDaemon()
    sender, _ = send(d, b"abc", receiver_query="?sha256=1")
    assert f"[INFO] SHA-256: {hashlib.sha256(b'abc').hexdigest()}" in lines(sender)


def test_no_digest_unless_asked():
    d = MemoryDaemon()
    sender, _ = send(d, b"abc")
    assert not any(line.startswith("[INFO] SHA-256") for line in lines(sender))
    assert status(d, "")[1]["sha256"] is None


def test_a_failed_transfer_has_no_digest_and_says_why():
    d = MemoryDaemon()
    receiver = d.receiver("/x")
    sender = d.sender("/x?sha256").chunk(b"part")
    sender.drop()
    assert receiver.aborted
    snap = status(d, "")[1]
    assert snap["state"] == "failed" and snap["sha256"] is None and snap["reason"] == "Sender disconnected"
    code, receipt = status(d, f"&transfer={snap['transferId']}")
    assert code == 200 and receipt["reason"] == "Sender disconnected"


def test_every_receiver_learns_the_random_id_and_pages_may_read_it():
    d = MemoryDaemon()
    _, receiver = send(d, b"abc")
    got = receiver.response().headers
    transfer = got["x-hoody-pipe-transfer-id"]
    assert len(transfer) == 22 and transfer.replace("-", "").replace("_", "").isalnum()
    assert "X-Hoody-Pipe-Transfer-Id" in got["access-control-expose-headers"]
    assert "Content-Disposition" in got["access-control-expose-headers"]


def test_a_chosen_id_is_the_transfers_from_its_arrival():
    d = MemoryDaemon()
    d.sender(f"/x?transfer={ID}")
    code, snap = status(d, f"&transfer={ID}")
    assert code == 200 and snap["state"] == "waiting" and snap["transferId"] == ID
    receiver = d.receiver("/x?transfer=ignored-on-receivers!")
    assert receiver.response().headers["x-hoody-pipe-transfer-id"] == ID


@pytest.mark.parametrize("bad", ["short", "x" * 65, "has%20space%20here%21", "dots.are.not.allowed", "%00" * 20, ""])
def test_a_malformed_id_is_refused(bad):
    got = MemoryDaemon().connect().request("PUT", f"/x?transfer={bad}", b"abc").response()
    assert got.status == 400 and got.body == b"[ERROR] Invalid transfer id.\n"


def test_an_id_in_use_anywhere_is_refused():
    d = MemoryDaemon()
    d.sender(f"/a?transfer={ID}")  # waiting
    got = d.connect().request("PUT", f"/b?transfer={ID}", b"abc").response()
    assert got.status == 409 and got.body == b"[ERROR] Transfer id already in use.\n"
    d.receiver("/a")  # a's transfer completes: its id is retained, and receipted
    assert d.connect().request("PUT", f"/c?transfer={ID}", b"abc").response().status == 409
    receiver = d.receiver("/r")  # a random id of a retained transfer cannot be chosen either
    d.sender("/r").chunk(b"1").end_chunks()
    taken = receiver.response().headers["x-hoody-pipe-transfer-id"]
    assert d.connect().request("PUT", f"/d?transfer={taken}", b"abc").response().status == 409


def test_status_by_transfer_live_retained_and_receipted():
    d = MemoryDaemon()
    receiver = d.receiver("/x")
    sender = d.sender(f"/x?transfer={ID}&sha256").chunk(b"abc")
    assert status(d, f"&transfer={ID}")[1]["state"] == "streaming"
    sender.end_chunks()
    assert receiver.response().complete
    assert status(d, f"&transfer={ID}")[1]["state"] == "complete"
    send(d, b"the next transfer on the name")  # the name's final state is now another's
    code, receipt = status(d, f"&transfer={ID}")
    assert code == 200 and receipt["sha256"] == hashlib.sha256(b"abc").hexdigest() and receipt["bytes"] == 3
    assert status(d, "&transfer=unknown-0123456789ab")[0] == 404
    got = d.receiver("/x?status&transfer=unknown-0123456789ab").response()
    assert got.body == b"[ERROR] Unknown transfer.\n"
    head = d.connect().request("HEAD", f"/x?status&transfer={ID}").response()
    assert head.status == 200 and head.headers["content-type"] == "application/json"


def test_the_receipt_is_written_before_the_receivers_bodies_end(monkeypatch):
    d = MemoryDaemon()
    seen: list[object] = []
    finish = Download.finish

    def finishing(self: Download) -> None:
        seen.append(d.hub.transfer("x", ID))
        finish(self)

    monkeypatch.setattr(Download, "finish", finishing)
    send(d, b"abc", f"?transfer={ID}")
    assert seen and seen[0] is not None and seen[0]["state"] == "complete"


def test_a_transfer_that_ended_before_streaming_leaves_a_receipt():
    d = MemoryDaemon()
    d.registry.limits.wait_timeout = 5
    d.sender(f"/x?transfer={ID}")
    d.clock.advance(5)
    code, receipt = status(d, f"&transfer={ID}")
    assert code == 200 and receipt["state"] == "failed" and receipt["reason"] == "Timed out"


def test_receipts_last_ten_minutes_and_the_newest_thousand():
    d = MemoryDaemon()
    send(d, b"abc", f"?transfer={ID}")
    send(d, b"replaced")  # the final state is another transfer's: only the receipt knows it
    d.clock.advance(RECEIPT_SECONDS - 1)
    assert status(d, f"&transfer={ID}")[0] == 200
    d.clock.advance(2)
    assert status(d, f"&transfer={ID}")[0] == 404
    receipts = Receipts(d.clock)
    for n in range(MAX_RECEIPTS + 5):
        receipts.put(f"id-{n:016d}", "x", {"n": n})
    assert len(receipts) == MAX_RECEIPTS and "id-0000000000000000" not in receipts
    assert receipts.get(f"id-{MAX_RECEIPTS + 4:016d}") == ("x", {"n": MAX_RECEIPTS + 4})


def test_status_speed_is_the_mean_since_the_start_and_freezes_at_the_end():
    d = MemoryDaemon()
    receiver = d.receiver("/x")
    sender = d.sender("/x").chunk(b"a" * 1000)
    d.clock.advance(2)
    assert status(d, "")[1]["speed"] == 500
    sender.end_chunks()
    assert receiver.response().complete
    frozen = status(d, "")[1]
    d.clock.advance(10)
    assert status(d, "")[1]["speed"] == frozen["speed"] == 500 and frozen["elapsed"] == 2.0
