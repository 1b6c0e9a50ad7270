"""The upload path: a sender's body is relayed while it arrives.

twisted.web's ``Request`` stores the whole body and only then calls
``process()``, so a pipe cannot use it for senders. ``PipeRequest`` takes
over at the end of the headers (``gotLength``): a PUT or POST becomes an
``Upload`` there, each decoded piece of the body goes straight to the pipe
(``handleContentChunk``), and the end of the body (``requestReceived``)
never reaches the resource tree. Every other request is left to twisted.web
and the Klein app.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web import server

from hoodypipe.errors import HTTPError
from hoodypipe.hangup import HangupWatch, socket_fileno
from hoodypipe.headers import SenderHeaders
from hoodypipe.names import parse_target
from hoodypipe.pipes import State

if TYPE_CHECKING:
    from hoodypipe.pipes import Pipe, Registry

log = Logger()

UPLOAD_METHODS = (b"PUT", b"POST")
# A refused upload's body up to this size is read and dropped so the
# connection stays usable; a larger one closes the connection.
DRAIN_LIMIT = 1024 * 1024
TEXT_PLAIN = b"text/plain; charset=utf-8"
# The largest body a GET, HEAD or OPTIONS may carry (twisted.web buffers it).
MAX_OTHER_BODY = 64 * 1024
# Set by a reverse proxy that stops forwarding a request body once the
# response has begun (nginx's proxy module does, for HTTP/1.x upstreams):
# the sender's status lines are then held until its body has arrived.
DEFER_HEADER = b"X-Pipe-Defer-Response"
_HOSTNAME = re.compile(rb"(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?|\[[0-9A-Fa-f:.]+\]")


class PipeRequest(server.Request):
    """A Request that turns PUT and POST into streaming uploads."""

    # twisted.web would add "Content-Type: text/html" to every response,
    # receivers' included; every response here sets its own.
    defaultContentType = None
    upload: Upload | None = None

    def _proxies(self) -> frozenset[str]:
        return getattr(getattr(self.channel, "site", None), "trusted_proxies", frozenset())

    def getClientAddress(self):
        """The client: the peer, or what a trusted proxy says in X-Forwarded-For."""
        peer = super().getClientAddress()
        proxies = self._proxies()
        if getattr(peer, "host", None) not in proxies:
            return peer
        forwarded = b",".join(self.requestHeaders.getRawHeaders(b"X-Forwarded-For") or [])
        # The nearest address that is not one of our proxies: those further
        # left are whatever the client chose to send.
        for hop in reversed([h.strip().decode("latin-1") for h in forwarded.split(b",") if h.strip()]):
            if hop not in proxies:
                return (IPv6Address if ":" in hop else IPv4Address)("TCP", hop, 0)
        return peer

    def isSecure(self) -> bool:
        if getattr(super().getClientAddress(), "host", None) in self._proxies():
            proto = self.requestHeaders.getRawHeaders(b"X-Forwarded-Proto")
            if proto:
                return proto[-1].strip().lower() == b"https"
        return super().isSecure()

    def getRequestHostname(self) -> bytes:
        # werkzeug (inside Klein) answers 500 to a Host that is no hostname.
        host = super().getRequestHostname()
        return host if _HOSTNAME.fullmatch(host) else b"localhost"

    def gotLength(self, length: int | None) -> None:
        channel = self.channel
        command = channel._command
        if command not in UPLOAD_METHODS and (length is not None and length <= MAX_OTHER_BODY):
            return super().gotLength(length)
        # End of headers: method and path are still only on the channel.
        self.method, self.uri, self.clientproto = command, channel._path, channel._version
        self.path = self.uri.split(b"?", 1)[0]
        self.args = {}
        self.content = None
        self.upload = Upload(self, channel.site.registry, channel.site.clock, length)
        if command in UPLOAD_METHODS:
            self.upload.begin()
        else:
            # Nothing but an upload needs a body: twisted.web would store it.
            self.upload.refuse(HTTPError(413, "Request body too large: only PUT and POST carry a stream."))

    def handleContentChunk(self, data: bytes | list) -> None:
        # ``data`` is bytes, or a list of memoryviews from chunked.ChunkedDecoder.
        if self.upload is None:
            return super().handleContentChunk(data if isinstance(data, bytes) else b"".join(data))
        self.upload.chunk(data)

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        if self.upload is None:
            return super().requestReceived(command, path, version)
        # The body is complete; the response is the upload's to finish.
        self.upload.body_complete()

    def connectionLost(self, reason) -> None:
        super().connectionLost(reason)
        if self.upload is not None:
            self.upload.lost()


class Upload:
    """The sender party of a pipe (see ``pipes.SenderParty``)."""

    def __init__(self, request: PipeRequest, registry: Registry, clock: IReactorTime, length: int | None):
        self.request = request
        self.registry = registry
        self.clock = clock
        self.hangups: HangupWatch = request.channel.site.hangups
        self.length = length
        self.n = 1
        self.wait = registry.limits.wait_timeout
        self.address = getattr(request.getClientAddress(), "host", None)
        self.headers: SenderHeaders
        self.pipe: Pipe | None = None
        self.answered = False
        self.refused = False
        self.body_done = False
        self.closed = False
        self._reading = True
        self._dropped = 0
        self._continue = False
        self._saved_timeout = None
        self.defer = False
        self._held: list[bytes] = []

    # -- from the channel --------------------------------------------------------

    def begin(self) -> None:
        request = self.request
        self._take_expect()
        try:
            target = parse_target(request.uri)
            if target.page is not None:
                raise HTTPError(400, f"Cannot {request.method.decode('latin-1')} to a reserved path.")
            query = target.query
            if query.flag("progress") or query.flag("status"):
                raise HTTPError(400, "?progress and ?status are read-only: send with PUT or POST on the plain URL.")
            limits = self.registry.limits
            self.n = query.integer("n", 1, limits.max_receivers, 1)
            self.wait = query.integer("wait", 1, 3600, int(limits.wait_timeout))
            self.headers = SenderHeaders.read(request.requestHeaders)
            defer = request.requestHeaders.getRawHeaders(DEFER_HEADER) or [b""]
            self.defer = defer[0].strip().lower() in (b"1", b"true", b"yes")
            self._saved_timeout = request.channel.setTimeout(None)
            self.pipe = self.registry.add_sender(target.name, self)
            if self.defer and self._continue and not self.answered and not self.closed:
                # The response waits for the body: let the body come now.
                self._continue = False
                request.channel.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        except HTTPError as error:
            self.refuse(error)

    def _take_expect(self) -> None:
        """Twisted would write "100 Continue" after gotLength returns, into the
        middle of our response: take the header, and answer it ourselves."""
        headers = self.request.requestHeaders
        expect = headers.getRawHeaders(b"Expect")
        if expect is None:
            return
        headers.removeHeader(b"Expect")
        self._continue = expect[0].lower() == b"100-continue" and self.request.clientproto == b"HTTP/1.1"

    def chunk(self, data: bytes | list) -> None:
        if self.pipe is not None:
            self.pipe.data(data)
        elif self.refused:
            self._dropped += len(data) if isinstance(data, bytes) else sum(map(len, data))
            if self._dropped > DRAIN_LIMIT and not self.closed:
                self.closed = True
                self.request.channel.lingerAndClose(self.clock)

    def body_complete(self) -> None:
        self.body_done = True
        if not self._waiting():
            # A hang-up from here on is an ordinary close after a whole body.
            self.hangups.discard(self)
        if self.refused:
            if not self.closed:
                self.closed = True
                self.request.finish()
        elif self.pipe is not None:
            if self.defer:
                self._answer()  # the held lines, now that the body is in
            self.pipe.upload_complete()

    def malformed(self) -> None:
        if self.pipe is not None:
            self.pipe.fail("Malformed upload")
        if not self.closed:
            self.end("Malformed upload")

    def lost(self) -> None:
        if not self._reading:
            self.hangups.discard(self)
        self.closed = True
        if self.pipe is not None:
            self.pipe.sender_lost()

    # -- refusing early ------------------------------------------------------------

    def refuse(self, error: HTTPError) -> None:
        """Answer an upload that never joins a pipe, keeping the connection if we can."""
        request = self.request
        self._take_expect()
        self.refused = True
        self.registry.rejections[error.code] += 1
        self.resume_reading()
        if self._saved_timeout is not None:
            request.channel.setTimeout(self._saved_timeout)
        body = error.line
        request.setResponseCode(error.code)
        for name, value in error.headers.items():
            request.setHeader(name, value)
        request.setHeader(b"Content-Type", TEXT_PLAIN)
        request.setHeader(b"Content-Length", b"%d" % len(body))
        # Without "100 Continue" the client will not send its body; a large
        # body is not worth draining.
        keep = not self._continue and self.length is not None and self.length <= DRAIN_LIMIT
        if not keep:
            request.setHeader(b"Connection", b"close")
            request.channel.persistent = False
        request.write(body)
        if not keep:
            self.closed = True
            request.channel.lingerAndClose(self.clock)
        # else: finished in body_complete(), once the body has been dropped.

    # -- as the pipe's sender party ------------------------------------------------

    def _answer(self) -> None:
        if self.answered:
            return
        self.answered = True
        request = self.request
        if self._continue:
            request.channel.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request.setResponseCode(200)
        request.setHeader(b"Content-Type", TEXT_PLAIN)
        request.setHeader(b"Cache-Control", b"no-store")
        request.setHeader(b"X-Accel-Buffering", b"no")
        request.setHeader(b"Access-Control-Allow-Origin", b"*")
        held, self._held = self._held, []
        for line in held:
            request.write(line)

    def say(self, text: str) -> None:
        if self.closed:
            return
        line = f"[INFO] {text}\n".encode()
        if self.defer and not self.body_done and not self.answered:
            self._held.append(line)
            return
        self._answer()
        self.request.write(line)

    def pause_reading(self) -> None:
        if self._reading and not self.closed:
            self._reading = False
            self.request.transport.pauseProducing()
            if not self.body_done or self._waiting():
                self.hangups.add(self)

    def read_in(self, step: int) -> None:
        if not self.closed:
            self.request.transport.bufferSize = step

    def resume_reading(self) -> None:
        if not self._reading and not self.closed:
            self._reading = True
            self.hangups.discard(self)
            self.request.transport.resumeProducing()

    # -- for the HangupWatch ---------------------------------------------------------

    def _waiting(self) -> bool:
        # A sender still waiting for its receivers must be noticed leaving,
        # even after its whole body arrived: it would hold the name.
        return self.pipe is not None and self.pipe.state is State.WAITING

    def fileno(self) -> int | None:
        return None if self.closed else socket_fileno(self.request.transport)

    def hung_up(self) -> None:
        """The client went away (or half-closed) while we were not reading its
        socket, before its body ended or while it waits for receivers."""
        if not self.closed and self.request.transport is not None:
            self.request.transport.abortConnection()

    def end(self, error: str | None) -> None:
        """The last line, then close the response."""
        self.pipe = None
        if self.closed:
            return
        self._answer()
        request = self.request
        line = "[INFO] Transfer complete.\n" if error is None else f"[ERROR] {error}.\n"
        request.write(line.encode())
        self.closed = True
        channel = request.channel
        if self.body_done:
            self.resume_reading()
            channel.setTimeout(self._saved_timeout)
            request.finish()
        else:
            # The body is still coming: the connection cannot be reused.
            channel.lingerAndClose(self.clock)
            request.finish()
