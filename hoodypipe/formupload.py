"""A multipart/form-data sender: the part it carries, picked as the form streams (KIT 3).

A browser form, ``curl -F`` or piping-server's clients send a form, not a
stream: the sender party (``sender.Sender``) hands each read of such a body
here instead of to its pipe, and ``FormUpload`` passes on only the bytes of
the part it picks, with that part's headers:

1. the first part with a ``filename`` (or ``filename*``, even empty), from its
   headers on, as it arrives; earlier parts are drained;
2. else the first ``input_text`` field (held, at most 1 MiB), at the form's
   end, as ``text/plain; charset=utf-8`` without a disposition;
3. else the first part as it is (held, at most 1 MiB), at the form's end or
   once it passes 1 MiB (a later file part is then ignored);
4. no part: a failure.

The receivers' headers wait for the pick: the sender's ``SenderHeaders``
carry a ``Pick`` that each receiver asks (``SenderHeaders.when_chosen``) when
the transfer starts. The first part's headers are due ``FIRST_PART_DEADLINE``
after that; then the pipe's ``--idle-timeout`` watches as for any transfer.
When the picked part ends the upload is complete: the rest of the body is
dropped, and the sender's connection closes after its last line.

A failure (the deadline, no part, a malformed form, an ``input_text`` over
1 MiB, the body ending inside the part) is ``[ERROR] Transfer failed.`` for
the sender, a 500 with that line for receivers not yet answered, an aborted
download for the others, and ``Transfer failed`` as the ``done`` reason.
"""

from __future__ import annotations

import dataclasses
import enum
from typing import TYPE_CHECKING, Protocol

from twisted.logger import Logger

from hoodypipe.errors import HTTPError
from hoodypipe.headers import SenderHeaders, content_disposition, safe_content_type, sanitise_filename
from hoodypipe.multipart import (
    FormEnd,
    MultipartError,
    Parser,
    PartData,
    PartEnd,
    PartHeaders,
    PartStart,
    boundary_of,
)
from hoodypipe.pipes import State

if TYPE_CHECKING:
    from collections.abc import Callable

    from twisted.internet.interfaces import IDelayedCall, IReactorTime
    from twisted.web.http_headers import Headers

    from hoodypipe.frame import Payload
    from hoodypipe.pipes import Pipe

log = Logger()

MEDIA_TYPE = "multipart/form-data"
# A part that is held until the form's end (rules 2 and 3) holds at most this.
MAX_HELD = 1024 * 1024
# Seconds from the start of the transfer to the first part's headers.
FIRST_PART_DEADLINE = 30.0
TEXT_FIELD = "input_text"
TRANSFER_FAILED = "Transfer failed"
TEXT_PLAIN_UTF8 = b"text/plain; charset=utf-8"
_MAX_DISPOSITION = 8 * 1024


class FormOwner(Protocol):
    """The sender party whose body this is: its pipe, while it has one."""

    @property
    def pipe(self) -> Pipe | None: ...


class Pick:
    """The receivers' headers of a form sender, once its part is picked."""

    def __init__(self, on_first_wait: Callable[[], None]) -> None:
        self.chosen: SenderHeaders | None = None
        self.error: HTTPError | None = None
        self._waiting: list[tuple[Callable[[SenderHeaders], None], Callable[[HTTPError], None]]] = []
        self._on_first_wait: Callable[[], None] | None = on_first_wait

    def when_chosen(self, begin: Callable[[SenderHeaders], None], refuse: Callable[[HTTPError], None]) -> None:
        if self.chosen is not None:
            begin(self.chosen)
        elif self.error is not None:
            refuse(self.error)
        else:
            self._waiting.append((begin, refuse))
            first, self._on_first_wait = self._on_first_wait, None
            if first is not None:
                first()  # receivers wait: the transfer has started

    def choose(self, headers: SenderHeaders) -> None:
        if self.chosen is not None or self.error is not None:
            return
        self.chosen = headers
        waiting, self._waiting = self._waiting, []
        for begin, _ in waiting:
            begin(headers)

    def fail(self, error: HTTPError) -> None:
        if self.chosen is not None or self.error is not None:
            return
        self.error = error
        waiting, self._waiting = self._waiting, []
        for _, refuse in waiting:
            refuse(error)


class _Role(enum.Enum):
    """What is done with the bytes of the part being read."""

    PICKED = "picked"  # relayed as they come
    FIRST = "first"  # the first part, held (rule 3, or rule 2 if it is input_text)
    TEXT = "text"  # the first input_text, held (rule 2)
    DRAIN = "drain"  # dropped


def open_form(
    request_headers: Headers, base: SenderHeaders, owner: FormOwner, clock: IReactorTime
) -> FormUpload | None:
    """A FormUpload for a multipart/form-data sender, else None; 400 without a boundary."""
    if base.declared_type != MEDIA_TYPE:
        return None
    raw = request_headers.getRawHeaders(b"Content-Type") or [b""]
    boundary = boundary_of(raw[0])
    if boundary is None:
        raise HTTPError(400, "Invalid multipart body: no boundary.")
    return FormUpload(Parser(boundary), base, owner, clock)


class FormUpload:
    """A form sender's body, unwrapped to the part it carries (see the module's docstring)."""

    def __init__(self, parser: Parser, base: SenderHeaders, owner: FormOwner, clock: IReactorTime) -> None:
        self.parser = parser
        self.owner = owner
        self.clock = clock
        self.pick = Pick(self._transfer_started)
        self.passed = base.passed
        # What the pipe and its spectators see of the sender: no length, no
        # size (counts describe the part), and receivers' headers to come.
        self.headers = dataclasses.replace(
            base,
            content_type=None,
            declared_type="",
            content_length=None,
            size_hint=None,
            disposition=None,
            pick=self.pick,
        )
        self.done = False
        self.seen_part = False
        self._role: _Role | None = None
        self._parts = 0
        self._first: tuple[PartHeaders, list[bytes]] | None = None
        self._text: tuple[PartHeaders, list[bytes]] | None = None
        self._held = 0
        self._deadline: IDelayedCall | None = None

    # -- from the sender party ------------------------------------------------------

    def feed(self, data: Payload) -> None:
        """One read of the body."""
        if self.done:
            return
        if self.owner.pipe is None:
            self._stop()  # the transfer ended without us (the pipe told the sender)
            return
        out: list[memoryview | bytes] = []
        try:
            for piece in [data] if isinstance(data, bytes) else data:
                for event in self.parser.feed(piece if isinstance(piece, bytes) else bytes(piece)):
                    if self._event(event, out):
                        return
        except MultipartError as error:
            self._fail(str(error))
            return
        self._relay(out)

    def body_complete(self) -> None:
        """The body ended (its framing says so)."""
        if self.done:
            return
        try:
            self.parser.end()  # the form was not closed (a closed one is done): this raises
        except MultipartError as error:
            self._fail(str(error))

    def abandon(self) -> None:
        """The sender's connection or framing broke: receivers not yet answered are refused."""
        if not self.done:
            self.pick.fail(HTTPError(500, f"{TRANSFER_FAILED}."))
        self._stop()

    # -- the pick -----------------------------------------------------------------------

    def _event(self, event: object, out: list[memoryview | bytes]) -> bool:
        """Act on one event; True once the upload is over (complete or failed)."""
        if isinstance(event, PartData):
            return self._data(event.data, out)
        if isinstance(event, PartStart):
            self._part(event.headers)
            return False
        if isinstance(event, PartEnd):
            if self._role is _Role.PICKED:
                self._complete(out)
                return True
            self._role = None
            return False
        if isinstance(event, FormEnd):
            return self._form_end(out)
        return False

    def _part(self, headers: PartHeaders) -> None:
        self.seen_part = True
        self._cancel_deadline()
        self._parts += 1
        first = self._parts == 1
        if headers.has_filename:
            self._first = self._text = None
            self._choose(self._file_headers(headers))
            self._role = _Role.PICKED
        elif first:
            self._first = (headers, [])
            if headers.name == TEXT_FIELD:
                self._text = self._first  # rule 2 then; the same bytes
            self._role = _Role.FIRST
        elif headers.name == TEXT_FIELD and self._text is None:
            self._text = (headers, [])
            self._role = _Role.TEXT
        else:
            self._role = _Role.DRAIN

    def _data(self, data: memoryview, out: list[memoryview | bytes]) -> bool:
        role = self._role
        if role is _Role.PICKED:
            out.append(data)
            return False
        if role is _Role.DRAIN or role is None:
            return False
        held = self._first if role is _Role.FIRST else self._text
        assert held is not None
        self._held += len(data)
        headers, pieces = held
        if self._held > MAX_HELD:
            if headers.name == TEXT_FIELD:
                self._fail(f"the {TEXT_FIELD} field is over 1 MiB")
                return True
            # Rule 3: a first part this large is the one; it streams on.
            self._first = None
            self._choose(self._part_headers(headers))
            out.extend(pieces)
            out.append(data)
            self._role = _Role.PICKED
            return False
        pieces.append(bytes(data))  # a copy: a view would keep the whole read alive
        return False

    def _form_end(self, out: list[memoryview | bytes]) -> bool:
        if self._text is not None:
            _, pieces = self._text
            self._choose(self._text_headers())
        elif self._first is not None:
            headers, pieces = self._first
            self._choose(self._part_headers(headers))
        else:
            self._fail("the form has no part")
            return True
        out.extend(pieces)
        self._complete(out)
        return True

    # -- receivers' headers -------------------------------------------------------------

    def _part_headers(self, headers: PartHeaders) -> SenderHeaders:
        """A part as it is (rule 3): its type, made safe, and its disposition, verbatim."""
        shown, declared = safe_content_type(headers.content_type)
        disposition = headers.disposition
        text = disposition.decode("latin-1") if disposition is not None else None
        if text is not None:
            text = "".join(c for c in text if c >= " " and c != "\x7f")[:_MAX_DISPOSITION]
        return self._headers(shown, declared, text)

    def _file_headers(self, headers: PartHeaders) -> SenderHeaders:
        """A file part (rule 1): its type, made safe, and ``attachment`` with its filename."""
        shown, declared = safe_content_type(headers.content_type)
        name = sanitise_filename(headers.filename or "")
        return self._headers(shown, declared, content_disposition("attachment", name or None).decode("ascii"))

    def _text_headers(self) -> SenderHeaders:
        return self._headers(TEXT_PLAIN_UTF8, "text/plain", None)

    def _headers(self, shown: bytes | None, declared: str, disposition: str | None) -> SenderHeaders:
        return SenderHeaders(
            content_type=shown,
            declared_type=declared,
            content_length=None,
            disposition=disposition,
            passed=self.passed,
            size_hint=None,
        )

    def _choose(self, headers: SenderHeaders) -> None:
        self._cancel_deadline()
        self.pick.choose(headers)

    # -- outcomes -----------------------------------------------------------------------

    def _relay(self, out: list[memoryview | bytes]) -> None:
        pipe = self.owner.pipe
        if out and pipe is not None:
            pipe.data(out)

    def _complete(self, out: list[memoryview | bytes]) -> None:
        """The picked part is in: relay its last bytes; the rest of the body is not read."""
        self._relay(out)
        self._stop()
        pipe = self.owner.pipe
        if pipe is not None:
            pipe.upload_complete()

    def _fail(self, why: str) -> None:
        log.info("form upload failed: {why}", event="form_failed", why=why)
        error = HTTPError(500, f"{TRANSFER_FAILED}.")
        self.pick.fail(error)  # receivers of a started transfer waiting for headers
        self._stop()
        pipe = self.owner.pipe
        if pipe is None:
            return
        if pipe.state is State.WAITING:
            for receiver in list(pipe.receivers):
                receiver.refuse(error)  # not yet answered either: the same 500
        pipe.fail(TRANSFER_FAILED)

    def _stop(self) -> None:
        self.done = True
        self._role = None
        self._first = self._text = None
        self._cancel_deadline()

    # -- the first part's deadline ------------------------------------------------------

    def _transfer_started(self) -> None:
        if not self.done and not self.seen_part:
            self._deadline = self.clock.callLater(FIRST_PART_DEADLINE, self._too_late)

    def _too_late(self) -> None:
        self._deadline = None
        if not self.done and not self.seen_part:
            self._fail(f"no part's headers within {FIRST_PART_DEADLINE:g} s")

    def _cancel_deadline(self) -> None:
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None
