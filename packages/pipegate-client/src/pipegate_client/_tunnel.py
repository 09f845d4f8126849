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
from collections.abc import Callable
from dataclasses import dataclass

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
from websockets.exceptions import ConnectionClosed

from ._local import LocalApp, relay_http
from ._settings import ClientSettings
from ._stream import StreamChannel, StreamGone
from ._websocket import relay_websocket
from ._wsconnection import TunnelConnection

__all__ = ["SessionOutcome", "TunnelConnection", "TunnelSession"]

logger = logging.getLogger("pipegate_client")

AGENT = "pipegate-client/1.0"


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
