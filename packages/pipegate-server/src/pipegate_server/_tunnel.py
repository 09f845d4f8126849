"""One connected tunnel: the server's role on the shared :class:`~pipegate_tunnel.TunnelShell`.

The shell (``pipegate_tunnel``) does the reading, ordered writing, heartbeat, hello
timeout and close for both roles. What is the server's alone lives here:

* the transports the shell writes to: the direct line of our uvicorn WebSocket
  protocol (:class:`DirectTransport`) or, on any other ASGI server, plain ASGI
  ``send`` (:class:`AsgiTransport`);
* opening a stream for a public request, with a bounded wait for a free slot
  (``--max-queued-requests``, ``--queue-timeout``), and freeing the slot;
* the relay's view of a stream's failure as :class:`~pipegate_server.errors.RelayError`
  subclasses, which carry the status a caller gets;
* the registry: a tunnel releases its id when it closes or its client sends go-away.

Relays (one per public request) open a stream with :meth:`Tunnel.open_stream`, then
send, acknowledge and reset on the :class:`RelayChannel` it returns (the shared
:class:`~pipegate_tunnel.StreamChannel` API), and end with :meth:`Tunnel.finish`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Sequence
from typing import TYPE_CHECKING, cast

from pipegate_protocol import (
    CAPABILITY_ACCESS,
    CAPABILITY_HOSTNAMES,
    Connection,
    GoAway,
    GoAwayReason,
    Hello,
    ProtocolVersion,
    Reset,
    ResetCode,
    Role,
    StreamKind,
)
from pipegate_protocol.errors import CloseCode, LocalProtocolError, MessageTooLargeError
from pipegate_tunnel import Heartbeat, StreamChannel, StreamObserver, TunnelShell
from pipegate_tunnel.errors import TransportClosed

from ._access import AccessConfigError, AccessRules, rules_from_policy
from ._asgi import Receive, Send, websocket_payload
from ._auth import Credential
from ._direct import DirectWebSocket
from ._settings import ServerSettings
from .errors import (
    HeadersTooLargeError,
    RelayError,
    StreamResetError,
    TunnelBusyError,
    TunnelClosedError,
    error_for_reset,
)

if TYPE_CHECKING:
    from ._metrics import ServerMetrics
    from ._registry import TunnelDirectory

__all__ = ["AsgiTransport", "DirectTransport", "RelayChannel", "Tunnel"]

logger = logging.getLogger("pipegate.server")


class AsgiTransport:
    """The tunnel WebSocket through plain ASGI ``send``: works on any ASGI server."""

    __slots__ = ("_send",)

    def __init__(self, send: Send) -> None:
        self._send = send

    def send_now(self, messages: Sequence[str | bytes]) -> bool:
        return False  # every ASGI send is awaited

    async def send(self, messages: Sequence[str | bytes]) -> None:
        send = self._send
        try:
            for message in messages:
                if isinstance(message, bytes):
                    await send({"type": "websocket.send", "bytes": message})
                else:
                    await send({"type": "websocket.send", "text": message})
        except OSError as exc:  # uvicorn's ClientDisconnected: the peer is gone
            raise TransportClosed(str(exc)) from exc

    async def close(self, code: int, reason: str) -> None:
        try:
            await self._send({"type": "websocket.close", "code": code, "reason": reason})
        except OSError as exc:
            raise TransportClosed(str(exc)) from exc

    def abort(self) -> None:
        """Nothing to do: returning from the ASGI app ends the connection."""


class DirectTransport(AsgiTransport):
    """Messages written straight to our uvicorn WebSocket protocol (the direct line,
    see ``_direct.py``); the close still goes through ASGI."""

    __slots__ = ("_direct",)

    def __init__(self, send: Send, direct: DirectWebSocket) -> None:
        super().__init__(send)
        self._direct = direct

    def send_now(self, messages: Sequence[str | bytes]) -> bool:
        direct = self._direct
        if not direct.can_send_now():
            return False
        try:
            for message in messages:
                direct.send_message(message)
        except OSError as exc:
            raise TransportClosed(str(exc)) from exc
        return True

    async def send(self, messages: Sequence[str | bytes]) -> None:
        direct = self._direct
        try:
            for message in messages:
                if not direct.can_send_now():
                    await direct.wait_writable()
                direct.send_message(message)
        except OSError as exc:
            raise TransportClosed(str(exc)) from exc


class RelayChannel(StreamChannel):
    """A stream as one relay sees it, with the relay's bookkeeping."""

    __slots__ = (
        "answered",
        "progress_at",
        "request_done",
        "request_id",
        "response_done",
        "visitor",
    )

    def __init__(
        self, shell: TunnelShell, stream_id: int, *, method: str, path: str, kind: StreamKind
    ) -> None:
        super().__init__(shell, stream_id, method=method, path=path, kind=kind)
        #: Loop time of the last progress of the request (open, body sent); the
        #: response timeout counts from here.
        self.progress_at = self.opened_at
        self.request_done = False
        self.response_done = False
        #: The status the server answered the caller with itself when no response
        #: head came through (504, 502...); None when the caller got none.
        self.answered: int | None = None
        #: The caller's address and the request's X-Request-Id, for the access log.
        self.visitor = ""
        self.request_id = ""

    def reset(self, code: ResetCode, message: str = "") -> None:
        if not self.shell.closed and self.shell.conn.is_open(self.stream_id):
            metrics = cast("Tunnel", self.shell).metrics
            if metrics is not None:
                metrics.stream_reset(code.value, "server")
        super().reset(code, message)


class Tunnel(TunnelShell):
    """One accepted tunnel WebSocket and the streams relayed over it."""

    def __init__(
        self,
        *,
        connection_id: str,
        credential: Credential,
        settings: ServerSettings,
        registry: TunnelDirectory,
        receive: Receive,
        send: Send,
        version: ProtocolVersion,
        public_url: str,
        remote: str,
        agent: str,
        direct: DirectWebSocket | None = None,
        observer: StreamObserver | None = None,
        hostnames: Sequence[str] = (),
        custom_hostnames: Sequence[str] = (),
        public_urls: Sequence[str] = (),
        metrics: ServerMetrics | None = None,
    ) -> None:
        conn = Connection(
            Role.SERVER,
            version=version,
            limits=settings.limits(),
            # Custom hostnames only where their requests can reach this tunnel: one
            # node, or a cluster whose nodes forward (settings.custom_hostnames).
            capabilities=(CAPABILITY_HOSTNAMES, CAPABILITY_ACCESS)
            if settings.custom_hostnames
            else (CAPABILITY_ACCESS,),
            agent=agent,
            connection_id=connection_id,
            public_url=public_url,
            public_urls=public_urls,
            hostnames=hostnames,
        )
        super().__init__(
            conn,
            AsgiTransport(send) if direct is None else DirectTransport(send, direct),
            connection_id=connection_id,
            heartbeat=Heartbeat(settings.heartbeat_interval, settings.heartbeat_timeout),
            hello_timeout=settings.hello_timeout,
            observer=observer,
            log=logger,
        )
        self.credential = credential
        self.settings = settings
        self.registry = registry
        self.remote = remote
        self.public_url = public_url
        #: Every hostname this tunnel is reached at, normal form (RT-2, RT-4); claimed
        #: with the id.
        self.hostnames: tuple[str, ...] = tuple(hostnames)
        #: The hostnames the client asked for (a subset of ``hostnames``), re-checked
        #: against the token's grants on reload.
        self.custom_hostnames: tuple[str, ...] = tuple(custom_hostnames)
        #: Visitor rule sets a request must pass before it opens a stream (issue 14):
        #: the operator's, from the token's tokens-file entry.
        self.access: tuple[AccessRules, ...] = (credential.access,) if credential.access else ()
        #: Whether the client is expected back: when this tunnel ends, its names answer
        #: 503 "offline" for the offline grace (RT-6). False once its token is revoked.
        self.comes_back = True
        self._receive = receive
        self._direct = direct
        self._slot_waiters: deque[asyncio.Future[None]] = deque()
        self.accepted_at = self.loop.time()
        #: Wall-clock time of the handshake (seconds since the epoch), for the admin API.
        self.connected_since = time.time()
        #: Counts the server's metrics; also keeps the totals below.
        self.metrics = metrics
        #: Relayed requests that ended, and their payload bytes in (from callers) and
        #: out (to callers), kept by :class:`~._metrics.ServerMetrics`.
        self.requests = 0
        self.bytes_in = 0
        self.bytes_out = 0

    @property
    def supports_websocket(self) -> bool:
        return self.conn.peer_supports_websocket

    # ------------------------------------------------------------------ reading

    async def _read_loop(self) -> None:
        if self._direct is not None:
            self._direct.attach_sink(self._on_direct_message)
        receive = self._receive
        while True:
            event = await receive()
            kind = event["type"]
            if kind == "websocket.disconnect":
                self.lost(event.get("code", 1006))
                return
            if kind == "websocket.receive" and (payload := websocket_payload(event)) is not None:
                self.receive(payload)

    def _on_direct_message(self, payload: str | bytes) -> None:
        """The direct line's sink: runs inside the protocol's ``data_received``, so
        nothing may escape it."""
        try:
            self.receive(payload)
        except Exception:
            logger.exception("tunnel internal error: id=%s", self.connection_id)
            self.close(CloseCode.INTERNAL_ERROR, "internal error")

    # ------------------------------------------------------------------ role hooks

    def _on_hello(self, message: Hello) -> None:
        if message.access is not None:
            try:
                declared = rules_from_policy(message.access, f"tunnel {self.connection_id}")
            except AccessConfigError as exc:
                # AC-2: never serve a tunnel without the rules its client declared.
                logger.warning("tunnel access rules refused: id=%s %s", self.connection_id, exc)
                self.close(int(CloseCode.POLICY_VIOLATION), "unusable access rules")
                return
            if declared:
                self.access = (*self.access, declared)
        logger.info(
            "tunnel ready: id=%s agent=%s max_streams=%d",
            self.connection_id,
            message.agent or "-",
            message.limits.max_concurrent_streams,
        )
        self._wake_slot_waiters()

    def _on_goaway(self, message: GoAway) -> None:
        logger.info(
            "tunnel go-away from client: id=%s reason=%s",
            self.connection_id,
            message.reason.value,
        )
        self.registry.release(self)
        self._fail_slot_waiters(TunnelBusyError(self._gone_message("is going away")))
        if not self._channels:
            self.close(CloseCode.NORMAL, "go-away received and no streams left")

    def _on_closed(self) -> None:
        self.registry.release(self)
        self._fail_slot_waiters(self.tunnel_gone("closed"))

    def _on_reset(self, channel: StreamChannel, message: Reset) -> None:
        if self.metrics is not None:
            self.metrics.stream_reset(message.code.value, "client")

    def reset_error(self, message: Reset) -> RelayError:
        text = f"the tunnel client reset the stream: {message.message or message.code.value}"
        return error_for_reset(message.code, text)

    def stream_gone(self, channel: StreamChannel) -> RelayError:
        return StreamResetError("the stream ended")

    def tunnel_gone(self, what: str) -> RelayError:
        return TunnelClosedError(self._gone_message(what))

    def _gone_message(self, what: str) -> str:
        return f"the tunnel for id {self.connection_id!r} {what}"

    # ------------------------------------------------------------------ shutdown

    def goaway(self, reason: GoAwayReason = GoAwayReason.SHUTDOWN, message: str = "") -> None:
        """Announce that no new streams will be opened; streams in flight go on."""
        if self.closed:
            return
        super().goaway(reason, message)
        self._fail_slot_waiters(TunnelBusyError(self._gone_message("going away")))

    # ------------------------------------------------------------------ streams

    def _has_slot(self) -> bool:
        return (
            not self.closed
            and self.conn.can_open_stream
            and len(self._channels) < self.settings.max_streams_per_tunnel
        )

    async def open_stream(
        self,
        *,
        method: str,
        path: str,
        query: str,
        headers: Sequence[tuple[str, str]],
        kind: StreamKind = StreamKind.HTTP,
        scheme: str = "http",
        client_host: str | None = None,
        client_port: int | None = None,
        end_stream: bool = False,
    ) -> RelayChannel:
        """Open a stream for a public request, waiting (bounded) for a free slot.

        Raises :class:`TunnelBusyError` (503) when the queue is full or the wait
        times out, :class:`TunnelClosedError` when the tunnel closes meanwhile, and
        :class:`RelayError` 400/431 when the head cannot be expressed in the protocol.
        """
        if self._slot_waiters or not self._has_slot():
            await self._wait_for_slot()
        if kind is StreamKind.WEBSOCKET and not self.conn.peer_supports_websocket:
            raise RelayError(
                f"the client of id {self.connection_id!r} does not relay WebSockets", status=502
            )
        try:
            stream_id = self.conn.open_stream(
                method=method,
                path=path,
                query=query,
                headers=headers,
                kind=kind,
                scheme=scheme,
                client_host=client_host,
                client_port=client_port,
                end_stream=end_stream,
            )
        except MessageTooLargeError as exc:
            raise HeadersTooLargeError(f"the request head cannot be relayed: {exc}") from None
        except LocalProtocolError as exc:
            # A field the protocol cannot carry (a method over 64 bytes, a control byte).
            raise RelayError(f"the request cannot be relayed: {exc}", status=400) from None
        channel = RelayChannel(self, stream_id, method=method, path=path, kind=kind)
        self.register(channel)
        try:
            self.flush()
        except BaseException:
            self.finish(channel)
            raise
        return channel

    async def _wait_for_slot(self) -> None:
        if self.closed:
            raise TunnelClosedError(self._gone_message("closed"))
        if self.conn.goaway_sent or self.conn.goaway_received is not None:
            raise TunnelBusyError(self._gone_message("is going away"))
        if len(self._slot_waiters) >= self.settings.max_queued_requests:
            raise TunnelBusyError(
                f"the tunnel for id {self.connection_id!r} is busy: "
                f"{len(self._channels)} requests in flight and {len(self._slot_waiters)} queued"
            )
        loop = self.loop
        deadline = loop.time() + self.settings.queue_timeout
        while True:
            waiter: asyncio.Future[None] = loop.create_future()
            self._slot_waiters.append(waiter)
            remaining = deadline - loop.time()
            handle = loop.call_later(max(remaining, 0.0), _wake, waiter)
            try:
                await waiter
            except BaseException:
                if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                    self._wake_slot_waiters()  # pass the slot on
                raise
            finally:
                handle.cancel()
                if waiter in self._slot_waiters:
                    self._slot_waiters.remove(waiter)
            if self._has_slot():
                return
            if self.closed:
                raise TunnelClosedError(self._gone_message("closed"))
            if loop.time() >= deadline:
                raise TunnelBusyError(
                    f"the tunnel for id {self.connection_id!r} had no free stream for "
                    f"{self.settings.queue_timeout:g} s"
                )

    def _wake_slot_waiters(self) -> None:
        while self._slot_waiters and self._has_slot():
            waiter = self._slot_waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def _fail_slot_waiters(self, error: BaseException) -> None:
        while self._slot_waiters:
            waiter = self._slot_waiters.popleft()
            if not waiter.done():
                waiter.set_exception(error)

    def finish(self, channel: StreamChannel) -> bool:
        """The relay is done with the stream; cancel it if still open and free its slot."""
        if not super().finish(channel):
            return False
        if self.closed:
            return True
        if self._slot_waiters:
            self._wake_slot_waiters()
        if self.conn.goaway_received is not None and not self._channels:
            self.close(CloseCode.NORMAL, "go-away received and no streams left")
        return True


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)
