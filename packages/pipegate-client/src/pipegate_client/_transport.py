"""The tunnel WebSocket on websockets' public API only (``--no-fast-path``).

:class:`PlainTunnelConnection` gives a tunnel session the same methods as the fast
:class:`~pipegate_client._internals.TunnelConnection` (``receive_batch``, ``send_now``,
``send_many``) over a plain ``websockets.asyncio.client.ClientConnection``, using only
its documented ``recv()``, ``send()``, ``close()`` and ``wait_closed()``: one message
per batch, one frame per write. It is slower, and works on any websockets version the
pins allow, whatever that version keeps inside.

:class:`GuardedClientConnection` is the websockets connection of both paths: it adds
one rule to the library's flow control, through the asyncio protocol callbacks only
(``data_received``, ``pause_writing``, ``resume_writing``, each calling the library's
own first) and the transport's public methods. websockets
answers every ping frame by itself, writing the pong whether or not the server reads;
a server that floods pings and never reads made the client buffer pongs without end
(68 -> 451 MiB in 12 s, issue 11 row 12). Once more than :data:`BACKLOG_LIMIT` bytes
of our writes wait in the transport, the client stops reading from the server until
they drain; a server that never reads then also stops hearing from us, and the
heartbeat closes the tunnel. Bound per tunnel: ``BACKLOG_LIMIT`` plus the pongs of one
read (at most 3 x its size: a 2-byte empty ping becomes a 6-byte masked pong).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from websockets.asyncio.client import ClientConnection

__all__ = ["BACKLOG_LIMIT", "GuardedClientConnection", "PlainTunnelConnection"]

#: Bytes of our own writes left unread by the server above which reading stops until
#: they drain (below the transport's low-water mark). Far above what the writer itself
#: leaves there (it waits at the write limit, 256 KiB, plus one batch of at most the
#: shell's 1 MiB queue), so normal traffic never reaches it: only a server that does
#: not read while it makes us write (pings) does.
BACKLOG_LIMIT = 4 * 1024 * 1024


class GuardedClientConnection(ClientConnection):
    """websockets' client connection that stops reading from a server that leaves more
    than :data:`BACKLOG_LIMIT` bytes of our writes unread (see the module docstring)."""

    _backlog_paused = False
    #: Between the transport's pause_writing and resume_writing (our own flag: the
    #: library's is not public).
    writes_paused = False

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.writes_paused:  # the usual case costs this one attribute read
            self.check_backlog()

    def pause_writing(self) -> None:
        super().pause_writing()
        self.writes_paused = True

    def check_backlog(self) -> None:
        """Stop reading when the unread backlog passed :data:`BACKLOG_LIMIT`."""
        if not self._backlog_paused and self.transport.get_write_buffer_size() > BACKLOG_LIMIT:
            self._backlog_paused = True
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        super().resume_writing()
        self.writes_paused = False
        if self._backlog_paused:
            self._backlog_paused = False
            if self.may_read():
                self.transport.resume_reading()

    @property
    def backlog_paused(self) -> bool:
        """True while reading is stopped because the server does not read."""
        return self._backlog_paused

    def may_read(self) -> bool:
        """Whether reading may resume once the backlog drained (a subclass that pauses
        reading for reasons of its own says no while they hold)."""
        return True


class PlainTunnelConnection:
    """A tunnel session's WebSocket over a plain :class:`ClientConnection`."""

    __slots__ = ("_connection",)

    def __init__(self, connection: ClientConnection) -> None:
        self._connection = connection

    @property
    def connection(self) -> ClientConnection:
        """The websockets connection underneath."""
        return self._connection

    async def receive_batch(self) -> list[str | bytes]:
        """The next message, as a batch of one (str for text, bytes for binary).
        Raises websockets' ``ConnectionClosed`` once the connection is closed."""
        return [await self._connection.recv()]

    def send_now(self, messages: Sequence[str | bytes]) -> bool:
        """Always False: the public API has no write that cannot wait, so every
        message goes through :meth:`send_many`."""
        return False

    async def send_many(self, messages: Sequence[str | bytes]) -> None:
        """Send ``messages`` in order (str as text, bytes as binary); raises
        ``ConnectionClosed`` as ``send()`` does."""
        for message in messages:
            await self._connection.send(message)

    async def close(self, code: int = 1000, reason: str = "") -> None:
        await self._connection.close(code, reason)

    async def wait_closed(self) -> None:
        await self._connection.wait_closed()

    @property
    def close_code(self) -> int | None:
        return self._connection.close_code

    @property
    def close_reason(self) -> str | None:
        return self._connection.close_reason

    @property
    def subprotocol(self) -> str | None:
        return self._connection.subprotocol

    @property
    def transport(self) -> asyncio.Transport:
        """The socket's transport (a session aborts it when a close handshake stalls).
        The one attribute here that websockets does not document."""
        transport: asyncio.Transport = self._connection.transport
        return transport
