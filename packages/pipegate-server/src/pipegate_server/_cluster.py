"""Cluster mode: a :class:`~._registry.TunnelDirectory` shared by several server nodes
through Redis (``--redis-url``, issue 17).

Each node keeps its own tunnels in an in-process :class:`~._registry.TunnelRegistry`
(the relay's lookups stay one dict access) and shares in Redis what the nodes must
agree on:

``<prefix>node:<node>``
    The node's heartbeat (its name, advertised address and start time, as JSON),
    written every ``heartbeat`` seconds with an expiry of ``node_ttl``. A node whose
    heartbeat expired is dead: its leases no longer count.
``<prefix>id:<id>`` and ``<prefix>host:<hostname>``
    Leases: ``<node>|<seq>|<id>``. Written by one Lua script that first checks the
    token's tunnel count, then that the id and every hostname are free (absent or held
    by a dead node), so two nodes never both hold one id. Refreshed, and re-written
    if missing, every ``lease_refresh`` seconds, with an expiry of ``lease_ttl``
    (what a dead node leaves behind is gone after that).
``<prefix>tok:<token digest>``
    A hash id → lease per token: the per-token limit counts its live leases.
``<prefix>info:<id>``
    What the admin API shows about a tunnel held by any node.
``<prefix>off:id:<id>``, ``<prefix>off:host:<hostname>``
    Offline markers (RT-6), with the offline grace as expiry; ``m<ms>`` marks a tunnel
    that is moving to another node.
``<prefix>epoch`` and ``<prefix>settle``
    An epoch set once per Redis lifetime. A node that finds it missing (Redis lost its
    data: a restart without persistence) sets a new one and a *settle* key for
    ``settle`` seconds; claims are refused while it exists, so that every node has
    re-written its leases (each does so as soon as it sees a new epoch) before an id
    can be claimed elsewhere.
``<prefix>inbox:<node>``
    A pub/sub channel per node: another node asks it to hand a tunnel off (``move``)
    or to disconnect one (``kick``).
``<prefix>custom:hosts`` and ``<prefix>hosts:cluster``
    The custom hostnames some node holds (hostname → lease; written after a claim,
    deleted by lease on release, entries whose lease is gone dropped on every
    refresh), and a pub/sub channel announcing them as they come and go. Each node
    keeps a copy as routing hints (:meth:`ClusterDirectory.held_elsewhere`), so the
    router sends such a host to host routing, and on to the node that holds it.

**Redis down.** Tunnels already connected keep serving: requests to them never touch
Redis. New tunnels are refused with 503 (a claim that cannot be checked is never
granted), and a request for an id this node does not hold gets 503 rather than a 404
that might be wrong. Leases cannot expire while Redis is down, and while Redis is
down nobody can claim, so no id gets two owners; when Redis comes back, each node
re-writes its leases first (the settle period above covers a Redis that lost its
data). The one case this does not cover is a node cut off from a Redis the others
still reach: after ``node_ttl`` its ids can be claimed through other nodes. A node
that then finds its lease taken closes its tunnel at once (``lease lost`` in the
log); docs/deploy.md says to run Redis and the nodes on one network for that reason.

**Membership changes.** When the balancer maps an id to another node (a node was
added or came back), the request reaches a node that does not hold it: that node
forwards it to the holder (``_forward.py``; 503 with ``Retry-After: 1`` without a
node URL) and asks the holder, at most once per ``move_interval`` seconds per id, to
hand the tunnel off. The holder sends go-away, frees the lease and closes the tunnel
once its streams end (at most 10 s later, ``_app._MOVE_GRACE``); the client reconnects
through the balancer and lands on the node the id now maps to.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
import secrets
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pipegate_protocol import (
    MAX_REQUESTED_HOSTNAMES,
    CloseCode,
    GoAwayReason,
    is_valid_connection_id,
)
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from ._auth import FailureTracker
from ._registry import Claim, ClusterRequest, Presence, TunnelRegistry, Whereabouts
from .errors import DirectoryUnavailableError

if TYPE_CHECKING:
    from ._tunnel import Tunnel

__all__ = ["ClusterDirectory"]

logger = logging.getLogger("pipegate.server")

#: What a Redis call may raise when Redis is unreachable, slow or refuses.
_UNAVAILABLE = (RedisError, OSError, TimeoutError)
#: Seconds one Redis round trip may take before the directory counts Redis as down.
_CALL_TIMEOUT = 2.0
#: Connections to Redis one node opens at most.
_MAX_CONNECTIONS = 32
#: Custom hostnames a node keeps as routing hints, at most.
_MAX_HINTS = 100_000
#: Requests to other nodes remembered for the per-id interval, at most.
_MAX_ASKED = 10_000


# KEYS: settle, id, token hash, info, hostnames...
# ARGV: lease, limit, lease ttl ms, node key prefix, info json, id key prefix,
#       epoch key, offline id key, offline host keys...
# No epoch: Redis lost its data and no node has noticed yet (its heartbeat sets the
# epoch and the settle key); both mean that leases may not have been re-written yet.
_CLAIM = """
if redis.call('EXISTS', KEYS[1]) == 1 or redis.call('EXISTS', ARGV[7]) == 0 then
  return 'settling'
end
local function alive(lease)
  local node = string.match(lease, '^([^|]*)|')
  return node ~= nil and redis.call('EXISTS', ARGV[4] .. node) == 1
end
local function held(key)
  local lease = redis.call('GET', key)
  return lease and alive(lease)
end
local id = string.match(ARGV[1], '|([^|]*)$')
local limit = tonumber(ARGV[2])
if limit > 0 then
  local count = 0
  local leases = redis.call('HGETALL', KEYS[3])
  for i = 1, #leases, 2 do
    local lease = leases[i + 1]
    if redis.call('GET', ARGV[6] .. leases[i]) == lease and alive(lease) then
      count = count + 1
    else
      redis.call('HDEL', KEYS[3], leases[i])
    end
  end
  if count >= limit then return 'limit' end
end
if held(KEYS[2]) then return 'taken' end
for i = 5, #KEYS do
  if held(KEYS[i]) then return 'hostname' end
end
redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[3])
for i = 5, #KEYS do redis.call('SET', KEYS[i], ARGV[1], 'PX', ARGV[3]) end
redis.call('HSET', KEYS[3], id, ARGV[1])
redis.call('PEXPIRE', KEYS[3], ARGV[3])
redis.call('SET', KEYS[4], ARGV[5], 'PX', ARGV[3])
for i = 8, #ARGV do redis.call('DEL', ARGV[i]) end
return 'claimed'
"""

# KEYS: id, token hash, info, hostnames...
# ARGV: lease, offline grace ms (0: none), marker prefix ('' or 'm'), offline id key,
#       offline host keys...
_RELEASE = """
local id = string.match(ARGV[1], '|([^|]*)$')
local grace = tonumber(ARGV[2])
local now = redis.call('TIME')
local marker = ARGV[3] .. (now[1] * 1000 + math.floor(now[2] / 1000))
local function free(key, offline)
  if redis.call('GET', key) == ARGV[1] then
    redis.call('DEL', key)
    if grace > 0 then redis.call('SET', offline, marker, 'PX', grace) end
  end
end
free(KEYS[1], ARGV[4])
if redis.call('HGET', KEYS[2], id) == ARGV[1] then redis.call('HDEL', KEYS[2], id) end
if redis.call('GET', KEYS[3]) and not redis.call('GET', KEYS[1]) then
  redis.call('DEL', KEYS[3])
end
for i = 4, #KEYS do free(KEYS[i], ARGV[i + 1]) end
return 1
"""

# KEYS: id, token hash, info, hostnames...   ARGV: lease, lease ttl ms, info json
# Returns 'lost' when another lease holds the id or a hostname (the tunnel must go).
_REFRESH = """
local id = string.match(ARGV[1], '|([^|]*)$')
local function keep(key)
  local lease = redis.call('GET', key)
  if lease == ARGV[1] then
    redis.call('PEXPIRE', key, ARGV[2])
  elseif lease then
    return false
  else
    redis.call('SET', key, ARGV[1], 'PX', ARGV[2])
  end
  return true
end
if not keep(KEYS[1]) then return 'lost' end
for i = 4, #KEYS do
  if not keep(KEYS[i]) then return 'lost' end
end
redis.call('HSET', KEYS[2], id, ARGV[1])
redis.call('PEXPIRE', KEYS[2], ARGV[2])
redis.call('SET', KEYS[3], ARGV[3], 'PX', ARGV[2])
return 'kept'
"""

# KEYS: node, epoch, settle   ARGV: node json, node ttl ms, settle ms, new epoch
_HEARTBEAT = """
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
local epoch = redis.call('GET', KEYS[2])
if not epoch then
  redis.call('SET', KEYS[2], ARGV[4])
  redis.call('SET', KEYS[3], '1', 'PX', ARGV[3])
  return ARGV[4]
end
return epoch
"""

# KEYS: lease key (id or host), offline key   ARGV: node key prefix
# Returns {lease or '', its node's heartbeat record ('' if dead), offline marker or ''}.
_LOCATE = """
local lease = redis.call('GET', KEYS[1])
local record = ''
if lease then
  local node = string.match(lease, '^([^|]*)|')
  if node then record = redis.call('GET', ARGV[1] .. node) or '' end
else
  lease = ''
end
return {lease, record, redis.call('GET', KEYS[2]) or ''}
"""

# KEYS: the custom hostnames hash   ARGV: host key prefix
# Drops the hints whose hostname's lease is gone or another's; returns the others.
_HINTS = """
local names = {}
local hints = redis.call('HGETALL', KEYS[1])
for i = 1, #hints, 2 do
  if redis.call('GET', ARGV[1] .. hints[i]) == hints[i + 1] then
    names[#names + 1] = hints[i]
  else
    redis.call('HDEL', KEYS[1], hints[i])
  end
end
return names
"""

# KEYS: the custom hostnames hash   ARGV: lease, hostnames...
_UNHINT = """
for i = 2, #ARGV do
  if redis.call('HGET', KEYS[1], ARGV[i]) == ARGV[1] then redis.call('HDEL', KEYS[1], ARGV[i]) end
end
return 1
"""


@dataclass(frozen=True, slots=True)
class _Lease:
    value: str
    keys: list[str]
    offline_keys: list[str]


class ClusterDirectory:
    """A :class:`~._registry.TunnelDirectory` whose ids, hostnames, per-token counts
    and offline markers are shared with other nodes through ``redis`` (see the module
    docstring for the keys and the failure behaviour).

    ``local`` holds this node's tunnels (and the bad-token budget, which stays per
    node). ``name`` names the node in logs and the admin API; each start gets a new
    node id (``<name>-<random>``) so that a restarted node never inherits the leases
    of its previous life. ``advertise`` is the node's own address, shown by the admin
    API. Start it with :meth:`start` inside the event loop, stop it with
    :meth:`aclose`.
    """

    def __init__(
        self,
        redis: Redis,
        *,
        local: TunnelRegistry | None = None,
        name: str = "",
        advertise: str = "",
        node_url: str = "",
        prefix: str = "pipegate:",
        offline_grace: float = 300.0,
        heartbeat: float = 0.5,
        node_ttl: float = 2.0,
        lease_ttl: float = 30.0,
        lease_refresh: float = 10.0,
        settle: float = 3.0,
        move_interval: float = 5.0,
    ) -> None:
        if not heartbeat < node_ttl:
            raise ValueError("the heartbeat must be shorter than the node TTL")
        if not lease_refresh < lease_ttl:
            raise ValueError("the lease refresh must be shorter than the lease TTL")
        self.redis = redis
        self.local = local if local is not None else TunnelRegistry(offline_grace=offline_grace)
        self.name = name or f"{socket.gethostname()}-{os.getpid()}"
        self.node = f"{self.name}-{secrets.token_hex(3)}"
        self.advertise = advertise
        #: Where other nodes forward requests for this node's tunnels ('' = nowhere).
        self.node_url = node_url
        #: Custom hostnames some node of the cluster holds (routing hints: kept from
        #: the ``custom`` hash, every ``lease_refresh`` and as nodes announce them).
        self._hinted: set[str] = set()
        self.prefix = prefix
        self.offline_grace = offline_grace
        self.heartbeat = heartbeat
        self.node_ttl = node_ttl
        self.lease_ttl = lease_ttl
        self.lease_refresh = lease_refresh
        self.settle = settle
        self.move_interval = move_interval
        self.started = time.time()
        #: Whether the last Redis call failed (logged once per outage).
        self.redis_down = False
        self._leases: dict[Tunnel, _Lease] = {}
        self._moving: set[Tunnel] = set()
        self._seq = itertools.count(1)
        self._epoch: str | None = None
        self._asked: dict[tuple[str, str], float] = {}
        #: Releases Redis did not take (it was down); retried by the heartbeat.
        self._unreleased: list[tuple[_Lease, float, str]] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self._on_request: Callable[[ClusterRequest, str, str], None] | None = None
        self._claim = redis.register_script(_CLAIM)
        self._release = redis.register_script(_RELEASE)
        self._refresh = redis.register_script(_REFRESH)
        self._beat = redis.register_script(_HEARTBEAT)
        self._locate = redis.register_script(_LOCATE)
        self._hints = redis.register_script(_HINTS)
        self._unhint = redis.register_script(_UNHINT)

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> ClusterDirectory:
        """A directory on the Redis at ``url`` (``redis://host:port/db``,
        ``rediss://`` for TLS, ``unix:///path``). Calls fail fast: two immediate
        attempts (no backoff), a 1 s connect timeout. At most ``_MAX_CONNECTIONS``
        connections: a call waits for a free one (bounded by the call timeout), so a
        flood of requests for unknown ids queues on the pool instead of opening
        connections."""
        pool = BlockingConnectionPool.from_url(
            url,
            max_connections=_MAX_CONNECTIONS,
            timeout=_CALL_TIMEOUT,
            socket_connect_timeout=1.0,
            socket_timeout=_CALL_TIMEOUT,
            # One immediate retry: a pooled connection that Redis dropped (a restart)
            # fails once; a Redis that is down fails both tries at once.
            retry=Retry(NoBackoff(), 1),
            decode_responses=True,
        )
        return cls(Redis.from_pool(pool), **kwargs)

    # ------------------------------------------------------------------ keys

    def _key(self, kind: str, name: str) -> str:
        return f"{self.prefix}{kind}:{name}"

    def _lease_for(self, tunnel: Tunnel, value: str) -> _Lease:
        return _Lease(
            value,
            [
                self._key("id", tunnel.connection_id),
                self._key("tok", tunnel.credential.digest.hex()),
                self._key("info", tunnel.connection_id),
                *(self._key("host", name) for name in tunnel.hostnames),
            ],
            [
                self._key("off:id", tunnel.connection_id),
                *(self._key("off:host", name) for name in tunnel.hostnames),
            ],
        )

    def _info(self, tunnel: Tunnel) -> str:
        return json.dumps(
            {
                "id": tunnel.connection_id,
                "node": self.name,
                "hostnames": list(tunnel.hostnames),
                "token": tunnel.credential.label,
                "peer": tunnel.remote,
                "connected_since": tunnel.connected_since,
            }
        )

    async def _call(self, awaitable: Any) -> Any:
        """One Redis round trip, bounded in time; marks Redis down or up again."""
        try:
            # Not wait_for: on Python 3.11 it can swallow a cancellation that comes
            # as the call completes, and aclose() would then wait for ever.
            async with asyncio.timeout(_CALL_TIMEOUT):
                result = await awaitable
        except _UNAVAILABLE as exc:
            if not self.redis_down:
                self.redis_down = True
                logger.warning(
                    "redis unavailable: node=%s error=%s; connected tunnels keep serving, "
                    "new tunnels are refused with 503",
                    self.name,
                    type(exc).__name__,
                )
            raise
        if self.redis_down:
            self.redis_down = False
            logger.info("redis reachable again: node=%s", self.name)
        return result

    # ------------------------------------------------------------------ this node

    def __len__(self) -> int:
        return len(self.local)

    def get(self, connection_id: str) -> Tunnel | None:
        return self.local.get(connection_id)

    def running(self) -> Iterator[Tunnel]:
        return self.local.running()

    def owner_of(self, hostname: str) -> Tunnel | None:
        return self.local.owner_of(hostname)

    def held_elsewhere(self, hostname: str) -> bool:
        return hostname in self._hinted

    def offline(self, *, connection_id: str = "", hostname: str = "") -> float:
        return self.local.offline(connection_id=connection_id, hostname=hostname)

    def record_failure(self, address: str) -> float:
        return self.local.record_failure(address)

    @property
    def failures(self) -> FailureTracker:
        return self.local.failures

    # ------------------------------------------------------------------ shared state

    async def claim(self, tunnel: Tunnel, *, limit: int = 0) -> Claim:
        value = f"{self.node}|{next(self._seq)}|{tunnel.connection_id}"
        lease = self._lease_for(tunnel, value)
        try:
            outcome = await self._call(
                self._claim(
                    keys=[self._key("settle", "cluster"), *lease.keys],
                    args=[
                        value,
                        limit,
                        int(self.lease_ttl * 1000),
                        self._key("node", ""),
                        self._info(tunnel),
                        self._key("id", ""),
                        self._key("epoch", "cluster"),
                        *lease.offline_keys,
                    ],
                )
            )
        except _UNAVAILABLE:
            return Claim.UNAVAILABLE
        if outcome == "settling":
            return Claim.UNAVAILABLE
        if outcome == "limit":
            return Claim.LIMIT_REACHED
        if outcome == "taken":
            return Claim.TAKEN
        if outcome == "hostname":
            return Claim.HOSTNAME_TAKEN
        local = await self.local.claim(tunnel)
        if local is not Claim.CLAIMED:  # pragma: no cover - Redis said the names were free
            self._spawn(self._free(lease, 0.0, ""))
            return local
        self._leases[tunnel] = lease
        if tunnel.custom_hostnames:
            self._spawn(self._announce(tunnel.custom_hostnames, value))
        return Claim.CLAIMED

    def release(self, tunnel: Tunnel) -> None:
        self.local.release(tunnel)
        lease = self._leases.pop(tunnel, None)
        if lease is not None:
            moving = tunnel in self._moving
            grace = self.offline_grace if (tunnel.comes_back or moving) else 0.0
            self._spawn(self._free(lease, grace, "m" if moving else ""))
            if tunnel.custom_hostnames:
                self._spawn(self._withdraw(tunnel.custom_hostnames, lease.value))

    def forget(self, tunnel: Tunnel) -> None:
        self.release(tunnel)
        self.local.forget(tunnel)
        self._moving.discard(tunnel)

    def hand_off(self, tunnel: Tunnel) -> None:
        """Free the tunnel's names for the node the balancer now sends them to; until
        its client has reconnected there, they answer 503 "moving"."""
        self._moving.add(tunnel)
        self.release(tunnel)

    async def _announce(self, names: tuple[str, ...], lease: str) -> None:
        """Tell every node that these custom hostnames are held (routing hints)."""
        with contextlib.suppress(*_UNAVAILABLE):
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.hset(self._key("custom", "hosts"), mapping=dict.fromkeys(names, lease))
                pipe.publish(self._key("hosts", "cluster"), json.dumps({"add": list(names)}))
                await self._call(pipe.execute())

    async def _withdraw(self, names: tuple[str, ...], lease: str) -> None:
        with contextlib.suppress(*_UNAVAILABLE):
            await self._call(
                self._unhint(keys=[self._key("custom", "hosts")], args=[lease, *names])
            )
            await self._call(
                self.redis.publish(self._key("hosts", "cluster"), json.dumps({"del": list(names)}))
            )

    async def _reload_hints(self) -> None:
        names = await self._call(
            self._hints(keys=[self._key("custom", "hosts")], args=[self._key("host", "")])
        )
        self._hinted = set(names)

    async def _free(self, lease: _Lease, grace: float, marker: str) -> None:
        try:
            await self._call(
                self._release(
                    keys=lease.keys,
                    args=[lease.value, int(grace * 1000), marker, *lease.offline_keys],
                )
            )
        except _UNAVAILABLE:
            self._unreleased.append((lease, grace, marker))

    async def count_for(self, digest: bytes) -> int:
        key = self._key("tok", digest.hex())
        try:
            leases = await self._call(self.redis.hgetall(key))
        except _UNAVAILABLE:
            return sum(1 for t in self._leases if t.credential.digest == digest)
        count = 0
        for connection_id, value in leases.items():
            where = await self.locate(connection_id=connection_id)
            if where.lease == value and where.presence in (Presence.HERE, Presence.ELSEWHERE):
                count += 1
        return count

    async def locate(self, *, connection_id: str = "", hostname: str = "") -> Whereabouts:
        if hostname:
            keys = [self._key("host", hostname), self._key("off:host", hostname)]
        else:
            keys = [self._key("id", connection_id), self._key("off:id", connection_id)]
        try:
            lease, record, marker = await self._call(
                self._locate(keys=keys, args=[self._key("node", "")])
            )
        except _UNAVAILABLE:
            return Whereabouts(Presence.UNAVAILABLE)
        if lease:
            node, _, rest = lease.partition("|")
            held = rest.partition("|")[2]
            if node == self.node:
                return Whereabouts(Presence.HERE, held, node, lease)
            if record:
                try:
                    url = str(json.loads(record).get("url") or "")
                except (ValueError, AttributeError):
                    url = ""
                return Whereabouts(Presence.ELSEWHERE, held, node, lease, url=url)
            # Its node stopped answering: its client is on its way to another node.
            return Whereabouts(Presence.OFFLINE, held, node, lease)
        if marker:
            moving = marker.startswith("m")
            try:
                ended_ms = int(marker.removeprefix("m"))
            except ValueError:
                ended_ms = int(time.time() * 1000)
            return Whereabouts(
                Presence.MOVING if moving else Presence.OFFLINE,
                connection_id,
                age=max(0.0, time.time() - ended_ms / 1000),
            )
        return Whereabouts(Presence.NOWHERE, connection_id)

    def ask(self, where: Whereabouts, request: ClusterRequest, reason: str = "") -> bool:
        """Ask the node that holds ``where`` to move or kick its tunnel; a move is
        asked at most once per ``move_interval`` per id. False when not sent."""
        if where.presence is not Presence.ELSEWHERE or not where.connection_id:
            return False
        now = time.monotonic()
        key = (request.value, where.connection_id)
        if request is ClusterRequest.MOVE and now - self._asked.get(key, -1e9) < self.move_interval:
            return False
        if len(self._asked) >= _MAX_ASKED:
            self._asked = {k: t for k, t in self._asked.items() if now - t < self.move_interval}
            if len(self._asked) >= _MAX_ASKED:
                self._asked.clear()
        self._asked[key] = now
        message = json.dumps(
            {"op": request.value, "id": where.connection_id, "reason": reason[:200]}
        )
        self._spawn(self._publish(self._key("inbox", where.node), message))
        return True

    async def _publish(self, channel: str, message: str) -> None:
        with contextlib.suppress(*_UNAVAILABLE):
            await self._call(self.redis.publish(channel, message))

    # ------------------------------------------------------------------ admin view

    async def nodes(self) -> list[dict[str, Any]]:
        """Every live node's heartbeat record; raises
        :class:`~pipegate_server.errors.DirectoryUnavailableError`."""
        try:
            keys = [key async for key in self.redis.scan_iter(match=self._key("node", "*"))]
            values = await self._call(self.redis.mget(keys)) if keys else []
        except _UNAVAILABLE as exc:
            raise DirectoryUnavailableError("redis cannot be reached") from exc
        return sorted((json.loads(v) for v in values if v), key=lambda node: str(node.get("name")))

    async def tunnels(self, limit: int = 10_000) -> list[dict[str, Any]]:
        """What every node's tunnels look like to the admin API (at most ``limit``),
        by id; raises :class:`~pipegate_server.errors.DirectoryUnavailableError`."""
        keys: list[str] = []
        infos: list[dict[str, Any]] = []
        try:
            async for key in self.redis.scan_iter(match=self._key("info", "*"), count=1000):
                keys.append(key)
                if len(keys) >= limit:
                    break
            for start in range(0, len(keys), 1000):
                values = await self._call(self.redis.mget(keys[start : start + 1000]))
                infos.extend(json.loads(v) for v in values if v)
        except _UNAVAILABLE as exc:
            raise DirectoryUnavailableError("redis cannot be reached") from exc
        return sorted(infos, key=lambda info: str(info.get("id")))

    # ------------------------------------------------------------------ lifecycle

    async def start(self, on_request: Callable[[ClusterRequest, str, str], None]) -> None:
        """Join the cluster: the first heartbeat (a Redis that is down is logged, not
        fatal: the node starts and refuses tunnels until Redis answers), the heartbeat
        loop and this node's inbox. ``on_request(request, connection_id, reason)``
        handles what other nodes ask of this one."""
        self._on_request = on_request
        with contextlib.suppress(*_UNAVAILABLE):
            await self._heartbeat_once()
        logger.info("cluster node started: node=%s id=%s", self.name, self.node)
        self._spawn(self._heartbeat_loop())
        self._spawn(self._listen())

    async def aclose(self) -> None:
        """Leave the cluster: free this node's leases and its heartbeat, stop tasks."""
        pending = set(self._tasks)
        while pending:
            # Cancelled again until they end: a cancellation that comes as a Redis
            # call completes can be lost (asyncio and redis-py on Python 3.11), and
            # the heartbeat or the inbox would then run on for ever.
            for task in pending:
                task.cancel()
            done, pending = await asyncio.wait(pending, timeout=0.5)
            for task in done:
                if not task.cancelled():
                    task.exception()
        try:
            for tunnel, lease in list(self._leases.items()):
                await self._free(lease, self.offline_grace if tunnel.comes_back else 0.0, "")
            await self._call(self.redis.delete(self._key("node", self.node)))
        except _UNAVAILABLE:
            pass
        await self.redis.aclose()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _heartbeat_once(self) -> None:
        epoch = await self._call(
            self._beat(
                keys=[
                    self._key("node", self.node),
                    self._key("epoch", "cluster"),
                    self._key("settle", "cluster"),
                ],
                args=[
                    json.dumps(
                        {
                            "name": self.name,
                            "node": self.node,
                            "address": self.advertise,
                            "url": self.node_url,
                            "started": self.started,
                            "tunnels": len(self._leases),
                        }
                    ),
                    int(self.node_ttl * 1000),
                    int(self.settle * 1000),
                    secrets.token_hex(8),
                ],
            )
        )
        if epoch != self._epoch:
            if self._epoch is not None:
                logger.warning(
                    "redis lost the cluster's state (new epoch): node=%s re-writing %d "
                    "lease(s); claims wait %g s",
                    self.name,
                    len(self._leases),
                    self.settle,
                )
            self._epoch = epoch
            await self._refresh_leases()
            await self._reload_hints()

    async def _heartbeat_loop(self) -> None:
        last_refresh = time.monotonic()
        while True:
            await asyncio.sleep(self.heartbeat)
            try:
                await self._heartbeat_once()
                if self._unreleased:
                    pending, self._unreleased = self._unreleased, []
                    for lease, grace, marker in pending:
                        await self._free(lease, grace, marker)
                if time.monotonic() - last_refresh >= self.lease_refresh:
                    last_refresh = time.monotonic()
                    await self._refresh_leases()
                    await self._reload_hints()
            except _UNAVAILABLE:
                _stop_if_cancelled()
                continue
            except Exception:  # pragma: no cover - a bug must not stop the heartbeat
                logger.exception("cluster heartbeat failed: node=%s", self.name)

    async def _refresh_leases(self) -> None:
        """Extend every lease of this node, re-writing any Redis lost; a tunnel whose
        id or hostname another node holds now is closed (its lease was lost)."""
        held = list(self._leases.items())
        if not held:
            return
        ttl = int(self.lease_ttl * 1000)
        async with self.redis.pipeline(transaction=False) as pipe:
            for tunnel, lease in held:
                await self._refresh(
                    keys=lease.keys, args=[lease.value, ttl, self._info(tunnel)], client=pipe
                )
            outcomes = await self._call(pipe.execute())
        for (tunnel, lease), outcome in zip(held, outcomes, strict=True):
            if outcome == "lost" and self._leases.get(tunnel) is lease:
                del self._leases[tunnel]
                logger.warning(
                    "lease lost: id=%s node=%s; another node holds it now, closing",
                    tunnel.connection_id,
                    self.name,
                )
                self._spawn(_close_lost(tunnel))

    async def _listen(self) -> None:
        channel = self._key("inbox", self.node)
        hosts = self._key("hosts", "cluster")
        while True:
            try:
                async with self.redis.pubsub() as pubsub:
                    await self._call(pubsub.subscribe(channel, hosts))
                    with contextlib.suppress(*_UNAVAILABLE):
                        # Hints announced before this subscription, or while away.
                        await self._reload_hints()
                    while True:
                        message = await pubsub.get_message(
                            ignore_subscribe_messages=True, timeout=1.0
                        )
                        if message is None or message.get("type") != "message":
                            continue
                        if message.get("channel") == hosts:
                            self._hint(message.get("data"))
                        else:
                            self._dispatch(message.get("data"))
            except _UNAVAILABLE:
                _stop_if_cancelled()
                await asyncio.sleep(self.heartbeat)
            except UnicodeDecodeError:
                # A message that is not UTF-8 would end the listener: drop the
                # connection it was read on and subscribe again.
                logger.warning("cluster message ignored (not UTF-8): node=%s", self.name)

    def _hint(self, data: object) -> None:
        """Apply a custom hostname announcement (``{"add": [...]}``/``{"del": [...]}``)."""
        try:
            message = json.loads(data) if isinstance(data, str | bytes) else {}
            added = message.get("add", []) if isinstance(message, dict) else []
            removed = message.get("del", []) if isinstance(message, dict) else []
        except (ValueError, RecursionError):
            return
        for names, keep in ((added, True), (removed, False)):
            if not isinstance(names, list):
                continue
            for name in names[:MAX_REQUESTED_HOSTNAMES]:
                if not isinstance(name, str) or len(name) > 253:
                    continue
                if keep:
                    if len(self._hinted) < _MAX_HINTS:
                        self._hinted.add(name)
                else:
                    self._hinted.discard(name)

    def _dispatch(self, data: object) -> None:
        try:
            message = json.loads(data) if isinstance(data, str | bytes) else {}
            if not isinstance(message, dict):
                raise TypeError("not an object")
            request = ClusterRequest(message["op"])
            connection_id = message["id"]
            reason = str(message.get("reason", ""))[:200]
        except (ValueError, TypeError, KeyError, RecursionError):
            # RecursionError: JSON nested too deep; it would end the listener.
            logger.warning("cluster message ignored (malformed): node=%s", self.name)
            return
        if not isinstance(connection_id, str) or not is_valid_connection_id(connection_id):
            return
        if self._on_request is not None:
            self._on_request(request, connection_id, reason)


def _stop_if_cancelled() -> None:
    """Raise CancelledError when this task was asked to stop: redis-py can turn a
    cancellation that comes during a call into a connection error, which the loops
    catch as "Redis down" and would otherwise carry on after."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


async def _close_lost(tunnel: Tunnel) -> None:
    tunnel.goaway(GoAwayReason.SHUTDOWN, "another server node holds this id now")
    tunnel.close(CloseCode.GOING_AWAY, "lease lost")
