"""The upload edge's defects of issue 8, end to end: a fractional --wait-timeout,
a sender's refusal readable from another origin, and KIT.md section 8's
request rules, with curl against the installed daemon."""

from __future__ import annotations

import time

from ._helpers import Sender, receiver, run_curl, unique, wait_status


def header(result, name: str) -> str | None:
    return result.header(name)


def test_a_fractional_wait_timeout_is_kept(daemon_factory):
    daemon = daemon_factory("--wait-timeout", "0.5")
    started = time.monotonic()
    got = run_curl("-H", "Origin: https://elsewhere.example", daemon.url(unique("half")), timeout=10)
    elapsed = time.monotonic() - started
    assert got.status == 408 and got.body == b"[ERROR] Timed out waiting for sender.\n"
    assert 0.4 <= elapsed < 2.0, f"a 0.5 s wait took {elapsed:.2f} s"  # int(0.5) made it 0: at once
    assert header(got, "X-Content-Type-Options") == "nosniff"
    assert header(got, "Access-Control-Allow-Origin") == "*"


def test_wait_with_fractions_on_the_query(daemon):
    started = time.monotonic()
    got = run_curl(daemon.url(unique("frac"), "wait=1.5"), timeout=10)
    assert got.status == 408 and 1.4 <= time.monotonic() - started < 3.0


def test_a_senders_refusal_can_be_read_by_a_page_on_another_origin(daemon_factory):
    daemon = daemon_factory("--max-pending", "1")
    origin = ("-H", "Origin: https://elsewhere.example")
    bad = run_curl("-T", "-", *origin, daemon.url(unique("bad"), "n=0"), input=b"x")
    assert bad.status == 400 and header(bad, "Access-Control-Allow-Origin") == "*"
    holder = Sender(daemon.url(unique("hold")))
    holder.feed(b"x")
    full = run_curl("-T", "-", *origin, daemon.url(unique("full")), input=b"x")
    assert full.status == 429 and header(full, "Access-Control-Allow-Origin") == "*"
    assert header(full, "Retry-After") and full.body.startswith(b"[ERROR] ")
    holder.kill()


def test_a_put_with_a_page_flag_is_an_ordinary_sender(daemon):
    name = unique("flagged")
    got = receiver(daemon.url(name))
    wait_status(daemon, name, state="waiting", activeReceivers=1)
    sent = run_curl("-T", "-", daemon.url(name, "progress"), input=b"hello")
    assert sent.status == 200 and sent.body.endswith(b"[INFO] Transfer complete.\n")
    assert got.wait(10) == 0 and got.out == b"hello"
