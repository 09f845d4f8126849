"""ASGI type aliases (the same shapes as ``starlette.types``, without importing it),
and the payload of a ``websocket.receive`` event."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from typing import Any

__all__ = ["Receive", "Scope", "Send", "websocket_payload"]

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


def websocket_payload(event: Mapping[str, object]) -> str | bytes | None:
    """The message of a ``websocket.receive`` event (bytes, else text), or ``None``."""
    payload = event.get("bytes")
    if payload is None:
        payload = event.get("text")
    return payload if isinstance(payload, str | bytes) else None
