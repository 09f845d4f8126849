"""The asyncio shell around one tunnel's sans-I/O :class:`~pipegate_protocol.Connection`.

Both roles run this same code; a role subclass adds only what differs (the server:
opening streams for public requests, its registry and relay errors; the client:
running a handler per opened stream, reconnect bookkeeping). Its parts:

* **Receiving** is pushed in by the role's reader (:meth:`TunnelShell.receive`,
  :meth:`TunnelShell.receive_batch`): each message goes through the core, and what
  comes out is dispatched: stream messages to their :class:`StreamChannel`, window
  updates to its senders, hello / go-away / open / reset to the role's hooks. A
  protocol error closes the tunnel with the error's close code (ER-1).
* **Sending** keeps the order in which the core produced messages. :meth:`flush`
  writes at once when nothing is queued and the transport is not backed up (the
  usual case: no task switch); otherwise the messages join a queue that only the
  writer task sends, so a cancelled stream task can never lose or duplicate part of
  it. :meth:`kick` always leaves the writing to the writer, so that what the reader
  and acknowledgements produce in one loop turn leaves in one write.
* **Backpressure**: the queue is bounded in bytes. Senders wait (:meth:`writable`)
  while more than :data:`HIGH_WATER` bytes are queued and go on below
  :data:`LOW_WATER`; the reader never waits, so window updates and pongs from the
  peer are always read even when our output is backed up.
* **Liveness**: the peer's hello must arrive within ``hello_timeout`` (HS-2, closed
  with 4004); a :class:`Heartbeat` pings (LV-2) and closes a silent tunnel with 4005.
* **Shutdown**: :meth:`goaway` (LV-4), :meth:`wait_idle`, and :meth:`close`, which
  fails every stream, sends what is queued, then the close frame, and gives up on a
  peer that does not take it within :data:`CLOSE_TIMEOUT` seconds.

Bound on what one tunnel holds in this layer: the write queue, at most
:attr:`TunnelShell.queue_limit` = ``HIGH_WATER`` (1 MiB) + one data frame of the peer's
``max_frame_size`` (senders check the mark before each frame, one loop turn at a time)
+ ``CONTROL_SLACK`` (1 MiB of pongs, window updates and resets); a peer that keeps
asking (pings) without reading the answers past that is closed with 1008 (LV-1). Plus,
per stream, its receive window of delivered data (enforced by the core).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections import deque
from dataclasses import dataclass

from pipegate_protocol import (
    Connection,
    Data,
    GoAway,
    GoAwayReason,
    Hello,
    Message,
    Open,
    RemoteProtocolError,
    Reset,
    ResetCode,
    Response,
    WebSocketClose,
    WebSocketData,
    WindowUpdate,
)
from pipegate_protocol.errors import CloseCode

from ._channel import StreamChannel
from ._observer import StreamObserver
from ._transport import MessageTransport
from .errors import StreamGone, TransportClosed

__all__ = ["CLOSE_TIMEOUT", "HIGH_WATER", "LOW_WATER", "Heartbeat", "TunnelShell"]

logger = logging.getLogger("pipegate.tunnel")

#: Senders wait while more than this many bytes are queued for the writer ...
HIGH_WATER = 1024 * 1024
#: ... and go on once the queue is down to this.
LOW_WATER = 256 * 1024
#: Seconds the peer gets to take our close frame before the connection is dropped.
CLOSE_TIMEOUT = 2.0
#: Bytes of control messages (pongs, window updates, resets) the write queue may hold
#: beyond what senders can add; past it the peer is not reading what it asks for.
CONTROL_SLACK = 1024 * 1024


@dataclass(frozen=True)
class Heartbeat:
    """When to ping the peer and when to give it up (LV-2).

    A ping goes out every ``interval`` seconds, or, with ``only_when_silent``, only
    once the peer has been silent that long. A tunnel whose peer sent nothing at all
    for ``timeout`` seconds is closed with 4005.
    """

    interval: float
    timeout: float
    only_when_silent: bool = False


class TunnelShell:
    """One tunnel WebSocket and the streams over it; see the module docstring.

    Subclasses override the ``_on_*`` hooks, and :meth:`stream_gone` /
    :meth:`reset_error` to fail streams with their own exception types.
    """

    def __init__(
        self,
        conn: Connection,
        transport: MessageTransport,
        *,
        connection_id: str,
        heartbeat: Heartbeat,
        hello_timeout: float,
        observer: StreamObserver | None = None,
        log: logging.Logger = logger,
    ) -> None:
        self.conn = conn
        #: Where the shell's one-line events go (each role passes its own logger).
        self.log = log
        self.transport = transport
        #: The tunnel's connection id, for logs.
        self.connection_id = connection_id
        self.heartbeat = heartbeat
        self.hello_timeout = hello_timeout
        self.observer = observer
        self.loop = asyncio.get_running_loop()
        self.closed = False
        #: Our close code and reason, once we closed the tunnel.
        self.close_code: int | None = None
        self.close_reason = ""
        self.last_received = self.loop.time()
        self._channels: dict[int, StreamChannel] = {}
        self._outgoing: deque[str | bytes] = deque()
        self._buffered = 0
        self._sending = False
        self._closing = False
        self._wake_writer = asyncio.Event()
        self._drained = asyncio.Event()
        self._drained.set()
        self._hello = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._done = asyncio.Event()
        self._ping_ids = itertools.count(1)

    # ------------------------------------------------------------ queries

    @property
    def ready(self) -> bool:
        """True once the peer's hello arrived and the tunnel is not closed."""
        return not self.closed and self.conn.peer_hello is not None

    @property
    def active_streams(self) -> int:
        return len(self._channels)

    @property
    def is_writable(self) -> bool:
        """False while the write queue is above its high-water mark."""
        return self._drained.is_set()

    async def writable(self) -> None:
        """Wait until the write queue is below its low-water mark (or the tunnel closed)."""
        await self._drained.wait()

    async def wait_idle(self) -> None:
        """Return once no stream is in use."""
        await self._idle.wait()

    async def wait_closed(self) -> None:
        await self._done.wait()

    async def wait_hello(self) -> bool:
        """Wait for the peer's hello: True once it arrived and the tunnel is open, False
        when the tunnel ended first (the hello timeout ends it, so this returns)."""
        if self.conn.peer_hello is None and not self.closed:
            waits = [
                asyncio.ensure_future(self._hello.wait()),
                asyncio.ensure_future(self._done.wait()),
            ]
            try:
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for wait in waits:
                    wait.cancel()
        return self.conn.peer_hello is not None and not self.closed

    # ------------------------------------------------------------ running

    async def run(self) -> None:
        """Serve the tunnel until it ends: the reader (:meth:`_read_loop`), the writer
        and the heartbeat run until the transport is lost or the close completes."""
        self.flush()  # our hello
        tasks = [
            self.loop.create_task(self._write_loop()),
            self.loop.create_task(self._read_loop()),
            self.loop.create_task(self._keep_alive()),
        ]
        try:
            await self._done.wait()
        finally:
            self._terminate(self.tunnel_gone("closed"))
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _read_loop(self) -> None:
        """Feed received messages to :meth:`receive` until the transport is lost, then
        call :meth:`lost`. The role's reader; a push-only transport may just wait."""
        raise NotImplementedError

    # ------------------------------------------------------------ receiving

    def receive(self, payload: str | bytes) -> None:
        """One message from the peer."""
        if self.closed:
            return
        self.last_received = self.loop.time()
        self._process(payload)
        self.kick()

    def receive_batch(self, payloads: list[str | bytes]) -> None:
        """Messages from the peer that arrived together; their output leaves together."""
        if self.closed:
            return
        self.last_received = self.loop.time()
        for payload in payloads:
            if not self._process(payload):
                return
        self.kick()

    def _process(self, payload: str | bytes) -> bool:
        try:
            message = self.conn.receive(payload)
        except RemoteProtocolError as exc:
            self.log.warning(
                "tunnel protocol error: id=%s close=%d error=%s",
                self.connection_id,
                exc.close_code,
                exc,
            )
            self._on_protocol_error(exc)
            self.close(int(exc.close_code), exc.reason)
            return False
        if message is not None:
            self._dispatch(message)
        return True

    def _dispatch(self, message: Message) -> None:
        observer = self.observer
        if isinstance(message, Data):
            channel = self._channels.get(message.stream_id)
            if channel is not None:
                channel.bytes_received += len(message.data)
                if observer is not None:
                    observer.body(channel, message.data, sent=False)
                channel.deliver(message)
        elif isinstance(message, WindowUpdate):
            channel = self._channels.get(message.stream_id)
            if channel is not None:
                channel.window_opened()
        elif isinstance(message, Open):
            self._on_open(message)
        elif isinstance(message, Response):
            channel = self._channels.get(message.stream_id)
            if channel is not None:
                if message.status >= 200 or message.status == 101:
                    channel.head_passed(message.status, message.headers)
                channel.deliver(message)
        elif isinstance(message, WebSocketData):
            channel = self._channels.get(message.stream_id)
            if channel is not None:
                channel.bytes_received += len(message.data)
                if observer is not None:
                    observer.websocket_message(
                        channel, message.data, sent=False, text=message.text, fin=message.fin
                    )
                channel.deliver(message)
        elif isinstance(message, WebSocketClose):
            channel = self._channels.get(message.stream_id)
            if channel is not None:
                if observer is not None:
                    observer.websocket_close(channel, message.code, message.reason, sent=False)
                channel.deliver(message)
        elif isinstance(message, Reset):
            channel = self._channels.get(message.stream_id)
            if channel is not None:
                channel.fail(self.reset_error(message))
                self._on_reset(channel, message)
        elif isinstance(message, Hello):
            self._hello.set()
            self._on_hello(message)
        elif isinstance(message, GoAway):
            self._on_goaway(message)

    # ------------------------------------------------------------ role hooks

    def _on_open(self, message: Open) -> None:
        """The peer opened a stream (client role)."""

    def _on_hello(self, message: Hello) -> None:
        """The peer's hello arrived."""

    def _on_goaway(self, message: GoAway) -> None:
        """The peer sent go-away."""

    def _on_reset(self, channel: StreamChannel, message: Reset) -> None:
        """The peer reset a stream; the channel has already been failed."""

    def _on_protocol_error(self, error: RemoteProtocolError) -> None:
        """The peer broke the protocol; the tunnel is closed right after."""

    def _on_closed(self) -> None:
        """The tunnel is closed (called once, before streams are failed)."""

    def stream_gone(self, channel: StreamChannel) -> BaseException:
        """The exception for sending on a stream that no longer exists."""
        return StreamGone(f"stream {channel.stream_id} is gone")

    def reset_error(self, message: Reset) -> BaseException:
        """The exception a stream fails with when the peer resets it."""
        return StreamGone(f"stream {message.stream_id} reset by the peer: {message.code.value}")

    def tunnel_gone(self, what: str) -> BaseException:
        """The exception streams fail with when the tunnel ends (``what`` happened)."""
        return StreamGone(f"the tunnel for id {self.connection_id!r} {what}")

    # ------------------------------------------------------------ streams

    def register(self, channel: StreamChannel) -> None:
        """Track a new stream's channel (and tell the observer)."""
        self._channels[channel.stream_id] = channel
        self._idle.clear()
        if self.observer is not None:
            self.observer.stream_opened(channel)

    def channel(self, stream_id: int) -> StreamChannel | None:
        return self._channels.get(stream_id)

    def finish(self, channel: StreamChannel) -> bool:
        """The stream's user is done: forget the channel and cancel the stream if it is
        still open. False when it was finished already."""
        if self._channels.pop(channel.stream_id, None) is None:
            return False
        channel.ended_at = self.loop.time()
        if self.observer is not None:
            self.observer.stream_ended(channel)
        if not self._channels:
            self._idle.set()
        if not self.closed and self.conn.is_open(channel.stream_id):
            self.conn.reset_stream(channel.stream_id, ResetCode.CANCELLED)
            self.flush()
        return True

    # ------------------------------------------------------------ sending

    def flush(self) -> None:
        """Send what the core queued: at once when nothing is waiting before it and
        the transport is not backed up, else through the writer task."""
        out = self.conn.data_to_send()
        if not out:
            return
        if not self._outgoing and not self._sending:
            try:
                if self.transport.send_now(out):
                    return
            except TransportClosed as exc:
                self.lost(exc.code)
                return
        self._enqueue(out)

    def kick(self) -> None:
        """Have the writer task send what the core queued (no wake-up for nothing)."""
        out = self.conn.data_to_send()
        if out:
            self._enqueue(out)

    def _enqueue(self, out: list[str | bytes]) -> None:
        for item in out:
            self._buffered += len(item)
        self._outgoing.extend(out)
        self._wake_writer.set()
        if self._buffered > HIGH_WATER:
            self._drained.clear()
            if self._buffered > self.queue_limit and not self.closed:
                # Senders stop at HIGH_WATER, so only what the reader answers (pongs
                # to a ping flood) gets here: a peer that asks and does not read.
                self.log.warning(
                    "tunnel peer not reading: id=%s queued=%d", self.connection_id, self._buffered
                )
                self.close(int(CloseCode.POLICY_VIOLATION), "peer does not read")

    @property
    def queue_limit(self) -> int:
        """The most bytes the write queue may hold: :data:`HIGH_WATER`, one data frame
        of the peer's ``max_frame_size`` and :data:`CONTROL_SLACK`. Past it the tunnel
        is closed with 1008 (LV-1)."""
        frame = self.conn.max_data_size if self.conn.peer_hello is not None else 0
        return HIGH_WATER + frame + CONTROL_SLACK

    async def _write_loop(self) -> None:
        transport = self.transport
        outgoing = self._outgoing
        while True:
            await self._wake_writer.wait()
            self._wake_writer.clear()
            while outgoing:
                batch = list(outgoing)
                outgoing.clear()
                self._sending = True
                try:
                    if not transport.send_now(batch):
                        await transport.send(batch)
                except TransportClosed as exc:
                    self.lost(exc.code)
                    return
                finally:
                    self._sending = False
                for item in batch:
                    self._buffered -= len(item)
                if self._buffered <= LOW_WATER:
                    self._drained.set()
            if self._closing:
                await self._send_close()
                return

    async def _send_close(self) -> None:
        try:
            await asyncio.wait_for(
                self.transport.close(self.close_code or 1000, self.close_reason), CLOSE_TIMEOUT
            )
        except (TimeoutError, TransportClosed):
            self.transport.abort()
        self._done.set()

    def ping(self) -> None:
        """Send a ping (LV-1); any message from the peer counts as its answer."""
        if not self.closed:
            self.conn.send_ping(next(self._ping_ids))
            self.kick()

    # ------------------------------------------------------------ liveness

    async def _keep_alive(self) -> None:
        loop = self.loop
        try:
            await asyncio.wait_for(self._hello.wait(), self.hello_timeout)
        except TimeoutError:
            self.log.warning(
                "tunnel hello timeout: id=%s waited=%.1fs", self.connection_id, self.hello_timeout
            )
            self.close(int(CloseCode.HELLO_TIMEOUT), "no hello received in time")
            return
        beat = self.heartbeat
        next_ping = loop.time() + beat.interval
        while not self.closed:
            now = loop.time()
            silent = now - self.last_received
            if silent >= beat.timeout:
                self.log.warning(
                    "tunnel heartbeat timeout: id=%s silent=%.1fs", self.connection_id, silent
                )
                self.close(int(CloseCode.HEARTBEAT_TIMEOUT), "heartbeat timeout")
                return
            if now >= next_ping:
                if not beat.only_when_silent or silent >= beat.interval:
                    self.ping()
                next_ping = now + beat.interval
            await asyncio.sleep(min(next_ping, self.last_received + beat.timeout) - now)

    # ------------------------------------------------------------ shutdown

    def goaway(self, reason: GoAwayReason = GoAwayReason.SHUTDOWN, message: str = "") -> None:
        """Announce that no new streams will be opened (LV-4); streams in flight go on."""
        if self.closed or self.conn.goaway_sent or self.conn.peer_hello is None:
            return
        self.conn.send_goaway(reason, message)
        self.flush()

    def close(self, code: int, reason: str) -> None:
        """Close the tunnel: fail its streams, send what is queued and a close frame.
        Idempotent; the peer gets :data:`CLOSE_TIMEOUT` seconds to take it."""
        if self.closed:
            return
        self.log.info(
            "tunnel closing: id=%s code=%d reason=%s", self.connection_id, code, reason or "-"
        )
        self.close_code = code
        self.close_reason = reason
        self._terminate(self.tunnel_gone(f"closed: {reason or code}"))
        self._closing = True
        self._wake_writer.set()
        self.loop.call_later(CLOSE_TIMEOUT + 0.5, self._abandon)

    def _abandon(self) -> None:
        if not self._done.is_set():
            self.transport.abort()
            self._done.set()

    def lost(self, code: int) -> None:
        """The transport is gone (closed by the peer, or dropped)."""
        if not self.closed:
            self.log.info("tunnel disconnected: id=%s code=%s", self.connection_id, code)
            self._terminate(self.tunnel_gone("disconnected"))
        self._done.set()

    def _terminate(self, error: BaseException) -> None:
        if self.closed:
            return
        self.closed = True
        self._on_closed()
        self.conn.close()
        for channel in list(self._channels.values()):
            channel.fail(error, drain_first=True)
        self._drained.set()
