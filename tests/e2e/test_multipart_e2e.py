"""multipart/form-data senders end to end (KIT 3): curl -F, several parts, truncated forms.

The daemon is the installed ``twistd -n hoodypipe``; senders are curl or raw sockets.
"""

from __future__ import annotations

import hashlib
import os

from tests.support.httpwire import request as http_request

from ._helpers import RawConnection, receiver, run_curl, unique, wait_status

FAILED = "[ERROR] Transfer failed.\n"
B = "hoodypipe-e2e-boundary-3f9a"


def _waiting_receiver(daemon, name: str, *args: str):
    """A curl receiver that the daemon has seen arrive (a form that fails at once needs one there)."""
    got = receiver(daemon.url(name), "-D", "-", *args)
    wait_status(daemon, name, state="waiting", activeReceivers=1)
    return got


def _form_request(name: str, body: bytes) -> bytes:
    headers = {"Content-Type": f"multipart/form-data; boundary={B}", "Content-Length": str(len(body))}
    return http_request("POST", f"/api/v1/pipe/{name}", headers, body)


def _head_and_body(raw: bytes) -> tuple[str, bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    return head.decode("latin-1").lower(), body


def test_curl_f_file_streams_the_file_only(daemon, tmp_path):
    name = unique("form-file")
    data = os.urandom(20_000_000)
    path = tmp_path / "payload.tar.gz"
    path.write_bytes(data)
    got = receiver(daemon.url(name), "-D", "-", keep=True)
    sent = run_curl("-F", "comment=ignored", "-F", f"file=@{path}", daemon.url(name), timeout=60)
    assert sent.returncode == 0 and sent.status == 200
    assert sent.text.endswith("[INFO] Upload complete.\n[INFO] Transfer complete.\n"), sent.text
    assert got.wait() == 0
    head, body = _head_and_body(got.out)
    assert hashlib.sha256(body).hexdigest() == hashlib.sha256(data).hexdigest()
    assert 'content-disposition: attachment; filename="payload.tar.gz"' in head
    assert "content-type: application/octet-stream" in head  # curl's type for the file
    assert "content-length" not in head
    status = wait_status(daemon, name, state="complete")
    assert status["bytesTransferred"] == len(data) and status["totalBytes"] is None


def test_curl_f_text_field_with_its_own_headers(daemon):
    name = unique("form-text")
    got = receiver(daemon.url(name), "-D", "-")
    sent = run_curl("-F", "text=hello from a form", daemon.url(name))
    assert sent.text.endswith("[INFO] Transfer complete.\n"), sent.text
    assert got.wait() == 0
    head, body = _head_and_body(got.out)
    assert body == b"hello from a form"
    assert 'content-disposition: form-data; name="text"' in head  # piping-server's choice for a lone part


def test_input_text_wins_and_is_utf8_text(daemon):
    name = unique("form-input-text")
    got = receiver(daemon.url(name), "-D", "-")
    run_curl("-F", "other=first", "-F", "input_text=größer ✓", daemon.url(name))
    assert got.wait() == 0
    head, body = _head_and_body(got.out)
    assert body == "größer ✓".encode()
    assert "content-type: text/plain; charset=utf-8" in head and "\r\ncontent-disposition:" not in head


def test_several_parts_with_the_sha256_of_the_file(daemon, tmp_path):
    name = unique("form-many")
    files = [tmp_path / f"f{i}.bin" for i in range(3)]
    for i, f in enumerate(files):
        f.write_bytes(bytes([i]) * 100_000)
    got = receiver(daemon.url(name))
    args = ["-F", "a=1", "-F", f"first=@{files[0]};type=image/png", "-F", f"second=@{files[1]}", "-F", "z=2"]
    sent = run_curl(*args, daemon.url(f"{name}?sha256"))
    assert got.wait() == 0 and got.out == files[0].read_bytes()  # the first file part only
    digest = hashlib.sha256(files[0].read_bytes()).hexdigest()
    assert f"[INFO] SHA-256: {digest}\n" in sent.text, sent.text


def test_piping_server_check_lone_part_is_byte_equal(daemon):
    """piping-server-check POSTs one 8 MiB part named input_data, without a filename."""
    name = unique("form-check")
    payload = os.urandom(8 * 1024 * 1024)
    body = (
        (
            f'--{B}\r\nContent-Disposition: form-data; name="input_data"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        + payload
        + f"\r\n--{B}--\r\n".encode()
    )
    got = _waiting_receiver(daemon, name)
    with RawConnection(daemon, timeout=30) as conn:
        answer = conn.request(_form_request(name, body))
    assert answer.status == 200 and answer.text.endswith("[INFO] Transfer complete.\n"), answer.text
    assert got.wait() == 0
    head, data = _head_and_body(got.out)
    assert data == payload
    assert "content-type: application/octet-stream" in head
    assert 'content-disposition: form-data; name="input_data"' in head


def test_a_truncated_form_fails_its_parties(daemon):
    name = unique("form-truncated")
    body = f'--{B}\r\nContent-Disposition: form-data; name="f"; filename="a.bin"\r\n\r\n'.encode() + b"x" * 50_000
    got = _waiting_receiver(daemon, name)
    with RawConnection(daemon) as conn:
        answer = conn.request(_form_request(name, body))
    assert answer.text.endswith(FAILED), answer.text
    assert got.wait() != 0  # started, then aborted: never a clean end
    assert wait_status(daemon, name, state="failed")["reason"] == "Transfer failed"


def test_a_form_that_fails_before_the_pick_is_a_500_for_the_receiver(daemon):
    name = unique("form-nopart")
    got = _waiting_receiver(daemon, name)
    sent = run_curl(
        "-H", f"Content-Type: multipart/form-data; boundary={B}", "--data-binary", f"--{B}--\r\n", daemon.url(name)
    )
    assert sent.text.endswith(FAILED)
    assert got.wait() == 0
    head, body = _head_and_body(got.out)
    assert head.startswith("http/1.1 500") and body == FAILED.encode()


def test_a_form_without_a_boundary_is_refused(daemon):
    name = unique("form-noboundary")
    sent = run_curl("-H", "Content-Type: multipart/form-data", "--data-binary", "x", daemon.url(name))
    assert sent.status == 400 and sent.text == "[ERROR] Invalid multipart body: no boundary.\n"


def test_a_sender_that_leaves_mid_form(daemon):
    name = unique("form-left")
    got = _waiting_receiver(daemon, name)
    head = f'--{B}\r\nContent-Disposition: form-data; name="input_text"\r\n\r\nhalf a text'.encode()
    conn = RawConnection(daemon)
    conn.send(
        f"POST /api/v1/pipe/{name} HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary={B}\r\n"
        f"Content-Length: {len(head) + 1000}\r\n\r\n".encode()
        + head
    )
    wait_status(daemon, name, state="streaming")
    conn.reset()
    assert got.wait() == 0
    status_line, body = _head_and_body(got.out)
    assert status_line.startswith("http/1.1 500") and body == FAILED.encode()
    assert wait_status(daemon, name, state="failed")["reason"] == "Sender disconnected"
