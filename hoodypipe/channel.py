"""Connections: the Site and HTTPChannel that carry pipes.

What cannot live on a request lives here: the chunked decoder of the upload
path, a gentle close for uploads answered before their body ended, a
deadline for slow headers, a cap on connections per client address, and
letting go of what dead connections never sent.

``PipeChannel`` is the parties' ``connection.Connection``, and this is the
only module that touches Twisted's private names: each one is listed in
``TWISTED_PRIVATES``, and ``tests/test_twisted_privates.py`` fails, naming
it, when a Twisted upgrade moves one.
"""

from __future__ import annotations

import fcntl
import re
import socket
import struct
import termios
from typing import TYPE_CHECKING, Any, Protocol, cast

from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IHalfCloseableProtocol, IPushProducer, IReactorTime
from twisted.python.failure import Failure
from twisted.web import http, server
from zope.interface import implementer

from hoodypipe.chunked import ChunkedDecoder, MalformedChunks
from hoodypipe.errors import HTTPError
from hoodypipe.fairshare import DEFAULT_IPV6_PREFIX, client_key
from hoodypipe.hangup import hangup_watch, socket_fileno
from hoodypipe.proxy import normal_address
from hoodypipe.refusal import raw_refusal
from hoodypipe.request import PipeRequest
from hoodypipe.strict import head_refusal, limit_refusal
from hoodypipe.waiting import Waiters

if TYPE_CHECKING:
    from collections.abc import Callable

    from twisted.internet.interfaces import IAddress, IDelayedCall
    from twisted.web.resource import IResource

    from hoodypipe.frame import Payload
    from hoodypipe.pipes import Registry

# The private names of Twisted this module relies on, by where they live.
TWISTED_PRIVATES: dict[str, tuple[str, ...]] = {
    # The request line, kept on the channel until the body has arrived.
    "twisted.web.http.HTTPChannel instance": ("_command", "_path", "_version"),
    # Where the body's transfer decoder is chosen and kept.
    "twisted.web.http.HTTPChannel": (
        "_maybeChooseTransferDecoder",
        "_transferDecoder",
        "_respondToBadRequestAndDisconnect",
        "_networkProducer",
        "_log",
        # Whether the transport's buffer is full (set by pauseProducing).
        "_waitingForTransport",
        # How much of this request's head was read (twisted.web's limits).
        "_receivedHeaderCount",
        "_receivedHeaderSize",
    ),
    # Bytes read and not parsed yet (the pipelined requests behind this one).
    "twisted.protocols.basic.LineReceiver": ("_buffer",),
    "twisted.web.http": ("_ChunkedTransferDecoder", "_MalformedChunkedDataError"),
    # A closed transport's unsent buffers.
    "twisted.internet.abstract.FileDescriptor": ("_tempDataBuffer", "_tempDataLen"),
}

# How long a connection closed mid-upload keeps reading (and dropping) what
# the client still sends, so that its last status line is not lost to a
# reset when the socket closes with unread data.
LINGER_SECONDS = 10.0
# From connection (or the end of the previous response) to the end of a
# request's headers: a client trickling its headers is cut off here. A
# transfer in flight is never touched by it.
HEADER_TIMEOUT = 30.0
# Requests a client may pipeline, each sent before the previous was answered;
# the next one is refused and the connection closed.
MAX_PIPELINED = 32

_ASCII_UNSAFE = re.compile(rb"[^\x21-\x7e]")


class _Socket(Protocol):
    """What a channel asks of its transport (a TCP, TLS or unix one)."""

    disconnecting: bool

    def write(self, data: bytes) -> None: ...

    def pauseProducing(self) -> None: ...

    def resumeProducing(self) -> None: ...

    def loseConnection(self) -> None: ...

    def abortConnection(self) -> None: ...

    def getPeer(self) -> IAddress: ...


class PipeSite(server.Site):
    """A Site whose channels stream uploads into the pipe registry."""

    def __init__(
        self,
        resource: IResource,
        registry: Registry,
        clock: IReactorTime,
        max_per_address: int = 256,
        trusted_proxies: frozenset[str] = frozenset(),
        ipv6_prefix: int = DEFAULT_IPV6_PREFIX,
    ) -> None:
        # A form-typed POST would otherwise be parsed into memory.
        super().__init__(resource, requestFactory=PipeRequest, reactor=clock, parsePOSTFormSubmission=False)
        self.registry = registry
        self.clock = clock
        self.channels: set[PipeChannel] = set()
        self.max_per_address = max_per_address
        # Reverse proxies whose X-Forwarded-For/-Proto name the real client;
        # they carry many clients, so the connection cap does not apply to them.
        self.trusted_proxies = frozenset(a for a in map(normal_address, trusted_proxies) if a)
        self.by_address: dict[str, int] = {}
        # Clients are counted by IPv6 prefix: one subscriber has a /64 of addresses.
        self.ipv6_prefix = ipv6_prefix
        self.hangups = hangup_watch(clock)
        # twisted.web types Site.protocol as its own factory function.
        self.protocol = PipeChannel  # type: ignore[assignment,method-assign]
        # Shutting down: connections close as soon as they are between requests.
        self.closing = False
        self._closed = Waiters()

    def getResourceFor(self, request: server.Request) -> IResource:
        # twisted.web would hand Klein percent-decoded path segments, which
        # Klein then decodes as UTF-8 (a 400 with a traceback for "%FF").
        # The app classifies the raw target itself (names.parse_target), so
        # Klein gets the path still quoted, ASCII only.
        path: bytes = request.path
        request.postpath = _ASCII_UNSAFE.sub(lambda m: b"%%%02X" % m.group()[0], path[1:]).split(b"/")
        resource: IResource = super().getResourceFor(request)
        return resource

    def close_when_idle(self) -> int:
        """Close every connection once it is between requests; return how many are open."""
        self.closing = True
        for channel in list(self.channels):
            channel.close_if_idle()
        return len(self.channels)

    def when_closed(self) -> Deferred[None]:
        """Fires once no connection is open."""
        return self._closed.wait(not self.channels)

    def channel_gone(self, channel: PipeChannel) -> None:
        self.channels.discard(channel)
        if not self.channels:
            self._closed.fire()


class _Decoder(ChunkedDecoder):
    """Our decoder, failing the way HTTPChannel expects of its own."""

    def dataReceived(self, data: bytes) -> None:
        try:
            super().dataReceived(data)
        except MalformedChunks as error:
            raise http._MalformedChunkedDataError(str(error)) from error


@implementer(IHalfCloseableProtocol)
class PipeChannel(http.HTTPChannel):
    """HTTPChannel that tolerates an upload answered before its body ended,
    and the ``connection.Connection`` of the parties on it.

    It can be half-closed: a sender that shuts down its side after its whole
    body (``nc -N``, ``shutdown(SHUT_WR)``) still reads its status lines.
    """

    site: PipeSite
    _linger: IDelayedCall | None = None
    _header_deadline: IDelayedCall | None = None
    _address: str | None = None
    _saved_timeout: float | None = None
    _idle_suspended = False
    # Parsing stopped because the client does not read our answers.
    _held = False
    _pipelined = 0
    _refused_pipeline = False
    _unacknowledged_at_close: int | None = None
    # The client half-closed (its whole body in): nothing more to read.
    _read_closed = False

    # -- connection.Connection ----------------------------------------------------

    def request_line(self) -> tuple[bytes, bytes, bytes]:
        return self._command, self._path, self._version

    def send_continue(self) -> None:
        self._transport().write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def suspend_idle_timeout(self) -> None:
        if not self._idle_suspended:
            self._idle_suspended = True
            self._saved_timeout = self.setTimeout(None)

    def restore_idle_timeout(self) -> None:
        if self._idle_suspended:
            self._idle_suspended = False
            self.setTimeout(self._saved_timeout)

    def pause_reading(self) -> None:
        self._transport().pauseProducing()

    def resume_reading(self) -> None:
        if not self._read_closed:  # a half-closed socket would only read its EOF again
            self._transport().resumeProducing()

    def read_in(self, step: int) -> None:
        cast(Any, self._transport()).bufferSize = step

    def write_in(self, step: int) -> None:
        transport = cast(Any, self._transport())
        transport.bufferSize = step
        # Twisted sends at most 128 KiB per write call, one call per reactor
        # turn: let a whole buffer go to the kernel at once.
        transport.SEND_LIMIT = max(step, getattr(transport, "SEND_LIMIT", 0))

    def write_raw(self, data: bytes) -> None:
        self._transport().write(data)

    def fileno(self) -> int | None:
        return socket_fileno(self.transport)

    def abort(self) -> None:
        if self.transport is not None:
            cast(Any, self.transport).abortConnection()

    def linger_and_close(self) -> None:
        """Close our side, drop whatever the client still sends, then go."""
        self.persistent = False
        if self._linger is not None or self.transport is None:
            return
        self._linger = self.site.clock.callLater(LINGER_SECONDS, self.abort)
        cast(Any, self._networkProducer).unregisterProducer()
        transport = cast(Any, self.transport)
        transport.resumeProducing()
        lose_write = getattr(transport, "loseWriteConnection", None)
        (lose_write or transport.loseConnection)()

    def close_after_response(self) -> None:
        self.persistent = False

    def reset_on_close(self, reset: bool) -> None:
        fd = self.fileno()
        if fd is None:
            return
        try:
            with socket.fromfd(fd, socket.AF_INET, socket.SOCK_STREAM) as handle:  # a dup of the same socket
                handle.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", int(reset), 0))
        except OSError:
            pass  # a unix socket or a closed one: nothing to linger

    def unacknowledged(self) -> int:
        transport = self.transport
        buffered = 0
        if transport is not None and hasattr(transport, "_tempDataLen"):
            held = cast(Any, transport)
            buffered = int(len(held.dataBuffer) - held.offset + held._tempDataLen)
        fd = self.fileno()
        if fd is None:
            return buffered
        try:
            # SIOCOUTQ (TIOCOUTQ on Linux): sent and not acknowledged, plus not sent.
            queued: int = struct.unpack("i", fcntl.ioctl(fd, termios.TIOCOUTQ, b"\0\0\0\0"))[0]
        except OSError:
            queued = 0
        return buffered + max(0, queued)

    def hung_up(self, reset: bool = False) -> None:
        """For the hang-up watch: the client left while twisted.web was not reading."""
        request = self.requests[0] if self.requests else None
        if request is not None and not (isinstance(request, PipeRequest) and request.sender is not None):
            self.abort()  # a receiver (or a page) in progress whose client is gone

    def unacknowledged_at_close(self) -> int | None:
        return self._unacknowledged_at_close

    def _transport(self) -> _Socket:
        assert self.transport is not None
        return cast(_Socket, self.transport)

    # -- HTTPChannel -----------------------------------------------------------------

    def connectionMade(self) -> None:
        super().connectionMade()
        # twisted.web pauses reading when a client pipelines more than 16 KiB
        # behind a request in progress: from then on it would not see that
        # client leave. The hang-up watch does, while reading is paused.
        self._networkProducer = _WatchedReading(self._networkProducer, self)
        site = self.site
        site.channels.add(self)
        peer = getattr(self._transport().getPeer(), "host", None)
        self._address = client_key(normal_address(peer) or peer, site.ipv6_prefix) if peer else None
        if self._address is not None and self._address not in site.trusted_proxies:
            count = site.by_address[self._address] = site.by_address.get(self._address, 0) + 1
            if count > site.max_per_address:
                refusal = HTTPError(429, "Too many connections from your address.", {b"Retry-After": b"5"})
                self.write_raw(raw_refusal(refusal, site.registry.rejections))
                self._transport().loseConnection()
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
        self.abort()

    def allHeadersReceived(self) -> None:
        self._stop_header_deadline()
        refusal = head_refusal(self._version, self.requests[-1].requestHeaders)  # strict HTTP
        if refusal is not None:
            self._refuse(refusal)
            return
        # Bytes already waiting behind these headers: the client pipelines.
        self._pipelined = self._pipelined + 1 if self._buffer else 0
        if self._pipelined > MAX_PIPELINED and not self._refused_pipeline:
            self._refused_pipeline = self.paused = True  # parse no further, answer this one no more
            refusal = HTTPError(429, f"Too many pipelined requests (max {MAX_PIPELINED}).")
            self.write_raw(raw_refusal(refusal, self.site.registry.rejections))
            self._transport().loseConnection()
        super().allHeadersReceived()

    def requestDone(self, request: http.Request) -> None:
        if self._waitingForTransport and self.persistent:
            # The client is not reading what we answered: answer nothing more
            # of what it pipelined until it does (twisted.web would go on
            # answering into memory). Reading stays paused meanwhile.
            self._held = self.paused = True
        super().requestDone(request)
        if self.site.closing:
            self.close_if_idle()
        elif self.persistent and self.transport is not None and not self._transport().disconnecting:
            self._start_header_deadline()

    def close_if_idle(self) -> None:
        if not self.requests and self.transport is not None and not self._transport().disconnecting:
            self.loseConnection()

    def allContentReceived(self) -> None:
        if not self.requests or self._refused_pipeline:
            # The upload's response was finished (and the connection is
            # closing) before the rest of its body arrived.
            return
        super().allContentReceived()

    def dataReceived(self, data: bytes) -> None:
        if self._linger is not None:
            return
        super().dataReceived(data)

    def resumeProducing(self) -> None:
        super().resumeProducing()
        if self._held and not self._waitingForTransport and not self._handlingRequest:
            # The client read its answers: go on with the requests it pipelined.
            self._held = self.paused = False
            super().dataReceived(b"")

    def _maybeChooseTransferDecoder(self, header: bytes, data: bytes) -> bool:
        ok: bool = super()._maybeChooseTransferDecoder(header, data)
        decoder = self._transferDecoder
        if ok and isinstance(decoder, http._ChunkedTransferDecoder):
            # The callback is our request's handleContentChunk, which takes a Payload.
            deliver = cast("Callable[[Payload], None]", decoder.dataCallback)
            self._transferDecoder = _Decoder(deliver, decoder.finishCallback)
        return ok

    def _respondToBadRequestAndDisconnect(self) -> None:
        request = self.requests[-1] if self.requests else None
        if isinstance(request, PipeRequest) and request.bad_framing():
            return  # the sender answered it, in its own response
        over = self._receivedHeaderCount > self.maxHeaders or self._receivedHeaderSize > self.totalHeadersSize
        self._refuse(limit_refusal(hasattr(self, "_command")) if over else HTTPError(400, "Bad request."))

    def lineLengthExceeded(self, line: bytes) -> None:
        self._refuse(limit_refusal(hasattr(self, "_command")))  # 414 or 431, not a silent close

    def _refuse(self, error: HTTPError) -> None:
        """Answer what cannot become a request, and read nothing more."""
        if self._linger is not None or self._transport().disconnecting:
            return  # an answer that said Connection: close is out: nothing follows it
        self.write_raw(raw_refusal(error, self.site.registry.rejections))
        self.loseConnection()
        self.length = None  # twisted.web goes on to allContentReceived only for 0
        self.dataReceived = lambda data: None  # type: ignore[method-assign]

    def loseConnection(self) -> None:
        if self._linger is not None:
            return  # already closing, gently
        super().loseConnection()

    # -- IHalfCloseableProtocol -----------------------------------------------------

    def readConnectionLost(self) -> None:
        """The client will send nothing more (its FIN)."""
        if self._read_closed:
            return
        request = self.requests[-1] if self.requests else None
        if self._linger is None and isinstance(request, PipeRequest) and request.keeps_half_open():
            self._read_closed = True
            self.persistent = False  # answer it, then close
            return
        # The socket is still open: whether the client had everything can be told.
        self._unacknowledged_at_close = self.unacknowledged()
        if request is None or self._linger is not None:
            # Between requests, or closing already: what was answered still goes out.
            self._read_closed = True
            self._transport().loseConnection()
            return
        # A request in progress whose client is gone: what Twisted does for a
        # protocol that cannot half-close.
        self.abort()

    def writeConnectionLost(self) -> None:
        """Our side is closed (``linger_and_close``): read on until the client closes."""

    def connectionLost(self, reason: Failure = Failure(ConnectionDone())) -> None:  # noqa: B008
        self.site.hangups.discard(self)
        if self._linger is not None and self._linger.active():
            self._linger.cancel()
        self._stop_header_deadline()
        _drop_unsent(self.transport)
        site = self.site
        if self._address is not None and self._address in site.by_address:
            left = site.by_address.get(self._address, 1) - 1
            if left > 0:
                site.by_address[self._address] = left
            else:
                site.by_address.pop(self._address, None)
        super().connectionLost(reason)
        site.channel_gone(self)


@implementer(IPushProducer)
class _WatchedReading:
    """The channel's network producer (its transport), and while twisted.web
    pauses it, the channel in the hang-up watch."""

    def __init__(self, transport: Any, channel: PipeChannel) -> None:
        self.transport = transport
        self.channel = channel

    def pauseProducing(self) -> None:
        self.transport.pauseProducing()
        self.channel.site.hangups.add(self.channel)

    def resumeProducing(self) -> None:
        self.channel.site.hangups.discard(self.channel)
        self.transport.resumeProducing()

    def stopProducing(self) -> None:
        self.transport.stopProducing()

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self.transport.registerProducer(producer, streaming)

    def unregisterProducer(self) -> None:
        self.transport.unregisterProducer()


def _drop_unsent(transport: object) -> None:
    """Let go of what a dead connection never sent.

    Twisted keeps a closed transport's write buffers, and the transport sits
    in reference cycles until a full garbage collection, which an idle
    daemon rarely runs: a stalled receiver's megabyte would stay in memory.
    """
    if hasattr(transport, "_tempDataBuffer"):
        held = cast(Any, transport)
        held.dataBuffer = b""
        held._tempDataBuffer = []
        held._tempDataLen = 0
