"""One stream of a tunnel, as its user (a relay or a local-app handler) sees it.

Receiving: the shell's reader :meth:`~StreamChannel.deliver`\\ s the stream's messages
(body data, a response head, WebSocket data and close) in order, and
:meth:`~StreamChannel.next` hands them out. The number of bytes waiting here is
bounded by the stream's receive window, which the protocol core enforces (FC-2): a
peer that sends past it breaks the protocol and the tunnel is closed.

Failure: :meth:`~StreamChannel.fail` decides the stream's outcome, first failure wins,
and wakes every waiter. A failure wins over messages still queued, because after it
the outcome is decided, except with ``drain_first`` (the tunnel was lost): what the
peer sent before it went away is handed out first, so a response that arrived whole
is not thrown away by a close that follows it.

Sending: :meth:`~StreamChannel.send_data` and :meth:`~StreamChannel.send_websocket`
split what they are given to the peer's window and frame size (FC-1, FR-2), wait for
window updates, and wait while the tunnel's write queue is above its high-water mark,
so a slow peer slows the sender down instead of filling memory.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Sequence
from typing import TYPE_CHECKING

from pipegate_protocol import Message, ResetCode, StreamKind

if TYPE_CHECKING:
    from ._shell import TunnelShell

__all__ = ["StreamChannel"]


class StreamChannel:
    """Send and receive on one stream; see the module docstring."""

    __slots__ = (
        "_drain_first",
        "_items",
        "_waiter",
        "_window_waiter",
        "bytes_received",
        "bytes_sent",
        "ended_at",
        "failure",
        "kind",
        "method",
        "opened_at",
        "outcome",
        "path",
        "response_at",
        "response_headers",
        "shell",
        "status",
        "stream_id",
    )

    def __init__(
        self,
        shell: TunnelShell,
        stream_id: int,
        *,
        method: str,
        path: str,
        kind: StreamKind = StreamKind.HTTP,
    ) -> None:
        self.shell = shell
        self.stream_id = stream_id
        self.method = method
        self.path = path
        self.kind = kind
        self._items: deque[Message] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._window_waiter: asyncio.Future[None] | None = None
        #: The exception that decided the stream's outcome, once one did.
        self.failure: BaseException | None = None
        self._drain_first = False
        #: The response status once the head passed (sent or received).
        self.status: int | None = None
        #: The response head's headers once it passed, in wire order (for observers).
        self.response_headers: Sequence[tuple[str, str]] = ()
        #: How the stream ended, in a few words, when not simply complete (set by
        #: its user, for observers: "reset by server", "caller gone", ...).
        self.outcome = ""
        #: Body and WebSocket payload bytes sent / received on the stream.
        self.bytes_sent = 0
        self.bytes_received = 0
        loop = shell.loop
        #: Loop times of the stream's steps, for observers.
        self.opened_at = loop.time()
        self.response_at: float | None = None
        self.ended_at: float | None = None

    # ------------------------------------------------------------ receiving (shell side)

    @property
    def pending(self) -> int:
        """Messages delivered and not yet taken."""
        return len(self._items)

    def deliver(self, item: Message) -> None:
        self._items.append(item)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def fail(self, error: BaseException, *, drain_first: bool = False) -> None:
        """Decide the stream's outcome; the first failure wins. Wakes every waiter.

        With ``drain_first``, messages already delivered are still handed out by
        :meth:`next` before the failure is raised.
        """
        if self.failure is None:
            self.failure = error
            self._drain_first = drain_first
        self._wake_all()

    def window_opened(self) -> None:
        _wake(self._window_waiter)

    def _wake_all(self) -> None:
        _wake(self._waiter)
        _wake(self._window_waiter)

    # ------------------------------------------------------------ receiving (user side)

    async def next(self, within: float | None = None) -> Message:
        """The next message; raises the failure, or :class:`TimeoutError` after
        ``within`` seconds without one."""
        loop = self.shell.loop
        while True:
            if self._items and (self.failure is None or self._drain_first):
                return self._items.popleft()
            if self.failure is not None:
                raise self.failure
            waiter = self._waiter = loop.create_future()
            handle = None if within is None else loop.call_later(within, _wake, waiter)
            try:
                await waiter
            finally:
                self._waiter = None
                if handle is not None:
                    handle.cancel()
            if self.failure is None and not self._items:
                raise TimeoutError

    # ------------------------------------------------------------ sending

    @property
    def is_open(self) -> bool:
        """True while the stream exists in the core (not finished both ways, not reset)."""
        return self.shell.conn.is_open(self.stream_id)

    def queue_response(
        self, status: int, headers: Sequence[tuple[str, str]], *, end_stream: bool = False
    ) -> None:
        """Queue the response head (client role; 101 accepts a WebSocket stream); it
        leaves with the next flush, together with the first body piece if that follows
        at once."""
        self._check_open()
        self.shell.conn.send_response(self.stream_id, status, headers, end_stream=end_stream)
        if status >= 200 or status == 101:
            self.head_passed(status, headers)

    async def send_response(
        self, status: int, headers: Sequence[tuple[str, str]], *, end_stream: bool = False
    ) -> None:
        """Send the response head now (client role)."""
        self.queue_response(status, headers, end_stream=end_stream)
        await self.flush()

    def head_passed(self, status: int, headers: Sequence[tuple[str, str]] = ()) -> None:
        """Record the response status and headers (and tell the observer)."""
        self.status = status
        self.response_headers = headers
        self.response_at = self.shell.loop.time()
        observer = self.shell.observer
        if observer is not None:
            observer.response_head(self, status)

    def immediate_capacity(self) -> int:
        """Bytes one data frame may carry now (0 when the window is exhausted)."""
        conn = self.shell.conn
        return max(0, min(conn.send_window(self.stream_id), conn.max_data_size))

    async def send_capacity(self) -> int:
        """Bytes one data frame may carry now; waits while the window is 0."""
        conn = self.shell.conn
        while True:
            self._check_open()
            size = min(conn.send_window(self.stream_id), conn.max_data_size)
            if size > 0:
                return size
            await self.wait_window()

    async def send_data(self, data: bytes, *, end_stream: bool = False) -> None:
        """Send body bytes, split to the window and frame size, waiting as needed."""
        await self._send(data, end=end_stream, text=None)

    async def send_websocket(self, data: bytes, *, text: bool, fin: bool = True) -> None:
        """Send one WebSocket message (or, with ``fin=False``, a fragment of one),
        split further as the window and frame size require."""
        await self._send(data, end=fin, text=text)

    def send_websocket_close(self, code: int, reason: str) -> None:
        """Relay a WebSocket close and end the stream (no-op once gone)."""
        shell = self.shell
        if shell.closed:
            return
        shell.conn.send_websocket_close(self.stream_id, code, reason)
        observer = shell.observer
        if observer is not None:
            observer.websocket_close(self, code, reason, sent=True)
        shell.flush()

    def reset(self, code: ResetCode, message: str = "") -> None:
        """Abandon the stream both ways (no-op once gone); senders waiting on it wake."""
        shell = self.shell
        if shell.closed:
            return
        shell.conn.reset_stream(self.stream_id, code, message)
        self._wake_all()
        shell.flush()

    def acknowledge(self, size: int) -> None:
        """Return ``size`` consumed bytes of credit to the peer (after they left us).

        The core batches credit into few window updates (FC-3); they leave with the
        writer's next turn rather than one write each."""
        shell = self.shell
        if shell.closed:
            return
        shell.conn.acknowledge(self.stream_id, size)
        shell.kick()

    async def flush(self) -> None:
        """Send what the core queued; waits while the tunnel's write queue is full."""
        self.shell.flush()
        await self.shell.writable()

    async def wait_window(self) -> None:
        """Wait until the peer grants window (or the stream fails: raises)."""
        if self.failure is not None:
            raise self.failure
        waiter = self._window_waiter = self.shell.loop.create_future()
        try:
            await waiter
        finally:
            self._window_waiter = None
        if self.failure is not None:
            raise self.failure

    def _check_open(self) -> None:
        if self.failure is not None:
            raise self.failure
        if not self.shell.conn.is_open(self.stream_id):
            raise self.shell.stream_gone(self)

    async def _send(self, data: bytes, *, end: bool, text: bool | None) -> None:
        shell = self.shell
        conn = shell.conn
        stream_id = self.stream_id
        total = len(data)
        if total == 0 and not end:
            return
        view = memoryview(data)
        offset = 0
        observer = shell.observer
        while True:
            if self.failure is not None:
                raise self.failure
            if not shell.is_writable:
                await shell.writable()
                continue
            if not conn.is_open(stream_id):
                raise shell.stream_gone(self)
            remaining = total - offset
            size = min(remaining, conn.send_window(stream_id), conn.max_data_size)
            if size == 0 and remaining > 0:
                await self.wait_window()
                continue
            last = offset + size == total
            chunk = data if size == total else bytes(view[offset : offset + size])
            if text is None:
                conn.send_data(stream_id, chunk, end_stream=end and last)
                if observer is not None:
                    observer.body(self, chunk, sent=True)
            else:
                conn.send_websocket_data(stream_id, chunk, text=text, fin=end and last)
                if observer is not None:
                    observer.websocket_message(self, chunk, sent=True, text=text, fin=end and last)
            self.bytes_sent += size
            shell.flush()
            if self.failure is not None:  # the transport broke under that write
                raise self.failure
            offset += size
            if last:
                return


def _wake(waiter: asyncio.Future[None] | None) -> None:
    if waiter is not None and not waiter.done():
        waiter.set_result(None)
