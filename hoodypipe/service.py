"""The daemon as a Twisted service: listen, tick, and drain on shutdown."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.interfaces import IListeningPort, IStreamServerEndpoint
from twisted.internet.task import LoopingCall, deferLater
from twisted.logger import Logger

from hoodypipe.malloc import give_back, keep_buffers
from hoodypipe.pipes import Reason, State

if TYPE_CHECKING:
    from hoodypipe.hub import Hub
    from hoodypipe.pipes import Registry
    from hoodypipe.channel import PipeSite

log = Logger()

# After the last transfer ended, how long finished connections get to flush
# what is still in their buffers before the reactor stops.
FLUSH_SECONDS = 5.0
POLL_SECONDS = 0.1
# How often to check whether transfers ended and nothing streams any more,
# which is when free memory is handed back.
TRIM_SECONDS = 5.0


def _port_line(address) -> str:
    """One line of the --port-file: "HOST PORT", or "unix PATH" for a unix socket."""
    if hasattr(address, "port"):
        return f"{address.host} {address.port}\n"
    name = getattr(address, "name", None) or b""
    return f"unix {os.fsdecode(name)}\n"


class PipeService(Service):
    """Listens on every endpoint; on stop, lets transfers finish first."""

    def __init__(
        self,
        reactor,
        site: PipeSite,
        registry: Registry,
        hub: Hub,
        endpoints: list[IStreamServerEndpoint],
        drain_timeout: float = 60.0,
        port_file: str | None = None,
    ) -> None:
        self.reactor = reactor
        self.site = site
        self.registry = registry
        self.hub = hub
        self.endpoints = endpoints
        self.drain_timeout = drain_timeout
        self.port_file = port_file
        self.ports: list[IListeningPort] = []
        self._trim = LoopingCall(self._give_back_when_quiet)
        self._ended_at_trim = 0
        self._trim.clock = reactor
        self.listening: defer.Deferred[list[IListeningPort]] | None = None

    def startService(self) -> None:
        super().startService()
        keep_buffers()
        self._trim.start(TRIM_SECONDS, now=False)
        self.hub.start()
        self.listening = defer.gatherResults([e.listen(self.site) for e in self.endpoints], consumeErrors=True)
        self.listening.addCallback(self._listening)
        self.listening.addErrback(self._cannot_listen)

    def _listening(self, ports: list[IListeningPort]) -> list[IListeningPort]:
        self.ports = ports
        for port in ports:
            log.info("hoodypipe listening on {address}", address=port.getHost())
        if self.port_file:
            with open(self.port_file + ".tmp", "w") as f:
                for port in ports:
                    f.write(_port_line(port.getHost()))
            os.replace(self.port_file + ".tmp", self.port_file)
        return ports

    def _give_back_when_quiet(self) -> None:
        ended = sum(self.registry.outcomes.values())
        if not self.registry.streaming and ended != self._ended_at_trim:
            self._ended_at_trim = ended
            give_back()

    def _cannot_listen(self, failure):
        log.failure("hoodypipe cannot listen", failure)
        self.reactor.callLater(0, self.reactor.stop)
        return failure

    @defer.inlineCallbacks
    def stopService(self):
        super().stopService()
        yield self.drain()
        self.hub.stop()
        if self._trim.running:
            self._trim.stop()
        yield defer.gatherResults([defer.maybeDeferred(p.stopListening) for p in self.ports])

    @defer.inlineCallbacks
    def drain(self):
        """Refuse new pipes, end waiting ones, give streaming ones time."""
        registry = self.registry
        registry.shutting_down = True
        for pipe in list(registry.pipes.values()):
            if pipe.state is State.WAITING:
                pipe.fail(Reason.SHUTDOWN)
        deadline = self.reactor.seconds() + self.drain_timeout
        if registry.streaming:
            log.info("draining {count} transfer(s) for up to {seconds}s", count=registry.streaming, seconds=self.drain_timeout)
        while registry.streaming and self.reactor.seconds() < deadline:
            yield deferLater(self.reactor, POLL_SECONDS, lambda: None)
        for pipe in list(registry.pipes.values()):
            pipe.fail(Reason.SHUTDOWN)
        # Let finished connections flush and close before the reactor stops:
        # it would drop what is still in their buffers.
        self.hub.close_all()
        deadline = self.reactor.seconds() + FLUSH_SECONDS
        while self.site.close_idle() and self.reactor.seconds() < deadline:
            yield deferLater(self.reactor, POLL_SECONDS, lambda: None)
