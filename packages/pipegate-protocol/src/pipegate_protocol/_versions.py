"""Protocol versions. Versions are members of an enumeration, never compared as strings."""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum

__all__ = ["KNOWN_VERSIONS", "ProtocolVersion", "negotiate_version"]


class ProtocolVersion(StrEnum):
    """A version of the PipeGate wire protocol; its value is the WebSocket subprotocol."""

    V1 = "pipegate.v1"


#: Every version this implementation speaks, most preferred first (rule HS-3).
KNOWN_VERSIONS: tuple[ProtocolVersion, ...] = (ProtocolVersion.V1,)


def negotiate_version(
    offered: Iterable[str], supported: Iterable[ProtocolVersion] = KNOWN_VERSIONS
) -> ProtocolVersion | None:
    """Pick the version to speak from the subprotocols a client offered.

    Returns the first entry of ``supported`` (our preference order) that the client
    offered, or ``None`` when there is no common version: the server must then refuse
    the upgrade (HS-3). Unknown offers are ignored, so a newer client can offer
    versions this implementation has never heard of. An item may be a whole
    comma-separated ``Sec-WebSocket-Protocol`` header value; it is split into tokens.
    Tokens are matched by exact equality, never ordered or compared as versions (VE-3).
    """
    offered_set = {token.strip() for item in offered for token in item.split(",")}
    for version in supported:
        if version.value in offered_set:
            return version
    return None
