"""One stream of a tunnel as the stream handlers see it.

A :class:`StreamChannel` hides the sans-I/O core from the handlers in ``_local`` and
``_websocket``: they ``await`` sends that respect the peer's window and frame size,
and read what the server sent for the stream from :attr:`StreamChannel.inbox`. The
tunnel's reader task feeds the inbox and wakes window waiters; it never blocks.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import Protocol

from pipegate_protocol import (
    Connection,
    Data,
    Open,
    ResetCode,
    WebSocketClose,
    WebSocketData,
)

__all__ = ["StreamChannel", "StreamGone", "TunnelLink"]

InboxItem = Data | WebSocketData | WebSocketClose


class StreamGone(Exception):
    """The stream ended under us: reset by the server, or the tunnel closed.

    Handlers let it propagate; the tunnel treats it as a quiet end of the stream.
    """


class TunnelLink(Protocol):
    """What a channel needs from its tunnel session."""

    conn: Connection

    async def flush(self) -> None:
        """Send everything the core queued, in order; waits while the socket is full."""

    def kick(self) -> None:
        """Ask the writer task to flush soon, without waiting."""


class StreamChannel:
    """Send and receive on one stream; see the module docstring."""

    def __init__(self, link: TunnelLink, open_message: Open) -> None:
        self.link = link
        self.open = open_message
        self.stream_id = open_message.stream_id
        # Created on first use: most streams (a GET) never receive anything after their
        # open, nor wait for window.
        self._inbox: asyncio.Queue[InboxItem] | None = None
        self._window_changed: asyncio.Event | None = None
        #: Response body bytes sent so far (for the request log line).
        self.bytes_sent = 0
        #: Request body bytes handed to the local app so far.
        self.bytes_received = 0
        self.response_started = False

    # ------------------------------------------------------------ for the tunnel

    @property
    def inbox(self) -> asyncio.Queue[InboxItem]:
        """Body data, WebSocket data and WebSocket close from the server, in order."""
        if self._inbox is None:
            self._inbox = asyncio.Queue()
        return self._inbox

    def wake(self) -> None:
        """Window grew, or the stream or tunnel ended: re-check what may be sent."""
        if self._window_changed is not None:
            self._window_changed.set()

    async def _window_wait(self) -> None:
        """Wait for :meth:`wake`; callers re-check the window first, then call this."""
        if self._window_changed is None:
            self._window_changed = asyncio.Event()
        else:
            self._window_changed.clear()
        await self._window_changed.wait()

    # ------------------------------------------------------------ for handlers

    @property
    def is_open(self) -> bool:
        return self.link.conn.is_open(self.stream_id)

    async def send_response(
        self, status: int, headers: Sequence[tuple[str, str]], *, end_stream: bool = False
    ) -> None:
        """Send the response head (101 accepts a WebSocket stream)."""
        self.queue_response(status, headers, end_stream=end_stream)
        await self.link.flush()

    def queue_response(
        self, status: int, headers: Sequence[tuple[str, str]], *, end_stream: bool = False
    ) -> None:
        """Queue the response head; it leaves with the next flush."""
        self._check_open()
        self.link.conn.send_response(self.stream_id, status, headers, end_stream=end_stream)
        if status >= 200 or status == 101:
            self.response_started = True

    def immediate_capacity(self) -> int:
        """Bytes one data frame may carry now (0 when the window is exhausted)."""
        conn = self.link.conn
        return max(0, min(conn.send_window(self.stream_id), conn.max_data_size))

    async def send_capacity(self) -> int:
        """Bytes that one data frame may carry now; waits while the window is 0."""
        conn = self.link.conn
        while True:
            self._check_open()
            size = min(conn.send_window(self.stream_id), conn.max_data_size)
            if size > 0:
                return size
            await self._window_wait()

    async def send_body(self, data: bytes, *, end_stream: bool = False) -> None:
        """Send body bytes, split to fit the window and frame size; waits for credit."""
        await self._send_pieces(data, end=end_stream, websocket_text=None)

    async def send_websocket(self, data: bytes, *, text: bool, fin: bool) -> None:
        """Send one WebSocket fragment, split further if it exceeds the frame size."""
        await self._send_pieces(data, end=fin, websocket_text=text)

    async def send_websocket_close(self, code: int, reason: str) -> None:
        """Relay a close from the local app and end the stream (no-op once gone)."""
        self.link.conn.send_websocket_close(self.stream_id, code, reason)
        await self.link.flush()

    async def reset(self, code: ResetCode, message: str = "") -> None:
        """Abandon the stream both ways (no-op once gone)."""
        self.link.conn.reset_stream(self.stream_id, code, message)
        self.wake()
        await self.link.flush()

    def acknowledge(self, size: int) -> None:
        """Return ``size`` consumed bytes of credit to the server (batched by the core)."""
        self.bytes_received += size
        self.link.conn.acknowledge(self.stream_id, size)
        self.link.kick()

    async def request_body(self) -> AsyncIterator[bytes]:
        """The request body as it arrives; each chunk is acknowledged only once the
        consumer asks for the next one, i.e. after it handed the chunk on."""
        if self.open.end_stream:
            return
        while True:
            item = await self.inbox.get()
            if not isinstance(item, Data):
                raise StreamGone(f"unexpected {type(item).__name__} on an http stream")
            if item.data:
                yield item.data
                self.acknowledge(len(item.data))
            if item.end_stream:
                return

    async def discard_request_body(self, *, limit: int, seconds: float) -> bool:
        """Read and drop what is left of the request body, up to ``limit`` bytes or
        ``seconds``. True when the body ended; the caller resets the stream otherwise.

        Used after a response that did not need the whole body (a 413 or a 502): the
        server gets its credit back, so the caller can finish sending and read the
        answer, instead of seeing its upload reset."""
        if self.open.end_stream or not self.is_open:
            return True

        async def drain() -> bool:
            discarded = 0
            while True:
                item = await self.inbox.get()
                if not isinstance(item, Data):
                    return False
                if item.end_stream:
                    return True
                discarded += len(item.data)
                if discarded > limit:
                    return False
                self.link.conn.acknowledge(self.stream_id, len(item.data))
                self.link.kick()

        try:
            return await asyncio.wait_for(drain(), seconds)
        except TimeoutError:
            return False

    # ------------------------------------------------------------ internals

    def _check_open(self) -> None:
        if not self.is_open:
            raise StreamGone(f"stream {self.stream_id} is gone")

    async def _send_pieces(self, data: bytes, *, end: bool, websocket_text: bool | None) -> None:
        conn = self.link.conn
        view = memoryview(data)
        offset = 0
        while True:
            self._check_open()
            remaining = len(view) - offset
            size = min(remaining, conn.send_window(self.stream_id), conn.max_data_size)
            if size == 0 and remaining > 0:
                await self._window_wait()
                continue
            piece = bytes(view[offset : offset + size])
            offset += size
            last = offset == len(view)
            if websocket_text is None:
                conn.send_data(self.stream_id, piece, end_stream=end and last)
                self.bytes_sent += size
            else:
                conn.send_websocket_data(
                    self.stream_id, piece, text=websocket_text, fin=end and last
                )
            await self.link.flush()
            if last:
                return
