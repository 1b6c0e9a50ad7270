"""twistd options and wiring, on a MemoryReactorClock."""

from __future__ import annotations

import pytest
from twisted.internet.testing import MemoryReactorClock
from twisted.python import usage

from hoodypipe.channel import PipeSite
from hoodypipe.tap import Options, makeService


def options(*argv: str) -> Options:
    config = Options()
    config.parseOptions(list(argv))
    return config


def test_defaults():
    config = options()
    assert config["listen"] == ["tcp:8080"]
    assert (config["max-receivers"], config["max-pending"], config["max-active"]) == (256, 1000, 1000)
    assert (config["wait-timeout"], config["idle-timeout"], config["progress-interval"]) == (300, 300, 0.25)
    assert (config["max-spectators"], config["max-watched-paths"], config["retain"]) == (50, 500, 86400)


@pytest.mark.parametrize(
    "argv",
    [
        ["--max-receivers", "0"],
        ["--max-receivers", "many"],
        ["--max-pending", "-1"],
        ["--wait-timeout", "0"],
        ["--wait-timeout", "3601"],
        ["--idle-timeout", "soon"],
        ["--listen", "nonsense:1"],
        ["--listen", "tcp:notaport"],
        ["--progress-interval", "0"],
        ["--bogus"],
    ],
)
def test_bad_options_are_usage_errors(argv):
    with pytest.raises(usage.UsageError):
        options(*argv)


def test_service_listens_on_every_endpoint_and_wires_the_limits():
    reactor = MemoryReactorClock()
    config = options(
        "--listen",
        "tcp:0:interface=127.0.0.1",
        "--listen",
        "tcp:8081",
        "--max-receivers",
        "3",
        "--wait-timeout",
        "7",
        "--max-spectators",
        "9",
    )
    service = makeService(config, reactor)
    service.startService()
    ports = [(port, interface) for port, _, _, interface in reactor.tcpServers]
    assert ports == [(0, "127.0.0.1"), (8081, "")]
    site = reactor.tcpServers[0][1]
    assert isinstance(site, PipeSite)
    assert site.registry.limits.max_receivers == 3 and site.registry.limits.wait_timeout == 7
    assert service.parts.hub.limits.max_spectators == 9
    assert service.parts.hub.running
    d = service.stopService()
    reactor.advance(1)
    assert d.called and not service.parts.hub.running


def test_trusted_proxies_are_ip_addresses():
    assert options("--trusted-proxy", "127.0.0.1", "--trusted-proxy", "::1")["trusted-proxy"] == {"127.0.0.1", "::1"}
    with pytest.raises(usage.UsageError):
        options("--trusted-proxy", "proxy.example")
