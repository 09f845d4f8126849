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
   ``loop``, ``logger``, ``connections``, ``config``, ``server_state``, ``app_state``,
   ``url`` (for the log line of a refused head);
   calls ``_unset_keepalive_if_required``, ``send_400_response``, ``_should_upgrade``,
   ``_unsupported_upgrade_warning``. Why: a corked transport for callers
   (:mod:`._cork`), a deadline for request heads (slowloris), a bound on the bytes of
   a head read (431 past ``head_limit``, before httptools buffers it whole), and the
   hand-over below.
2. ``uvicorn.protocols.http.h11_impl.H11Protocol``, subclassed by
   ``DeadlineH11Protocol``, built with ``config``, ``server_state`` and ``app_state``
   and fed the replayed request: a request whose method llhttp does not know goes to
   h11, so every method token is relayed. Overrides ``__init__``, ``connection_made``,
   ``connection_lost``, ``data_received``; reads ``conn.their_state``, ``loop``,
   ``transport``. Why: the head deadline and the head bound carry over the hand-over.
3. ``uvicorn.protocols.websockets.websockets_sansio_impl.WebSocketsSansIOProtocol``,
   subclassed by :func:`ws_protocol_class`: overrides ``handle_connect`` (offers the
   direct line of :mod:`._direct` in the scope), ``data_received``,
   ``send_receive_event_to_app``, ``receive``, ``send`` and ``resume_writing``; reads
   and writes ``conn``, ``frames``, ``curr_msg_data_type``, ``close_sent``,
   ``disconnected``, ``queue``, ``read_paused``, ``writable``, ``handshake_complete``,
   ``transport``, ``scope``; calls ``handle_ping``, ``handle_pong``,
   ``handle_parser_exception``. Why: plain frames read and written past the library
   (:mod:`pipegate_tunnel._wsframes`), pausing reads by queued bytes instead of per
   message and while a caller does not read what we write (``writable``, cleared by
   ``pause_writing``), and no false "ASGI callable returned without completing
   handshake" error after an HTTP denial of an upgrade.
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

#: Bytes a request head may have beyond ``--max-header-size`` while it is read: the
#: request line and the header lines' framing (the relay counts names and values only).
REQUEST_LINE_ALLOWANCE = 8 * 1024

#: What a caller gets when its head grows past :func:`head_limit` while it is read.
_HEAD_TOO_LARGE = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
    b"content-type: text/plain; charset=utf-8\r\n"
    b"connection: close\r\n"
    b"content-length: 32\r\n"
    b"\r\n"
    b"the request head is too large.\r\n"
)


def head_limit(max_header_size: int) -> int | None:
    """The most bytes of one request head the server reads before it answers 431
    (``--max-header-size`` plus :data:`REQUEST_LINE_ALLOWANCE`); None when
    ``max_header_size`` is 0 ("no limit")."""
    return max_header_size + REQUEST_LINE_ALLOWANCE if max_header_size > 0 else None


def _connection_id_of(url: bytes) -> str:
    """The first path segment of a (possibly partial) request target, for the log line."""
    path = url.split(b"?", 1)[0]
    if b"://" in path:  # absolute form
        path = path.split(b"://", 1)[1].partition(b"/")[2]
    segment = path.lstrip(b"/").split(b"/", 1)[0][:64]
    return segment.decode("latin-1").encode("unicode_escape").decode("ascii") or "-"


def _target_of(head: bytes) -> bytes:
    """The request target of a (possibly partial) head's request line."""
    parts = head.split(b"\r\n", 1)[0].split(b" ", 2)
    return parts[1] if len(parts) > 1 else b""


def http_protocol_class(
    choice: str,
    head_timeout: float = 10.0,
    *,
    fast_path: bool = True,
    max_header_size: int = 0,
) -> Any:
    """The uvicorn ``http`` setting for ``--http``: ``auto`` is httptools with the h11
    fallback, the head deadline and the head size bound when httptools is installed,
    else h11.

    Without the fast path, ``auto`` is uvicorn's plain h11 protocol (every method token
    is relayed, as with the fast path; there is no head deadline, and a head past
    h11's ``max_incomplete_event_size`` gets uvicorn's 400) and ``httptools`` or
    ``h11`` are uvicorn's own protocols.
    """
    if not fast_path:
        return "h11" if choice == "auto" else choice
    if choice != "auto":
        return choice
    try:
        import h11
        import httptools
        from uvicorn.protocols.http.h11_impl import H11Protocol
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    except ImportError:  # pragma: no cover - depends on the installation
        return "h11"

    max_head = head_limit(max_header_size)

    class DeadlineH11Protocol(H11Protocol):
        """uvicorn's h11 protocol for a request handed over from httptools: the head
        deadline it had carries over (a slowloris with an unknown method is closed
        like any other), and a head past :func:`head_limit` gets 431 before h11
        buffers it (h11's own ``max_incomplete_event_size`` is the same bound)."""

        def __init__(
            self, *args: Any, head_deadline: float | None, connection_id: str, **kwargs: Any
        ) -> None:
            super().__init__(*args, **kwargs)
            self._connection_id = connection_id
            self._head_deadline = head_deadline
            self._head_timer: asyncio.TimerHandle | None = None
            self._head_bytes = 0

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self._arm_head_timer()

        def connection_lost(self, exc: Exception | None) -> None:
            self._head_deadline = None
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None
            super().connection_lost(exc)

        def _arm_head_timer(self) -> None:
            if self._head_deadline is not None and self._head_timer is None:
                self._head_timer = self.loop.call_at(self._head_deadline, self._check_head)

        def _check_head(self) -> None:
            self._head_timer = None
            deadline = self._head_deadline
            if deadline is None:
                return
            if self.conn.their_state is not h11.IDLE:
                self._head_deadline = None  # the head is complete
                return
            remaining = deadline - self.loop.time()
            if remaining > 0:
                self._head_timer = self.loop.call_later(remaining, self._check_head)
                return
            self._head_deadline = None
            if not self.transport.is_closing():
                logger.info(
                    "closing a connection without a complete request head after %g s "
                    "(h11, connection id %s, peer %s)",
                    head_timeout,
                    self._connection_id,
                    _peer_of(self.transport),
                )
                self.transport.close()

        def data_received(self, data: bytes) -> None:
            if self.conn.their_state is h11.IDLE:
                if self._head_deadline is None:
                    self._head_deadline = self.loop.time() + head_timeout
                    self._arm_head_timer()
                self._head_bytes += len(data)
                if max_head is not None and self._head_bytes > max_head:
                    _reject_head(self.transport, self._connection_id, self._head_bytes)
                    return
            super().data_received(data)
            if self.conn.their_state is not h11.IDLE:
                self._head_deadline = None
                self._head_bytes = 0

    class MethodTolerantHttpToolsProtocol(HttpToolsProtocol):
        """httptools, handing requests with methods llhttp rejects to h11."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._head = bytearray()
            self._in_head = False
            self._head_is_whole = False
            self._head_timer: asyncio.TimerHandle | None = None
            self._head_deadline: float | None = None
            #: Bytes read of the head in progress (an upper bound: the whole chunk
            #: it began in counts); 431 once past ``max_head``.
            self._head_bytes = 0

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
            was_in_head = self._in_head
            if idle and not was_in_head:
                self._head = bytearray(data)
            elif was_in_head:
                if len(self._head) <= _MAX_BUFFERED_HEAD:
                    self._head += data
                if max_head is not None:
                    self._head_bytes += len(data)
                    if self._head_bytes > max_head:
                        self._reject_head(idle)
                        return
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
                return
            if self._in_head and not was_in_head and max_head is not None:
                # A head began in this chunk and did not end in it.
                self._head_bytes = len(data)
                if self._head_bytes > max_head:
                    self._reject_head(idle)

        def _reject_head(self, idle: bool) -> None:
            self._stop_head_timer()
            self._in_head = False
            self._head = bytearray()
            if idle:
                _reject_head(self.transport, _connection_id_of(self.url), self._head_bytes)
            else:  # a response is under way: a 431 now would corrupt it
                _reject_head(self.transport, _connection_id_of(self.url), self._head_bytes, 0)

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
            self._head_bytes = 0
            super().on_headers_complete()
            # llhttp reports a chunked body's trailer fields through on_header too,
            # which appends to the list the request's scope already holds: trailers
            # would reach the local app as headers. From here on they go to a list
            # nobody reads, so trailers are dropped (the protocol has no trailer frame).
            # An upgrade keeps the list: uvicorn reads it again to hand the connection
            # over, and an upgrade request has no body, so no trailers.
            if not self.parser.should_upgrade():
                self.headers = []

        def _hand_over_to_h11(self, head: bytes) -> None:
            deadline = self._head_deadline  # the head's deadline stays (slowloris)
            self._stop_head_timer()
            self.connections.discard(self)
            protocol = DeadlineH11Protocol(
                config=self.config,
                server_state=self.server_state,
                app_state=self.app_state,
                head_deadline=deadline,
                connection_id=_connection_id_of(_target_of(head)),
            )
            protocol.connection_made(self.transport)
            self.transport.set_protocol(protocol)
            protocol.data_received(head)

    return MethodTolerantHttpToolsProtocol


def _peer_of(transport: Any) -> str:
    peer = transport.get_extra_info("peername")
    return f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) and len(peer) >= 2 else "-"


def _reject_head(transport: Any, connection_id: str, size: int, answer: int = 431) -> None:
    """Answer 431 (or nothing, with ``answer=0``) to a head read past its bound, and close."""
    if transport.is_closing():
        return  # already answered (a 400) and closing: data still read is dropped
    logger.info(
        "request head past %s bytes: answered %s and closed (connection id %s, peer %s)",
        size,
        answer or "nothing",
        connection_id,
        _peer_of(transport),
    )
    if answer:
        transport.write(_HEAD_TOO_LARGE)
    transport.close()


#: Bytes of a WebSocket's received messages waiting for the app above which reading
#: pauses (a text message counts its characters) ...
WS_QUEUE_HIGH_WATER = 1024 * 1024
#: ... and the bytes at or below which it resumes.
WS_QUEUE_LOW_WATER = 256 * 1024
#: The frame size limit when the library has none.
_NO_LIMIT = 2**63


def ws_protocol_class(*, fast_path: bool = True) -> Any:
    """The uvicorn ``ws`` setting: websockets-sansio with flow control by queued bytes
    (without the fast path, uvicorn's own ``websockets-sansio`` protocol).

    uvicorn's websockets-sansio protocol pauses reading after *every* message it
    queues for the app and resumes once the app emptied the queue. For a tunnel,
    which receives a response head and a body message per request, that is two
    changes of the socket's poll registration per burst of input, and input waits
    in the kernel until the tunnel's reader has caught up. This subclass pauses only
    above :data:`WS_QUEUE_HIGH_WATER` queued *bytes* and resumes at
    :data:`WS_QUEUE_LOW_WATER`, so a caller whose messages the app does not take
    makes us hold at most the mark plus one message (a count of messages let 64
    messages of 16 MiB in). A tunnel on the direct line (:mod:`pipegate_server._direct`)
    queues nothing here.

    Reading also pauses while the transport's write buffer is above its high-water
    mark (``pause_writing``) on a connection that is not a tunnel's direct line: a
    caller that sends pings (or anything that is answered) and never reads makes
    us hold at most the buffer's mark plus the answers to one read, instead of a
    pong per ping without bound. A tunnel's own writes are bounded by the shell's
    queue, and its reader must never wait on them (see ``docs/architecture.md``).
    Falls back to uvicorn's choice when this uvicorn has no websockets-sansio protocol.
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
        """websockets-sansio, pausing reads by queued bytes rather than per message
        and while a caller does not read, reading plain frames itself
        (:mod:`pipegate_tunnel._wsframes`) and offering a tunnel the direct line of
        :mod:`pipegate_server._direct`."""

        _sink: MessageSink | None = None
        #: Bytes of the messages in ``queue`` (text: characters).
        _queued_bytes = 0
        #: Reading is paused because ``_queued_bytes`` passed the high-water mark ...
        _paused_for_queue = False
        #: ... or because the peer does not read what we write (``pause_writing``).
        _paused_for_writes = False
        _pause_logged = False
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
            else:
                held = self._held
                if held is not None:
                    whole = held.add(data)
                    if whole is None:
                        return
                    self._held = None
                    data = whole
                self._read_frames(data)
            if self._sink is None and not self.writable.is_set():
                # What we wrote (pongs above all) is not being read: stop reading
                # until the transport's buffer drained (resume_writing).
                self._paused_for_writes = True
                self._update_reading()

        def resume_writing(self) -> None:
            super().resume_writing()
            if self._paused_for_writes:
                self._paused_for_writes = False
                self._update_reading()

        def _update_reading(self) -> None:
            pause = self._paused_for_queue or self._paused_for_writes
            if pause == self.read_paused or self.transport.is_closing():
                return
            self.read_paused = pause
            if pause:
                if not self._pause_logged:  # once per connection: a flood pauses often
                    self._pause_logged = True
                    scope = getattr(self, "scope", None) or {}
                    logger.info(
                        "pausing reads from a WebSocket caller: %s (connection id %s, peer %s)",
                        "its messages wait for the app"
                        if self._paused_for_queue
                        else "it does not read what we send",
                        _connection_id_of(str(scope.get("path", "")).encode("utf-8", "replace")),
                        _peer_of(self.transport),
                    )
                self.transport.pause_reading()
            else:
                self.transport.resume_reading()

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
            self._queued_bytes += len(message)
            if not self._paused_for_queue and self._queued_bytes > WS_QUEUE_HIGH_WATER:
                self._paused_for_queue = True
                self._update_reading()

        def _fail_invalid_utf8(self) -> None:
            self.conn.send_close(1007)
            self.handle_parser_exception()

        async def receive(self) -> Any:
            message = await self.queue.get()
            payload = websocket_payload(message)
            if payload is not None:
                self._queued_bytes -= len(payload)
            if self._paused_for_queue and self._queued_bytes <= WS_QUEUE_LOW_WATER:
                self._paused_for_queue = False
                self._update_reading()
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
            self._queued_bytes = 0
            self._paused_for_queue = self._paused_for_writes = False
            self._update_reading()

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
