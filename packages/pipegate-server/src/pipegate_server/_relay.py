"""Relaying public requests through a tunnel: plain HTTP and WebSocket.

This is raw ASGI on purpose: the relay is the server's hot path, and reading
``raw_path``, ``query_string`` and the header list straight from the scope keeps every
byte the caller sent (percent-encoding, duplicate query keys, duplicate headers)
without a framework re-parsing it.

What a caller gets when something is wrong is a one-line ``text/plain`` answer with
the status of the :class:`~pipegate_server.errors.RelayError`; once a response has
started, a failure can only abort the connection, so that a truncated body is never
mistaken for a complete one.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import os
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from pipegate_protocol import (
    CLIENT_TOKEN_HEADER,
    FORWARDING_HEADERS,
    PROXY_HEADER_PREFIX,
    PROXY_HEADERS,
    Data,
    ResetCode,
    Response,
    StreamKind,
    WebSocketClose,
    WebSocketData,
    close_code_for_hop,
    close_code_for_relay,
    close_code_for_reset,
    forwarding_headers,
    raw_hop_by_hop_names,
    strip_hop_by_hop,
)

from ._asgi import PEER, Receive, Scope, Send
from ._registry import TunnelDirectory
from ._rewrite import rewrite_response_headers
from ._routing import Route
from ._settings import ServerSettings
from ._tunnel import RelayChannel, Tunnel
from .errors import (
    BadRequestError,
    BodyTooLargeError,
    CallerGoneError,
    CallerLimitError,
    CallerStalledError,
    HeadersTooLargeError,
    MisdirectedHandshakeError,
    RelayError,
    ResponseTimeoutError,
    StreamResetError,
    TunnelBusyError,
    TunnelClosedError,
    TunnelNotFoundError,
    TunnelOfflineError,
)

if TYPE_CHECKING:
    from ._metrics import ServerMetrics

__all__ = ["TRUSTED_PROXY", "Relay", "send_plain"]

logger = logging.getLogger("pipegate.server")
_access_logger = logging.getLogger("pipegate.access")

#: Forwarding headers a caller sent that the server replaces (HD-5); X-Forwarded-For
#: is appended to instead.
_FORWARDED = frozenset(name.encode("latin-1") for name in FORWARDING_HEADERS) - {b"x-forwarded-for"}
#: Proxy headers (HD-5) dropped from a caller that is not a trusted proxy, beside every
#: ``x-forwarded-*`` name.
_PROXY = frozenset(name.encode("latin-1") for name in PROXY_HEADERS)
_PROXY_PREFIX = PROXY_HEADER_PREFIX.encode("latin-1")
#: The scope key the server's stack (``_factory.ServerApp``) sets to True for a
#: request whose peer is a trusted proxy; absent or False for everyone else.
TRUSTED_PROXY = "pipegate.trusted_proxy"
#: The tunnel token headers a public WebSocket upgrade must not carry (row 6).
_TOKEN_HEADER = CLIENT_TOKEN_HEADER.encode("latin-1")
#: Per-connection WebSocket handshake headers the client's own handshake replaces.
_WS_HANDSHAKE = frozenset(
    {b"sec-websocket-key", b"sec-websocket-version", b"sec-websocket-extensions"}
)
#: How much of a refused WebSocket upgrade's body is relayed to the caller.
_MAX_REFUSAL_BODY = 64 * 1024
_NO_BODY_STATUSES = frozenset({204, 304})
#: After refusing a body as too large, up to this much more of it is read and dropped
#: (for at most _DRAIN_SECONDS) so that the caller, still sending, can read the 413
#: instead of seeing the connection reset under it.
_DRAIN_BYTES = 4 * 1024 * 1024
_DRAIN_SECONDS = 2.0
#: A request without a body starts watching for its caller leaving only after this.
_WATCH_DELAY = 0.25


async def _drain_body(receive: Receive) -> None:
    """Read and drop what is left of a request body, within a small budget."""
    dropped = 0
    try:
        async with asyncio.timeout(_DRAIN_SECONDS):
            while dropped <= _DRAIN_BYTES:
                message = await receive()
                if message["type"] != "http.request":
                    return
                dropped += len(message.get("body", b""))
                if not message.get("more_body", False):
                    return
    except TimeoutError:
        return


async def send_plain(
    send: Send,
    status: int,
    text: str,
    *,
    headers: Sequence[tuple[bytes, bytes]] = (),
    websocket: bool = False,
) -> None:
    """Answer with a one-line ``text/plain`` body (as a WebSocket denial if asked)."""
    body = (text + "\n").encode("utf-8")
    head = [
        (b"content-type", b"text/plain; charset=utf-8"),
        (b"content-length", str(len(body)).encode("ascii")),
        (b"date", email.utils.formatdate(usegmt=True).encode("ascii")),
        *headers,
    ]
    prefix = "websocket.http.response" if websocket else "http.response"
    await send({"type": f"{prefix}.start", "status": status, "headers": head})
    await send({"type": f"{prefix}.body", "body": body, "more_body": False})


async def deny_websocket(
    scope: Scope,
    send: Send,
    status: int,
    text: str,
    headers: Sequence[tuple[bytes, bytes]] = (),
) -> None:
    """Refuse a WebSocket upgrade with a real HTTP response when the server can."""
    extensions = scope.get("extensions") or {}
    if "websocket.http.response" in extensions:
        await send_plain(send, status, text, headers=headers, websocket=True)
    else:  # pragma: no cover - uvicorn supports the extension
        await send({"type": "websocket.close", "code": 1008, "reason": text[:120]})


def offline_headers() -> list[tuple[bytes, bytes]]:
    """The headers of a 503 for an offline tunnel (RT-6)."""
    return [(b"retry-after", str(TunnelOfflineError.retry_after).encode("ascii"))]


def _error_headers(error: RelayError) -> list[tuple[bytes, bytes]]:
    if isinstance(error, TunnelBusyError | CallerLimitError | TunnelOfflineError):
        return [(b"retry-after", str(error.retry_after).encode("ascii"))]
    return []


def _transfer_codings(value: bytes) -> list[bytes]:
    return [coding.strip().lower() for coding in value.split(b",")]


def _misdirected_handshake(scope: Scope) -> str | None:
    """Why a public WebSocket upgrade looks like a tunnel client's handshake, if it does:
    it offers a ``pipegate.*`` subprotocol or carries a tunnel token header."""
    for offered in scope.get("subprotocols") or ():
        if str(offered).strip().lower().startswith("pipegate."):
            return "a PipeGate subprotocol"
    for name, value in scope["headers"]:
        if name == _TOKEN_HEADER:
            return "a PipeGate token header"
        if name == b"authorization" and value.strip()[:7].lower() == b"bearer ":
            return "an Authorization: Bearer token"
    return None


class _RequestIds:
    """16 hex digits per call, cut from 4 KiB of the OS's random source at a time.

    One ``os.urandom(8).hex()`` per request was a system call each: 0.49 us against
    0.20 us from the buffer (timeit, best of 5 x 200k, CPython 3.11; the profile of
    issue 17's session found it among the server's per-request additions). Used on
    the event loop's thread only.
    """

    __slots__ = ("_at", "_hex")

    def __init__(self) -> None:
        self._hex = ""
        self._at = 0

    def __call__(self) -> str:
        at = self._at
        if at >= len(self._hex):
            self._hex = os.urandom(4096).hex()
            at = 0
        self._at = at + 16
        return self._hex[at : at + 16]


_new_request_id = _RequestIds()


def _log_refused(scope: Scope, connection_id: str, status: int) -> None:
    """The access line of a request the server answered without a stream."""
    if not _access_logger.isEnabledFor(logging.INFO):
        return
    client = scope.get("client")
    visitor = str(client[0]) if client else ""
    method = scope.get("method", "GET")
    path = scope.get("path", "")
    _access_logger.info(
        "%s %s %s %d in=0 out=0 visitor=%s",
        connection_id or "-",
        method,
        path,
        status,
        visitor or "-",
        extra={
            "tunnel": connection_id,
            "method": method,
            "path": path,
            "status": status,
            "bytes_in": 0,
            "bytes_out": 0,
            "duration_ms": 0.0,
            "visitor": visitor,
            "request_id": "",
        },
    )


class Relay:
    """Relays public HTTP requests and WebSocket sessions to the tunnel for their id."""

    def __init__(self, settings: ServerSettings, registry: TunnelDirectory) -> None:
        self.settings = settings
        self.registry = registry
        #: Counts requests the server answers without a stream (set by the gateway).
        self.metrics: ServerMetrics | None = None
        self.draining = False
        #: Streams open per tunnel id and caller address (--max-streams-per-caller).
        self._callers: dict[str, dict[str, int]] = {}
        #: Each response-streaming task: since when its current write to the caller
        #: has been waiting (0.0: not writing). Swept by one watchdog task.
        self._writing: dict[asyncio.Task[Any], float] = {}
        #: Tasks the watchdog cancelled because their caller read nothing in time.
        self._stalled: set[asyncio.Task[Any]] = set()
        self._watchdog: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ shared

    def _tunnel_for(self, connection_id: str) -> Tunnel:
        if self.draining:
            raise TunnelBusyError("the server is shutting down")
        tunnel = self.registry.get(connection_id)
        if tunnel is None:
            if self.registry.offline(connection_id=connection_id) >= 0:
                raise TunnelOfflineError(f"tunnel {connection_id} is offline")
            raise TunnelNotFoundError(f"no tunnel is connected for id {connection_id!r}")
        return tunnel

    def _hold_caller(self, connection_id: str, scope: Scope) -> str | None:
        """Count one more stream of this caller on this tunnel; returns the key to
        release, or raises :class:`CallerLimitError` at --max-streams-per-caller.

        The caller is the socket peer, or the caller a trusted proxy reported.
        """
        cap = self.settings.max_streams_per_caller
        client = scope.get("client")
        if not cap or not client:
            return None
        address = str(client[0])
        counts = self._callers.get(connection_id)
        if counts is None:
            if len(self._callers) > 2 * len(self.registry) + 64:
                self._prune_callers()
            counts = self._callers[connection_id] = {}
        held = counts.get(address, 0)
        if held >= cap:
            raise CallerLimitError(
                f"too many concurrent requests from this address to id {connection_id!r} "
                f"(limit {cap})"
            )
        counts[address] = held + 1
        return address

    def close(self) -> None:
        """The server stops: end the send-deadline watchdog."""
        if self._watchdog is not None:
            self._watchdog.cancel()

    def _prune_callers(self) -> None:
        """Forget the empty counters of tunnels that are gone."""
        for connection_id, counts in list(self._callers.items()):
            if not counts and self.registry.get(connection_id) is None:
                del self._callers[connection_id]

    def _release_caller(self, connection_id: str, address: str | None) -> None:
        if address is None:
            return
        counts = self._callers.get(connection_id)
        if counts is None:
            return
        held = counts.get(address, 0) - 1
        if held > 0:
            counts[address] = held
            return
        counts.pop(address, None)
        # An idle tunnel keeps its (empty) dict, so that sequential requests allocate
        # none; it goes with the tunnel.
        if not counts and self.registry.get(connection_id) is None:
            del self._callers[connection_id]

    def _watch_writes(self, task: asyncio.Task[Any]) -> dict[asyncio.Task[Any], float]:
        """Put a responding task under the send deadline; returns the table to mark
        its writes in."""
        self._writing[task] = 0.0
        if self._watchdog is None:
            loop = asyncio.get_running_loop()
            self._watchdog = loop.create_task(self._sweep_writes())
        return self._writing

    async def _sweep_writes(self) -> None:
        """Cancel every stream whose write to its caller has waited longer than
        --stream-idle-timeout (the caller is not reading); exits when none is left."""
        timeout = self.settings.stream_idle_timeout
        period = min(max(timeout / 4, 0.05), 5.0)
        loop = asyncio.get_running_loop()
        try:
            while self._writing:
                await asyncio.sleep(period)
                limit = loop.time() - timeout
                for task, since in list(self._writing.items()):
                    if since and since < limit and task not in self._stalled:
                        self._stalled.add(task)
                        task.cancel()
        finally:
            self._watchdog = None

    def _request_headers(
        self, scope: Scope, public_prefix: str, *, websocket: bool
    ) -> tuple[list[tuple[str, str]], int | None, bool, str]:
        """The headers to relay, the Content-Length, whether the body is chunked, and
        the request id (the caller's ``X-Request-Id``, else a new one, added, HD-5).

        Drops hop-by-hop headers (and those ``Connection`` names), replaces any
        X-Forwarded-Proto/Host/Prefix the caller sent, and appends the caller's address
        to X-Forwarded-For (HD-5). From a caller that is not a trusted proxy every
        proxy header is dropped, X-Forwarded-For included. Order and duplicates of
        everything else are kept. Conflicting or unknown framing (Content-Length with
        Transfer-Encoding, two different lengths, a transfer coding other than
        ``chunked``) raises :class:`BadRequestError` before any stream opens.
        """
        raw: list[tuple[bytes, bytes]] = scope["headers"]
        trusted = scope.get(TRUSTED_PROXY, False)
        limit = self.settings.max_header_size
        if limit and sum(len(name) + len(value) + 4 for name, value in raw) > limit:
            raise HeadersTooLargeError(f"the request headers exceed {limit} bytes")
        drop = raw_hop_by_hop_names(raw)
        headers: list[tuple[str, str]] = []
        content_length: int | None = None
        chunked = False
        host = ""
        request_id = ""
        forwarded_for: list[str] = []
        for name, value in raw:
            if name in drop:
                if name == b"transfer-encoding":
                    if chunked or _transfer_codings(value) != [b"chunked"]:
                        raise BadRequestError("unsupported Transfer-Encoding: only chunked")
                    chunked = True
                continue
            if name == b"content-length":
                try:
                    length = int(value)
                except ValueError:
                    raise BadRequestError("invalid Content-Length") from None
                if length < 0 or (content_length is not None and length != content_length):
                    raise BadRequestError("invalid Content-Length")
                content_length = length
            elif name == b"host":
                host = value.decode("latin-1")
            elif name == b"x-request-id":
                request_id = value.decode("latin-1")
            elif name == b"x-forwarded-for":
                if trusted:
                    forwarded_for.append(value.decode("latin-1"))
                continue
            elif (
                name in _FORWARDED
                or (websocket and name in _WS_HANDSHAKE)
                or (not trusted and (name in _PROXY or name.startswith(_PROXY_PREFIX)))
            ):
                continue
            headers.append((name.decode("latin-1"), value.decode("latin-1")))
        if chunked and content_length is not None:
            raise BadRequestError("both Content-Length and Transfer-Encoding: chunked")
        # The address this request came from: a trusted proxy's, not the caller's
        # it reported (see _internals.PeerKeepingProxyHeaders).
        peer = scope.get(PEER, scope.get("client"))
        headers += forwarding_headers(
            scheme=_http_scheme(scope),
            host=host,
            prefix=public_prefix,
            peer=str(peer[0]) if peer else None,
            forwarded_for=forwarded_for,
        )
        if not request_id:
            # HD-5: an id joins the local app's log line and the server's; a caller's
            # own id is relayed unchanged above.
            request_id = _new_request_id()
            headers.append(("x-request-id", request_id))
        return headers, content_length, chunked, request_id

    async def _await_head(
        self,
        tunnel: Tunnel,
        channel: RelayChannel,
        on_slow: Callable[[], None] | None = None,
    ) -> Response:
        """The final response head; 504 after the timeout without upload progress.

        ``on_slow`` is called once if the head takes longer than a few milliseconds.
        """
        timeout = self.settings.response_timeout
        loop = asyncio.get_running_loop()
        while True:
            remaining = channel.progress_at + timeout - loop.time()
            try:
                if remaining <= 0:
                    raise TimeoutError
                if on_slow is not None:
                    remaining = min(remaining, _WATCH_DELAY)
                item = await channel.next(remaining)
            except TimeoutError:
                if on_slow is not None:
                    on_slow()
                    on_slow = None
                    continue
                if channel.progress_at + timeout > loop.time():
                    continue
                channel.reset(ResetCode.TIMEOUT, f"no response head within {timeout:g} s")
                raise ResponseTimeoutError(
                    f"the local app behind id {tunnel.connection_id!r} did not answer "
                    f"within {timeout:g} s"
                ) from None
            if isinstance(item, Response) and (item.status >= 200 or item.status == 101):
                return item

    # ------------------------------------------------------------------ HTTP

    async def http(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        route: Route,
    ) -> None:
        """Relay one public HTTP request to ``route.local_path`` of its tunnel."""
        connection_id, path = route.connection_id, route.local_path
        try:
            tunnel = self._tunnel_for(connection_id)
            headers, content_length, chunked, request_id = self._request_headers(
                scope, route.public_prefix, websocket=False
            )
            limit = self.settings.max_body_size
            if limit and content_length is not None and content_length > limit:
                if content_length - limit <= _DRAIN_BYTES and not _expects_continue(scope):
                    await _drain_body(receive)
                raise BodyTooLargeError(f"the request body exceeds the limit of {limit} bytes")
            has_body = chunked or bool(content_length)
            client = scope.get("client")
            caller = self._hold_caller(connection_id, scope)
            try:
                channel = await tunnel.open_stream(
                    method=scope["method"],
                    path=path,
                    query=scope.get("query_string", b"").decode("latin-1"),
                    headers=headers,
                    scheme=_http_scheme(scope),
                    client_host=str(client[0]) if client else None,
                    client_port=int(client[1]) if client else None,
                    end_stream=not has_body,
                )
            except BaseException:
                self._release_caller(connection_id, caller)
                raise
            channel.visitor = str(client[0]) if client else ""
            channel.request_id = request_id
        except RelayError as exc:
            self._record_outcome(scope, connection_id, exc)
            await send_plain(
                send,
                exc.status,
                str(exc),
                headers=[*_error_headers(exc), (b"connection", b"close")]
                if isinstance(exc, BodyTooLargeError | BadRequestError)
                else _error_headers(exc),
            )
            return
        # The pump forwards the body and then notices the caller disconnecting. A
        # request without a body gets it only once the exchange is not over at once
        # (slow head, streamed response): most small requests never need a task.
        loop = asyncio.get_running_loop()
        pump: list[asyncio.Task[None]] = []

        def start_pump() -> None:
            if not pump:
                pump.append(loop.create_task(self._pump_request(tunnel, channel, receive)))

        if has_body:
            start_pump()
        else:
            channel.request_done = True
        try:
            await self._respond(scope, send, route, tunnel, channel, start_pump)
        finally:
            if pump:
                pump[0].cancel()
            tunnel.finish(channel)
            self._release_caller(connection_id, caller)

    async def _respond(
        self,
        scope: Scope,
        send: Send,
        route: Route,
        tunnel: Tunnel,
        channel: RelayChannel,
        start_pump: Callable[[], None],
    ) -> None:
        try:
            head = await self._await_head(tunnel, channel, start_pump)
        except RelayError as exc:
            self._record_outcome(scope, tunnel.connection_id, exc, channel=channel)
            if isinstance(exc, CallerGoneError):
                return
            extra = _error_headers(exc)
            if not channel.request_done:
                extra.append((b"connection", b"close"))
            await send_plain(send, exc.status, str(exc), headers=extra)
            return
        status = head.status
        # The local app's view of paths and cookies, confined to the tunnel's (_rewrite).
        headers = rewrite_response_headers(
            strip_hop_by_hop(head.headers), route.public_prefix, route.local_path
        )
        out_headers = [
            (name.encode("latin-1"), value.encode("latin-1"))
            for name, value in headers
            if not (status in _NO_BODY_STATUSES and name.lower() == "content-length")
        ]
        if head.end_stream:
            channel.response_done = True
        # Every write to the caller, from the head on, is under the send deadline
        # (--stream-idle-timeout), swept by _sweep_writes: a caller that reads nothing
        # (even of an earlier response on its connection) cannot hold the slot.
        task = asyncio.current_task()
        assert task is not None
        writing = self._watch_writes(task)
        try:
            writing[task] = asyncio.get_running_loop().time()
            await send({"type": "http.response.start", "status": status, "headers": out_headers})
            if head.end_stream:
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                return
            writing[task] = 0.0
            await self._stream_body(scope, send, tunnel, channel, start_pump, task)
        except RuntimeError as exc:
            # uvicorn refuses a body that contradicts the Content-Length the local app
            # sent; the caller's connection is closed, which is the honest outcome.
            channel.reset(ResetCode.INTERNAL_ERROR, "invalid response from the local app")
            self._record_outcome(
                scope,
                tunnel.connection_id,
                RelayError(f"invalid response: {exc}"),
                aborted=True,
                channel=channel,
            )
        except asyncio.CancelledError:
            if task not in self._stalled:
                raise
            task.uncancel()
            text = f"the caller read nothing for {self.settings.stream_idle_timeout:g} s"
            channel.reset(ResetCode.CANCELLED, text)
            self._record_outcome(
                scope, tunnel.connection_id, CallerStalledError(text), aborted=True, channel=channel
            )
        finally:
            writing.pop(task, None)
            self._stalled.discard(task)

    async def _stream_body(
        self,
        scope: Scope,
        send: Send,
        tunnel: Tunnel,
        channel: RelayChannel,
        start_pump: Callable[[], None],
        task: asyncio.Task[Any],
    ) -> None:
        """Relay the response body; ``task`` is under the send deadline (see
        :meth:`_respond`): its entry in ``_writing`` says since when a write waits."""
        writing = self._writing
        loop = asyncio.get_running_loop()
        while True:
            if not channel.pending:
                start_pump()
            try:
                item = await channel.next()
            except RelayError as exc:
                self._record_outcome(scope, tunnel.connection_id, exc, aborted=True)
                return  # uvicorn closes the connection: the caller sees a truncated body
            if isinstance(item, Data):
                writing[task] = loop.time()
                if item.end_stream:
                    channel.response_done = True
                    await send(
                        {"type": "http.response.body", "body": item.data, "more_body": False}
                    )
                    return
                await send({"type": "http.response.body", "body": item.data, "more_body": True})
                writing[task] = 0.0
                channel.acknowledge(len(item.data))

    async def _pump_request(self, tunnel: Tunnel, channel: RelayChannel, receive: Receive) -> None:
        """Forward the request body, then watch for the caller disconnecting."""
        limit = self.settings.max_body_size
        received = 0
        loop = asyncio.get_running_loop()
        try:
            while True:
                message = await receive()
                if message["type"] != "http.request":
                    break
                if channel.request_done:
                    continue
                body: bytes = message.get("body", b"")
                more: bool = message.get("more_body", False)
                received += len(body)
                if limit and received > limit:
                    text = f"the request body exceeds the limit of {limit} bytes"
                    channel.reset(ResetCode.TOO_LARGE, text)
                    if more:
                        await _drain_body(receive)
                    channel.fail(BodyTooLargeError(text))
                    return
                await channel.send_data(body, end_stream=not more)
                channel.progress_at = loop.time()
                if not more:
                    channel.request_done = True
            if not channel.response_done:
                channel.reset(ResetCode.CALLER_GONE, "the caller disconnected")
                channel.fail(CallerGoneError("the caller disconnected"))
        except RelayError:
            return  # the stream already failed; the responding side reports it

    def _record_outcome(
        self,
        scope: Scope,
        connection_id: str,
        error: RelayError,
        *,
        aborted: bool = False,
        channel: RelayChannel | None = None,
    ) -> None:
        """The one place a relayed request's failure is written down: the ``request
        failed`` log line, and the status the caller got on ``channel`` (for the
        metrics and the access log, which see the stream end). Without a stream the
        server answered alone: it is counted and access-logged here.

        ``aborted`` means the response had started, so the caller saw its connection
        cut rather than ``error.status``. A caller that went away
        (:class:`CallerGoneError`) got no answer and is not logged.
        """
        if isinstance(error, CallerGoneError):
            return
        if channel is not None:
            if not aborted:
                channel.answered = error.status
        else:
            if self.metrics is not None:
                self.metrics.request_refused(error.status)
            _log_refused(scope, connection_id, error.status)
        outcome = "aborted" if aborted else str(error.status)
        logger.info(
            "request failed: id=%s %s %s -> %s: %s",
            connection_id,
            scope.get("method", "WEBSOCKET"),
            scope.get("path", ""),
            outcome,
            error,
        )

    # ------------------------------------------------------------------ WebSocket

    async def websocket(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        route: Route,
    ) -> None:
        """Relay one public WebSocket session through the tunnel (rules WS-*)."""
        event = await receive()
        if event["type"] != "websocket.connect":
            return
        connection_id, path = route.connection_id, route.local_path
        try:
            what = _misdirected_handshake(scope)
            if what is not None:
                raise MisdirectedHandshakeError(
                    f"not relayed: the upgrade carries {what}; a tunnel client connects "
                    f"to /<id>, not /{connection_id}/..."
                )
            tunnel = self._tunnel_for(connection_id)
            headers, _, _, request_id = self._request_headers(
                scope, route.public_prefix, websocket=True
            )
            client = scope.get("client")
            caller = self._hold_caller(connection_id, scope)
            try:
                channel = await tunnel.open_stream(
                    method="GET",
                    path=path,
                    query=scope.get("query_string", b"").decode("latin-1"),
                    headers=headers,
                    kind=StreamKind.WEBSOCKET,
                    scheme=_http_scheme(scope),
                    client_host=str(client[0]) if client else None,
                    client_port=int(client[1]) if client else None,
                    end_stream=True,
                )
            except BaseException:
                self._release_caller(connection_id, caller)
                raise
            channel.visitor = str(client[0]) if client else ""
            channel.request_id = request_id
        except RelayError as exc:
            self._record_outcome(scope, connection_id, exc)
            await deny_websocket(scope, send, exc.status, str(exc), _error_headers(exc))
            return
        try:
            await self._websocket_session(scope, receive, send, route, tunnel, channel)
        finally:
            tunnel.finish(channel)
            self._release_caller(connection_id, caller)

    async def _websocket_session(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        route: Route,
        tunnel: Tunnel,
        channel: RelayChannel,
    ) -> None:
        try:
            head = await self._await_head(tunnel, channel)
        except RelayError as exc:
            self._record_outcome(scope, tunnel.connection_id, exc, channel=channel)
            await deny_websocket(scope, send, exc.status, str(exc), _error_headers(exc))
            return
        if head.status != 101:
            await self._relay_refusal(scope, send, route, tunnel, channel, head)
            return
        subprotocol: str | None = None
        extra: list[tuple[bytes, bytes]] = []
        accept = rewrite_response_headers(
            strip_hop_by_hop(head.headers), route.public_prefix, route.local_path
        )
        for name, value in accept:
            lowered = name.lower()
            if lowered == "sec-websocket-protocol":
                subprotocol = value.strip() or None
            elif lowered.startswith("sec-websocket-"):
                continue
            else:
                extra.append((lowered.encode("latin-1"), value.encode("latin-1")))
        try:
            await send({"type": "websocket.accept", "subprotocol": subprotocol, "headers": extra})
        except OSError:
            channel.send_websocket_close(1001, "the caller disconnected")
            return
        upstream = asyncio.get_running_loop().create_task(
            self._websocket_upstream(tunnel, channel, receive)
        )
        try:
            await self._websocket_downstream(send, tunnel, channel)
        finally:
            upstream.cancel()

    async def _relay_refusal(
        self,
        scope: Scope,
        send: Send,
        route: Route,
        tunnel: Tunnel,
        channel: RelayChannel,
        head: Response,
    ) -> None:
        """The local app refused the upgrade: pass its status and (short) body on."""
        body = bytearray()
        ended = head.end_stream
        while not ended and len(body) <= _MAX_REFUSAL_BODY:
            try:
                item = await channel.next(self.settings.response_timeout)
            except (RelayError, TimeoutError):
                break
            if isinstance(item, Data):
                body += item.data
                channel.acknowledge(len(item.data))
                ended = item.end_stream
        refusal = rewrite_response_headers(
            strip_hop_by_hop(head.headers), route.public_prefix, route.local_path
        )
        headers = [
            (name.lower().encode("latin-1"), value.encode("latin-1"))
            for name, value in refusal
            if name.lower() != "content-length"
        ]
        await send(
            {"type": "websocket.http.response.start", "status": head.status, "headers": headers}
        )
        await send(
            {
                "type": "websocket.http.response.body",
                "body": bytes(body[:_MAX_REFUSAL_BODY]),
                "more_body": False,
            }
        )

    async def _websocket_upstream(
        self, tunnel: Tunnel, channel: RelayChannel, receive: Receive
    ) -> None:
        """Caller to local app: whole messages in, flow-controlled fragments out."""
        try:
            while True:
                message = await receive()
                if message["type"] == "websocket.disconnect":
                    # WS-5: on this hop it is always the caller who goes away.
                    code = close_code_for_relay(message.get("code"), went_away=True)
                    channel.send_websocket_close(code, str(message.get("reason") or ""))
                    channel.fail(CallerGoneError("the caller closed the WebSocket"))
                    return
                if message["type"] != "websocket.receive":
                    continue
                data = message.get("bytes")
                if data is not None:
                    await channel.send_websocket(data, text=False)
                else:
                    text = message.get("text") or ""
                    await channel.send_websocket(text.encode("utf-8"), text=True)
        except RelayError:
            return

    async def _websocket_downstream(
        self, send: Send, tunnel: Tunnel, channel: RelayChannel
    ) -> None:
        """Local app to caller: reassemble fragments, send, then return the credit."""
        limit = self.settings.max_websocket_message_size
        parts: list[bytes] = []
        size = 0
        try:
            while True:
                try:
                    item = await channel.next()
                except CallerGoneError:
                    return
                except TunnelClosedError:
                    await send({"type": "websocket.close", "code": 1001, "reason": "tunnel closed"})
                    return
                except RelayError as exc:
                    reset = exc.code if isinstance(exc, StreamResetError) else None
                    reason = str(exc).encode("utf-8")[:120].decode("utf-8", "ignore")
                    code = close_code_for_reset(reset)
                    await send({"type": "websocket.close", "code": code, "reason": reason})
                    return
                if isinstance(item, WebSocketClose):
                    code = close_code_for_hop(item.code)
                    reason = item.reason if code == item.code else ""
                    await send({"type": "websocket.close", "code": code, "reason": reason})
                    return
                if not isinstance(item, WebSocketData):
                    continue
                parts.append(item.data)
                size += len(item.data)
                if size > limit:
                    channel.send_websocket_close(1009, "message too big")
                    await send(
                        {"type": "websocket.close", "code": 1009, "reason": "message too big"}
                    )
                    return
                if not item.fin:
                    channel.acknowledge(len(item.data))  # buffered; bounded by limit
                    continue
                data = parts[0] if len(parts) == 1 else b"".join(parts)
                if item.text:
                    try:
                        await send({"type": "websocket.send", "text": data.decode("utf-8")})
                    except UnicodeDecodeError:
                        channel.send_websocket_close(1007, "invalid UTF-8")
                        await send({"type": "websocket.close", "code": 1007, "reason": ""})
                        return
                else:
                    await send({"type": "websocket.send", "bytes": data})
                channel.acknowledge(len(item.data))
                parts = []
                size = 0
        except OSError:  # uvicorn's ClientDisconnected
            channel.send_websocket_close(1001, "the caller disconnected")


def _expects_continue(scope: Scope) -> bool:
    return any(
        name == b"expect" and value.lower() == b"100-continue" for name, value in scope["headers"]
    )


def _http_scheme(scope: Scope) -> str:
    return "https" if scope.get("scheme") in ("https", "wss") else "http"
