"""One tunnel session: a connected WebSocket and the protocol core that runs over it.

Tasks of a session:

* the *reader* (:meth:`TunnelSession.run`) feeds every WebSocket message to the core
  and dispatches the result; it never waits on the network to write, so window updates
  and pongs from the server are always read even when our output is backed up;
* the *writer* flushes what the reader queued (pongs, window updates) when kicked;
* one *stream task* per stream (HTTP relay or WebSocket relay), which waits for the
  socket when it sends, so a slow server slows the local app down instead of filling
  memory;
* the *heartbeat* pings a silent server and closes the tunnel when no answer comes.

Every send goes through :meth:`TunnelSession.flush`, which drains the core's queue
under one lock so that messages leave in the order the core produced them.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, overload

from pipegate_protocol import (
    CAPABILITY_WEBSOCKET,
    CloseCode,
    Connection,
    Data,
    GoAway,
    GoAwayReason,
    Hello,
    Open,
    ProtocolVersion,
    RemoteProtocolError,
    Reset,
    ResetCode,
    Role,
    StreamKind,
    WebSocketClose,
    WebSocketData,
    WindowUpdate,
)
from websockets import typing as ws_typing
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed
from websockets.frames import Frame, Opcode
from websockets.protocol import State

from ._local import LocalApp, relay_http
from ._settings import ClientSettings
from ._stream import StreamChannel, StreamGone
from ._websocket import relay_websocket
from ._wsframes import (
    NEED_MORE,
    NOT_PLAIN,
    OP_BINARY,
    OP_PING,
    OP_TEXT,
    MaskSource,
    client_frame,
    library_at_frame_boundary,
    scan_server_frame,
)

__all__ = ["SessionOutcome", "TunnelConnection", "TunnelSession"]

logger = logging.getLogger("pipegate_client")

AGENT = "pipegate-client/1.0"


class TunnelConnection(ClientConnection):
    """The tunnel WebSocket, able to send several messages in one socket write and to
    hand over every message received since the last look in one batch.

    A small response is a head and a body frame: written together, they cost one
    system call instead of two and wake the server once (the connection is created by
    ``connect(..., create_connection=TunnelConnection)``).

    Frames of *different* streams are not held back to share a write: measured with
    ``benchmarks/ab_tunnel.py``, gathering a whole loop turn's responses into one
    write saved CPU but cost about 9% throughput at concurrency 64, because the
    server then sat idle until the batch arrived instead of working in parallel.

    Receiving: from the first frame after the handshake (when the library's parser
    provably waits between frames), plain frames are read here
    (:func:`~pipegate_client._wsframes.scan_server_frame`) into an inbox that
    :meth:`receive_batch` empties. The first frame that is not plain (a close, a
    fragment, a bad frame) and everything after it goes to the library, whose
    messages keep their place in the inbox as a marker taken with ``recv()``.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._masks = MaskSource()
        #: Messages not yet taken, in order; None stands for one the library holds.
        self._inbox: list[str | bytes | None] = []
        self._inbox_waiter: asyncio.Future[None] | None = None
        self._inbox_paused = False
        self._lost = False
        #: None until the first data after the handshake; then True while frames are
        #: read here, False once the library reads them (for good).
        self._fast: bool | None = None
        #: The start of a plain frame that did not arrive whole: its pieces, their
        #: total size and the size of the whole frame (or of its header).
        self._held: list[bytes] | None = None
        self._held_size = 0
        self._held_need = 0

    # ------------------------------------------------------------ receiving

    async def receive_batch(self) -> list[str | bytes]:
        """Wait for messages, then take all that arrived, in order (str for text,
        bytes for binary). Raises :class:`ConnectionClosed`, as ``recv()`` does, once
        the connection is closed and every message was taken."""
        if not await self._wait_for_inbox():
            return [await super().recv()]  # raises ConnectionClosed
        inbox, self._inbox = self._inbox, []
        self._resume_inbox()
        if None not in inbox:
            return inbox  # type: ignore[return-value]  # no None in it
        batch: list[str | bytes] = []
        for message in inbox:
            # Not in a comprehension: super() needs this method's own frame.
            batch.append(await super().recv() if message is None else message)
        return batch

    @overload
    async def recv(self, decode: Literal[True]) -> str: ...

    @overload
    async def recv(self, decode: Literal[False]) -> bytes: ...

    @overload
    async def recv(self, decode: bool | None = None) -> ws_typing.Data: ...

    async def recv(self, decode: bool | None = None) -> ws_typing.Data:
        """The library's ``recv()`` (and so ``async for``), reading the inbox."""
        if not await self._wait_for_inbox():
            return await super().recv(decode)
        message = self._inbox.pop(0)
        self._resume_inbox()
        if message is None:
            return await super().recv(decode)
        if decode is True and isinstance(message, bytes):
            return message.decode()
        if decode is False and isinstance(message, str):
            return message.encode()
        return message

    async def _wait_for_inbox(self) -> bool:
        """Wait until the inbox has a message (True) or the connection is lost (False)."""
        while not self._inbox:
            if self._lost:
                return False
            waiter = self._inbox_waiter = self.loop.create_future()
            try:
                await waiter
            finally:
                self._inbox_waiter = None
        return True

    def _resume_inbox(self) -> None:
        if self._inbox_paused and len(self._inbox) <= _INBOX_HIGH_WATER:
            self._inbox_paused = False
            self.transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        if self._fast is None and self.protocol.state is State.OPEN:
            self._fast = library_at_frame_boundary(self.protocol)
        if not self._fast:
            super().data_received(data)
            return
        held = self._held
        if held is not None:
            held.append(data)
            self._held_size += len(data)
            if self._held_size < self._held_need:
                return
            self._held = None
            data = b"".join(held)
        rest = self._read_frames(data)
        if rest is not None:
            self._fast = False
            super().data_received(data[rest:])
        self._wake_reader()

    def _read_frames(self, data: bytes) -> int | None:
        """Put the plain frames of ``data`` in the inbox; the offset from which the
        library must read the rest, if any."""
        protocol = self.protocol
        max_size = protocol.max_message_size or _NO_LIMIT
        inbox = self._inbox
        pos, size = 0, len(data)
        while pos < size:
            if protocol.state is not State.OPEN:
                return pos
            opcode, start, end = scan_server_frame(data, pos, max_size)
            if opcode == NEED_MORE:
                self._held = [data[pos:]]
                self._held_size = size - pos
                self._held_need = end
                return None
            if opcode == NOT_PLAIN:
                return pos
            pos = end
            if opcode == OP_BINARY:
                inbox.append(data[start:end])
            elif opcode == OP_TEXT:
                try:
                    inbox.append(data[start:end].decode())
                except UnicodeDecodeError:
                    protocol.fail(1007, "invalid UTF-8 in a text message")  # invalid data
                    self.send_data()
                    return pos
            elif opcode == OP_PING:
                protocol.send_pong(data[start:end])
                self.send_data()
            else:
                self.acknowledge_pings(data[start:end])
        return None

    def process_event(self, event: Any) -> None:
        super().process_event(event)
        if isinstance(event, Frame) and event.fin and event.opcode in _DATA_OPCODES:
            self._inbox.append(None)  # a whole message, in the library's hands
            self._wake_reader()

    def _wake_reader(self) -> None:
        if not self._inbox:
            return
        waiter = self._inbox_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        if len(self._inbox) > _INBOX_HIGH_WATER and not self._inbox_paused:
            self._inbox_paused = True
            self.transport.pause_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self._lost = True
        waiter = self._inbox_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # ------------------------------------------------------------ sending

    async def send_many(self, messages: Sequence[str | bytes]) -> None:
        """Send ``messages`` in order (str as text, bytes as binary), in one write when
        :meth:`send_now` can; otherwise (closing, closed, paused for backpressure) by
        the library's path, which waits or raises :class:`ConnectionClosed` as it
        should."""
        if self.send_now(messages):
            return
        async with self.send_context():
            protocol = self.protocol
            for message in messages:
                if isinstance(message, str):
                    protocol.send_text(message.encode())
                else:
                    protocol.send_binary(message)

    def send_now(self, messages: Sequence[str | bytes]) -> bool:
        """Write ``messages`` at once if the connection is open and the socket not
        backed up (True); else write nothing (False).

        The messages are framed here, a whole unfragmented frame each, which is all
        the library would do, minus its per-message bookkeeping.
        """
        if self.protocol.state is not State.OPEN or self.paused:
            return False
        take = self._masks.take
        frames = [
            client_frame(OP_TEXT, message.encode(), take())
            if isinstance(message, str)
            else client_frame(OP_BINARY, message, take())
            for message in messages
        ]
        if len(frames) == 1:
            self.transport.write(frames[0])
        else:
            self.transport.writelines(frames)
        return True

    def send_data(self) -> None:
        """Write what the protocol produced: frames in one ``writelines`` (a single
        writev on uvloop), then the half-close an empty item asks for, as the library
        does it."""
        writes = self.protocol.data_to_send()
        frames = [data for data in writes if data]
        if len(frames) > 1:
            self.transport.writelines(frames)
        elif frames:
            self.transport.write(frames[0])
        if len(frames) < len(writes):
            if self.transport.can_write_eof():
                with contextlib.suppress(Exception):  # uvloop may raise RuntimeError
                    self.transport.write_eof()
            else:  # pragma: no cover - TLS
                self.transport.close()


#: The frame size limit when the library has none.
_NO_LIMIT = 2**63
_DATA_OPCODES = (Opcode.TEXT, Opcode.BINARY, Opcode.CONT)
#: Messages waiting in the inbox above which reading pauses until the reader took them.
_INBOX_HIGH_WATER = 64


@dataclass
class SessionOutcome:
    """How a session ended, for the reconnect loop."""

    #: The server's hello arrived: the tunnel worked, so backoff may start over.
    established: bool = False
    #: The server broke the protocol (we closed with its error's close code).
    protocol_error: bool = False
    #: We ended it on purpose (shutdown).
    stopped: bool = False
    #: Close code and reason, ours or the server's.
    close_code: int | None = None
    reason: str = ""


class TunnelSession:
    """Runs one connected tunnel until the WebSocket closes."""

    def __init__(
        self,
        websocket: TunnelConnection,
        settings: ClientSettings,
        local: LocalApp,
        *,
        on_established: Callable[[Hello], None],
    ) -> None:
        self.websocket = websocket
        self.settings = settings
        self.local = local
        self.connection_id = settings.connection_id
        self.conn = Connection(
            Role.CLIENT,
            version=ProtocolVersion.V1,
            limits=settings.limits,
            capabilities=[CAPABILITY_WEBSOCKET],
            agent=AGENT,
        )
        self.outcome = SessionOutcome()
        self._on_established = on_established
        self._channels: dict[int, StreamChannel] = {}
        self._tasks: dict[int, asyncio.Task[None]] = {}
        self._send_lock = asyncio.Lock()
        #: Messages taken from the core by :meth:`kick`, sent before anything newer.
        self._pending: list[str | bytes] = []
        self._kicked = asyncio.Event()
        self._idle = asyncio.Event()
        self._established = asyncio.Event()
        self._idle.set()
        self._last_received = 0.0
        self._shutdown_task: asyncio.Task[None] | None = None
        self._ping_ids = itertools.count(1)

    # ------------------------------------------------------------ sending

    async def flush(self) -> None:
        """Send what is pending and what the core queued, in order."""
        if not self._send_lock.locked():
            # No send is in progress, so what is queued may leave at once; the usual
            # case (socket open, not backed up) needs neither the lock nor a wait.
            messages, self._pending = self._pending, []
            messages.extend(self.conn.data_to_send())
            if not messages or self.websocket.send_now(messages):
                return
            self._pending = messages
        async with self._send_lock:
            messages, self._pending = self._pending, []
            messages.extend(self.conn.data_to_send())
            if messages:
                await self.websocket.send_many(messages)

    def kick(self) -> None:
        """Have the writer task send what the core queued; no wake-up for nothing.

        Most received messages (an open, body data) and most acknowledgements queue
        no output, and waking the writer for them cost a task switch each.
        """
        messages = self.conn.data_to_send()
        if messages:
            self._pending.extend(messages)
            self._kicked.set()

    async def _writer(self) -> None:
        while True:
            await self._kicked.wait()
            self._kicked.clear()
            await self.flush()

    # ------------------------------------------------------------ running

    async def run(self) -> SessionOutcome:
        """Serve the tunnel until the WebSocket closes; never raises for network or
        protocol trouble, which is reported in the returned :class:`SessionOutcome`."""
        loop = asyncio.get_running_loop()
        self._last_received = loop.time()
        helpers = [
            asyncio.create_task(self._writer(), name="pipegate-writer"),
            asyncio.create_task(self._heartbeat(), name="pipegate-heartbeat"),
        ]
        try:
            self.kick()  # our hello
            await self._read()
        finally:
            for task in [*helpers, *self._tasks.values()]:
                task.cancel()
            await asyncio.gather(*helpers, *self._tasks.values(), return_exceptions=True)
            if self._shutdown_task is not None:
                self._shutdown_task.cancel()
                await asyncio.gather(self._shutdown_task, return_exceptions=True)
            self.conn.close()
            with contextlib.suppress(Exception):
                await self.websocket.close()
        if self.outcome.close_code is None:
            self.outcome.close_code = self.websocket.close_code
            self.outcome.reason = self.websocket.close_reason or ""
        return self.outcome

    async def _read(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                batch = await self.websocket.receive_batch()
                self._last_received = loop.time()
                for payload in batch:
                    try:
                        message = self.conn.receive(payload)
                    except RemoteProtocolError as exc:
                        logger.warning(
                            "[%s] server broke the protocol: %s; closing the tunnel with %d",
                            self.connection_id,
                            exc,
                            exc.close_code,
                        )
                        self.outcome.protocol_error = True
                        self.outcome.close_code = int(exc.close_code)
                        self.outcome.reason = exc.reason
                        await self.websocket.close(int(exc.close_code), exc.reason)
                        return
                    if message is not None:
                        self._dispatch(message)
                self.kick()
        except ConnectionClosed:
            return

    def _dispatch(self, message: object) -> None:
        if isinstance(message, Data | WebSocketData | WebSocketClose):
            channel = self._channels.get(message.stream_id)
            if channel is not None:
                channel.inbox.put_nowait(message)
        elif isinstance(message, WindowUpdate):
            channel = self._channels.get(message.stream_id)
            if channel is not None:
                channel.wake()
        elif isinstance(message, Open):
            self._start_stream(message)
        elif isinstance(message, Reset):
            self._on_reset(message)
        elif isinstance(message, Hello):
            self.outcome.established = True
            self._established.set()
            self._on_established(message)
        elif isinstance(message, GoAway):
            logger.info(
                "[%s] server is going away (%s%s); finishing open streams, then reconnecting",
                self.connection_id,
                message.reason.value,
                f": {message.message}" if message.message else "",
            )

    def _start_stream(self, message: Open) -> None:
        channel = StreamChannel(self, message)
        self._channels[message.stream_id] = channel
        task = asyncio.create_task(
            self._run_stream(channel), name=f"pipegate-stream-{message.stream_id}"
        )
        self._tasks[message.stream_id] = task
        self._idle.clear()

    def _on_reset(self, message: Reset) -> None:
        channel = self._channels.get(message.stream_id)
        task = self._tasks.get(message.stream_id)
        if channel is not None:
            channel.wake()
        if task is not None:
            logger.debug(
                "[%s] stream %d reset by server: %s",
                self.connection_id,
                message.stream_id,
                message.code.value,
            )
            task.cancel()

    async def _run_stream(self, channel: StreamChannel) -> None:
        stream_id = channel.stream_id
        try:
            if channel.open.kind is StreamKind.WEBSOCKET:
                await relay_websocket(channel, self.local, self.connection_id)
            else:
                await relay_http(channel, self.local, self.connection_id)
            if channel.is_open:  # a handler must end its stream; never leak one
                await channel.reset(ResetCode.INTERNAL_ERROR, "stream abandoned")
        except (StreamGone, ConnectionClosed):
            pass
        except Exception:
            logger.exception("[%s] stream %d failed", self.connection_id, stream_id)
            with contextlib.suppress(Exception):
                await channel.reset(ResetCode.INTERNAL_ERROR, "pipegate-client internal error")
        finally:
            self._channels.pop(stream_id, None)
            self._tasks.pop(stream_id, None)
            if not self._tasks:
                self._idle.set()

    # ------------------------------------------------------------ liveness

    async def _heartbeat(self) -> None:
        loop = asyncio.get_running_loop()
        interval = self.settings.ping_interval
        try:
            await asyncio.wait_for(self._established.wait(), self.settings.connect_timeout)
        except TimeoutError:
            logger.warning(
                "[%s] the server sent no hello within %.0fs; dropping the tunnel",
                self.connection_id,
                self.settings.connect_timeout,
            )
            self.outcome.close_code = int(CloseCode.HELLO_TIMEOUT)
            self.outcome.reason = "hello timeout"
            await self._abort(int(CloseCode.HELLO_TIMEOUT), "hello timeout")
            return
        while True:
            await asyncio.sleep(interval)
            if loop.time() - self._last_received < interval:
                continue
            sent_at = loop.time()
            self.conn.send_ping(next(self._ping_ids))
            self.kick()
            await asyncio.sleep(self.settings.ping_timeout)
            if self._last_received < sent_at:
                logger.warning(
                    "[%s] no answer from the server for %.0fs; dropping the tunnel",
                    self.connection_id,
                    loop.time() - self._last_received,
                )
                self.outcome.close_code = int(CloseCode.HEARTBEAT_TIMEOUT)
                self.outcome.reason = "heartbeat timeout"
                await self._abort(int(CloseCode.HEARTBEAT_TIMEOUT), "heartbeat timeout")
                return

    async def _abort(self, code: int, reason: str) -> None:
        """Close without waiting long for a peer that may be gone."""
        try:
            await asyncio.wait_for(self.websocket.close(code, reason), timeout=2)
        except (TimeoutError, ConnectionClosed, OSError):
            self.websocket.transport.abort()

    # ------------------------------------------------------------ shutdown

    def shutdown(self, grace_period: float) -> None:
        """Begin a graceful stop: go-away, let streams finish for ``grace_period``
        seconds, reset what is left, close with 1000. Idempotent."""
        if self._shutdown_task is None:
            self._shutdown_task = asyncio.create_task(self._shutdown(grace_period))

    async def _shutdown(self, grace_period: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace_period
        self.outcome.stopped = True
        try:
            if self.conn.peer_hello is not None:
                self.conn.send_goaway(GoAwayReason.SHUTDOWN, "client shutting down")
                await self.flush()
            if self._tasks:
                logger.info(
                    "[%s] waiting up to %.0fs for %d open stream(s)",
                    self.connection_id,
                    grace_period,
                    len(self._tasks),
                )
                try:
                    await asyncio.wait_for(self._idle.wait(), grace_period)
                except TimeoutError:
                    logger.warning(
                        "[%s] grace period over; cancelling %d stream(s)",
                        self.connection_id,
                        len(self._tasks),
                    )
                    for stream_id, task in list(self._tasks.items()):
                        self.conn.reset_stream(stream_id, ResetCode.CANCELLED, "client shut down")
                        task.cancel()
                    await self.flush()
                else:
                    # Our last bytes are sent, not yet delivered: the server closes the
                    # tunnel once it relayed them (it got our go-away); give it the rest
                    # of the grace period (at least a second) before closing ourselves.
                    wait = max(deadline - loop.time(), 1.0)
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(asyncio.shield(self.websocket.wait_closed()), wait)
        except ConnectionClosed:
            pass
        finally:
            with contextlib.suppress(Exception):
                await self.websocket.close(int(CloseCode.NORMAL), "client shut down")
