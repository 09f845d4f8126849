"""ASGI type aliases (the same shapes as ``starlette.types``, without importing it),
the payload of a ``websocket.receive`` event, and the scope key of the peer address."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from typing import Any

__all__ = ["PEER", "Receive", "Scope", "Send", "websocket_payload"]

#: Scope key of the connection's own peer address, kept before proxy-header handling
#: may replace ``client`` with the address a trusted proxy reported.
PEER = "pipegate.peer"

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


def websocket_payload(event: Mapping[str, object]) -> str | bytes | None:
    """The message of a ``websocket.receive`` event (bytes, else text), or ``None``."""
    payload = event.get("bytes")
    if payload is None:
        payload = event.get("text")
    return payload if isinstance(payload, str | bytes) else None
