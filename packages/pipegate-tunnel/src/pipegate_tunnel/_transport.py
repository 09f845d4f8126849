"""What the shell needs of the WebSocket under a tunnel.

The shell never imports a WebSocket library: each role hands it an object with these
few methods. The server's adapters sit over uvicorn (its direct line, or plain ASGI
``send``); the client's over websockets (its batched connection, or the public
``send()``). Receiving is pushed, not pulled: the role's reader calls
:meth:`~pipegate_tunnel.TunnelShell.receive` or
:meth:`~pipegate_tunnel.TunnelShell.receive_batch`, because one transport delivers
messages from inside ``data_received`` and another from an awaited ``recv()``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

__all__ = ["MessageTransport"]


class MessageTransport(Protocol):
    """Sends tunnel messages (``str`` as text frames, ``bytes`` as binary) in order."""

    def send_now(self, messages: Sequence[str | bytes]) -> bool:
        """Write every message at once if the connection is open and its write buffer
        is not backed up, and return True; otherwise write nothing and return False.

        A transport that cannot write without waiting may always return False.
        """

    async def send(self, messages: Sequence[str | bytes]) -> None:
        """Write every message, waiting while the write buffer is backed up.

        Raises :class:`~pipegate_tunnel.errors.TransportClosed` when the peer is gone.
        Only the shell's writer task calls this, one call at a time.
        """

    async def close(self, code: int, reason: str) -> None:
        """Send a close frame (after what was sent before it) and end the connection."""

    def abort(self) -> None:
        """Drop the connection at once, without a closing handshake."""
