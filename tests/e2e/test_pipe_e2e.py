"""The pipe end to end over real sockets: curl (and treq) against the installed daemon.

Covers DESIGN.md section 3: arrival orders, the sender's status lines word for
word, both URL forms, PUT and POST, fan-out, integrity, header pass-through
and sanitising. Errors, pages and keep-alive are in test_pipe_errors.py;
failures, timeouts and memory in test_pipe_failures.py.
"""

from __future__ import annotations

import hashlib
import os
import time

import pytest

from ._helpers import (
    Curl,
    CurlResult,
    Sender,
    deterministic_bytes,
    parse_header_dump,
    receiver,
    run_curl,
    sha256,
    status,
    unique,
    wait_status,
)

RECEIVER_FIRST_LINES = [
    "[INFO] Waiting for 1 receiver(s) to connect...",
    "[INFO] 1 receiver(s) already connected.",
    "[INFO] Streaming to 1 receiver(s)...",
    "[INFO] Upload complete.",
    "[INFO] Transfer complete.",
]
SENDER_FIRST_LINES = [
    "[INFO] Waiting for 1 receiver(s) to connect...",
    "[INFO] Streaming to 1 receiver(s)...",
    "[INFO] Upload complete.",
    "[INFO] Transfer complete.",
]
FIXED_RECEIVER_HEADERS = {
    "Access-Control-Allow-Origin": "*",
    "X-Content-Type-Options": "nosniff",
    "X-Robots-Tag": "none",
}


def root_url(daemon, name: str, query: str = "") -> str:
    return f"{daemon.base}/{name}" + (f"?{query}" if query else "")


# -- arrival orders ----------------------------------------------------------------------


@pytest.mark.parametrize("sender_form,receiver_form", [("prefix", "prefix"), ("prefix", "root"), ("root", "prefix")])
def test_receiver_first(daemon, sender_form, receiver_form):
    name = unique("rfirst")
    urls = {"prefix": daemon.url(name), "root": root_url(daemon, name)}
    data = deterministic_bytes(3 * 1024 * 1024 + 17, seed=1)
    r = receiver(urls[receiver_form])
    wait_status(daemon, name, state="waiting", hasSender=False, activeReceivers=1)
    s = Sender(urls[sender_form], data=data)
    assert s.wait(30) == 0, s.stderr
    assert r.wait(30) == 0, r.stderr
    assert r.out == data
    assert s.lines == RECEIVER_FIRST_LINES
    assert status(daemon, name)["state"] == "complete"


@pytest.mark.parametrize("sender_form,receiver_form", [("prefix", "prefix"), ("root", "root"), ("root", "prefix")])
def test_sender_first(daemon, sender_form, receiver_form):
    name = unique("sfirst")
    urls = {"prefix": daemon.url(name), "root": root_url(daemon, name)}
    data = deterministic_bytes(3 * 1024 * 1024 + 5, seed=2)
    s = Sender(urls[sender_form], data=data)
    wait_status(daemon, name, state="waiting", hasSender=True, activeReceivers=0)
    r = receiver(urls[receiver_form])
    assert r.wait(30) == 0, r.stderr
    assert s.wait(30) == 0, s.stderr
    assert r.out == data
    assert s.lines == SENDER_FIRST_LINES


def test_empty_body(daemon):
    name = unique("empty")
    r = receiver(daemon.url(name))
    wait_status(daemon, name, state="waiting", activeReceivers=1)
    s = Sender(daemon.url(name), data=b"")
    assert s.wait(30) == 0 and r.wait(30) == 0
    assert r.out == b""
    assert s.lines == RECEIVER_FIRST_LINES


def test_put_fixed_length_sends_content_length(daemon, tmp_path):
    """``curl -T file``: a fixed-length upload; the receiver is told the length."""
    name = unique("fixed")
    data = os.urandom(5 * 1024 * 1024 + 3)
    path = tmp_path / "payload.bin"
    path.write_bytes(data)
    body = tmp_path / "got.bin"
    r = Curl(["-D", str(tmp_path / "h"), "-o", str(body), daemon.url(name)])
    wait_status(daemon, name, state="waiting", activeReceivers=1)
    s = run_curl("-T", str(path), daemon.url(name))
    assert s.returncode == 0, s.stderr
    assert r.wait(30) == 0, r.stderr
    assert body.read_bytes() == data
    code, headers = parse_header_dump((tmp_path / "h").read_bytes())
    got = CurlResult(0, code, headers, b"", "")
    assert got.header("Content-Length") == str(len(data))
    assert not got.has("Transfer-Encoding")
    assert s.status == 200
    assert s.text.splitlines() == RECEIVER_FIRST_LINES


def test_post_form_typed_body_arrives_unchanged(daemon, tmp_path):
    """``curl --data-binary @file`` sends a form content type: no form parsing, bytes as sent."""
    name = unique("form")
    data = b"a=1&b=%41%42&c=\x00\xff\r\n&=&&" + os.urandom(200_000) + b"&z=last"
    path = tmp_path / "form.bin"
    path.write_bytes(data)
    r = Curl(["-D", str(tmp_path / "h"), daemon.url(name)])
    wait_status(daemon, name, state="waiting", activeReceivers=1)
    s = run_curl("--data-binary", f"@{path}", daemon.url(name))
    assert s.returncode == 0, s.stderr
    assert r.wait(30) == 0, r.stderr
    assert r.out == data
    _, headers = parse_header_dump((tmp_path / "h").read_bytes())
    assert [v for k, v in headers if k.lower() == "content-type"] == ["application/x-www-form-urlencoded"]
    assert s.text.splitlines() == RECEIVER_FIRST_LINES


def test_post_sender_first(daemon, tmp_path):
    name = unique("post")
    data = os.urandom(100_000)
    path = tmp_path / "x.bin"
    path.write_bytes(data)
    s = Curl(["--data-binary", f"@{path}", "-H", "Content-Type: application/octet-stream", daemon.url(name)])
    wait_status(daemon, name, state="waiting", hasSender=True)
    r = receiver(root_url(daemon, name))
    assert r.wait(30) == 0 and s.wait(30) == 0
    assert r.out == data
    assert s.lines == SENDER_FIRST_LINES


def test_name_is_reusable_at_once(daemon):
    name = unique("again")
    for round_, data in enumerate([b"first\n", b"second\n", b"third\n"]):
        if round_ % 2:
            s = Sender(daemon.url(name), data=data)
            wait_status(daemon, name, state="waiting", hasSender=True)
            r = receiver(daemon.url(name))
        else:
            r = receiver(daemon.url(name))
            wait_status(daemon, name, state="waiting", activeReceivers=1)
            s = Sender(daemon.url(name), data=data)
        assert s.wait(30) == 0 and r.wait(30) == 0
        assert r.out == data
        assert s.lines[-1] == "[INFO] Transfer complete."


def test_identity_ignores_query_and_folds_hex_case(daemon):
    """``a%2a`` and ``a%2A`` are one name; the query is not part of it."""
    base = unique("hex")
    r = receiver(daemon.url(base + "-%e2%9c%93", "download=false"))
    wait_status(daemon, base + "-%E2%9C%93", state="waiting", activeReceivers=1)
    s = Sender(daemon.url(base + "-%E2%9c%93", "x=1"), data=b"x")
    assert s.wait(30) == 0 and r.wait(30) == 0
    assert r.out == b"x"


# -- fan-out ------------------------------------------------------------------------------


def test_fan_out_to_three_receivers(daemon):
    name = unique("fan")
    data = deterministic_bytes(24 * 1024 * 1024, seed=3)
    receivers = [receiver(daemon.url(name, "n=3"), keep=False) for _ in range(3)]
    wait_status(daemon, name, state="waiting", activeReceivers=3)
    s = Sender(daemon.url(name, "n=3"), data=data)
    assert s.wait(60) == 0, s.stderr
    for r in receivers:
        assert r.wait(60) == 0, r.stderr
        assert r.nbytes == len(data)
        assert r.digest == sha256(data)
    assert s.lines == [
        "[INFO] Waiting for 3 receiver(s) to connect...",
        "[INFO] 3 receiver(s) already connected.",
        "[INFO] Streaming to 3 receiver(s)...",
        "[INFO] Upload complete.",
        "[INFO] Transfer complete.",
    ]


def test_fan_out_sender_first_receivers_trickle_in(daemon):
    name = unique("fan2")
    data = deterministic_bytes(2 * 1024 * 1024, seed=4)
    s = Sender(daemon.url(name, "n=3"), data=data)
    wait_status(daemon, name, state="waiting", hasSender=True)
    receivers = []
    for k in (1, 2, 3):
        receivers.append(receiver(root_url(daemon, name, "n=3")))
        if k < 3:
            wait_status(daemon, name, state="waiting", activeReceivers=k)
    for r in receivers:
        assert r.wait(30) == 0
        assert r.out == data
    assert s.wait(30) == 0
    assert s.lines == [
        "[INFO] Waiting for 3 receiver(s) to connect...",
        "[INFO] Streaming to 3 receiver(s)...",
        "[INFO] Upload complete.",
        "[INFO] Transfer complete.",
    ]


# -- integrity -----------------------------------------------------------------------------


@pytest.mark.slow
def test_sha256_of_256_mib_chunked(daemon, big_random_file):
    """256 MiB of random bytes through ``curl -T -`` (chunked), hashed as they arrive."""
    path, digest = big_random_file
    size = path.stat().st_size
    name = unique("big")
    r = receiver(daemon.url(name), keep=False)
    wait_status(daemon, name, state="waiting", activeReceivers=1)
    with open(path, "rb") as f:
        s = Curl(["-T", "-", daemon.url(name)], stdin=f)
        assert s.wait(120) == 0, s.stderr
    assert r.wait(120) == 0, r.stderr
    assert r.nbytes == size
    assert r.digest == digest
    assert s.lines == RECEIVER_FIRST_LINES
    final = status(daemon, name)
    assert final["state"] == "complete" and final["bytesTransferred"] == size


# -- headers to receivers ----------------------------------------------------------------


def transfer_headers(
    daemon, tmp_path, sender_args: list[str], receiver_query: str = "", body: bytes = b"payload\n", fixed: bool = False
):
    """Run one small transfer; return the receiver's CurlResult and the sender's lines."""
    name = unique("hdr")
    r = Curl(["-D", str(tmp_path / "rh"), daemon.url(name, receiver_query)])
    wait_status(daemon, name, state="waiting", activeReceivers=1)
    if fixed:
        path = tmp_path / "body.bin"
        path.write_bytes(body)
        s = run_curl("-T", str(path), *sender_args, daemon.url(name))
    else:
        s = run_curl("-T", "-", *sender_args, daemon.url(name), input=body)
    assert s.returncode == 0, s.stderr
    assert r.wait(30) == 0, r.stderr
    code, headers = parse_header_dump((tmp_path / "rh").read_bytes())
    assert r.out == body
    assert s.text.splitlines()[-1] == "[INFO] Transfer complete."
    got = CurlResult(r.returncode, code, headers, r.out, r.stderr)
    assert got.status == 200
    for k, v in FIXED_RECEIVER_HEADERS.items():
        assert got.header(k) == v, (k, headers)
    return got


@pytest.mark.parametrize(
    "sent,expected",
    [
        ("text/html", "text/plain"),
        ("text/html; charset=utf-8", "text/plain; charset=utf-8"),
        ("image/svg+xml", "text/plain"),
        ("application/xhtml+xml", "text/plain"),
        ("application/javascript", "text/plain"),
        ("text/xml", "text/plain"),
        ("application/octet-stream", "application/octet-stream"),
        ("image/png", "image/png"),
        ("text/plain; charset=utf-8; evil=1", "text/plain; charset=utf-8"),
        ("Application/Octet-Stream; boundary=x", "application/octet-stream"),
    ],
)
def test_content_type_sanitised(daemon, tmp_path, sent, expected):
    got = transfer_headers(daemon, tmp_path, ["-H", f"Content-Type: {sent}"])
    assert got.header("Content-Type") == expected


def test_no_content_type_invented_for_curl_T(daemon, tmp_path):
    """``curl -T -`` sends no Content-Type, so the receiver gets none (not twisted's text/html)."""
    got = transfer_headers(daemon, tmp_path, [])
    assert not got.has("Content-Type"), got.headers


def test_no_content_type_when_removed_from_post(daemon, tmp_path):
    name = unique("noctype")
    r = Curl(["-D", str(tmp_path / "rh"), daemon.url(name)])
    wait_status(daemon, name, state="waiting", activeReceivers=1)
    s = run_curl("--data-binary", "a=b&c", "-H", "Content-Type:", daemon.url(name))
    assert s.returncode == 0 and r.wait(30) == 0
    assert r.out == b"a=b&c"
    _, headers = parse_header_dump((tmp_path / "rh").read_bytes())
    assert "content-type" not in [k.lower() for k, _ in headers], headers


def test_content_length_only_for_fixed_uploads(daemon, tmp_path):
    chunked = transfer_headers(daemon, tmp_path, [], body=b"abc")
    assert not chunked.has("Content-Length")
    assert (chunked.header("Transfer-Encoding") or "").lower() == "chunked"
    fixed = transfer_headers(daemon, tmp_path, [], body=b"abcdef", fixed=True)
    assert fixed.header("Content-Length") == "6"


@pytest.mark.parametrize(
    "ctype,disposition,expected",
    [
        ("text/html", 'inline; filename="page.html"', 'attachment; filename="page.html"'),
        ("image/svg+xml", "inline", "attachment"),
        ("application/octet-stream", "inline", "attachment"),
        ("image/png", 'inline; filename="a.png"', 'inline; filename="a.png"'),
        ("video/mp4", "inline", "inline"),
        ("text/plain", "inline", "inline"),
        ("application/pdf", 'inline; filename="r.pdf"', 'inline; filename="r.pdf"'),
        ("image/png", 'attachment; filename="b.png"', 'attachment; filename="b.png"'),
    ],
)
def test_content_disposition_inline_rules(daemon, tmp_path, ctype, disposition, expected):
    got = transfer_headers(
        daemon, tmp_path, ["-H", f"Content-Type: {ctype}", "-H", f"Content-Disposition: {disposition}"]
    )
    assert got.header("Content-Disposition") == expected


def test_x_piping_and_x_hoody_pipe_pass_through_and_are_exposed(daemon, tmp_path):
    got = transfer_headers(
        daemon, tmp_path, ["-H", "X-Piping: hello piping", "-H", 'X-Hoody-Pipe: {"k": 1}', "-H", "X-Other: no"]
    )
    assert got.header("X-Piping") == "hello piping"
    assert got.header("X-Hoody-Pipe") == '{"k": 1}'
    assert got.header("X-Other") is None
    exposed = {v.strip().lower() for v in (got.header("Access-Control-Expose-Headers") or "").split(",")}
    assert {"x-piping", "x-hoody-pipe"} <= exposed


def test_x_piping_control_characters_are_stripped(daemon, tmp_path):
    """Sent over a raw socket, since curl will not send control characters in a header."""
    from ._helpers import RawConnection

    name = unique("ctl")
    r = Curl(["-D", str(tmp_path / "rh"), daemon.url(name)])
    wait_status(daemon, name, state="waiting", activeReceivers=1)
    with RawConnection(daemon) as conn:
        answer = conn.request(
            f"PUT /api/v1/pipe/{name} HTTP/1.1\r\nHost: x\r\nX-Piping: a\x01b\x7fc\x1bd\r\n"
            "X-Hoody-Pipe: \x02ok\x1f\r\nContent-Length: 2\r\n\r\nhi".encode("latin-1")
        )
    assert answer.status == 200 and answer.body.decode().splitlines()[-1] == "[INFO] Transfer complete."
    assert r.wait(15) == 0 and r.out == b"hi"
    _, headers = parse_header_dump((tmp_path / "rh").read_bytes())
    got = CurlResult(0, 200, headers, b"", "")
    assert got.header("X-Piping") == "abcd"
    assert got.header("X-Hoody-Pipe") == "ok"


def test_x_piping_is_capped_at_8_kib(daemon, tmp_path):
    got = transfer_headers(daemon, tmp_path, ["-H", "X-Piping: " + "a" * 9000])
    value = got.header("X-Piping")
    assert value is not None and 0 < len(value) <= 8192 and set(value) == {"a"}


@pytest.mark.parametrize(
    "query,sender_disposition,expected",
    [
        ("download", None, 'attachment; filename="{last}"'),
        ("download=true", 'inline; filename="sent.png"', 'attachment; filename="sent.png"'),
        ("download=false", 'attachment; filename="sent.bin"', None),
        ("filename=report.txt", None, 'attachment; filename="report.txt"'),
        ("filename=caf%C3%A9.txt", None, "attachment; filename=\"caf_.txt\"; filename*=UTF-8''caf%C3%A9.txt"),
        ("filename=..%2F..%2Fetc%2Fpasswd", None, 'attachment; filename="etcpasswd"'),
    ],
)
def test_download_and_filename_flags(daemon, tmp_path, query, sender_disposition, expected):
    sender_args = ["-H", "Content-Type: image/png"]
    if sender_disposition:
        sender_args += ["-H", f"Content-Disposition: {sender_disposition}"]
    name = unique("dl")
    r = Curl(["-D", str(tmp_path / "rh"), daemon.url(name, query)])
    wait_status(daemon, name, state="waiting", activeReceivers=1)
    s = run_curl("-T", "-", *sender_args, daemon.url(name), input=b"img")
    assert s.returncode == 0 and r.wait(30) == 0
    _, headers = parse_header_dump((tmp_path / "rh").read_bytes())
    got = [v for k, v in headers if k.lower() == "content-disposition"]
    if expected is None:
        assert got == []
    else:
        assert got == [expected.format(last=name)]


def test_download_uses_the_decoded_last_segment(daemon, tmp_path):
    name = unique("seg") + "/caf%C3%A9.txt"
    r = Curl(["-D", str(tmp_path / "rh"), daemon.url(name, "download")])
    wait_status(daemon, name, state="waiting", activeReceivers=1)
    s = run_curl("-T", "-", daemon.url(name), input=b"x")
    assert s.returncode == 0 and r.wait(15) == 0
    _, headers = parse_header_dump((tmp_path / "rh").read_bytes())
    got = CurlResult(0, 200, headers, b"", "")
    assert got.header("Content-Disposition") == "attachment; filename=\"caf_.txt\"; filename*=UTF-8''caf%C3%A9.txt"


def test_filename_with_non_ascii_uses_rfc5987(daemon, tmp_path):
    got = transfer_headers(daemon, tmp_path, [], receiver_query="filename=%E2%9C%93%20r%C3%A9sum%C3%A9.pdf")
    value = got.header("Content-Disposition")
    assert value.startswith("attachment;")
    assert "filename*=UTF-8''%E2%9C%93%20r%C3%A9sum%C3%A9.pdf" in value
    ascii_part = value.split("filename=", 1)[1].split(";", 1)[0]
    assert ascii_part.isascii()


# -- with treq -------------------------------------------------------------------------------

pytest_twisted = pytest.importorskip("pytest_twisted")


async def _poll_status(pool, daemon, name, **expected):
    import json

    import treq
    from twisted.internet import reactor
    from twisted.internet.task import deferLater

    deadline = time.monotonic() + 10
    while True:
        answer = await treq.get(daemon.url(name, "status"), pool=pool)
        state = json.loads(await treq.content(answer))
        if all(state.get(k) == v for k, v in expected.items()):
            return state
        assert time.monotonic() < deadline, f"timed out waiting for {expected}: {state}"
        await deferLater(reactor, 0.02, lambda: None)


@pytest_twisted.ensureDeferred
async def test_treq_receiver_collects_and_sees_headers(daemon):
    """A treq receiver streams the body with treq.collect while a treq sender PUTs it."""
    import treq
    from twisted.internet import reactor
    from twisted.web.client import HTTPConnectionPool

    pool = HTTPConnectionPool(reactor, persistent=False)
    name = unique("treq")
    data = deterministic_bytes(4 * 1024 * 1024, seed=5)
    receiving = treq.get(daemon.url(name), unbuffered=True, pool=pool)
    await _poll_status(pool, daemon, name, state="waiting", activeReceivers=1)
    sending = treq.put(
        daemon.url(name),
        data=data,
        headers={"Content-Type": ["text/html; charset=UTF-8"], "X-Piping": ["from treq"]},
        pool=pool,
    )
    response = await receiving
    assert response.code == 200
    headers = response.headers
    assert headers.getRawHeaders(b"Content-Type") == [b"text/plain; charset=utf-8"]
    # Twisted's client moves Content-Length out of the headers into .length.
    assert response.length == len(data)
    assert headers.getRawHeaders(b"X-Piping") == [b"from treq"]
    for k, v in FIXED_RECEIVER_HEADERS.items():
        assert headers.getRawHeaders(k.encode()) == [v.encode()]
    digest = hashlib.sha256()
    count = 0

    def collect(chunk: bytes) -> None:
        nonlocal count
        digest.update(chunk)
        count += len(chunk)

    await treq.collect(response, collect)
    assert count == len(data) and digest.hexdigest() == sha256(data)
    sent = await sending
    assert sent.code == 200
    assert sent.headers.getRawHeaders(b"Content-Type") == [b"text/plain; charset=utf-8"]
    text = (await treq.content(sent)).decode()
    assert text.splitlines() == RECEIVER_FIRST_LINES


@pytest_twisted.ensureDeferred
async def test_treq_errors_and_options(daemon):
    import treq
    from twisted.internet import reactor
    from twisted.web.client import HTTPConnectionPool

    pool = HTTPConnectionPool(reactor, persistent=False)
    answer = await treq.request("OPTIONS", daemon.url(unique("opt")), pool=pool)
    assert answer.code == 200
    h = answer.headers
    assert h.getRawHeaders(b"Access-Control-Allow-Origin") == [b"*"]
    assert h.getRawHeaders(b"Access-Control-Max-Age") == [b"86400"]
    methods = {m.strip() for m in h.getRawHeaders(b"Access-Control-Allow-Methods")[0].split(b",")}
    assert methods == {b"GET", b"POST", b"PUT", b"OPTIONS"}
    await treq.content(answer)

    answer = await treq.get(daemon.url(unique("bad"), "n=0"), pool=pool)
    assert answer.code == 400
    body = await treq.content(answer)
    assert body.startswith(b"[ERROR] ") and body.endswith(b".\n") and body.count(b"\n") == 1
