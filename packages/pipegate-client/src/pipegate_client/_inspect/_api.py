"""The inspector's routes: the page, its JSON API, live events, and who may call them.

Routes (every answer is JSON except the page and its two files; errors are
``{"error": "...", "status": N}`` with a 4xx or 5xx status, never a traceback):

==========================================  ============================================
``GET /``, ``/app.js``, ``/app.css``         the page (no build step; shipped in the wheel)
``GET /api/requests``                        the tunnels, the capture caps and a summary
                                             of every exchange kept (with its tunnel),
                                             newest first
``GET /api/requests/<id>``                   one exchange: heads in wire order, bodies
                                             (base64, first bytes only), timings,
                                             WebSocket messages and closes
``POST /api/requests/<id>/replay``           send it to the local app again, optionally
                                             edited (JSON body: ``method``, ``path``,
                                             ``headers``, ``body`` or ``body_base64``),
                                             to the local app of its own tunnel only;
                                             answers the new exchange
``GET /api/events``                          Server-Sent Events: ``changed`` with the
                                             recorder's version whenever something did
==========================================  ============================================

Who may call (DNS rebinding and cross-site requests from pages the user visits):

* the ``Host`` header must name the inspector's own address and port (for a loopback
  address: ``127.0.0.1``, ``localhost`` or ``[::1]``; for a wildcard address: an IP
  literal or ``localhost``, never another name, which is what a rebinding attack
  sends); otherwise 403;
* an ``Origin`` header, when present, must be ``http://`` and one of those hosts
  (``null`` is refused); otherwise 403;
* under ``/api/``, ``Sec-Fetch-Site`` other than ``same-origin`` or ``none`` is 403;
* a replay body, when present, must be ``application/json`` (415), which no HTML form
  can send.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import ipaddress
import json
import logging
import re
from collections.abc import AsyncIterator, Mapping
from importlib import resources
from typing import TYPE_CHECKING, Any

from ._http import HttpRequest, HttpResponse, json_error, json_response
from ._recorder import Capture, Exchange, Recorder
from ._replay import ReplayError, ReplayRequest, replay

if TYPE_CHECKING:
    from ._inspector import InspectedTunnel

__all__ = ["Api", "HostGuard"]

logger = logging.getLogger("pipegate_client")

#: Viewers of ``/api/events`` at once; more get 503.
MAX_EVENT_STREAMS = 16
#: Seconds between keep-alive comments on an idle event stream.
KEEPALIVE_SECONDS = 15.0
#: Seconds an event stream waits after a change before telling, to batch changes.
COALESCE_SECONDS = 0.2

_REQUEST_PATH = re.compile(r"/api/requests/([0-9]{1,18})(/replay)?\Z")
_STATIC = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/app.css": ("app.css", "text/css; charset=utf-8"),
}
#: The page loads only its own files; images of bodies come as data: URLs.
_PAGE_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


class HostGuard:
    """Decides whether a request comes from the inspector's own page (see above)."""

    def __init__(self, host: str, port: int) -> None:
        self.port = port
        self._wildcard = host in ("", "0.0.0.0", "::")
        literal = _ip(host)
        names = {_bracketed(host.lower())}
        if host.lower() == "localhost" or (literal is not None and literal.is_loopback):
            names |= {"127.0.0.1", "localhost", "[::1]"}
        self._names = frozenset(names)

    def allowed_host(self, value: str) -> bool:
        name, sep, port = value.strip().lower().rpartition(":")
        if not sep or port != str(self.port) or not name:
            return False
        if name in self._names:
            return True
        return self._wildcard and (name == "localhost" or _ip(name.strip("[]")) is not None)

    def refusal(self, request: HttpRequest) -> str | None:
        """Why ``request`` is refused, or ``None`` when it may be served."""
        host = request.header("host")
        if host is None or not self.allowed_host(host):
            return "the Host header does not name this inspector"
        origin = request.header("origin")
        if origin is not None:
            scheme, _, authority = origin.partition("://")
            if scheme != "http" or "/" in authority or not self.allowed_host(authority):
                return "requests from other origins are refused"
        if request.target.startswith("/api/"):
            site = request.header("sec-fetch-site")
            if site is not None and site not in ("same-origin", "none"):
                return "cross-site requests are refused"
        return None


def _ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def _bracketed(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


class Api:
    """Answers the inspector's requests; ``tunnels`` (the inspector's live mapping, by
    connection id) says what the page shows of each tunnel (no secrets) and where a
    replay of an exchange goes: the local app of that exchange's tunnel, nowhere else."""

    def __init__(
        self,
        recorder: Recorder,
        guard: HostGuard,
        *,
        tunnels: Mapping[str, InspectedTunnel],
    ) -> None:
        self.recorder = recorder
        self.guard = guard
        self._tunnels = tunnels
        self._event_streams = 0

    async def __call__(self, request: HttpRequest) -> HttpResponse:
        refusal = self.guard.refusal(request)
        if refusal is not None:
            response = json_error(403, refusal)
            response.close = True  # nothing more from whoever sent that
            return response
        path = request.target.split("?", 1)[0]
        if path in _STATIC:
            if request.method not in ("GET", "HEAD"):
                return _not_allowed("GET")
            return _static(*_STATIC[path])
        if path == "/api/requests":
            if request.method != "GET":
                return _not_allowed("GET")
            return json_response(200, self.listing())
        if path == "/api/events":
            if request.method != "GET":
                return _not_allowed("GET")
            return self._events()
        match = _REQUEST_PATH.match(path)
        if match is None:
            return json_error(404, f"no such route: {path[:100]}")
        exchange = self.recorder.get(int(match.group(1)))
        if match.group(2) is None:
            if request.method != "GET":
                return _not_allowed("GET")
            if exchange is None:
                return json_error(404, f"no request {match.group(1)} (evicted or never seen)")
            return json_response(200, detail(exchange))
        if request.method != "POST":
            return _not_allowed("POST")
        if exchange is None:
            return json_error(404, f"no request {match.group(1)} (evicted or never seen)")
        return await self._replay(exchange, request)

    # ------------------------------------------------------------ views

    def listing(self) -> dict[str, object]:
        """The envelope of the list: ``tunnels`` (every tunnel recorded, in the order
        they were added) and, for the single-tunnel case, ``tunnel`` (the only one,
        ``null`` when there are several or none)."""
        recorder = self.recorder
        tunnels = list(self._tunnels.values())
        only = tunnels[0] if len(tunnels) == 1 else None
        return {
            "version": recorder.version,
            "tunnel": None
            if only is None
            else {
                "connection_id": only.connection_id,
                "public_url": only.public_url,
                "local_url": only.local_url,
            },
            "tunnels": [tunnel.view() for tunnel in tunnels],
            "capture": {
                "max_requests": recorder.max_exchanges,
                "body_cap": recorder.body_cap,
                "total_cap": recorder.total_cap,
                "captured": recorder.captured,
            },
            "requests": [summary(exchange) for exchange in reversed(list(recorder))],
        }

    # ------------------------------------------------------------ replay

    async def _replay(self, exchange: Exchange, request: HttpRequest) -> HttpResponse:
        try:
            edits = _edits(request)
            wanted = ReplayRequest.of(exchange) if not edits else None
            if wanted is None:
                base = _base_for_edit(exchange, edits)
                wanted = base.edited(**edits)
            tunnel = self._tunnels.get(exchange.tunnel)
            if tunnel is None:
                raise ReplayError(
                    409, f"the tunnel {exchange.tunnel!r} of this request is not running"
                )
            result = await replay(
                tunnel.local, self.recorder, wanted, replay_of=exchange.id, tunnel=exchange.tunnel
            )
        except ReplayError as exc:
            logger.info(
                "[%s] inspector: replay of #%d refused (%d): %s",
                exchange.tunnel,
                exchange.id,
                exc.status,
                exc.message,
            )
            return json_error(exc.status, exc.message)
        # The path only, as the request log writes it: a query may carry secrets.
        logger.info(
            "[%s] inspector: replay of #%d as #%d: %s %s %s",
            exchange.tunnel,
            exchange.id,
            result.id,
            result.method,
            result.path,
            "-" if result.status is None else result.status,
        )
        return json_response(200, {"original": exchange.id, "replay": detail(result)})

    # ------------------------------------------------------------ live events

    def _events(self) -> HttpResponse:
        if self._event_streams >= MAX_EVENT_STREAMS:
            return json_error(503, "too many event streams open")
        self._event_streams += 1
        return HttpResponse(
            200,
            [("content-type", "text/event-stream")],
            stream=self._event_stream(),
        )

    async def _event_stream(self) -> AsyncIterator[bytes]:
        recorder = self.recorder
        event = recorder.listen()
        try:
            yield b"retry: 2000\n\n" + _changed(recorder.version)
            while True:
                try:
                    await asyncio.wait_for(event.wait(), KEEPALIVE_SECONDS)
                except TimeoutError:
                    yield b": keep-alive\n\n"
                    continue
                await asyncio.sleep(COALESCE_SECONDS)
                event.clear()
                yield _changed(recorder.version)
        finally:
            recorder.unlisten(event)
            self._event_streams -= 1


def _changed(version: int) -> bytes:
    return f'event: changed\ndata: {{"version":{version}}}\n\n'.encode("ascii")


def _not_allowed(allowed: str) -> HttpResponse:
    response = json_error(405, f"method not allowed here; use {allowed}")
    response.headers.append(("allow", allowed))
    return response


def _static(name: str, content_type: str) -> HttpResponse:
    data = resources.files(__package__).joinpath("static", name).read_bytes()
    return HttpResponse(
        200,
        [("content-type", content_type), ("content-security-policy", _PAGE_POLICY)],
        data,
    )


def _edits(request: HttpRequest) -> dict[str, Any]:
    """The edits a replay request asks for (empty: replay as it was); raises
    :class:`ReplayError` (400, 415) for a body that is not the documented JSON."""
    if not request.body.strip():
        return {}
    content_type = (request.header("content-type") or "").split(";", 1)[0].strip().lower()
    if content_type != "application/json":
        raise ReplayError(415, "the replay body must be application/json")
    try:
        value = json.loads(request.body)
    except (ValueError, UnicodeDecodeError):
        raise ReplayError(400, "the replay body is not valid JSON") from None
    if not isinstance(value, dict):
        raise ReplayError(400, "the replay body must be a JSON object")
    edits: dict[str, Any] = {}
    method = value.get("method")
    if method is not None:
        if not isinstance(method, str):
            raise ReplayError(400, "method: must be a string")
        edits["method"] = method
    path = value.get("path")
    if path is not None:
        if not isinstance(path, str):
            raise ReplayError(400, "path: must be a string")
        edits["target"] = path
    headers = value.get("headers")
    if headers is not None:
        edits["headers"] = _headers(headers)
    if "body" in value and "body_base64" in value:
        raise ReplayError(400, "give body or body_base64, not both")
    if "body" in value:
        if not isinstance(value["body"], str):
            raise ReplayError(400, "body: must be a string (UTF-8 text; or use body_base64)")
        edits["body"] = value["body"].encode("utf-8")
    elif "body_base64" in value:
        if not isinstance(value["body_base64"], str):
            raise ReplayError(400, "body_base64: must be a string")
        try:
            edits["body"] = base64.b64decode(value["body_base64"], validate=True)
        except (binascii.Error, ValueError):
            raise ReplayError(400, "body_base64: not valid base64") from None
    return edits


def _headers(value: object) -> list[tuple[str, str]]:
    if not isinstance(value, list) or len(value) > 500:
        raise ReplayError(400, "headers: must be a list of [name, value] pairs (at most 500)")
    pairs: list[tuple[str, str]] = []
    for item in value:
        if (
            not isinstance(item, list)
            or len(item) != 2
            or not all(isinstance(part, str) for part in item)
        ):
            raise ReplayError(400, "headers: every header must be a [name, value] pair of strings")
        name, text = item
        if not re.fullmatch(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,256}", name):
            raise ReplayError(400, f"headers: {name[:40]!r} is not a header name")
        if any(ch in text for ch in "\r\n\0") or not _latin1(text):
            raise ReplayError(
                400, f"headers: the value of {name} has a character HTTP cannot carry"
            )
        pairs.append((name, text))
    return pairs


def _latin1(text: str) -> bool:
    try:
        text.encode("latin-1")
    except UnicodeEncodeError:
        return False
    return True


def _base_for_edit(exchange: Exchange, edits: dict[str, Any]) -> ReplayRequest:
    """The original as the starting point of an edit: its body may be truncated when
    the edit replaces it, and is dropped when the edit does not (then refused)."""
    if exchange.kind != "http":
        raise ReplayError(409, "a WebSocket stream cannot be replayed")
    if "body" in edits:
        return ReplayRequest(
            exchange.method, exchange.path, exchange.query, exchange.request_headers, None
        )
    return ReplayRequest.of(exchange)


# ---------------------------------------------------------------- JSON views


def _ms(later: float | None, earlier: float) -> float | None:
    return None if later is None else round((later - earlier) * 1000, 3)


def summary(exchange: Exchange) -> dict[str, object]:
    """One line of the list."""
    return {
        "id": exchange.id,
        "tunnel": exchange.tunnel,
        "replay_of": exchange.replay_of,
        "kind": exchange.kind,
        "started": exchange.started,
        "method": exchange.method,
        "path": exchange.path,
        "query": exchange.query,
        "status": exchange.status,
        "finished": exchange.finished,
        "duration_ms": _ms(exchange.ended_at, exchange.opened_at),
        "request_bytes": exchange.request_body.size,
        "response_bytes": exchange.response_body.size,
        "messages": len(exchange.messages) + exchange.dropped_messages,
        "outcome": exchange.outcome,
        "version": exchange.version,
    }


def body(capture: Capture) -> dict[str, object]:
    """A body: its size, the bytes kept (base64) and whether that is all of it."""
    return {
        "size": capture.size,
        "captured": len(capture.data),
        "truncated": capture.truncated,
        "base64": base64.b64encode(capture.data).decode("ascii"),
    }


def detail(exchange: Exchange) -> dict[str, object]:
    """Everything kept of one exchange."""
    opened = exchange.opened_at
    websocket: dict[str, object] | None = None
    if exchange.kind == "websocket":
        websocket = {
            "messages": [
                {
                    "direction": "out" if message.sent else "in",
                    "text": message.text,
                    "at_ms": round(message.at * 1000, 3),
                    "complete": message.complete,
                    "body": body(message.body),
                }
                for message in list(exchange.messages)
            ],
            "dropped": exchange.dropped_messages,
            "closes": [
                {"direction": "out" if sent else "in", "code": code, "reason": reason}
                for sent, code, reason in exchange.closes
            ],
        }
    return {
        **summary(exchange),
        "request": {
            "headers": [list(pair) for pair in exchange.request_headers],
            "body": body(exchange.request_body),
        },
        "response": {
            "headers": [list(pair) for pair in exchange.response_headers],
            "body": body(exchange.response_body),
        },
        "timings": {
            "head_in": exchange.started,
            "response_head_ms": _ms(exchange.response_at, opened),
            "first_byte_ms": _ms(exchange.first_byte_at, opened),
            "end_ms": _ms(exchange.ended_at, opened),
        },
        "websocket": websocket,
    }
