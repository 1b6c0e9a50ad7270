"""``twistd hoodypipe``: options, and the wiring of one daemon."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from twisted.internet.endpoints import serverFromString
from twisted.python import usage

from hoodypipe.backlog import DEFAULT_BACKLOG, with_backlog
from hoodypipe.channel import PipeSite
from hoodypipe.digest import InlineDigest, digest_maker
from hoodypipe.fairshare import DEFAULT_IPV6_PREFIX
from hoodypipe.hub import Hub, HubLimits
from hoodypipe.malloc import keep_buffers
from hoodypipe.pipes import Limits, Registry
from hoodypipe.proxy import normal_address
from hoodypipe.service import PipeService, ignore_hangups
from hoodypipe.signals import one_shutdown
from hoodypipe.store import STORE_FORMS, RedisStore, parse_store
from hoodypipe.web import PipeWeb

if TYPE_CHECKING:
    from collections.abc import Callable

    from twisted.internet.interfaces import IReactorTime

    from hoodypipe.digest import Hasher
    from hoodypipe.store import FinalStore


def _count(low: int, high: int | None = None) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise usage.UsageError(f"{text!r} is not a whole number") from None
        if value < low or (high is not None and value > high):
            bound = f"from {low} to {high}" if high is not None else f"at least {low}"
            raise usage.UsageError(f"{value} is out of range: must be {bound}")
        return value

    return parse


def _seconds(low: float, high: float | None = None) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise usage.UsageError(f"{text!r} is not a number of seconds") from None
        if not value >= low or (high is not None and value > high):
            bound = f"from {low:g} to {high:g}" if high is not None else f"at least {low:g}"
            raise usage.UsageError(f"{value:g} seconds is out of range: must be {bound}")
        return value

    return parse


def _store(text: str) -> str:
    try:
        parse_store(text)
    except ValueError as error:
        raise usage.UsageError(f"invalid --store {text!r}: {error}") from None
    return text


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = (
        "Relay HTTP streams from one sender to N receivers, with a live ?progress side channel. "
        "Serves http://0.0.0.0:8080 unless told otherwise."
    )
    optParameters: ClassVar[list[list[Any]]] = [
        ["max-receivers", None, 256, "Largest n a pipe may ask for.", _count(1, 10000)],
        ["max-pending", None, 1000, "Pipes waiting for their parties, daemon-wide.", _count(1)],
        ["max-active", None, 1000, "Pipes streaming, daemon-wide.", _count(1)],
        ["max-connections-per-address", None, 256, "Open connections from one client address.", _count(1)],
        ["max-waiting-per-address", None, 100, "Parties waiting for their peers from one client address.", _count(1)],
        ["max-active-per-address", None, 100, "Transfers streaming from one client address.", _count(1)],
        [
            "min-rate",
            None,
            64.0,
            "Bytes per second a transfer must average over --idle-timeout, else it is idle (0: any byte will do).",
            _seconds(0),
        ],
        [
            "ipv6-prefix",
            None,
            64,
            "IPv6 clients are counted by this prefix length for the per-address caps.",
            _count(1, 128),
        ],
        [
            "wait-timeout",
            None,
            300.0,
            "Seconds a party waits for its peers (per request: ?wait=).",
            _seconds(0.001, 3600),
        ],
        ["idle-timeout", None, 300.0, "Seconds without a byte moved before a transfer fails.", _seconds(0.001)],
        ["max-spectators", None, 50, "Streaming spectators per path.", _count(1)],
        ["max-watched-paths", None, 500, "Paths with spectators, daemon-wide.", _count(1)],
        [
            "spectator-window",
            None,
            300.0,
            "Seconds before a spectator stream is closed (clients reconnect).",
            _seconds(0.001),
        ],
        ["progress-interval", None, 0.25, "Seconds between progress events.", _seconds(0.01, 60)],
        ["retain", None, 86400.0, "Seconds a finished transfer's final state stays readable.", _seconds(0)],
        ["drain-timeout", None, 60.0, "On SIGTERM, seconds streaming transfers may run on.", _seconds(0)],
        ["backlog", None, DEFAULT_BACKLOG, "Listen queue of endpoints without backlog=.", _count(1, 65535)],
        ["store", None, "memory", f"Where finished transfers' final states are kept: {STORE_FORMS}.", _store],
        ["port-file", None, None, "Write the listening addresses here once listening (for tests and scripts)."],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["listen"] = []
        self["trusted-proxy"] = set()

    def opt_listen(self, description: str) -> None:
        """Listen on this endpoint (repeatable), e.g. tcp:8080, unix:/run/hoodypipe.sock."""
        from twisted.internet import reactor  # noqa: PLC0415 (only to parse; never installs one early)

        try:
            serverFromString(reactor, description)
        except (IndexError, KeyError) as error:
            if not description.startswith("systemd:"):
                raise usage.UsageError(f"invalid --listen endpoint {description!r}: {error}") from None
            # Twisted sees no inherited socket unless LISTEN_PID, LISTEN_FDS and
            # LISTEN_FDNAMES all match (systemd sets them; systemd-socket-activate
            # sets LISTEN_FDNAMES only with --fdname=).
            raise usage.UsageError(
                f"invalid --listen endpoint {description!r}: no such socket was passed by systemd "
                "(start hoodypipe.socket, not the service alone)"
            ) from None
        except (ValueError, TypeError) as error:
            raise usage.UsageError(f"invalid --listen endpoint {description!r}: {error}") from None
        self["listen"].append(description)

    def opt_trusted_proxy(self, address: str) -> None:
        """A reverse proxy whose X-Forwarded-For/-Proto to believe (repeatable), e.g. 127.0.0.1."""
        normal = normal_address(address)
        if normal is None:
            raise usage.UsageError(f"invalid --trusted-proxy {address!r}: not an IP address")
        self["trusted-proxy"].add(normal)

    def postOptions(self) -> None:
        if not self["listen"]:
            self["listen"] = ["tcp:8080"]


@dataclass(frozen=True)
class Parts:
    """One daemon's objects, wired: what makeService serves and the tests drive."""

    registry: Registry
    hub: Hub
    web: PipeWeb
    site: PipeSite


def build(
    clock: IReactorTime,
    limits: Limits | None = None,
    hub_limits: HubLimits | None = None,
    max_per_address: int = 256,
    trusted_proxies: frozenset[str] = frozenset(),
    ipv6_prefix: int = DEFAULT_IPV6_PREFIX,
    store: FinalStore | None = None,
    hasher: Callable[[], Hasher] = InlineDigest,
) -> Parts:
    """Registry, hub, Klein app and site, wired the one way they are.

    ``store`` shares finished transfers' final states between nodes (Redis);
    without one they stay in this process's memory.
    """
    registry: Registry
    hub = Hub(clock, lambda name: registry.pipes.get(name), hub_limits, store)  # noqa: PLW0108 (bound later)
    registry = Registry(clock, limits, observer=hub, hasher=hasher)
    web = PipeWeb(registry, hub, clock)
    site = PipeSite(
        web.resource(),
        registry,
        clock,
        max_per_address=max_per_address,
        trusted_proxies=trusted_proxies,
        ipv6_prefix=ipv6_prefix,
    )
    return Parts(registry, hub, web, site)


def makeService(config: Options, reactor: Any = None) -> PipeService:
    if reactor is None:
        from twisted.internet import reactor as global_reactor  # noqa: PLC0415 (twistd has installed it)

        reactor = global_reactor
        # The daemon's own process only (never a test's): see malloc.py.
        keep_buffers()
        ignore_hangups(reactor)
        one_shutdown(reactor)  # a second SIGTERM during the drain only says so
    hasher = digest_maker(reactor)
    address = parse_store(config["store"])
    store = RedisStore(reactor, address, config["retain"]) if address is not None else None
    parts = build(
        reactor,
        Limits(
            max_receivers=config["max-receivers"],
            max_pending=config["max-pending"],
            max_active=config["max-active"],
            max_waiting_per_address=config["max-waiting-per-address"],
            max_active_per_address=config["max-active-per-address"],
            min_rate=config["min-rate"],
            wait_timeout=config["wait-timeout"],
            idle_timeout=config["idle-timeout"],
        ),
        HubLimits(
            max_spectators=config["max-spectators"],
            max_watched_paths=config["max-watched-paths"],
            window=config["spectator-window"],
            interval=config["progress-interval"],
            retain=config["retain"],
        ),
        max_per_address=config["max-connections-per-address"],
        trusted_proxies=frozenset(config["trusted-proxy"]),
        ipv6_prefix=config["ipv6-prefix"],
        hasher=hasher,
        store=store,
    )
    endpoints = [serverFromString(reactor, with_backlog(each, config["backlog"])) for each in config["listen"]]
    service = PipeService(reactor, parts, endpoints, config["drain-timeout"], config["port-file"])
    if store is not None:
        # A child: it connects when the daemon starts, and flushes its last
        # writes after the drain, when the children stop.
        store.setServiceParent(service)
    return service
