"""The sender party: one PUT or POST, from its headers to its last line.

The pipe drives it through ``pipes.SenderParty``; the request hook
(``request.PipeRequest``) feeds it the body; it reaches its socket only
through ``connection.Connection``. Its response goes through the phases of
``PHASES``, every change through ``Sender._enter``, as ``Pipe``'s do:

    pending -> answered -> done -> gone
       |  \\-> draining -> done
       \\-> done (refused, closing)

- pending: the headers are in and nothing is written (behind a proxy that
  sets ``X-Pipe-Defer-Response``, the status lines wait here for the body);
- answered: ``200`` is out, and a line goes out per event;
- draining: refused, and its small body is read and dropped so the
  connection stays usable;
- done: the response is over: nothing more is written;
- gone: the connection closed.
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING

from twisted.logger import Logger

from hoodypipe.errors import HTTPError
from hoodypipe.formupload import FormUpload, open_form
from hoodypipe.headers import SenderHeaders
from hoodypipe.names import PartyQuery, parse_target, transfer_id
from hoodypipe.pipes import State
from hoodypipe.refusal import TEXT_PLAIN, refuse

if TYPE_CHECKING:
    from twisted.web.server import Request

    from hoodypipe.connection import Connection
    from hoodypipe.frame import Payload
    from hoodypipe.hangup import HangupWatch
    from hoodypipe.pipes import Pipe, Registry

log = Logger()

# A refused upload's body up to this size is read and dropped so the
# connection stays usable; a larger one closes the connection.
DRAIN_LIMIT = 1024 * 1024
# Set by a reverse proxy that stops forwarding a request body once the
# response has begun (nginx's proxy module does, for HTTP/1.x upstreams):
# the sender's status lines are then held until its body has arrived.
DEFER_HEADER = b"X-Pipe-Defer-Response"
# A waiting sender that hangs up behind unread bytes is read (at most this
# much) to learn whether it sent its whole body and half-closed, or left.
PEEK_LIMIT = 1024 * 1024
# Reserved pages that are no place for a body: 405, not 400.
_READ_ONLY_PAGES = {"health": b"GET, HEAD, OPTIONS", "metrics": b"GET, HEAD, OPTIONS"}


class Phase(enum.StrEnum):
    PENDING = "pending"
    ANSWERED = "answered"
    DRAINING = "draining"
    DONE = "done"
    GONE = "gone"


PHASES: dict[Phase, frozenset[Phase]] = {
    Phase.PENDING: frozenset({Phase.ANSWERED, Phase.DRAINING, Phase.DONE, Phase.GONE}),
    Phase.ANSWERED: frozenset({Phase.DONE, Phase.GONE}),
    Phase.DRAINING: frozenset({Phase.DONE, Phase.GONE}),
    Phase.DONE: frozenset({Phase.GONE}),
    Phase.GONE: frozenset(),
}


class Sender:
    """The sender party of a pipe (see ``pipes.SenderParty``)."""

    headers: SenderHeaders

    def __init__(
        self,
        request: Request,
        connection: Connection,
        registry: Registry,
        hangups: HangupWatch,
        length: int | None,
        address: str | None,
    ) -> None:
        self.request = request
        self.connection = connection
        self.registry = registry
        self.hangups = hangups
        self.length = length
        self.address = address
        self.n = 1
        self.wait = registry.limits.wait_timeout
        self.sha256 = False
        self.transfer: str | None = None
        self.pipe: Pipe | None = None
        # A multipart/form-data body: only the part it carries is relayed.
        self.form: FormUpload | None = None
        self.phase = Phase.PENDING
        self.body_done = False
        self.reading = True
        self.defer = False
        # The client sent ``Expect: 100-continue`` and has not been answered.
        self.continue_due = False
        self._held: list[bytes] = []
        self._dropped = 0
        # Bytes read after a hang-up while waiting (see hung_up).
        self._peeked: int | None = None

    @property
    def closed(self) -> bool:
        """Nothing more is written to this response."""
        return self.phase in (Phase.DONE, Phase.GONE)

    def _enter(self, phase: Phase) -> None:
        if phase not in PHASES[self.phase]:
            raise AssertionError(f"sender: {self.phase.value} -> {phase.value}")
        self.phase = phase

    # -- from the request hook -----------------------------------------------------

    def begin(self) -> None:
        """The headers are in: join the pipe, or refuse."""
        self._take_expect()
        try:
            target = parse_target(self.request.uri)
            if target.page is not None:
                method = self.request.method.decode("latin-1")
                allowed = _READ_ONLY_PAGES.get(target.page)
                if allowed is not None:
                    raise HTTPError(405, f"Method {method} is not allowed.", {b"Allow": allowed})
                raise HTTPError(400, f"Cannot {method} to a reserved path.")
            assert target.name is not None
            limits = self.registry.limits
            party = PartyQuery.parse(target.query, limits.max_receivers, limits.wait_timeout)
            self.n, self.wait = party.n, party.wait
            self.sha256, self.transfer = party.sha256, transfer_id(party.transfer)
            self.headers = SenderHeaders.read(self.request.requestHeaders)
            form = open_form(self.request.requestHeaders, self.headers, self, self.registry.clock)
            if form is not None:
                self.headers = form.headers
            defer = self.request.requestHeaders.getRawHeaders(DEFER_HEADER) or [b""]
            self.defer = defer[0].strip().lower() in (b"1", b"true", b"yes")
            self.connection.suspend_idle_timeout()
            self.pipe = self.registry.add_sender(target.name, self)
            self.form = form
            if self.defer and self.continue_due and self.phase is Phase.PENDING:
                self._send_continue()  # the response waits for the body: let the body come now
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
        self.continue_due = expect[0].lower() == b"100-continue" and self.request.clientproto == b"HTTP/1.1"

    def _send_continue(self) -> None:
        self.continue_due = False
        self.connection.send_continue()

    def chunk(self, data: Payload) -> None:
        if self._peeked is not None and self._waiting():
            self._peeked += len(data) if isinstance(data, bytes) else sum(map(len, data))
            if self._peeked > PEEK_LIMIT:
                self.connection.abort()  # more than a body worth holding for receivers not there
                return
        if self.form is not None:
            self.form.feed(data)
        elif self.pipe is not None:
            self.pipe.data(data)
        elif self.phase is Phase.DRAINING:
            self._dropped += len(data) if isinstance(data, bytes) else sum(map(len, data))
            if self._dropped > DRAIN_LIMIT:
                self._enter(Phase.DONE)
                self.connection.linger_and_close()

    def body_complete(self) -> None:
        self.body_done = True
        if not self._waiting():
            # A hang-up from here on is read with the rest of the socket.
            self.hangups.discard(self)
        if self.phase is Phase.DRAINING:
            self._enter(Phase.DONE)
            self.request.finish()
        elif self.pipe is not None:
            if self.defer:
                self._answer()  # the held lines, now that the body is in
            if self.form is not None:
                self.form.body_complete()  # the form says when its part is complete
            else:
                self.pipe.upload_complete()

    def malformed(self) -> None:
        """The body's framing broke."""
        if self.phase is Phase.DRAINING:
            self._enter(Phase.DONE)
        if self.closed:
            self.connection.linger_and_close()  # its answer is out already: one answer per request
            return
        if self.form is not None:
            self.form.abandon()
        if self.pipe is not None:
            self.pipe.fail("Malformed upload")
        self.end("Malformed upload")

    def lost(self) -> None:
        if not self.reading:
            self.hangups.discard(self)
        if self.phase is not Phase.GONE:
            self._enter(Phase.GONE)
        if self.form is not None:
            self.form.abandon()
        if self.pipe is not None:
            self.pipe.sender_lost()

    # -- refusing early ------------------------------------------------------------

    def refuse(self, error: HTTPError) -> None:
        """Answer an upload that never joins a pipe, keeping the connection if we can."""
        self._take_expect()
        self.resume_reading()
        self.connection.restore_idle_timeout()
        request = self.request
        body = refuse(request, error, self.registry.rejections)
        request.setHeader(b"Content-Length", b"%d" % len(body))
        # Without "100 Continue" the client will not send its body; a large
        # body is not worth draining.
        keep = not self.continue_due and self.length is not None and self.length <= DRAIN_LIMIT
        if not keep:
            request.setHeader(b"Connection", b"close")
            self.connection.close_after_response()
        request.write(body)
        if keep:
            self._enter(Phase.DRAINING)  # finished in body_complete(), once the body is dropped
        else:
            self._enter(Phase.DONE)
            self.connection.linger_and_close()

    # -- as the pipe's sender party ------------------------------------------------

    def _answer(self) -> None:
        if self.phase is not Phase.PENDING:
            return
        self._enter(Phase.ANSWERED)
        if self.continue_due:
            self._send_continue()
        request = self.request
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
        if self.defer and not self.body_done and self.phase is Phase.PENDING:
            self._held.append(line)
            return
        self._answer()
        self.request.write(line)

    def pause_reading(self) -> None:
        if self.reading and not self.closed:
            self.reading = False
            self.connection.pause_reading()
            if self._waiting():
                # Its name is held while it waits: notice if it leaves. (A
                # streaming sender's hang-up is read when the relay resumes.)
                self.hangups.add(self)

    def read_in(self, step: int) -> None:
        if not self.closed:
            self.connection.read_in(step)

    def resume_reading(self) -> None:
        if not self.reading and not self.closed:
            self.reading = True
            self.hangups.discard(self)
            self.connection.resume_reading()

    def end(self, error: str | None) -> None:
        """The last line, then close the response."""
        self.pipe = None
        if self.closed:
            return
        self._answer()
        line = "[INFO] Transfer complete.\n" if error is None else f"[ERROR] {error}.\n"
        self.request.write(line.encode())
        if self.body_done:
            self.resume_reading()  # the connection may carry the next request
            self.connection.restore_idle_timeout()
            self._enter(Phase.DONE)
        else:
            # The body is still coming: the connection cannot be reused.
            self._enter(Phase.DONE)
            self.connection.linger_and_close()
        self.request.finish()

    # -- for the hang-up watch -------------------------------------------------------

    def _waiting(self) -> bool:
        # Joining (the pipe pauses it before it is told its pipe) or waiting
        # for its receivers: it holds the name.
        return self.pipe is None or self.pipe.state is State.WAITING

    def fileno(self) -> int | None:
        return None if self.closed else self.connection.fileno()

    def hung_up(self, reset: bool = False) -> None:
        """The client went away (or half-closed) while we were not reading its
        socket, before its body ended or while it waits for receivers."""
        if reset and not self.closed:
            self.connection.abort()  # an RST: gone, whatever it had sent
            return
        if self.closed or self.body_done or not self._waiting():
            # After its whole body, a FIN is a half-close (nc -N): valid, it is
            # delivered. A streaming sender's rest is read when the relay resumes.
            return
        if self._peeked is None:
            # A FIN behind unread bytes: a sender that half-closed after its
            # whole body, or one that left. Read on to learn which: the end of
            # its body, or the end of its connection (see PipeChannel.readConnectionLost).
            self._peeked = 0
            self.resume_reading()
            return
        self.connection.abort()
