"""One tunnel session: the client's role on the shared :class:`~pipegate_tunnel.TunnelShell`.

The shell (``pipegate_tunnel``) reads, writes in order, pings, enforces the hello
timeout and closes, for both roles. What is the client's alone lives here:

* :class:`WebSocketTransport`, the shell's view of the websockets connection;
* a *stream task* per stream the server opens (an HTTP relay or a WebSocket relay to
  the local app), cancelled when the server resets the stream;
* :class:`SessionOutcome`, what the reconnect loop needs to know of how it ended;
* graceful shutdown: go-away, a grace period for open streams, then close 1000.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from pipegate_protocol import (
    CAPABILITY_WEBSOCKET,
    CloseCode,
    Connection,
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
)
from pipegate_tunnel import Heartbeat, StreamChannel, StreamObserver, TunnelShell
from pipegate_tunnel.errors import StreamGone, TransportClosed
from websockets.exceptions import ConnectionClosed

from ._local import LocalApp, relay_http
from ._logging import RequestLog
from ._settings import ClientSettings
from ._stream import LocalStream
from ._websocket import relay_websocket

__all__ = ["AGENT", "SessionOutcome", "TunnelSession", "TunnelWebSocket", "WebSocketTransport"]

logger = logging.getLogger("pipegate_client")

AGENT = "pipegate-client/1.0"


class TunnelWebSocket(Protocol):
    """What a session uses of its WebSocket connection: the batched
    :class:`~pipegate_client._internals.TunnelConnection`, or its public-API twin
    (:class:`~pipegate_client._transport.PlainTunnelConnection`)."""

    @property
    def close_code(self) -> int | None: ...

    @property
    def close_reason(self) -> str | None: ...

    async def receive_batch(self) -> list[str | bytes]: ...

    def send_now(self, messages: Sequence[str | bytes]) -> bool: ...

    async def send_many(self, messages: Sequence[str | bytes]) -> None: ...

    async def close(self, code: int = 1000, reason: str = "") -> None: ...

    async def wait_closed(self) -> None: ...

    @property
    def transport(self) -> asyncio.Transport: ...


class WebSocketTransport:
    """The shell's :class:`~pipegate_tunnel.MessageTransport` over a websockets
    connection; websockets' ``ConnectionClosed`` becomes ``TransportClosed`` here."""

    __slots__ = ("_websocket",)

    def __init__(self, websocket: TunnelWebSocket) -> None:
        self._websocket = websocket

    def send_now(self, messages: Sequence[str | bytes]) -> bool:
        return self._websocket.send_now(messages)

    async def send(self, messages: Sequence[str | bytes]) -> None:
        try:
            await self._websocket.send_many(messages)
        except ConnectionClosed as exc:
            raise TransportClosed(str(exc), code=_code_of(exc)) from exc

    async def close(self, code: int, reason: str) -> None:
        await self._websocket.close(code, reason)

    def abort(self) -> None:
        self._websocket.transport.abort()


def _code_of(exc: ConnectionClosed) -> int:
    frame = exc.rcvd or exc.sent
    return frame.code if frame is not None else 1006


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


class TunnelSession(TunnelShell):
    """Runs one connected tunnel until the WebSocket closes.

    ``observer`` sees every stream (see :class:`~pipegate_tunnel.StreamObserver`); by
    default it is :class:`~pipegate_client._logging.RequestLog`, the per-request line.
    """

    def __init__(
        self,
        websocket: TunnelWebSocket,
        settings: ClientSettings,
        local: LocalApp,
        *,
        on_established: Callable[[Hello], None],
        observer: StreamObserver | None = None,
    ) -> None:
        conn = Connection(
            Role.CLIENT,
            version=ProtocolVersion.V1,
            limits=settings.limits,
            capabilities=[CAPABILITY_WEBSOCKET],
            agent=AGENT,
            access=settings.access_policy,
        )
        super().__init__(
            conn,
            WebSocketTransport(websocket),
            connection_id=settings.connection_id,
            heartbeat=Heartbeat(
                settings.ping_interval,
                settings.ping_interval + settings.ping_timeout,
                only_when_silent=True,
            ),
            hello_timeout=settings.connect_timeout,
            observer=observer
            if observer is not None
            else RequestLog(settings.connection_id, logger),
            log=logger,
        )
        self.websocket = websocket
        self.settings = settings
        self.local = local
        self.outcome = SessionOutcome()
        self._on_established = on_established
        self._tasks: dict[int, asyncio.Task[None]] = {}
        self._shutdown_task: asyncio.Task[None] | None = None

    # ------------------------------------------------------------ running

    async def run(self) -> SessionOutcome:  # type: ignore[override]
        """Serve the tunnel until the WebSocket closes; never raises for network or
        protocol trouble, which is reported in the returned :class:`SessionOutcome`."""
        try:
            await super().run()
        finally:
            tasks = list(self._tasks.values())
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if self._shutdown_task is not None:
                self._shutdown_task.cancel()
                await asyncio.gather(self._shutdown_task, return_exceptions=True)
            with contextlib.suppress(Exception):
                await self.websocket.close()
        if self.close_code is not None:
            self.outcome.close_code = self.close_code
            self.outcome.reason = self.close_reason
        else:
            self.outcome.close_code = self.websocket.close_code
            self.outcome.reason = self.websocket.close_reason or ""
        return self.outcome

    async def _read_loop(self) -> None:
        websocket = self.websocket
        try:
            while True:
                self.receive_batch(await websocket.receive_batch())
        except ConnectionClosed as exc:
            self.lost(_code_of(exc))

    # ------------------------------------------------------------ role hooks

    def _on_open(self, message: Open) -> None:
        if self.closed:
            # Closed in this batch (e.g. the server cannot enforce our access rules,
            # AC-3): nothing is answered any more.
            return
        channel = LocalStream(self, message)
        self.register(channel)
        self._tasks[message.stream_id] = asyncio.create_task(
            self._run_stream(channel), name=f"pipegate-stream-{message.stream_id}"
        )

    def _on_reset(self, channel: StreamChannel, message: Reset) -> None:
        task = self._tasks.get(message.stream_id)
        if task is not None:
            logger.debug(
                "[%s] stream %d reset by server: %s",
                self.connection_id,
                message.stream_id,
                message.code.value,
            )
            task.cancel()

    def _on_hello(self, message: Hello) -> None:
        self.outcome.established = True
        self._on_established(message)

    def _on_goaway(self, message: GoAway) -> None:
        logger.info(
            "[%s] server is going away (%s%s); finishing open streams, then reconnecting",
            self.connection_id,
            message.reason.value,
            f": {message.message}" if message.message else "",
        )

    def _on_protocol_error(self, error: RemoteProtocolError) -> None:
        self.outcome.protocol_error = True

    async def _run_stream(self, channel: LocalStream) -> None:
        stream_id = channel.stream_id
        try:
            if channel.kind is StreamKind.WEBSOCKET:
                await relay_websocket(channel, self.local, self.connection_id)
            else:
                await relay_http(channel, self.local, self.connection_id)
            if channel.is_open:  # a handler must end its stream; never leak one
                channel.reset(ResetCode.INTERNAL_ERROR, "stream abandoned")
        except (StreamGone, ConnectionClosed):
            pass
        except Exception:
            logger.exception("[%s] stream %d failed", self.connection_id, stream_id)
            with contextlib.suppress(Exception):
                channel.reset(ResetCode.INTERNAL_ERROR, "pipegate-client internal error")
        finally:
            self._tasks.pop(stream_id, None)
            self.finish(channel)

    # ------------------------------------------------------------ shutdown

    def shutdown(self, grace_period: float) -> None:
        """Begin a graceful stop: go-away, let streams finish for ``grace_period``
        seconds, reset what is left, close with 1000. Idempotent."""
        if self._shutdown_task is None:
            self._shutdown_task = asyncio.create_task(self._shutdown(grace_period))

    async def _shutdown(self, grace_period: float) -> None:
        loop = self.loop
        deadline = loop.time() + grace_period
        self.outcome.stopped = True
        try:
            self.goaway(GoAwayReason.SHUTDOWN, "client shutting down")
            if self._tasks:
                logger.info(
                    "[%s] waiting up to %.0fs for %d open stream(s)",
                    self.connection_id,
                    grace_period,
                    len(self._tasks),
                )
                try:
                    await asyncio.wait_for(self.wait_idle(), grace_period)
                except TimeoutError:
                    logger.warning(
                        "[%s] grace period over; cancelling %d stream(s)",
                        self.connection_id,
                        len(self._tasks),
                    )
                    for stream_id, task in list(self._tasks.items()):
                        channel = self.channel(stream_id)
                        if channel is not None:
                            channel.reset(ResetCode.CANCELLED, "client shut down")
                        task.cancel()
                else:
                    # Our last bytes are sent, not yet delivered: the server closes the
                    # tunnel once it relayed them (it got our go-away); give it the rest
                    # of the grace period (at least a second) before closing ourselves.
                    wait = max(deadline - loop.time(), 1.0)
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(asyncio.shield(self.wait_closed()), wait)
        finally:
            self.close(int(CloseCode.NORMAL), "client shut down")
