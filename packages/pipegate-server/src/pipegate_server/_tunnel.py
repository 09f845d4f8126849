"""One connected tunnel: the I/O shell around a server-side :class:`Connection`.

A :class:`Tunnel` owns the accepted tunnel WebSocket (as ASGI ``receive``/``send``)
and runs three tasks for it:

* the *reader* feeds every WebSocket message to the sans-I/O core and hands what
  comes out to the :class:`StreamChannel` of its stream;
* the *writer* is the only task that sends on the WebSocket, so that messages leave in
  exactly the order the core queued them;
* the *ticker* enforces the hello timeout and the heartbeat (ping every interval;
  a tunnel silent for ``heartbeat_timeout`` is closed with 4005 and its id freed).

Relays (one per public request) talk to the tunnel through :meth:`Tunnel.open_stream`,
:meth:`Tunnel.send_data`, :meth:`Tunnel.acknowledge` and :meth:`Tunnel.finish`. Memory
is bounded twice: each stream holds at most its flow-control window of received bytes
(the core enforces it), and relays wait while the writer's queue is above a high-water
mark, so a slow tunnel never makes the server buffer a whole body.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Sequence
from typing import TYPE_CHECKING

from pipegate_protocol import (
    Connection,
    Data,
    GoAway,
    GoAwayReason,
    Hello,
    Message,
    ProtocolVersion,
    RemoteProtocolError,
    Reset,
    ResetCode,
    Response,
    Role,
    StreamKind,
    WebSocketClose,
    WebSocketData,
    WindowUpdate,
)
from pipegate_protocol.errors import CloseCode, LocalProtocolError

from ._asgi import Receive, Send, websocket_payload
from ._auth import Credential
from ._direct import DirectWebSocket
from ._settings import ServerSettings
from .errors import (
    BodyTooLargeError,
    HeadersTooLargeError,
    RelayError,
    ResponseTimeoutError,
    StreamResetError,
    TunnelBusyError,
    TunnelClosedError,
)

if TYPE_CHECKING:
    from ._registry import TunnelRegistry

__all__ = ["StreamChannel", "Tunnel"]

logger = logging.getLogger("pipegate.server")

ASGIReceive = Receive
ASGISend = Send

#: Relays pause while more than this many bytes wait for the writer ...
_HIGH_WATER = 1024 * 1024
#: ... and resume once the queue is below this.
_LOW_WATER = 256 * 1024
#: Seconds the writer gets to deliver our close frame before the tunnel is abandoned.
_CLOSE_TIMEOUT = 2.0

_RESET_STATUS = {
    ResetCode.TIMEOUT: ResponseTimeoutError,
    ResetCode.TOO_LARGE: BodyTooLargeError,
    ResetCode.REFUSED: TunnelBusyError,
}


class _Close:
    __slots__ = ("code", "reason")

    def __init__(self, code: int, reason: str) -> None:
        self.code = code
        self.reason = reason


class StreamChannel:
    """What one relay sees of its stream: incoming messages, failure and window waits.

    The reader task :meth:`deliver`\\ s messages in order. A failure (reset by the
    client, caller gone, body too large) wins over anything still queued, because
    after it the stream's outcome is decided. A lost tunnel is different: what the
    client sent before it went away is still delivered first (``drain_first``), so a
    response that arrived whole is not thrown away by a close that follows it.
    """

    __slots__ = (
        "_drain_first",
        "_items",
        "_loop",
        "_waiter",
        "_window_waiter",
        "failure",
        "progress_at",
        "request_done",
        "response_done",
        "stream_id",
    )

    def __init__(self, stream_id: int, loop: asyncio.AbstractEventLoop) -> None:
        self.stream_id = stream_id
        self._loop = loop
        self._items: deque[Message] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._window_waiter: asyncio.Future[None] | None = None
        self.failure: RelayError | None = None
        self._drain_first = False
        #: Loop time of the last progress of the request (open, body sent); the
        #: response timeout counts from here.
        self.progress_at = loop.time()
        self.request_done = False
        self.response_done = False

    @property
    def pending(self) -> int:
        """Messages delivered and not yet taken."""
        return len(self._items)

    def deliver(self, item: Message) -> None:
        self._items.append(item)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def fail(self, error: RelayError, *, drain_first: bool = False) -> None:
        """Decide the stream's outcome; the first failure wins. Wakes every waiter.

        With ``drain_first``, messages already delivered are still handed out by
        :meth:`next` before the failure is raised.
        """
        if self.failure is None:
            self.failure = error
            self._drain_first = drain_first
        for waiter in (self._waiter, self._window_waiter):
            if waiter is not None and not waiter.done():
                waiter.set_result(None)

    def window_opened(self) -> None:
        waiter = self._window_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def next(self, within: float | None = None) -> Message:
        """The next message; raises the failure, or :class:`TimeoutError` after ``within`` s."""
        while True:
            if self._items and (self.failure is None or self._drain_first):
                return self._items.popleft()
            if self.failure is not None:
                raise self.failure
            waiter = self._waiter = self._loop.create_future()
            handle = None
            if within is not None:
                handle = self._loop.call_later(within, _wake, waiter)
            try:
                await waiter
            finally:
                self._waiter = None
                if handle is not None:
                    handle.cancel()
            if self.failure is None and not self._items:
                raise TimeoutError

    async def wait_window(self) -> None:
        if self.failure is not None:
            raise self.failure
        waiter = self._window_waiter = self._loop.create_future()
        try:
            await waiter
        finally:
            self._window_waiter = None
        if self.failure is not None:
            raise self.failure


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


class Tunnel:
    """One accepted tunnel WebSocket and the streams relayed over it."""

    def __init__(
        self,
        *,
        connection_id: str,
        credential: Credential,
        settings: ServerSettings,
        registry: TunnelRegistry,
        receive: ASGIReceive,
        send: ASGISend,
        version: ProtocolVersion,
        public_url: str,
        remote: str,
        agent: str,
        direct: DirectWebSocket | None = None,
    ) -> None:
        self.connection_id = connection_id
        self.credential = credential
        self.settings = settings
        self.registry = registry
        self.remote = remote
        self.public_url = public_url
        self._receive = receive
        self._send = send
        self._direct = direct
        self.conn = Connection(
            Role.SERVER,
            version=version,
            limits=settings.limits(),
            agent=agent,
            connection_id=connection_id,
            public_url=public_url,
        )
        self._loop = asyncio.get_running_loop()
        self.closed = False
        self._channels: dict[int, StreamChannel] = {}
        self._slot_waiters: deque[asyncio.Future[None]] = deque()
        self._outgoing: deque[str | bytes | _Close] = deque()
        self._buffered = 0
        self._wake_writer = asyncio.Event()
        self._sending = False
        self._drained = asyncio.Event()
        self._drained.set()
        self._done = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._hello = asyncio.Event()
        self.accepted_at = self._loop.time()
        self.last_received = self.accepted_at
        self._ping_id = 0

    # ------------------------------------------------------------------ queries

    @property
    def ready(self) -> bool:
        """True once the client's hello arrived and the tunnel is not closed."""
        return not self.closed and self.conn.peer_hello is not None

    @property
    def supports_websocket(self) -> bool:
        return self.conn.peer_supports_websocket

    @property
    def active_streams(self) -> int:
        return len(self._channels)

    async def wait_idle(self) -> None:
        """Return once no relay is using the tunnel."""
        await self._idle.wait()

    # ------------------------------------------------------------------ lifecycle

    async def run(self) -> None:
        """Serve the tunnel until it closes; called right after the WebSocket was accepted."""
        self._flush()
        tasks = [
            self._loop.create_task(self._write_loop()),
            self._loop.create_task(self._read_loop()),
            self._loop.create_task(self._tick_loop()),
        ]
        if self._direct is not None:
            self._direct.attach_sink(self._on_direct_message)
        try:
            await self._done.wait()
        finally:
            self._terminate(TunnelClosedError(self._gone_message("closed")))
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    def close(self, code: int, reason: str) -> None:
        """Close the tunnel: fail its streams, free its id, send a close frame. Idempotent."""
        if self.closed:
            return
        logger.info(
            "tunnel closing: id=%s code=%d reason=%s", self.connection_id, code, reason or "-"
        )
        self._terminate(TunnelClosedError(self._gone_message(f"closed: {reason or code}")))
        self._outgoing.append(_Close(code, reason))
        self._wake_writer.set()
        self._loop.call_later(_CLOSE_TIMEOUT, self._done.set)

    def goaway(self, reason: GoAwayReason = GoAwayReason.SHUTDOWN, message: str = "") -> None:
        """Announce that no new streams will be opened; streams in flight go on."""
        if self.closed:
            return
        self.conn.send_goaway(reason, message)
        self._flush()
        self._fail_slot_waiters(TunnelBusyError(self._gone_message("going away")))

    def _gone_message(self, what: str) -> str:
        return f"the tunnel for id {self.connection_id!r} {what}"

    def _terminate(self, error: RelayError) -> None:
        if self.closed:
            return
        self.closed = True
        self.registry.release(self)
        self.conn.close()
        for channel in list(self._channels.values()):
            channel.fail(error, drain_first=True)
        self._fail_slot_waiters(error)
        self._drained.set()

    def _lost(self, code: int) -> None:
        if not self.closed:
            logger.info("tunnel disconnected: id=%s code=%s", self.connection_id, code)
            self._terminate(TunnelClosedError(self._gone_message("disconnected")))
        self._done.set()

    # ------------------------------------------------------------------ tasks

    async def _read_loop(self) -> None:
        receive = self._receive
        while True:
            event = await receive()
            kind = event["type"]
            if kind == "websocket.disconnect":
                self._lost(event.get("code", 1006))
                return
            if kind == "websocket.receive" and (payload := websocket_payload(event)) is not None:
                self._on_message(payload)

    def _on_direct_message(self, payload: str | bytes) -> None:
        """The direct line's sink: runs inside the protocol's ``data_received``, so
        nothing may escape it."""
        try:
            self._on_message(payload)
        except Exception:
            logger.exception("tunnel internal error: id=%s", self.connection_id)
            self.close(CloseCode.INTERNAL_ERROR, "internal error")

    def _on_message(self, payload: str | bytes) -> None:
        """One message from the client, through ASGI or the direct line."""
        if self.closed:
            return
        self.last_received = self._loop.time()
        try:
            message = self.conn.receive(payload)
        except RemoteProtocolError as exc:
            logger.warning(
                "tunnel protocol error: id=%s close=%d error=%s",
                self.connection_id,
                exc.close_code,
                exc,
            )
            self.close(exc.close_code, exc.reason)
            return
        if message is not None:
            self._dispatch(message)
        self._flush()

    def _dispatch(self, message: Message) -> None:
        if isinstance(message, Data | WebSocketData | Response | WebSocketClose):
            channel = self._channels.get(message.stream_id)
            if channel is not None:
                channel.deliver(message)
        elif isinstance(message, WindowUpdate):
            channel = self._channels.get(message.stream_id)
            if channel is not None:
                channel.window_opened()
        elif isinstance(message, Reset):
            channel = self._channels.get(message.stream_id)
            if channel is not None:
                error_type = _RESET_STATUS.get(message.code, StreamResetError)
                text = message.message or message.code.value
                error = error_type(f"the tunnel client reset the stream: {text}")
                if isinstance(error, StreamResetError):
                    error.reset_code = message.code.value
                channel.fail(error)
        elif isinstance(message, Hello):
            logger.info(
                "tunnel ready: id=%s agent=%s max_streams=%d",
                self.connection_id,
                message.agent or "-",
                message.limits.max_concurrent_streams,
            )
            self._hello.set()
            self._wake_slot_waiters()
        elif isinstance(message, GoAway):
            logger.info(
                "tunnel go-away from client: id=%s reason=%s",
                self.connection_id,
                message.reason.value,
            )
            self.registry.release(self)
            self._fail_slot_waiters(TunnelBusyError(self._gone_message("is going away")))
            if not self._channels:
                self.close(CloseCode.NORMAL, "go-away received and no streams left")

    async def _write_loop(self) -> None:
        while True:
            await self._wake_writer.wait()
            self._wake_writer.clear()
            await self._send_queued()
            if self._done.is_set():
                return

    async def _send_queued(self) -> None:
        """Send everything queued, in order, unless another coroutine is already doing so.

        The writer task calls this when woken; relays call it right after queueing
        (:meth:`_flush_now`), which saves a task switch per request on an idle tunnel.
        One sender at a time keeps the messages in the order the core produced them;
        an item leaves the queue only once sent, so a cancelled sender loses nothing,
        and the writer is woken for anything left behind.
        """
        if self._sending:
            return
        self._sending = True
        send = self._send
        direct = self._direct
        outgoing = self._outgoing
        try:
            while outgoing:
                item = outgoing[0]
                if isinstance(item, _Close):
                    outgoing.clear()
                    await send(
                        {"type": "websocket.close", "code": item.code, "reason": item.reason}
                    )
                    self._done.set()
                    return
                if direct is not None:
                    if not direct.can_send_now():
                        await direct.wait_writable()
                    direct.send_message(item)
                elif isinstance(item, bytes):
                    await send({"type": "websocket.send", "bytes": item})
                else:
                    await send({"type": "websocket.send", "text": item})
                self._buffered -= len(item)
                outgoing.popleft()
                if self._buffered <= _LOW_WATER:
                    self._drained.set()
        except OSError:  # uvicorn's ClientDisconnected: the peer is gone
            outgoing.clear()
            self._lost(1006)
        finally:
            self._sending = False
            if outgoing:
                self._wake_writer.set()

    async def _flush_now(self) -> None:
        """Queue the core's output and send it from the calling coroutine, unless a
        sender is active: it keeps sending until the queue is empty, so it takes ours
        too and the writer task need not be woken."""
        if self._queue_output() and not self._sending:
            await self._send_queued()

    async def _tick_loop(self) -> None:
        settings = self.settings
        loop = self._loop
        try:
            await asyncio.wait_for(self._hello.wait(), settings.hello_timeout)
        except TimeoutError:
            self.close(CloseCode.HELLO_TIMEOUT, "no hello received in time")
            return
        while not self.closed:
            await asyncio.sleep(settings.heartbeat_interval)
            silent = loop.time() - self.last_received
            if silent > settings.heartbeat_timeout:
                logger.warning(
                    "tunnel heartbeat timeout: id=%s silent=%.1fs", self.connection_id, silent
                )
                self.close(CloseCode.HEARTBEAT_TIMEOUT, "heartbeat timeout")
                return
            if not self.closed:
                self._ping_id += 1
                self.conn.send_ping(self._ping_id)
                self._flush()

    def _flush(self) -> None:
        """Queue the core's output for the writer task."""
        if self._queue_output():
            self._wake_writer.set()

    def _queue_output(self) -> bool:
        out = self.conn.data_to_send()
        if not out:
            return False
        for item in out:
            self._buffered += len(item)
        self._outgoing.extend(out)
        if self._buffered > _HIGH_WATER:
            self._drained.clear()
        return True

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
    ) -> StreamChannel:
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
        except LocalProtocolError as exc:
            # The core refuses a head larger than the client's max_frame_size, or a
            # field the protocol cannot carry (a method over 64 bytes, a control byte).
            if "max_frame_size" in str(exc):
                raise HeadersTooLargeError(f"the request head cannot be relayed: {exc}") from None
            raise RelayError(f"the request cannot be relayed: {exc}", status=400) from None
        except ValueError as exc:  # older cores let pydantic's ValidationError through
            raise RelayError(
                f"the request cannot be relayed: {_first_line(exc)}", status=400
            ) from None
        channel = StreamChannel(stream_id, self._loop)
        self._channels[stream_id] = channel
        self._idle.clear()
        try:
            await self._flush_now()
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
        deadline = self._loop.time() + self.settings.queue_timeout
        while True:
            waiter: asyncio.Future[None] = self._loop.create_future()
            self._slot_waiters.append(waiter)
            remaining = deadline - self._loop.time()
            handle = self._loop.call_later(max(remaining, 0.0), _wake, waiter)
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
            if self._loop.time() >= deadline:
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

    def _fail_slot_waiters(self, error: RelayError) -> None:
        while self._slot_waiters:
            waiter = self._slot_waiters.popleft()
            if not waiter.done():
                waiter.set_exception(error)

    async def send_data(self, channel: StreamChannel, data: bytes, *, end_stream: bool) -> None:
        """Send request body bytes, split to the window and frame size, waiting as needed."""
        await self._send_flow_controlled(channel, data, end_stream=end_stream, text=None)

    async def send_websocket_data(self, channel: StreamChannel, data: bytes, *, text: bool) -> None:
        """Send one whole public WebSocket message, fragmented as the window allows."""
        await self._send_flow_controlled(channel, data, end_stream=True, text=text)

    async def _send_flow_controlled(
        self, channel: StreamChannel, data: bytes, *, end_stream: bool, text: bool | None
    ) -> None:
        conn = self.conn
        stream_id = channel.stream_id
        total = len(data)
        if total == 0 and not end_stream:
            return
        view = memoryview(data)
        offset = 0
        while True:
            if channel.failure is not None:
                raise channel.failure
            if not self._drained.is_set():
                await self._drained.wait()
                continue
            if not conn.is_open(stream_id):
                raise StreamResetError("the stream ended")
            remaining = total - offset
            size = min(remaining, conn.send_window(stream_id), conn.max_data_size)
            if size == 0 and remaining > 0:
                await channel.wait_window()
                continue
            last = offset + size == total
            chunk = data if size == total else bytes(view[offset : offset + size])
            if text is None:
                conn.send_data(stream_id, chunk, end_stream=end_stream and last)
            else:
                conn.send_websocket_data(stream_id, chunk, text=text, fin=last)
            await self._flush_now()
            offset += size
            if last:
                return

    def send_websocket_close(self, channel: StreamChannel, code: int, reason: str) -> None:
        if self.closed:
            return
        self.conn.send_websocket_close(channel.stream_id, code, reason)
        self._flush()

    def acknowledge(self, channel: StreamChannel, size: int) -> None:
        """Return ``size`` consumed bytes of credit to the client (after they left us)."""
        if self.closed:
            return
        self.conn.acknowledge(channel.stream_id, size)
        self._flush()

    def reset(self, channel: StreamChannel, code: ResetCode, message: str = "") -> None:
        if self.closed:
            return
        self.conn.reset_stream(channel.stream_id, code, message)
        self._flush()

    def finish(self, channel: StreamChannel) -> None:
        """The relay is done with the stream; cancel it if still open and free its slot."""
        if self._channels.pop(channel.stream_id, None) is None:
            return
        if not self._channels:
            self._idle.set()
        if self.closed:
            return
        if self.conn.is_open(channel.stream_id):
            self.conn.reset_stream(channel.stream_id, ResetCode.CANCELLED)
            self._flush()
        if self._slot_waiters:
            self._wake_slot_waiters()
        if self.conn.goaway_received is not None and not self._channels:
            self.close(CloseCode.NORMAL, "go-away received and no streams left")


def _first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return " ".join(line.strip() for line in text[:3])
