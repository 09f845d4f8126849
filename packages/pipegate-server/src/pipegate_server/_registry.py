"""Which tunnel serves which connection id: the directory interface and its
in-process implementation.

The gateway, the relay and every tunnel reach tunnels only through a
:class:`TunnelDirectory`: claiming an id at the handshake (with the token's tunnel
limit), releasing it, looking a tunnel up for a request, listing the running ones,
and keeping the bad-token budget. :class:`TunnelRegistry` keeps all of that in this
process and is the default. A directory shared by several server nodes (issue 17:
id leases and per-token counts in Redis) is another implementation of the same
interface; that is why the operations that would need the shared store —
:meth:`~TunnelDirectory.claim` and :meth:`~TunnelDirectory.count_for` — are
coroutines, while :meth:`~TunnelDirectory.get` (once per relayed request) and
:meth:`~TunnelDirectory.running` stay synchronous: they answer about the tunnels
of this process, the only ones it can relay to or close.

Hostnames (RT-2 to RT-4) are claimed with the id, in the same atomic step: a
tunnel's :attr:`~._tunnel.Tunnel.hostnames` (its custom names and ``<label>.<D>`` for
each domain) are all free or the claim fails. :meth:`~TunnelDirectory.owner_of` maps a
request host to its tunnel. When a tunnel ends, its id and hostnames are remembered as
*offline* for the offline grace (RT-6), so a request for them gets 503 rather than 404;
at most ``max_offline`` names are remembered (oldest dropped first), so the memory this
takes is bounded whatever clients do.
"""

from __future__ import annotations

import enum
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from ._auth import FailureTracker

if TYPE_CHECKING:
    from ._tunnel import Tunnel

__all__ = [
    "Claim",
    "ClusterRequest",
    "Presence",
    "TunnelDirectory",
    "TunnelRegistry",
    "Whereabouts",
]

#: The bad-token budget of a registry built without a tracker (ServerSettings' default).
_DEFAULT_BAD_TOKEN_BUDGET = 10
#: How many offline ids and hostnames a registry remembers at most, each (RT-6).
MAX_OFFLINE = 10_000


class Claim(enum.Enum):
    """The outcome of :meth:`TunnelDirectory.claim`."""

    #: The tunnel now holds its id.
    CLAIMED = "claimed"
    #: Another tunnel holds the id (the handshake is refused with 409).
    TAKEN = "taken"
    #: The token already holds ``limit`` ids (the handshake is refused with 429).
    LIMIT_REACHED = "limit_reached"
    #: Another tunnel holds one of the tunnel's hostnames (refused with 409).
    HOSTNAME_TAKEN = "hostname_taken"
    #: The shared store cannot be asked now (refused with 503; never granted).
    UNAVAILABLE = "unavailable"


class ClusterRequest(enum.Enum):
    """What one server node asks another to do with a tunnel it holds."""

    #: Hand the tunnel off: the balancer now sends its requests to the asking node.
    MOVE = "move"
    #: Disconnect it, as the admin API's kick does on the node that holds it.
    KICK = "kick"


class Presence(enum.Enum):
    """Where a tunnel this process does not serve is (:meth:`TunnelDirectory.locate`)."""

    #: No tunnel holds it, and none did within the offline grace.
    NOWHERE = "nowhere"
    #: This process holds it.
    HERE = "here"
    #: Another server node holds it.
    ELSEWHERE = "elsewhere"
    #: Its tunnel is moving to another node (503 with a short Retry-After).
    MOVING = "moving"
    #: It ended within the offline grace, or its node stopped answering (RT-6).
    OFFLINE = "offline"
    #: The shared store cannot be asked now.
    UNAVAILABLE = "unavailable"


@dataclass(frozen=True, slots=True)
class Whereabouts:
    """The answer of :meth:`TunnelDirectory.locate`."""

    presence: Presence
    #: The id of the tunnel (also for a hostname lookup, when known).
    connection_id: str = ""
    #: The node that holds it (ELSEWHERE, and OFFLINE for a node that stopped).
    node: str = ""
    #: The holder's lease, as the shared store keeps it.
    lease: str = ""
    #: Seconds since it ended (OFFLINE, MOVING).
    age: float = 0.0
    #: Where other nodes reach the node that holds it (its ``--node-url``; ELSEWHERE).
    url: str = ""


class TunnelDirectory(Protocol):
    """Claims, releases, looks up and lists tunnels; keeps the bad-token budget.

    A tunnel *claims* its id before its WebSocket is accepted and *releases* it when
    it closes, times out or its client sends go-away — so a reconnecting client gets
    the id back while the old tunnel may still finish its streams — and is
    *forgotten* when it has ended completely. ``release`` and ``forget`` are
    idempotent and never release an id another tunnel holds.
    """

    def __len__(self) -> int:
        """How many ids are held by tunnels of this process."""
        ...

    def get(self, connection_id: str) -> Tunnel | None:
        """The tunnel of this process that holds ``connection_id``, if any."""
        ...

    def running(self) -> Iterator[Tunnel]:
        """Every tunnel of this process that has not ended, released or not."""
        ...

    def owner_of(self, hostname: str) -> Tunnel | None:
        """The tunnel of this process reached at ``hostname`` (normal form), if any."""
        ...

    def held_elsewhere(self, hostname: str) -> bool:
        """Whether another node holds ``hostname`` as a custom hostname, as far as this
        process knows now (a routing hint, answered without I/O; the request is then
        routed by host and :meth:`locate` says where its tunnel is)."""
        ...

    def offline(self, *, connection_id: str = "", hostname: str = "") -> float:
        """Seconds since the tunnel of this id (or hostname) ended, if that was within
        the offline grace and no tunnel holds it now; ``-1.0`` otherwise (RT-6)."""
        ...

    async def claim(self, tunnel: Tunnel, *, limit: int = 0) -> Claim:
        """Give ``tunnel`` its id and hostnames, unless another tunnel holds one of
        them or the tunnel's credential already holds ``limit`` ids (0: no limit). The
        limit is checked first, and the checks and the claim are one atomic step."""
        ...

    def release(self, tunnel: Tunnel) -> None:
        """Free the tunnel's id if it still holds it."""
        ...

    def forget(self, tunnel: Tunnel) -> None:
        """The tunnel has ended: release its id and drop it from :meth:`running`."""
        ...

    def hand_off(self, tunnel: Tunnel) -> None:
        """Release the tunnel's id for another node, which its client reconnects to
        (its names answer 503 "moving" meanwhile, not "offline")."""
        ...

    async def count_for(self, digest: bytes) -> int:
        """How many ids are held with the credential of this token digest."""
        ...

    async def locate(self, *, connection_id: str = "", hostname: str = "") -> Whereabouts:
        """Where the tunnel of ``connection_id`` (or ``hostname``) is when this process
        does not serve it: asked on the way to a 404, so a node of a cluster can answer
        503 for a tunnel another node holds or that is moving."""
        ...

    def ask(self, where: Whereabouts, request: ClusterRequest, reason: str = "") -> bool:
        """Ask the node of ``where`` to do ``request`` with its tunnel; False when not sent
        (always, for a directory without other nodes)."""
        ...

    async def start(self, on_request: Callable[[ClusterRequest, str, str], None]) -> None:
        """Begin (inside the event loop): ``on_request(request, connection_id, reason)``
        is called for what other nodes ask of this one."""
        ...

    async def aclose(self) -> None:
        """End: free what the directory holds outside this process."""
        ...

    def record_failure(self, address: str) -> float:
        """Count one bad or missing token from ``address``; returns how many seconds
        to delay its refusal (0 while within the budget).

        ``address`` is the socket peer (or the caller a trusted proxy reported).
        Raises :class:`~pipegate_server.errors.TooManyFailuresError` when the address
        already has as many delayed refusals waiting as allowed: the handshake is then
        refused at once with 429 (a delay is a wait, so parallel tries would be free).
        """
        ...


class TunnelRegistry:
    """The in-process :class:`TunnelDirectory`: dicts of ids and hostnames and a set
    of tunnels.

    ``failures`` keeps the bad-token budget (default: a :class:`FailureTracker`
    with the server's default budget). ``offline_grace`` is how long, in seconds, an
    ended tunnel's names answer 503 rather than 404 (0: never); at most
    ``max_offline`` ids and as many hostnames are remembered.
    """

    def __init__(
        self,
        failures: FailureTracker | None = None,
        *,
        offline_grace: float = 300.0,
        max_offline: int = MAX_OFFLINE,
    ) -> None:
        self._by_id: dict[str, Tunnel] = {}
        self._by_host: dict[str, Tunnel] = {}
        self._running: set[Tunnel] = set()
        self.offline_grace = offline_grace
        self.max_offline = max_offline
        #: Names of ended tunnels and when they ended (monotonic), oldest first.
        self._offline_ids: OrderedDict[str, float] = OrderedDict()
        self._offline_hosts: OrderedDict[str, float] = OrderedDict()
        self.failures = (
            failures if failures is not None else FailureTracker(_DEFAULT_BAD_TOKEN_BUDGET)
        )

    def __len__(self) -> int:
        return len(self._by_id)

    def get(self, connection_id: str) -> Tunnel | None:
        return self._by_id.get(connection_id)

    def running(self) -> Iterator[Tunnel]:
        return iter(list(self._running))

    def owner_of(self, hostname: str) -> Tunnel | None:
        return self._by_host.get(hostname)

    def held_elsewhere(self, hostname: str) -> bool:
        return False

    def offline(self, *, connection_id: str = "", hostname: str = "") -> float:
        table = self._offline_hosts if hostname else self._offline_ids
        ended = table.get(hostname or connection_id)
        if ended is None:
            return -1.0
        age = time.monotonic() - ended
        if age > self.offline_grace:
            del table[hostname or connection_id]
            return -1.0
        return age

    async def claim(self, tunnel: Tunnel, *, limit: int = 0) -> Claim:
        if limit and self._count(tunnel.credential.digest) >= limit:
            return Claim.LIMIT_REACHED
        if tunnel.connection_id in self._by_id:
            return Claim.TAKEN
        if any(name in self._by_host for name in tunnel.hostnames):
            return Claim.HOSTNAME_TAKEN
        self._by_id[tunnel.connection_id] = tunnel
        for name in tunnel.hostnames:
            self._by_host[name] = tunnel
            self._offline_hosts.pop(name, None)
        self._offline_ids.pop(tunnel.connection_id, None)
        self._running.add(tunnel)
        return Claim.CLAIMED

    def release(self, tunnel: Tunnel) -> None:
        if self._by_id.get(tunnel.connection_id) is tunnel:
            del self._by_id[tunnel.connection_id]
            if tunnel.comes_back:
                self._remember(self._offline_ids, tunnel.connection_id)
        for name in tunnel.hostnames:
            if self._by_host.get(name) is tunnel:
                del self._by_host[name]
                if tunnel.comes_back:
                    self._remember(self._offline_hosts, name)

    def forget(self, tunnel: Tunnel) -> None:
        self.release(tunnel)
        self._running.discard(tunnel)

    def hand_off(self, tunnel: Tunnel) -> None:
        self.release(tunnel)

    def _remember(self, table: OrderedDict[str, float], name: str) -> None:
        if self.offline_grace <= 0:
            return
        table.pop(name, None)
        table[name] = time.monotonic()
        while len(table) > self.max_offline:
            table.popitem(last=False)

    async def count_for(self, digest: bytes) -> int:
        return self._count(digest)

    async def locate(self, *, connection_id: str = "", hostname: str = "") -> Whereabouts:
        held = self.owner_of(hostname) if hostname else self.get(connection_id)
        if held is not None:
            return Whereabouts(Presence.HERE, held.connection_id)
        age = self.offline(connection_id=connection_id, hostname=hostname)
        if age >= 0:
            return Whereabouts(Presence.OFFLINE, connection_id, age=age)
        return Whereabouts(Presence.NOWHERE, connection_id)

    def ask(self, where: Whereabouts, request: ClusterRequest, reason: str = "") -> bool:
        return False

    async def start(self, on_request: Callable[[ClusterRequest, str, str], None]) -> None:
        return None

    async def aclose(self) -> None:
        return None

    def record_failure(self, address: str) -> float:
        return self.failures.record_failure(address)

    def _count(self, digest: bytes) -> int:
        return sum(1 for tunnel in self._by_id.values() if tunnel.credential.digest == digest)
