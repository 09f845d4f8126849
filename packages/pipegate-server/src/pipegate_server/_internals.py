"""Every reach of the server under a library's private API, in one module.

The server's fast path subclasses uvicorn's protocols and reads websockets' parser
state. Nothing else in the package does; ``--no-fast-path``
(``ServerSettings.fast_path=False``) runs uvicorn's own ``httptools``/``h11`` and
``websockets-sansio`` protocols and touches none of this. The pins in
``pyproject.toml`` stop below the first versions not tested with it.

Reaches (tested with uvicorn 0.53.0 and 0.54.0, websockets 16.0 and 17.4, httptools
0.8.0 and 0.9.0; uvicorn 0.35.0-0.49.0 have no ``frames`` attribute and 0.50.0-0.52.0
no ``disconnected`` one, and their denials of an upgrade repeat Content-Length):

1. ``uvicorn.protocols.http.httptools_impl.HttpToolsProtocol``, subclassed by
   :func:`http_protocol_class`: overrides ``__init__``, ``connection_made``,
   ``connection_lost``, ``data_received`` (a copy of uvicorn's, catching
   ``httptools.HttpParserInvalidMethodError`` apart), ``on_message_begin``,
   ``on_headers_complete``, ``handle_websocket_upgrade``; reads and replaces
   ``self.transport``; reads ``pipeline``, ``cycle.response_complete``, ``parser``,
   ``loop``, ``logger``, ``connections``, ``config``, ``server_state``, ``app_state``;
   calls ``_unset_keepalive_if_required``, ``send_400_response``, ``_should_upgrade``,
   ``_unsupported_upgrade_warning``. Why: a corked transport for callers
   (:mod:`._cork`), a deadline for request heads (slowloris), and the hand-over below.
2. ``uvicorn.protocols.http.h11_impl.H11Protocol``, built with ``config``,
   ``server_state`` and ``app_state`` and fed the replayed request: a request whose
   method llhttp does not know goes to h11, so every method token is relayed.
3. ``uvicorn.protocols.websockets.websockets_sansio_impl.WebSocketsSansIOProtocol``,
   subclassed by :func:`ws_protocol_class`: overrides ``handle_connect`` (offers the
   direct line of :mod:`._direct` in the scope), ``data_received``,
   ``send_receive_event_to_app``, ``receive`` and ``send``; reads and writes ``conn``,
   ``frames``, ``curr_msg_data_type``, ``close_sent``, ``disconnected``, ``queue``,
   ``read_paused``, ``writable``, ``handshake_complete``, ``transport``, ``scope``;
   calls ``handle_ping``, ``handle_pong``, ``handle_parser_exception``. Why: plain
   frames read and written past the library (:mod:`pipegate_tunnel._wsframes`),
   pausing reads by queue depth instead of per message, and no false "ASGI callable
   returned without completing handshake" error after an HTTP denial of an upgrade.
4. websockets' sans-I/O ``ServerProtocol`` (uvicorn's ``self.conn``), handed to
   :func:`pipegate_tunnel._internals.library_at_frame_boundary`, which reads its
   parser state; and websockets' C ``apply_mask`` through
   ``pipegate_tunnel._internals.LIBRARY_MASK``. Both reaches are listed in that
   module, shared with the client. Why: frames may be read past the parser only
   from a frame boundary, and unmasked at C speed.

``PeerKeepingProxyHeaders`` subclasses uvicorn's public ``ProxyHeadersMiddleware`` and
calls only its public ``__call__``; it is here because it is uvicorn-specific, and is
used with and without the fast path.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from pipegate_tunnel import (
    NEED_MORE,
    NOT_PLAIN,
    OP_BINARY,
    OP_PING,
    OP_TEXT,
    MaskFunction,
    PartialFrame,
    scan_client_frame,
    server_frame,
    unmask,
)
from pipegate_tunnel._internals import LIBRARY_MASK, library_at_frame_boundary
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from ._asgi import PEER, Receive, Scope, Send, websocket_payload
from ._cork import CorkedTransport
from ._direct import DIRECT_EXTENSION, MessageSink

logger = logging.getLogger("pipegate.server")

__all__ = [
    "PeerKeepingProxyHeaders",
    "http_protocol_class",
    "library_at_frame_boundary",
    "ws_protocol_class",
]

#: websockets' masking function (reach 5), typed as the frame scanner expects it.
MASK: MaskFunction = LIBRARY_MASK

#: Bytes of a request head buffered for a possible hand-over; beyond that, no fallback.
_MAX_BUFFERED_HEAD = 64 * 1024


def http_protocol_class(choice: str, head_timeout: float = 10.0, *, fast_path: bool = True) -> Any:
    """The uvicorn ``http`` setting for ``--http``: ``auto`` is httptools with the h11
    fallback and the head deadline when httptools is installed, else h11.

    Without the fast path, ``auto`` is uvicorn's plain h11 protocol (every method token
    is relayed, as with the fast path; there is no head deadline) and ``httptools`` or
    ``h11`` are uvicorn's own protocols.
    """
    if not fast_path:
        return "h11" if choice == "auto" else choice
    if choice != "auto":
        return choice
    try:
        import httptools
        from uvicorn.protocols.http.h11_impl import H11Protocol
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    except ImportError:  # pragma: no cover - depends on the installation
        return "h11"

    class MethodTolerantHttpToolsProtocol(HttpToolsProtocol):
        """httptools, handing requests with methods llhttp rejects to h11."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._head = bytearray()
            self._in_head = False
            self._head_is_whole = False
            self._head_timer: asyncio.TimerHandle | None = None
            self._head_deadline: float | None = None

        def connection_made(self, transport: Any) -> None:
            # Corked: a response head and its body leave in one system call (_cork).
            super().connection_made(CorkedTransport(transport))
            self._start_head_timer()

        def handle_websocket_upgrade(self) -> None:
            # A WebSocket (a tunnel above all) gets the real transport: holding its
            # frames to the end of the turn makes the peer wait (see _cork).
            if isinstance(self.transport, CorkedTransport):
                self.transport.flush()
                self.transport = self.transport.wrapped
            super().handle_websocket_upgrade()

        def connection_lost(self, exc: Exception | None) -> None:
            self._stop_head_timer()
            super().connection_lost(exc)

        # The head deadline is an attribute, checked by one timer per connection that
        # re-arms itself only while a head is in progress: a timer set and cancelled
        # for every request cost more than the rest of this class.

        def _start_head_timer(self) -> None:
            if self._head_deadline is None:
                self._head_deadline = self.loop.time() + head_timeout
                if self._head_timer is None:
                    self._head_timer = self.loop.call_later(head_timeout, self._check_head)

        def _cancel_head_timer(self) -> None:
            self._head_deadline = None  # a pending check finds nothing to do

        def _stop_head_timer(self) -> None:
            self._head_deadline = None
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _check_head(self) -> None:
            self._head_timer = None
            deadline = self._head_deadline
            if deadline is None:
                return
            remaining = deadline - self.loop.time()
            if remaining > 0:
                self._head_timer = self.loop.call_later(remaining, self._check_head)
                return
            self._head_deadline = None
            if not self.transport.is_closing():
                logger.info(
                    "closing a connection without a complete request head after %g s", head_timeout
                )
                self.transport.close()

        def data_received(self, data: bytes) -> None:
            self._unset_keepalive_if_required()
            idle = not self.pipeline and (self.cycle is None or self.cycle.response_complete)
            if idle and not self._in_head:
                self._head = bytearray(data)
            elif self._in_head and len(self._head) <= _MAX_BUFFERED_HEAD:
                self._head += data
            try:
                self.parser.feed_data(data)
            except httptools.HttpParserInvalidMethodError:
                if idle and self._head_is_whole and len(self._head) <= _MAX_BUFFERED_HEAD:
                    self._hand_over_to_h11(bytes(self._head))
                    return
                self.logger.warning("Invalid HTTP request received.")
                self.send_400_response("Invalid HTTP request received.")
            except httptools.HttpParserError:
                self.logger.warning("Invalid HTTP request received.")
                self.send_400_response("Invalid HTTP request received.")
            except httptools.HttpParserUpgrade:
                if self._should_upgrade():
                    self.handle_websocket_upgrade()
                else:
                    self._unsupported_upgrade_warning()

        def on_message_begin(self) -> None:
            self._start_head_timer()
            # The buffer holds this request from its first byte only if the request
            # began a chunk; a pipelined request that began mid-chunk is not replayed.
            self._head_is_whole = bool(self._head) and not self._in_head
            self._in_head = True
            super().on_message_begin()

        def on_headers_complete(self) -> None:
            self._cancel_head_timer()
            self._in_head = False
            self._head = bytearray()
            super().on_headers_complete()

        def _hand_over_to_h11(self, head: bytes) -> None:
            self._stop_head_timer()
            self.connections.discard(self)
            protocol = H11Protocol(
                config=self.config, server_state=self.server_state, app_state=self.app_state
            )
            protocol.connection_made(self.transport)
            self.transport.set_protocol(protocol)
            protocol.data_received(head)

    return MethodTolerantHttpToolsProtocol


#: A WebSocket's received messages waiting for the app before reading pauses ...
_WS_HIGH_WATER = 64
#: ... and the count at which it resumes.
_WS_LOW_WATER = 16
#: The frame size limit when the library has none.
_NO_LIMIT = 2**63


def ws_protocol_class(*, fast_path: bool = True) -> Any:
    """The uvicorn ``ws`` setting: websockets-sansio with flow control by queue depth
    (without the fast path, uvicorn's own ``websockets-sansio`` protocol).

    uvicorn's websockets-sansio protocol pauses reading after *every* message it
    queues for the app and resumes once the app emptied the queue. For a tunnel,
    which receives a response head and a body message per request, that is two
    changes of the socket's poll registration per burst of input, and input waits
    in the kernel until the tunnel's reader has caught up. This subclass pauses only
    above :data:`_WS_HIGH_WATER` queued messages, which still bounds the memory a
    peer can make us hold (the tunnel's reader consumes without waiting, and each
    message is at most one frame). It also offers the tunnel a direct line past the
    ASGI queue (:mod:`pipegate_server._direct`). Falls back to uvicorn's choice when
    this uvicorn has no websockets-sansio protocol.
    """
    if not fast_path:
        return "websockets-sansio"
    try:
        from uvicorn.protocols.websockets.websockets_sansio_impl import (
            WebSocketsSansIOProtocol,
        )
    except ImportError:  # pragma: no cover - depends on the installation
        return "auto"

    from uvicorn.protocols.utils import ClientDisconnected
    from websockets.frames import Frame, Opcode
    from websockets.protocol import State

    class QueueDepthWebSocketProtocol(WebSocketsSansIOProtocol):
        """websockets-sansio, pausing reads by queue depth rather than per message,
        reading plain frames itself (:mod:`pipegate_tunnel._wsframes`) and offering a
        tunnel the direct line of :mod:`pipegate_server._direct`."""

        _sink: MessageSink | None = None
        #: None until the first data after the handshake; then True while this class
        #: reads the frames, False once the library does (for good).
        _fast: bool | None = None
        #: The start of a plain frame that did not arrive whole: its pieces, their
        #: total size and the size of the whole frame (or of its header).
        _held: PartialFrame | None = None

        def handle_connect(self, event: Any) -> None:
            super().handle_connect(event)
            scope = getattr(self, "scope", None)
            if scope is not None:
                scope.setdefault("extensions", {})[DIRECT_EXTENSION] = self

        # -------------------------------------------------- receiving

        def data_received(self, data: bytes) -> None:
            if self._fast is None and self.conn.state is State.OPEN:
                self._fast = library_at_frame_boundary(self.conn)
            if not self._fast:
                super().data_received(data)
                return
            held = self._held
            if held is not None:
                whole = held.add(data)
                if whole is None:
                    return
                self._held = None
                data = whole
            self._read_frames(data)

        def _read_frames(self, data: bytes) -> None:
            """Deliver the plain frames in ``data``; hand the library the rest from the
            first frame that is not plain, or once a close was sent."""
            conn = self.conn
            max_size = conn.max_message_size or _NO_LIMIT
            view = memoryview(data)
            pos, size = 0, len(data)
            while pos < size:
                if self.close_sent or conn.state is not State.OPEN:
                    break
                opcode, start, end = scan_client_frame(data, pos, max_size)
                if opcode == NEED_MORE:
                    self._held = PartialFrame(data[pos:], end)
                    return
                if opcode == NOT_PLAIN:
                    break
                payload = unmask(data, view, start, end, MASK)
                pos = end
                if opcode == OP_TEXT:
                    try:
                        text = payload.decode()
                    except UnicodeDecodeError:
                        self._fail_invalid_utf8()
                        return
                    self._deliver(text)
                elif opcode == OP_BINARY:
                    self._deliver(payload)
                elif opcode == OP_PING:
                    conn.send_pong(payload)
                    self.handle_ping()  # writes the pong
                else:
                    self.handle_pong(Frame(Opcode.PONG, payload))
            else:
                return
            self._fast = False
            super().data_received(data[pos:])

        def send_receive_event_to_app(self) -> None:
            # The library's path: a message it assembled from frames.
            data = self.frames[0] if len(self.frames) == 1 else b"".join(self.frames)
            self.frames = []
            if self.close_sent:
                return  # past websocket.close: dropped, as uvicorn does
            if self.curr_msg_data_type == "text":
                try:
                    text = data.decode()
                except UnicodeDecodeError:
                    self._fail_invalid_utf8()
                    return
                self._deliver(text)
            else:
                self._deliver(data)

        async def send(self, message: Any) -> None:
            await super().send(message)
            if message["type"] == "websocket.http.response.body" and not message.get(
                "more_body", False
            ):
                # The denial is complete: uvicorn would otherwise log "ASGI callable
                # returned without completing handshake." and try a 500 after it.
                self.handshake_complete = True

        def _deliver(self, message: str | bytes) -> None:
            sink = self._sink
            if sink is not None:
                sink(message)
                return
            if isinstance(message, str):
                self.queue.put_nowait({"type": "websocket.receive", "text": message})
            else:
                self.queue.put_nowait({"type": "websocket.receive", "bytes": message})
            if not self.read_paused and self.queue.qsize() > _WS_HIGH_WATER:
                self.read_paused = True
                self.transport.pause_reading()

        def _fail_invalid_utf8(self) -> None:
            self.conn.send_close(1007)
            self.handle_parser_exception()

        async def receive(self) -> Any:
            message = await self.queue.get()
            if self.read_paused and self.queue.qsize() <= _WS_LOW_WATER:
                self.read_paused = False
                self.transport.resume_reading()
            return message

        def attach_sink(self, sink: MessageSink) -> None:
            kept = []
            while not self.queue.empty():
                event = self.queue.get_nowait()
                payload = websocket_payload(event)
                if event["type"] == "websocket.receive" and payload is not None:
                    sink(payload)
                else:
                    kept.append(event)
            for event in kept:
                self.queue.put_nowait(event)
            self._sink = sink
            if self.read_paused:
                self.read_paused = False
                self.transport.resume_reading()

        # -------------------------------------------------- sending

        def can_send_now(self) -> bool:
            return self.writable.is_set()

        async def wait_writable(self) -> None:
            await self.writable.wait()

        def send_message(self, message: str | bytes) -> None:
            # The library would check the state, build a Frame and serialize it; a
            # whole unmasked frame is all it would write.
            if self.disconnected or self.close_sent or self.conn.state is not State.OPEN:
                raise ClientDisconnected()
            if isinstance(message, str):
                self.transport.write(server_frame(OP_TEXT, message.encode()))
            else:
                self.transport.write(server_frame(OP_BINARY, message))

    return QueueDepthWebSocketProtocol


class PeerKeepingProxyHeaders(ProxyHeadersMiddleware):
    """uvicorn's proxy-header handling, keeping the connection's own peer address.

    For a trusted proxy (``FORWARDED_ALLOW_IPS``, 127.0.0.1 by default, as uvicorn
    does it), uvicorn replaces the scope's ``client`` with the caller the proxy
    reported in X-Forwarded-For, and its ``scheme`` with X-Forwarded-Proto. The
    relay appends the address *it* received the request from to X-Forwarded-For, so
    it needs the peer itself: appending ``client`` instead repeated the caller's
    address ("203.0.113.9, 203.0.113.9" instead of "203.0.113.9, 127.0.0.1").
    """

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:  # type: ignore[override]
        scope[PEER] = scope.get("client")
        await super().__call__(scope, receive, send)  # type: ignore[arg-type]
