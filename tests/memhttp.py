"""An in-memory daemon: real channels and requests over StringTransports."""

from __future__ import annotations

from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure

from hoodypipe.channel import PipeChannel, PipeSite
from hoodypipe.hub import HubLimits
from hoodypipe.pipes import Limits
from hoodypipe.store import FinalStore
from hoodypipe.tap import build
from tests.support.httpwire import Response, parse_response

__all__ = ["Conn", "HalfCloseTransport", "MemoryDaemon", "Response", "parse_response"]


class HalfCloseTransport(StringTransport):
    """A StringTransport that, like TCP, can close only its sending side."""

    write_closed = False

    def loseWriteConnection(self) -> None:
        self.write_closed = True


class Conn:
    """One client connection to the in-memory site."""

    def __init__(self, site: PipeSite, port: int) -> None:
        self.transport = HalfCloseTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", port))
        self.channel: PipeChannel = site.buildProtocol(self.transport.getPeer())
        self.channel.makeConnection(self.transport)

    def send(self, data: bytes) -> Conn:
        self.channel.dataReceived(data)
        return self

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None) -> Conn:
        lines = [f"{method} {path} HTTP/1.1", "Host: pipe.test"]
        for key, value in (headers or {}).items():
            lines.append(f"{key}: {value}")
        if body is not None:
            lines.append(f"Content-Length: {len(body)}")
        raw = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (body or b"")
        return self.send(raw)

    def chunk(self, data: bytes) -> Conn:
        return self.send(b"%x\r\n%s\r\n" % (len(data), data))

    def end_chunks(self) -> Conn:
        return self.send(b"0\r\n\r\n")

    @property
    def raw(self) -> bytes:
        return self.transport.value()

    def response(self) -> Response:
        return parse_response(self.raw, closed=self.aborted or self.closing)

    @property
    def reading(self) -> bool:
        return self.transport.producerState == "producing"

    @property
    def aborted(self) -> bool:
        return self.transport.disconnected

    @property
    def closing(self) -> bool:
        return self.transport.disconnecting or self.transport.write_closed

    def drop(self) -> None:
        self.channel.connectionLost(Failure(ConnectionLost()))

    def close(self) -> None:
        self.channel.connectionLost(Failure(ConnectionDone()))


class MemoryDaemon:
    """Registry, hub, Klein app and site, wired by tap.build as the daemon is."""

    def __init__(
        self, limits: Limits | None = None, hub_limits: HubLimits | None = None, store: FinalStore | None = None
    ) -> None:
        self.clock = MemoryReactorClock()
        self.parts = build(self.clock, limits or Limits(), hub_limits, store=store)
        self.registry = self.parts.registry
        self.hub = self.parts.hub
        self.web = self.parts.web
        self.site = self.parts.site
        self._ports = 40000

    def connect(self) -> Conn:
        self._ports += 1
        return Conn(self.site, self._ports)

    def sender(self, path: str, headers: dict[str, str] | None = None) -> Conn:
        """A chunked PUT whose headers have arrived."""
        all_headers = {"Transfer-Encoding": "chunked", **(headers or {})}
        return self.connect().request("PUT", path, None, all_headers)

    def receiver(self, path: str, headers: dict[str, str] | None = None) -> Conn:
        return self.connect().request("GET", path, None, headers)
