"""The tunnel WebSocket on websockets' public API only (``--no-fast-path``).

:class:`PlainTunnelConnection` gives a tunnel session the same methods as the fast
:class:`~pipegate_client._internals.TunnelConnection` (``receive_batch``, ``send_now``,
``send_many``) over a plain ``websockets.asyncio.client.ClientConnection``, using only
its documented ``recv()``, ``send()``, ``close()`` and ``wait_closed()``: one message
per batch, one frame per write. It is slower, and works on any websockets version the
pins allow, whatever that version keeps inside.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from websockets.asyncio.client import ClientConnection

__all__ = ["PlainTunnelConnection"]


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
