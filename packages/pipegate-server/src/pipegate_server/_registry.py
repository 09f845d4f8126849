"""Which tunnel serves which connection id, and every tunnel that is still running."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._tunnel import Tunnel

__all__ = ["TunnelRegistry"]


class TunnelRegistry:
    """Maps connection ids to their tunnel.

    A tunnel *claims* its id before the WebSocket is accepted (so a second client for
    the same id is refused with 409 before accept) and *releases* it when it closes,
    when its heartbeat times out, or when its client sends go-away — so a reconnecting
    client gets the id back while the old tunnel may still finish its streams. The
    registry also remembers every running tunnel, released or not, for shutdown and
    credential reloads.
    """

    def __init__(self) -> None:
        self._by_id: dict[str, Tunnel] = {}
        self._running: set[Tunnel] = set()

    def __len__(self) -> int:
        return len(self._by_id)

    def get(self, connection_id: str) -> Tunnel | None:
        return self._by_id.get(connection_id)

    def claim(self, tunnel: Tunnel) -> bool:
        """Register ``tunnel`` for its id; False if another tunnel holds it."""
        if tunnel.connection_id in self._by_id:
            return False
        self._by_id[tunnel.connection_id] = tunnel
        self._running.add(tunnel)
        return True

    def release(self, tunnel: Tunnel) -> None:
        """Free the tunnel's id (if it still holds it). Idempotent."""
        if self._by_id.get(tunnel.connection_id) is tunnel:
            del self._by_id[tunnel.connection_id]

    def forget(self, tunnel: Tunnel) -> None:
        """The tunnel has ended completely."""
        self.release(tunnel)
        self._running.discard(tunnel)

    def running(self) -> Iterator[Tunnel]:
        """Every tunnel that has not ended yet, including released ones."""
        return iter(list(self._running))

    def count_for(self, digest: bytes) -> int:
        """Tunnels holding an id with the credential of this token digest."""
        return sum(1 for tunnel in self._by_id.values() if tunnel.credential.digest == digest)
