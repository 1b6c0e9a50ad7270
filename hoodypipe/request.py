"""The request hook: where a PUT or POST becomes a streaming sender.

twisted.web's ``Request`` stores the whole body and only then calls
``process()``, so a pipe cannot use it for senders. ``PipeRequest`` takes
over at the end of the headers (``gotLength``): a PUT or POST becomes a
``sender.Sender`` there, each decoded piece of the body goes straight to it
(``handleContentChunk``), and the end of the body (``requestReceived``)
never reaches the resource tree. Every other request is left to twisted.web
and the Klein app. Who the client is behind a proxy is ``proxy``'s to say.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.web import server

from hoodypipe.errors import HTTPError
from hoodypipe.fairshare import client_key
from hoodypipe.proxy import clean_hostname, client_host, forwarded_secure
from hoodypipe.sender import Sender

if TYPE_CHECKING:
    from twisted.python.failure import Failure

    from hoodypipe.channel import PipeChannel, PipeSite
    from hoodypipe.connection import Connection
    from hoodypipe.frame import Payload

UPLOAD_METHODS = (b"PUT", b"POST")
# The largest body a GET, HEAD or OPTIONS may carry (twisted.web buffers it).
MAX_OTHER_BODY = 64 * 1024


class PipeRequest(server.Request):
    """A Request that turns PUT and POST into streaming senders."""

    # twisted.web would add "Content-Type: text/html" to every response,
    # receivers' included; every response here sets its own.
    defaultContentType = None
    sender: Sender | None = None

    @property
    def connection(self) -> Connection:
        return cast("PipeChannel", self.channel)

    @property
    def pipe_site(self) -> PipeSite:
        return cast("PipeChannel", self.channel).site

    # -- who is asking -----------------------------------------------------------

    def _peer_host(self) -> str | None:
        return getattr(super().getClientAddress(), "host", None)

    def getClientAddress(self) -> IPv4Address | IPv6Address:
        """The client: the peer, or what a trusted proxy says in X-Forwarded-For."""
        peer = super().getClientAddress()
        forwarded = self.requestHeaders.getRawHeaders(b"X-Forwarded-For") or []
        host = client_host(getattr(peer, "host", None), forwarded, self.pipe_site.trusted_proxies)
        if host is None or host == getattr(peer, "host", None):
            return cast("IPv4Address | IPv6Address", peer)
        return (IPv6Address if ":" in host else IPv4Address)("TCP", host, 0)

    def share_key(self) -> str | None:
        """Whose share of the caps this request takes (see fairshare.client_key)."""
        return client_key(getattr(self.getClientAddress(), "host", None), self.pipe_site.ipv6_prefix)

    def isSecure(self) -> bool:
        proto = self.requestHeaders.getRawHeaders(b"X-Forwarded-Proto")
        secure = forwarded_secure(self._peer_host(), proto, self.pipe_site.trusted_proxies)
        return super().isSecure() if secure is None else secure

    def getRequestHostname(self) -> bytes:
        return clean_hostname(super().getRequestHostname())

    # -- the body --------------------------------------------------------------------

    def gotLength(self, length: int | None) -> None:
        command, uri, version = self.connection.request_line()
        if command not in UPLOAD_METHODS and (length is not None and length <= MAX_OTHER_BODY):
            super().gotLength(length)
            return
        # End of headers: method and target are still only on the channel.
        self.method, self.uri, self.clientproto = command, uri, version
        self.path = uri.split(b"?", 1)[0]
        self.args = {}
        self.content = None
        site = self.pipe_site
        sender = self.sender = Sender(self, self.connection, site.registry, site.hangups, length, self.share_key())
        if command in UPLOAD_METHODS:
            sender.begin()
        else:
            # Nothing but an upload needs a body: twisted.web would store it.
            sender.refuse(HTTPError(413, "Request body too large: only PUT and POST carry a stream."))

    def handleContentChunk(self, data: Payload) -> None:
        # ``data`` is bytes, or a list of memoryviews from chunked.ChunkedDecoder.
        if self.sender is None:
            super().handleContentChunk(data if isinstance(data, bytes) else b"".join(data))
            return
        self.sender.chunk(data)

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        if self.sender is None:
            super().requestReceived(command, path, version)
            return
        # The body is complete; the response is the sender's to finish.
        self.sender.body_complete()

    def keeps_half_open(self) -> bool:
        """A sender whose whole body is in may half-close: it still reads its lines."""
        return self.sender is not None and self.sender.body_done and not self.sender.closed

    def bad_framing(self) -> bool:
        """The body's framing broke: True if this request's sender answered it."""
        if self.sender is None:
            return False
        self.sender.malformed()
        return True

    def connectionLost(self, reason: Failure) -> None:
        super().connectionLost(reason)
        if self.sender is not None:
            self.sender.lost()


def client_of(request: server.Request) -> str | None:
    """The client of any request (None for one that is not ours: tests' stubs)."""
    return request.share_key() if isinstance(request, PipeRequest) else None
