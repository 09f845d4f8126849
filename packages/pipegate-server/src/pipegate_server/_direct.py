"""A direct line between a tunnel and its WebSocket, past the ASGI message queue.

Through ASGI, every tunnel message costs a dict, a trip through an
:class:`asyncio.Queue` and a wake-up of the tunnel's reader task on the way in, and a
dict and an awaited ``send`` on the way out: three messages per small request (open,
response head, body). When the server runs on our own uvicorn WebSocket protocol
(``_internals.ws_protocol_class``, not with ``--no-fast-path``), the protocol offers
itself in the scope under :data:`DIRECT_EXTENSION`; the tunnel then takes received
messages in a callback and writes its messages straight to the protocol. Handshake,
close and disconnect still go through ASGI, and any other ASGI server (or uvicorn's
own protocol) simply does not offer the extension.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

__all__ = ["DIRECT_EXTENSION", "DirectWebSocket", "MessageSink"]

#: The key of the scope's ``extensions`` under which the protocol offers itself.
DIRECT_EXTENSION = "pipegate.direct"

#: Called with each message received (str for text, bytes for binary), in order.
MessageSink = Callable[[str | bytes], None]


class DirectWebSocket(Protocol):
    """What a tunnel uses of a WebSocket protocol that offers the direct line."""

    def attach_sink(self, sink: MessageSink) -> None:
        """From now on hand received messages to ``sink`` instead of the ASGI queue;
        messages already queued are handed over first, so order is kept. Only the
        disconnect still arrives through ASGI ``receive``."""

    def can_send_now(self) -> bool:
        """False while the transport's write buffer is above its high-water mark."""

    async def wait_writable(self) -> None:
        """Wait until :meth:`can_send_now` (or the connection is lost)."""

    def send_message(self, message: str | bytes) -> None:
        """Frame and write one message (str as text); raises :class:`OSError` when
        the peer is gone or a close was sent."""
