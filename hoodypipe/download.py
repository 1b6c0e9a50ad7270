"""The receiver party: one GET's response, driven by its pipe."""

from __future__ import annotations

from typing import TYPE_CHECKING

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer
from twisted.web.iweb import IRequest

from hoodypipe.errors import HTTPError
from hoodypipe.headers import SenderHeaders
from hoodypipe.relay import Frame

if TYPE_CHECKING:
    from hoodypipe.pipes import Pipe


class Download:
    """A receiver (see ``pipes.ReceiverParty``).

    ``done`` fires when the response is over; Klein cancels it when the
    client goes away first, and the canceller tells the pipe.
    """

    def __init__(
        self,
        request: IRequest,
        n: int,
        wait: float,
        download: bool | None = None,
        filename: str | None = None,
        last_segment: str = "",
    ) -> None:
        self.request = request
        self.n = n
        self.wait = wait
        self.download = download
        self.filename = filename
        self.last_segment = last_segment
        self.pipe: Pipe | None = None
        self.address = getattr(request.getClientAddress(), "host", None)
        self.gone = False
        self.done: Deferred[None] = Deferred(self._client_left)

    def _client_left(self, _: Deferred[None]) -> None:
        self.gone = True
        if self.pipe is not None:
            self.pipe.receiver_lost(self)

    def _over(self) -> None:
        self.gone = True
        if not self.done.called:
            self.done.callback(None)

    def begin(self, headers: SenderHeaders) -> None:
        request = self.request
        request.setResponseCode(200)
        for name, value in headers.for_receiver(self.download, self.filename, self.last_segment):
            request.responseHeaders.addRawHeader(name, value)
        # Send the status line and headers now, not with the first byte.
        request.write(b"")
        self.transport = request.channel.transport

    def write(self, frame: Frame) -> None:
        # Straight to the transport: the framing is done once per read for
        # every receiver (see relay.Frame), not by Request.write for each.
        self.transport.write(frame.chunked() if self.request.chunked else frame.plain())

    def watch_flow(self, producer: IPushProducer, step: int) -> None:
        transport = self.transport
        transport.bufferSize = step
        # Twisted sends at most 128 KiB per write call, one call per reactor
        # turn: let a whole buffer go to the kernel at once.
        transport.SEND_LIMIT = max(step, getattr(transport, "SEND_LIMIT", 0))
        self.request.registerProducer(producer, True)

    def finish(self) -> None:
        if self.gone:
            return
        if self.request.producer is not None:
            self.request.unregisterProducer()
        self.request.finish()
        self._over()

    def abort(self) -> None:
        """No terminating chunk, no clean close: the client sees an error."""
        if self.gone:
            return
        self.gone = True
        if self.request.producer is not None:
            self.request.unregisterProducer()
        self.request.channel.transport.abortConnection()

    def refuse(self, error: HTTPError) -> None:
        if self.gone:
            return
        request = self.request
        request.setResponseCode(error.code)
        for name, value in error.headers.items():
            request.setHeader(name, value)
        request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
        request.setHeader(b"Access-Control-Allow-Origin", b"*")
        request.write(error.line)
        request.finish()
        self._over()
