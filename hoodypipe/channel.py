"""Connections: the Site and HTTPChannel that carry pipes.

What cannot live on a request lives here: the chunked decoder of the upload
path, a gentle close for uploads answered before their body ended, a
deadline for slow headers, a cap on connections per client address, and
letting go of what dead connections never sent.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from twisted.internet.interfaces import IReactorTime
from twisted.web import http, server

from hoodypipe.chunked import ChunkedDecoder
from hoodypipe.hangup import hangup_watch
from hoodypipe.upload import PipeRequest

if TYPE_CHECKING:
    from hoodypipe.pipes import Registry

# How long a connection closed mid-upload keeps reading (and dropping) what
# the client still sends, so that its last status line is not lost to a
# reset when the socket closes with unread data.
LINGER_SECONDS = 10.0
# From connection (or the end of the previous response) to the end of a
# request's headers: a client trickling its headers is cut off here. A
# transfer in flight is never touched by it.
HEADER_TIMEOUT = 30.0

_ASCII_UNSAFE = re.compile(rb"[^\x21-\x7e]")


class PipeSite(server.Site):
    """A Site whose channels stream uploads into the pipe registry."""

    def __init__(
        self,
        resource,
        registry: Registry,
        clock: IReactorTime,
        max_per_address: int = 256,
        trusted_proxies: frozenset[str] = frozenset(),
        **kwargs,
    ):
        kwargs.setdefault("requestFactory", PipeRequest)
        kwargs.setdefault("reactor", clock)
        super().__init__(resource, **kwargs)
        self.registry = registry
        self.clock = clock
        self.channels: set[PipeChannel] = set()
        self.max_per_address = max_per_address
        # Reverse proxies whose X-Forwarded-For/-Proto name the real client;
        # they carry many clients, so the connection cap does not apply to them.
        self.trusted_proxies = trusted_proxies
        self.by_address: dict[str, int] = {}
        self.hangups = hangup_watch(clock)
        self.protocol = PipeChannel  # type: ignore[assignment]
        # A form-typed POST would otherwise be parsed into memory.
        self._parsePOSTFormSubmission = False

    def getResourceFor(self, request):
        # twisted.web would hand Klein percent-decoded path segments, which
        # Klein then decodes as UTF-8 (a 400 with a traceback for "%FF").
        # The app classifies the raw target itself (names.parse_target), so
        # Klein gets the path still quoted, ASCII only.
        request.postpath = _ASCII_UNSAFE.sub(lambda m: b"%%%02X" % m.group()[0], request.path[1:]).split(b"/")
        return super().getResourceFor(request)

    def close_idle(self) -> int:
        """Close connections between requests; return how many are still open."""
        for channel in list(self.channels):
            if not channel.requests and not channel.transport.disconnecting:
                channel.loseConnection()
        return len(self.channels)


class PipeChannel(http.HTTPChannel):
    """HTTPChannel that tolerates an upload answered before its body ended."""

    _linger = None
    _header_deadline = None
    _address: str | None = None

    def connectionMade(self) -> None:
        super().connectionMade()
        site = self.site
        site.channels.add(self)
        self._address = getattr(self.transport.getPeer(), "host", None)
        if self._address is not None and self._address not in site.trusted_proxies:
            count = site.by_address[self._address] = site.by_address.get(self._address, 0) + 1
            if count > site.max_per_address:
                body = b"[ERROR] Too many connections from your address.\n"
                site.registry.rejections[429] += 1
                self.transport.write(
                    b"HTTP/1.1 429 Too Many Requests\r\nContent-Type: text/plain; charset=utf-8\r\n"
                    b"Retry-After: 5\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body)
                )
                self.transport.loseConnection()
                self.dataReceived = lambda data: None  # type: ignore[method-assign]
                return
        self._start_header_deadline()

    def _start_header_deadline(self) -> None:
        self._header_deadline = self.site.clock.callLater(HEADER_TIMEOUT, self._headers_too_slow)

    def _stop_header_deadline(self) -> None:
        if self._header_deadline is not None and self._header_deadline.active():
            self._header_deadline.cancel()
        self._header_deadline = None

    def _headers_too_slow(self) -> None:
        self._header_deadline = None
        self._log.info("Headers too slow from {peer}; closing", peer=self._address)
        if self.transport is not None:
            self.transport.abortConnection()

    def allHeadersReceived(self) -> None:
        self._stop_header_deadline()
        super().allHeadersReceived()

    def requestDone(self, request) -> None:
        super().requestDone(request)
        if self.persistent and self.transport is not None and not self.transport.disconnecting:
            self._start_header_deadline()

    def allContentReceived(self) -> None:
        if not self.requests:
            # The upload's response was finished (and the connection is
            # closing) before the rest of its body arrived.
            return
        super().allContentReceived()

    def dataReceived(self, data: bytes) -> None:
        if self._linger is not None:
            return
        super().dataReceived(data)

    def _maybeChooseTransferDecoder(self, header: bytes, data: bytes) -> bool:
        ok = super()._maybeChooseTransferDecoder(header, data)
        decoder = self._transferDecoder
        if ok and isinstance(decoder, http._ChunkedTransferDecoder):
            self._transferDecoder = ChunkedDecoder(decoder.dataCallback, decoder.finishCallback)
        return ok

    def _respondToBadRequestAndDisconnect(self) -> None:
        request = self.requests[-1] if self.requests else None
        upload = getattr(request, "upload", None)
        if upload is not None and (upload.refused or upload.closed):
            # Already answered (a refusal): one answer per request.
            self.transport.loseConnection()
            return
        if upload is not None and (upload.answered or upload.pipe is not None):
            # Bad chunked framing mid-stream: a bare "400" would land in the
            # middle of the sender's status lines.
            upload.malformed()
            return
        body = b"[ERROR] Bad request.\n"
        self.transport.write(
            b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\n"
            b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body)
        )
        self.loseConnection()

    def lingerAndClose(self, clock: IReactorTime) -> None:
        """Close our side, drop whatever the client still sends, then go."""
        self.persistent = False
        if self._linger is not None or self.transport is None:
            return
        self._linger = clock.callLater(LINGER_SECONDS, self.transport.abortConnection)
        self._networkProducer.unregisterProducer()
        self.transport.resumeProducing()
        loseWrite = getattr(self.transport, "loseWriteConnection", None)
        (loseWrite or self.transport.loseConnection)()

    def loseConnection(self) -> None:
        if self._linger is not None:
            return  # already closing, gently
        super().loseConnection()

    def connectionLost(self, reason) -> None:
        if self._linger is not None and self._linger.active():
            self._linger.cancel()
        self._stop_header_deadline()
        _drop_unsent(self.transport)
        site = self.site
        site.channels.discard(self)
        if self._address is not None and self._address in site.by_address:
            left = site.by_address.get(self._address, 1) - 1
            if left > 0:
                site.by_address[self._address] = left
            else:
                site.by_address.pop(self._address, None)
        super().connectionLost(reason)


def _drop_unsent(transport: object) -> None:
    """Let go of what a dead connection never sent.

    Twisted keeps a closed transport's write buffers, and the transport sits
    in reference cycles until a full garbage collection, which an idle
    daemon rarely runs: a stalled receiver's megabyte would stay in memory.
    """
    if hasattr(transport, "_tempDataBuffer"):
        transport.dataBuffer = b""  # type: ignore[attr-defined]
        transport._tempDataBuffer = []  # type: ignore[attr-defined]
        transport._tempDataLen = 0  # type: ignore[attr-defined]
