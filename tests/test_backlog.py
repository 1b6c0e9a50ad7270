"""--backlog (issue 9): the listen queue of endpoints that do not set their own.

Twisted's default is 50: a burst of connections past that is dropped by the
kernel (SYN retries of a second and more) before the daemon sees any.
"""

from __future__ import annotations

import pytest
from twisted.internet.testing import MemoryReactorClock
from twisted.python import usage

from hoodypipe.backlog import DEFAULT_BACKLOG, with_backlog
from hoodypipe.tap import Options, makeService


@pytest.mark.parametrize(
    "description, shown",
    [
        ("tcp:8080", "tcp:8080:backlog=1024"),
        ("tcp:0:interface=127.0.0.1", "tcp:0:interface=127.0.0.1:backlog=1024"),
        ("tcp:port=80", "tcp:port=80:backlog=1024"),
        ("tcp6:8080", "tcp6:8080:backlog=1024"),
        ("ssl:8443:privateKey=k.pem:certKey=c.pem", "ssl:8443:privateKey=k.pem:certKey=c.pem:backlog=1024"),
        ("unix:/run/hoodypipe.sock", "unix:/run/hoodypipe.sock:backlog=1024"),
        ("unix:/run/a\\:b.sock:mode=660", "unix:/run/a\\:b.sock:mode=660:backlog=1024"),
        # Set by the description: kept.
        ("tcp:8080:backlog=7", "tcp:8080:backlog=7"),
        ("tcp:8080:127.0.0.1:7", "tcp:8080:127.0.0.1:7"),  # backlog, positionally
        ("tcp6:8080:7", "tcp6:8080:7"),
        ("unix:/s:666:7", "unix:/s:666:7"),
        ("ssl:1:k:c:m:i:7", "ssl:1:k:c:m:i:7"),
        # Not ours to say: systemd made the socket, others take no backlog.
        ("systemd:domain=INET:index=0", "systemd:domain=INET:index=0"),
        ("stdio:", "stdio:"),
        ("tcp:8080:interface=a\\", "tcp:8080:interface=a\\"),  # a dangling escape: left for Twisted to refuse
    ],
)
def test_with_backlog(description, shown):
    assert with_backlog(description, DEFAULT_BACKLOG) == shown


def test_with_backlog_takes_the_given_size():
    assert with_backlog("tcp:1", 5) == "tcp:1:backlog=5"


def options(*argv: str) -> Options:
    config = Options()
    config.parseOptions(list(argv))
    return config


def test_the_option_defaults_to_1024_and_is_validated():
    assert options()["backlog"] == 1024
    assert options("--backlog", "64")["backlog"] == 64
    for bad in ("0", "-1", "many", "65536"):
        with pytest.raises(usage.UsageError):
            options("--backlog", bad)


def test_every_endpoint_listens_with_the_backlog(tmp_path):
    reactor = MemoryReactorClock()
    sock = str(tmp_path / "s.sock")
    config = options("--listen", "tcp:0", "--listen", "tcp:0:backlog=7", "--listen", f"unix:{sock}")
    service = makeService(config, reactor)
    service.startService()
    assert [backlog for _, _, backlog, _ in reactor.tcpServers] == [1024, 7]
    assert [(address, backlog) for address, _, backlog, *_ in reactor.unixServers] == [(sock, 1024)]
    service.stopService()
    reactor.advance(10)


def test_a_smaller_backlog_is_applied():
    reactor = MemoryReactorClock()
    service = makeService(options("--backlog", "16"), reactor)
    service.startService()
    assert [(port, backlog) for port, _, backlog, _ in reactor.tcpServers] == [(8080, 16)]
    service.stopService()
    reactor.advance(10)
