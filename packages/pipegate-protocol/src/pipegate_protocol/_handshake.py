"""Pure helpers for the WebSocket upgrade that opens a tunnel (rules HS-1 to HS-3).

:data:`HOP_BY_HOP_HEADERS` and :func:`strip_hop_by_hop` (HD-4) are importable from
here as before; they live in :mod:`._policy` with the rest of the relay policy."""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import urlsplit, urlunsplit

# HD-4 lives with the other relay policy; re-exported here, where it was first defined.
from ._policy import HOP_BY_HOP_HEADERS, strip_hop_by_hop

__all__ = [
    "CLIENT_TOKEN_HEADER",
    "CONNECTION_ID_PATTERN",
    "HOP_BY_HOP_HEADERS",
    "RESERVED_PREFIX",
    "connection_id_from_url",
    "extract_client_token",
    "is_valid_connection_id",
    "public_url_for",
    "strip_hop_by_hop",
]

#: Connection ids are 1-64 characters of ``[A-Za-z0-9_-]`` (HS-1). ``\Z``, not ``$``:
#: in Python ``$`` also matches before a trailing newline, which would admit ``"id\n"``.
CONNECTION_ID_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,64}\Z")
#: The first path segment a server keeps for itself; no connection id may take it (HS-1).
RESERVED_PREFIX = "_pipegate"
#: Alternative to ``Authorization: Bearer`` for presenting the client token (HS-2).
CLIENT_TOKEN_HEADER = "pipegate-client-token"


def is_valid_connection_id(value: str) -> bool:
    """True for a syntactically valid, non-reserved connection id (HS-1)."""
    return CONNECTION_ID_PATTERN.fullmatch(value) is not None and value != RESERVED_PREFIX


def connection_id_from_url(server_url: str) -> str:
    """The connection id a client claims: the last path segment of its server URL.

    Raises :class:`ValueError` with a readable message if the URL has no valid one.
    """
    parts = urlsplit(server_url)
    if parts.scheme not in ("ws", "wss"):
        raise ValueError(f"server URL must start with ws:// or wss://, got {server_url!r}")
    segment = parts.path.rstrip("/").rsplit("/", 1)[-1]
    if not is_valid_connection_id(segment):
        raise ValueError(
            f"the last path segment of the server URL must be a connection id of 1-64 "
            f"characters [A-Za-z0-9_-] (not {RESERVED_PREFIX!r}), got {segment!r}"
        )
    return segment


def public_url_for(server_url: str) -> str:
    """The public base URL callers use for a tunnel: ``wss://h/id`` -> ``https://h/id``."""
    parts = urlsplit(server_url)
    scheme = {"ws": "http", "wss": "https"}.get(parts.scheme, parts.scheme)
    return urlunsplit((scheme, parts.netloc, parts.path.rstrip("/"), "", ""))


def extract_client_token(headers: Iterable[tuple[str, str]]) -> str | None:
    """The client token of an upgrade request, or ``None`` if it presents none (HS-2).

    ``Authorization: Bearer <token>`` wins over ``PipeGate-Client-Token: <token>``.
    Header names are compared case-insensitively.
    """
    fallback: str | None = None
    for name, value in headers:
        lowered = name.lower()
        if lowered == "authorization":
            scheme, _, credentials = value.strip().partition(" ")
            if scheme.lower() == "bearer" and credentials.strip():
                return credentials.strip()
        elif lowered == CLIENT_TOKEN_HEADER and value.strip() and fallback is None:
            fallback = value.strip()
    return fallback
