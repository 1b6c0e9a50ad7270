"""The daemon as Twisted services: listen, tick, and drain on shutdown.

``PipeService`` is a ``MultiService`` of one ``StreamServerEndpointService``
per ``--listen`` endpoint and a ``TimerService`` that hands free memory back
when transfers have ended. Stopping it drains first (see ``drain``), then
stops its children: the ports keep answering 503 to new pipes until the
drain is over.
"""

from __future__ import annotations

import os
import signal
from typing import TYPE_CHECKING, Any

from twisted.application.internet import StreamServerEndpointService, TimerService
from twisted.application.service import MultiService
from twisted.internet import defer
from twisted.internet.interfaces import IStreamServerEndpoint
from twisted.logger import Logger
from zope.interface import implementer

from hoodypipe.malloc import give_back
from hoodypipe.pipes import Reason, State

if TYPE_CHECKING:
    from collections.abc import Callable

    from twisted.internet.interfaces import IAddress, IListeningPort, IProtocolFactory, IReactorTime
    from twisted.python.failure import Failure

    from hoodypipe.tap import Parts

log = Logger()

# After the last transfer ended, how long finished connections get to flush
# what is still in their buffers before the reactor stops.
FLUSH_SECONDS = 5.0
# How often to check whether transfers ended and nothing streams any more,
# which is when free memory is handed back.
TRIM_SECONDS = 5.0


def ignore_hangups(reactor: Any) -> None:
    """SIGHUP (a closed terminal, a log-rotation script) would kill the
    daemon on the spot, cutting every transfer: it is logged and ignored.
    SIGTERM and SIGINT drain; journald needs no reopened log file."""

    def hung_up(signum: int, frame: object) -> None:
        reactor.callFromThread(log.info, "SIGHUP ignored: stop hoodypipe with SIGTERM, which drains")

    signal.signal(signal.SIGHUP, hung_up)


def port_line(address: IAddress) -> str:
    """One line of the --port-file: "HOST PORT", or "unix PATH" for a unix socket."""
    if hasattr(address, "port"):
        return f"{getattr(address, 'host', '')} {address.port}\n"
    name = getattr(address, "name", None) or b""
    return f"unix {os.fsdecode(name)}\n"


@implementer(IStreamServerEndpoint)
class _Announced:
    """An endpoint that says when it listens, or that it cannot."""

    def __init__(
        self,
        endpoint: IStreamServerEndpoint,
        listening: Callable[[IListeningPort], None],
        failed: Callable[[Failure], None],
    ) -> None:
        self.endpoint = endpoint
        self.listening = listening
        self.failed = failed

    def listen(self, factory: IProtocolFactory) -> defer.Deferred[IListeningPort]:
        listening: defer.Deferred[IListeningPort] = self.endpoint.listen(factory)

        def told(port: IListeningPort) -> IListeningPort:
            self.listening(port)
            return port

        def failed(failure: Failure) -> Failure:
            self.failed(failure)
            return failure

        return listening.addCallbacks(told, failed)


def within(waiting: defer.Deferred[Any], seconds: float, clock: IReactorTime) -> defer.Deferred[None]:
    """Fires when ``waiting`` does or ``seconds`` have passed, whichever is first."""
    over: defer.Deferred[None] = defer.Deferred()

    def fire(_: object = None) -> None:
        if timer.active():
            timer.cancel()
        if not over.called:
            over.callback(None)

    timer = clock.callLater(seconds, fire)
    waiting.addBoth(fire)
    return over


class PipeService(MultiService):
    """Listens on every endpoint; on stop, lets transfers finish first."""

    def __init__(
        self,
        reactor: Any,
        parts: Parts,
        endpoints: list[IStreamServerEndpoint],
        drain_timeout: float = 60.0,
        port_file: str | None = None,
    ) -> None:
        super().__init__()
        self.reactor = reactor
        self.parts = parts
        self.drain_timeout = drain_timeout
        self.port_file = port_file
        self.ports: list[IListeningPort] = []
        self._expected = len(endpoints)
        self._ended_at_trim = 0
        for endpoint in endpoints:
            announced = _Announced(endpoint, self._listening, self._cannot_listen)
            StreamServerEndpointService(announced, parts.site).setServiceParent(self)
        trim = TimerService(TRIM_SECONDS, self._give_back_when_quiet)
        trim.clock = reactor
        trim.setServiceParent(self)

    def startService(self) -> None:
        self.parts.hub.start()
        super().startService()

    def _listening(self, port: IListeningPort) -> None:
        self.ports.append(port)
        log.info("hoodypipe listening on {address}", address=port.getHost())
        if self.port_file and len(self.ports) == self._expected:
            with open(self.port_file + ".tmp", "w") as f:
                for each in self.ports:
                    f.write(port_line(each.getHost()))
            os.replace(self.port_file + ".tmp", self.port_file)

    def _cannot_listen(self, failure: Failure) -> None:
        log.failure("hoodypipe cannot listen", failure)
        self.reactor.callLater(0, self.reactor.stop)

    def _give_back_when_quiet(self) -> None:
        registry = self.parts.registry
        ended = sum(registry.outcomes.values())
        if not registry.streaming and ended != self._ended_at_trim:
            self._ended_at_trim = ended
            give_back()

    @defer.inlineCallbacks
    def stopService(self) -> Any:
        yield self.drain()
        self.parts.hub.stop()
        yield super().stopService()

    @defer.inlineCallbacks
    def drain(self) -> Any:
        """Refuse new pipes, end waiting ones, give streaming ones time."""
        registry, hub, site = self.parts.registry, self.parts.hub, self.parts.site
        registry.shutting_down = True
        for pipe in list(registry.pipes.values()):
            if pipe.state is State.WAITING:
                pipe.fail(Reason.SHUTDOWN)
        if registry.streaming:
            log.info(
                "draining {count} transfer(s) for up to {seconds}s",
                count=registry.streaming,
                seconds=self.drain_timeout,
            )
            yield within(registry.when_idle(), self.drain_timeout, self.reactor)
        for pipe in list(registry.pipes.values()):
            pipe.fail(Reason.SHUTDOWN)
        # Let finished connections flush and close before the reactor stops:
        # it would drop what is still in their buffers.
        hub.close_all()
        if site.close_when_idle():
            yield within(site.when_closed(), FLUSH_SECONDS, self.reactor)
