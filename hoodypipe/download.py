"""The receiver party: one GET's response, driven by its pipe."""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

from twisted.internet.defer import Deferred

from hoodypipe.headers import TRANSFER_HEADER
from hoodypipe.refusal import refuse

if TYPE_CHECKING:
    from twisted.internet.interfaces import IPushProducer
    from twisted.web.server import Request

    from hoodypipe.connection import Connection
    from hoodypipe.errors import HTTPError
    from hoodypipe.frame import Frame
    from hoodypipe.headers import SenderHeaders
    from hoodypipe.names import PartyQuery
    from hoodypipe.pipes import Pipe
    from hoodypipe.refusal import Rejections


class Download:
    """A receiver (see ``parties.ReceiverParty``).

    ``done`` fires when the response is over; Klein cancels it when the
    client goes away first, and the canceller tells the pipe.
    """

    def __init__(
        self,
        request: Request,
        party: PartyQuery,
        rejections: Rejections,
        last_segment: str = "",
        client: str | None = None,
    ) -> None:
        self.request = request
        self.connection = cast("Connection", request.channel)
        self.n = party.n
        self.wait = party.wait
        self.download = party.download
        self.filename = party.filename
        self.sha256 = party.sha256
        self.transfer_id = ""
        self.last_segment = last_segment
        self.rejections = rejections
        self.pipe: Pipe | None = None
        self.address = client
        self.gone = False
        self._reset_on_close = False
        self.done: Deferred[None] = Deferred(self._client_left)

    def _client_left(self, _: Deferred[None]) -> None:
        self.gone = True
        if self.pipe is not None:
            self.pipe.receiver_lost(self)

    def _over(self) -> None:
        self.gone = True
        if not self.done.called:
            self.done.callback(None)

    def begin(self, headers: SenderHeaders, transfer_id: str) -> None:
        self.transfer_id = transfer_id
        # A form sender's receivers wait for the part it carries (formupload.py).
        headers.when_chosen(self._begin, self.refuse)

    def _begin(self, headers: SenderHeaders) -> None:
        if self.gone:
            return
        request = self.request
        request.setResponseCode(200)
        for name, value in headers.for_receiver(self.download, self.filename, self.last_segment):
            request.responseHeaders.addRawHeader(name, value)
        # The id to look the transfer up by afterwards (?status&transfer=).
        request.responseHeaders.addRawHeader(TRANSFER_HEADER, self.transfer_id.encode("ascii"))
        # Send the status line and headers now, not with the first byte.
        request.write(b"")
        # An HTTP/1.0 client of a stream of unknown length learns the end from
        # the close: until the last byte, a close must be a reset (the kernel
        # sends one if the daemon dies), never an end it could trust.
        self._reset_on_close = not request.chunked and not request.responseHeaders.hasHeader(b"Content-Length")
        if self._reset_on_close:
            self.connection.reset_on_close(True)

    def write(self, frame: Frame) -> None:
        # Straight to the socket: the framing is done once per read for
        # every receiver (see frame.Frame), not by Request.write for each.
        self.connection.write_raw(frame.chunked() if self.request.chunked else frame.plain())

    def watch_flow(self, producer: IPushProducer, step: int) -> None:
        self.connection.write_in(step)
        self.request.registerProducer(producer, True)

    def unacknowledged(self) -> int:
        return self.connection.unacknowledged()

    def left_with_everything(self) -> bool:
        return self.connection.unacknowledged_at_close() == 0

    def finish(self) -> None:
        if self.gone:
            return
        if self.request.producer is not None:
            self.request.unregisterProducer()
        if self._reset_on_close:
            self.connection.reset_on_close(False)  # every byte is out: the close is the end
        self.request.finish()
        self._over()

    def abort(self) -> None:
        """No terminating chunk, no clean close: the client sees an error."""
        if self.gone:
            return
        self.gone = True
        if self.request.producer is not None:
            self.request.unregisterProducer()
        self.connection.abort()

    def refuse(self, error: HTTPError) -> None:
        if self.gone:
            return
        if self.request.producer is not None:
            self.request.unregisterProducer()  # refused after the relay watched it (a form's 500)
        self.request.write(refuse(self.request, error, self.rejections))
        self.request.finish()
        self._over()
