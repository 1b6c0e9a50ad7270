"""Proof of delivery end to end (KIT.md section 4): the daemon's SHA-256 equals
sha256sum of what was sent and what arrived, for curl -T file and curl -T -;
a receiver checks its download against ?status&transfer=<id>; the 409 and 404."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess

import pytest

from ._helpers import CURL, Sender, deterministic_bytes, fetch, receiver, run_curl, unique, wait_status

pytestmark = pytest.mark.slow
SHA_LINE = re.compile(r"^\[INFO\] SHA-256: ([0-9a-f]{64})$")


def sha_line(lines: list[str]) -> str:
    found = [m.group(1) for line in lines if (m := SHA_LINE.match(line))]
    assert len(found) == 1, lines
    i = lines.index(f"[INFO] SHA-256: {found[0]}")
    assert lines[i - 1] == "[INFO] Upload complete." and lines[i + 1] == "[INFO] Transfer complete.", lines
    return found[0]


def receive_to_file(daemon, name: str, tmp_path, query: str = "") -> tuple[subprocess.Popen, object, object]:
    out = tmp_path / f"{name}.out"
    headers = tmp_path / f"{name}.headers"
    proc = subprocess.Popen([CURL, "-sS", "-D", str(headers), "-o", str(out), daemon.url(name, query)])
    return proc, out, headers


def file_sha(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            digest.update(block)
    return digest.hexdigest()


def transfer_id(headers_path) -> str:
    for line in headers_path.read_text().splitlines():
        if line.lower().startswith("x-hoody-pipe-transfer-id:"):
            return line.split(":", 1)[1].strip()
    raise AssertionError("no X-Hoody-Pipe-Transfer-Id")


@pytest.mark.parametrize("mode", ["file", "stdin"])
def test_the_daemons_digest_is_what_was_sent_and_received(daemon, big_random_file, tmp_path, mode):
    path, expected = big_random_file
    name = unique(f"sha-{mode}")
    proc, out, headers = receive_to_file(daemon, name, tmp_path)
    wait_status(daemon, name, state="waiting", activeReceivers=1)
    if mode == "file":
        sent = subprocess.run(
            [CURL, "-sS", "-T", str(path), daemon.url(name, "sha256")], capture_output=True, timeout=120
        )
        lines = sent.stdout.decode().splitlines()
    else:
        with open(path, "rb") as source:
            sent = subprocess.run(
                [CURL, "-sS", "-T", "-", daemon.url(name, "sha256")], stdin=source, capture_output=True, timeout=120
            )
        lines = sent.stdout.decode().splitlines()
    assert proc.wait(120) == 0 and sent.returncode == 0
    assert sha_line(lines) == expected == file_sha(out)
    snap = json.loads(fetch(daemon, f"/api/v1/pipe/{name}?status&transfer={transfer_id(headers)}").body)
    assert snap["sha256"] == expected and snap["state"] == "complete" and snap["bytes"] == path.stat().st_size


def test_a_receiver_verifies_its_download_against_the_receipt(daemon, tmp_path):
    name = unique("verify")
    data = deterministic_bytes(3 << 20, seed=5)
    proc, out, headers = receive_to_file(daemon, name, tmp_path, "sha256")
    sender = Sender(daemon.url(name), data=data)
    assert proc.wait(30) == 0 and sender.wait(30) == 0
    # The receipt outlives the name's next transfer.
    again = receiver(daemon.url(name))
    Sender(daemon.url(name), data=b"another").wait(30)
    again.wait(30)
    got = fetch(daemon, f"/api/v1/pipe/{name}?status&transfer={transfer_id(headers)}")
    assert got.status == 200 and json.loads(got.body)["sha256"] == file_sha(out) == hashlib.sha256(data).hexdigest()


def test_a_chosen_id_in_use_is_409_and_an_unknown_one_404(daemon):
    name, chosen = unique("tid"), "my-transfer-0123456789"
    first = Sender(daemon.url(name, f"transfer={chosen}"))
    first.feed(b"waiting")
    wait_status(daemon, name, state="waiting", hasSender=True)
    other = run_curl("-T", "-", daemon.url(unique("tid2"), f"transfer={chosen}"), input=b"x")
    assert other.status == 409 and other.body == b"[ERROR] Transfer id already in use.\n"
    bad = run_curl("-T", "-", daemon.url(unique("tid3"), "transfer=no"), input=b"x")
    assert bad.status == 400 and bad.body == b"[ERROR] Invalid transfer id.\n"
    unknown = fetch(daemon, f"/api/v1/pipe/{name}?status&transfer=nobody-knows-this-id")
    assert unknown.status == 404 and unknown.body == b"[ERROR] Unknown transfer.\n"
    first.kill()


def test_a_failed_transfer_has_no_digest_and_says_why(daemon, tmp_path):
    name = unique("shafail")
    proc, _, headers = receive_to_file(daemon, name, tmp_path)
    sender = Sender(daemon.url(name, "sha256"))
    sender.feed(deterministic_bytes(1 << 20))
    wait_status(daemon, name, state="streaming")
    sender.kill()
    assert proc.wait(30) != 0
    snap = json.loads(fetch(daemon, f"/api/v1/pipe/{name}?status&transfer={transfer_id(headers)}").body)
    assert snap["state"] == "failed" and snap["sha256"] is None and snap["reason"] == "Sender disconnected"


def test_the_docs_recipe_verifies_a_download(daemon, tmp_path):
    """docs/receipts.md's two lines, as a shell runs them."""
    name = unique("recipe")
    data = deterministic_bytes(1 << 20, seed=9)
    (tmp_path / "backup.tar").write_bytes(data)
    pipe = f"{daemon.base}/api/v1/pipe"
    send = f'curl -sS -T backup.tar "{pipe}/{name}?sha256"'
    check = (
        f'id=$(curl -sS -D - -o backup.copy "{pipe}/{name}" | tr -d "\\r" '
        f"| sed -n 's/^x-hoody-pipe-transfer-id: //Ip') && "
        f'curl -sS "{pipe}/{name}?status&transfer=$id" | python3 -c '
        "'import json,sys,hashlib; d=json.load(sys.stdin); "
        'ok = d["sha256"] == hashlib.sha256(open("backup.copy","rb").read()).hexdigest(); '
        'print("verified" if ok else "MISMATCH"); sys.exit(0 if ok else 1)\''
    )
    receiving = subprocess.Popen(["bash", "-c", check], cwd=tmp_path, stdout=subprocess.PIPE)
    wait_status(daemon, name, state="waiting", activeReceivers=1)
    sending = subprocess.run(["bash", "-c", send], cwd=tmp_path, capture_output=True, timeout=30)
    assert sending.returncode == 0 and b"[INFO] SHA-256: " in sending.stdout
    out, _ = receiving.communicate(timeout=30)
    assert receiving.returncode == 0 and out.strip() == b"verified"
