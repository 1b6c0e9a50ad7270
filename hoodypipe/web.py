"""The Klein app: receivers, the side channel, and the pages.

Senders never get here (see ``upload.py``). One catch-all route classifies
the raw target with ``names.parse_target``, because werkzeug would see a
decoded path in which ``a%2Fb`` and ``a/b`` look alike.
"""

from __future__ import annotations

import json
import os
import re
import secrets
from collections.abc import Callable
from importlib.resources import files
from typing import Any
from urllib.parse import unquote

from jinja2 import Environment, FileSystemLoader, select_autoescape
from klein import Klein
from twisted.internet.interfaces import IReactorTime
from twisted.web.resource import IResource
from twisted.web.server import Request
from werkzeug.routing import BaseConverter

from hoodypipe import __version__, pages
from hoodypipe.accept import media_ranges
from hoodypipe.download import Download
from hoodypipe.errors import HTTPError
from hoodypipe.hub import Hub, json_body, parse_last_event_id
from hoodypipe.metrics import Metrics
from hoodypipe.names import PREFIX, PartyQuery, Target, parse_target
from hoodypipe.pipes import Registry
from hoodypipe.progress import rfc3339
from hoodypipe.refusal import refuse
from hoodypipe.request import client_of
from hoodypipe.shown import dashboard_context, help_context

PIPE_METHODS = b"GET, POST, PUT, OPTIONS"
# Health and metrics answer preflights too (status pages poll them).
READ_ONLY_PAGES = frozenset({"health", "metrics"})
CORS_HEADERS = b"Content-Type, Content-Disposition, X-Piping, X-Hoody-Pipe, X-Pipe-Size, Last-Event-ID"
FORMATS = {"text/html": "html", "text/event-stream": "sse", "application/json": "json", "text/plain": "text"}
_HOST = re.compile(r"^[A-Za-z0-9.\-]+(:[0-9]{1,5})?$|^\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?$")


class _Everything(BaseConverter):
    """Matches any path, empty and leading-slash ones included."""

    regex = r"[\s\S]*"  # newlines too: %0A is decoded before werkzeug matches
    part_isolating = False


def choose_format(accept: bytes | None) -> str:
    """The first of our four types the client lists with q>0, by preference; else SSE."""
    ranked = sorted((-q, order, media) for order, (media, q) in enumerate(media_ranges(accept)) if q > 0)
    for _, _, media in ranked:
        if media in FORMATS:
            return FORMATS[media]
    return "sse"


def base_url(request: Request) -> str:
    """The URL clients used to reach us, from a ``Host`` that looks like one."""
    scheme = "https" if request.isSecure() else "http"
    host = (request.getHeader(b"Host") or b"").decode("latin-1").strip()
    if not _HOST.match(host):
        address = request.getHost()
        host = f"{getattr(address, 'host', 'localhost')}:{getattr(address, 'port', 80)}"
    return f"{scheme}://{host}"


def template_dir() -> str:
    """Installed: the hoodypipe.templates package data; in a checkout: templates/."""
    try:
        return str(files("hoodypipe.templates"))
    except ModuleNotFoundError:
        return os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "templates")


def _fds() -> int | None:
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return None


def _rss() -> int | None:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


class PipeWeb:
    """Everything that answers a GET, HEAD or OPTIONS."""

    app = Klein()
    app.url_map.converters["everything"] = _Everything
    app.url_map.merge_slashes = False

    def __init__(self, registry: Registry, hub: Hub, clock: IReactorTime, metrics: Metrics | None = None) -> None:
        self.registry = registry
        self.hub = hub
        self.clock = clock
        self.metrics = metrics or Metrics(registry, hub)
        self.started = clock.seconds()
        self.templates = Environment(
            loader=FileSystemLoader(template_dir()),
            autoescape=select_autoescape(default=True, default_for_string=True),
        )
        # The send page's QR code generator (qrcode-generator, MIT), inlined.
        self.qrcode = pages.inline_script(os.path.join(template_dir(), "qrcode.js"))
        package = os.path.dirname(os.path.abspath(__file__))
        self.built = rfc3339(os.path.getmtime(os.path.join(package, "__init__.py")))

    def resource(self) -> IResource:
        resource: IResource = self.app.resource()
        return resource

    @app.route("/<everything:rest>", strict_slashes=False, merge_slashes=False)
    def dispatch(self, request: Request, rest: str) -> Any:
        try:
            target = parse_target(request.uri)
            # Methods are case-sensitive (RFC 9110 section 9.1): "get" is an
            # unknown method, 405 with Allow like any other, never a receiver.
            method = request.method
            if target.page is not None:
                return self.page(request, target, method)
            return self.pipe(request, target, method)
        except HTTPError as error:
            return self.error(request, error)

    # -- answers ---------------------------------------------------------------------

    def error(self, request: Request, error: HTTPError) -> bytes:
        return refuse(request, error, self.registry.rejections)

    def _json(self, request: Request, data: dict[str, Any]) -> bytes:
        request.setHeader(b"Content-Type", b"application/json")
        request.setHeader(b"Cache-Control", b"no-store")
        request.setHeader(b"Access-Control-Allow-Origin", b"*")
        return json_body(data)

    def _html(
        self, request: Request, template: str, csp: Callable[[str], str] | None = None, /, **context: Any
    ) -> bytes:
        nonce = secrets.token_urlsafe(16)
        request.setHeader(b"Content-Type", b"text/html; charset=utf-8")
        if csp is not None:  # the browser pages (pages.py): KIT 2's policies, never stored
            request.setHeader(b"Content-Security-Policy", csp(nonce).encode())
            request.setHeader(b"Cache-Control", b"no-store")
        else:
            request.setHeader(
                b"Content-Security-Policy",
                (
                    f"default-src 'none'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; "
                    "connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; "
                    "frame-ancestors 'none'"
                ).encode(),
            )
        request.setHeader(b"X-Content-Type-Options", b"nosniff")
        request.setHeader(b"Referrer-Policy", b"no-referrer")
        return self.templates.get_template(template).render(nonce=nonce, version=__version__, **context).encode()

    # -- pages -------------------------------------------------------------------------

    def page(self, request: Request, target: Target, method: bytes) -> Any:
        page = target.page
        allowed = b"GET, HEAD, OPTIONS" if page in READ_ONLY_PAGES else b"GET, HEAD"
        if method not in allowed.split(b", "):
            raise HTTPError(405, f"Method {method.decode('latin-1')} is not allowed.", {b"Allow": allowed})
        if method == b"OPTIONS":
            request.setHeader(b"Allow", allowed)
            request.setHeader(b"Access-Control-Allow-Origin", b"*")
            request.setHeader(b"Access-Control-Allow-Methods", allowed)
            return b""
        if page == "start":
            context = pages.send_context(base_url(request), target.query)
            return self._html(request, "page_send.html", pages.csp, qrcode=self.qrcode, **context)
        if page == "noscript":
            context = pages.noscript_context(base_url(request), target.query)
            return self._html(request, "page_noscript.html", pages.noscript_csp, **context)
        if page == "help":
            request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
            return self._help(base_url(request))
        if page == "health":
            return self._json(request, self._health(request))
        if page == "metrics":
            request.setHeader(b"Content-Type", self.metrics.content_type)
            return self.metrics.render()
        if page == "robots.txt":
            request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
            return b"User-agent: *\nDisallow: /\n"
        # favicon.ico: nothing to show, and no 404 noise in browsers' consoles.
        request.setResponseCode(204)
        request.setHeader(b"Cache-Control", b"max-age=86400")
        return b""

    def _health(self, request: Request) -> dict[str, Any]:
        agent = request.getHeader(b"User-Agent")
        if self.registry.shutting_down:
            # Draining (SIGTERM): a proxy's health check takes this node out
            # of the pool while its transfers finish.
            request.setResponseCode(503)
        return {
            "status": "draining" if self.registry.shutting_down else "ok",
            "store": self.hub.store.mode,
            "service": "hoodypipe",
            "version": __version__,
            "built": self.built,
            "started": rfc3339(self.started),
            "memory": {"rss": _rss(), "heap": None},
            "fds": _fds(),
            "pid": os.getpid(),
            "ip": getattr(request.getClientAddress(), "host", None),
            "userAgent": agent.decode("latin-1") if agent else None,
        }

    def _help(self, base: str) -> bytes:
        url = f"{base}{PREFIX.decode()}"
        page = self.templates.get_template("help.txt")
        return page.render(url=url, base=base, version=__version__, **help_context(base)).encode()  # commands quoted

    # -- a pipe name -------------------------------------------------------------------

    def pipe(self, request: Request, target: Target, method: bytes, recalled: bool = False) -> Any:
        query = target.query
        name = target.name
        assert name is not None
        asks_state = method in (b"GET", b"HEAD") and (query.flag("status") or query.flag("progress"))
        transfer_id = query.get("transfer") if query.flag("status") else None
        if not recalled and asks_state and self.hub.needs_recall(name, transfer_id):
            # How it ended may be kept only in the shared store: ask it first.
            recalled_now = self.hub.recall(name, transfer_id)
            return recalled_now.addCallback(lambda _: self._recalled(request, target, method))
        if method == b"OPTIONS":
            request.setHeader(b"Access-Control-Allow-Origin", b"*")
            request.setHeader(b"Access-Control-Allow-Methods", PIPE_METHODS)
            request.setHeader(b"Access-Control-Allow-Headers", CORS_HEADERS)
            request.setHeader(b"Access-Control-Max-Age", b"86400")
            if (request.getHeader(b"Access-Control-Request-Private-Network") or b"").lower() == b"true":
                request.setHeader(b"Access-Control-Allow-Private-Network", b"true")
            request.setHeader(b"Content-Length", b"0")
            return b""
        status = query.flag("status")
        if method == b"HEAD" and status:
            return self._json(request, self._status(name, target))
        if method != b"GET":
            raise HTTPError(405, f"Method {method.decode('latin-1')} is not allowed.", {b"Allow": PIPE_METHODS})
        if query.flag("progress"):
            return self.progress(request, name, query.get("format"), query.flag("follow"))
        if status:
            return self._json(request, self._status(name, target))
        if pages.wants_receive_page(query, request.getHeader(b"Accept")):
            context = pages.receive_context(base_url(request), name, _display(name), query)
            return self._html(request, "page_receive.html", lambda n: pages.csp(n, "frame-src 'self'"), **context)
        return self.receive(request, name, target)

    def _status(self, name: str, target: Target) -> dict[str, Any]:
        """``?status``, or with ``&transfer=<id>`` that transfer's, live, retained or receipted."""
        transfer_id = target.query.get("transfer")
        if transfer_id is None:
            return self.hub.snapshot(name)
        found = self.hub.transfer(name, transfer_id)
        if found is None:
            raise HTTPError(404, "Unknown transfer.")
        return found

    def _recalled(self, request: Request, target: Target, method: bytes) -> Any:
        try:
            return self.pipe(request, target, method, recalled=True)
        except HTTPError as error:
            return self.error(request, error)

    def receive(self, request: Request, name: str, target: Target) -> Any:
        query = target.query
        if (request.getHeader(b"Service-Worker") or b"").lower() == b"script":
            raise HTTPError(400, "A pipe cannot be registered as a service worker.")
        limits = self.registry.limits
        party = PartyQuery.parse(query, limits.max_receivers, limits.wait_timeout)
        receiver = Download(
            request, party, self.registry.rejections, last_segment=_last_segment(name), client=client_of(request)
        )
        receiver.pipe = self.registry.add_receiver(name, receiver)
        return receiver.done

    def progress(self, request: Request, name: str, fmt: str | None, follow: bool = False) -> Any:
        if fmt is not None and fmt not in FORMATS.values():
            raise HTTPError(400, "Invalid format: use html, sse, json or text.")
        kind = fmt or choose_format(request.getHeader(b"Accept"))
        request.setHeader(b"Access-Control-Allow-Origin", b"*")
        request.setHeader(b"Vary", b"Accept")
        if kind == "json":
            return self._json(request, self.hub.snapshot(name))
        if kind == "html":
            return self._html(
                request,
                "dashboard.html",
                name=_display(name),
                **dashboard_context(base_url(request), name),  # from the name, never the raw path
                snapshot=self.hub.snapshot(name),
                interval_ms=int(self.hub.limits.interval * 1000),
            )
        request.setHeader(b"Cache-Control", b"no-cache")
        request.setHeader(b"X-Accel-Buffering", b"no")
        request.setHeader(b"X-Content-Type-Options", b"nosniff")
        last_event_id = parse_last_event_id(request.getHeader(b"Last-Event-ID")) if kind == "sse" else None
        if kind == "sse" and not follow and self.hub.seen_end(name, last_event_id):
            # It has seen how the transfer ended: EventSource stops on 204.
            request.setResponseCode(204)
            return b""
        if kind == "sse":
            request.setHeader(b"Content-Type", b"text/event-stream; charset=utf-8")
        else:
            request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
        spectator = self.hub.watch(name, request, kind, follow, last_event_id, client_of(request))
        return spectator.done


def _display(name: str) -> str:
    return unquote(name, errors="replace")


def _last_segment(name: str) -> str:
    return unquote(name.rstrip("/").rsplit("/", 1)[-1], errors="replace")


__all__ = ["PipeWeb", "base_url", "choose_format", "json"]
