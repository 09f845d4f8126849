"""The tunnel directory: TunnelRegistry's semantics, and the Gateway on another one.

The second half runs the real server on a test-only :class:`TunnelDirectory` that
shares no code with :class:`TunnelRegistry` and plays a directory shared with other
nodes (ids and tunnel counts held elsewhere), which is what issue 17 will put behind
the same interface.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from pipegate_server import Gateway, ServerSettings, create_app
from pipegate_server._auth import Credential, FailureTracker
from pipegate_server._registry import (
    Claim,
    ClusterRequest,
    Presence,
    TunnelDirectory,
    TunnelRegistry,
    Whereabouts,
)
from pipegate_server._tunnel import Tunnel
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

SUBPROTOCOL = "pipegate.v1"
ALICE = Credential(label="alice", digest=b"a" * 32)
BOB = Credential(label="bob", digest=b"b" * 32)


@dataclass(eq=False)
class StubTunnel:
    """What a directory reads of a tunnel: its id, credential and hostnames."""

    connection_id: str
    credential: Credential = ALICE
    hostnames: tuple[str, ...] = ()
    comes_back: bool = True


def _t(connection_id: str, credential: Credential = ALICE, hostnames: tuple[str, ...] = ()) -> Any:
    return StubTunnel(connection_id, credential, hostnames)


# ---------------------------------------------------------------------- TunnelRegistry


async def test_claim_gives_an_id_to_one_tunnel_only() -> None:
    registry = TunnelRegistry()
    first, second = _t("node"), _t("node")
    assert await registry.claim(first) is Claim.CLAIMED
    assert await registry.claim(second) is Claim.TAKEN
    assert registry.get("node") is first
    assert registry.get("other") is None
    assert len(registry) == 1
    assert list(registry.running()) == [first]


async def test_release_frees_the_id_but_the_tunnel_keeps_running() -> None:
    registry = TunnelRegistry()
    old, new = _t("node"), _t("node")
    await registry.claim(old)
    registry.release(old)
    assert registry.get("node") is None
    assert len(registry) == 0
    assert list(registry.running()) == [old]
    # A reconnecting client gets the id back while the old tunnel finishes.
    assert await registry.claim(new) is Claim.CLAIMED
    assert set(registry.running()) == {old, new}
    # The old tunnel releasing or ending again never takes the id from the new one.
    registry.release(old)
    registry.forget(old)
    assert registry.get("node") is new
    assert list(registry.running()) == [new]


async def test_forget_releases_and_is_idempotent() -> None:
    registry = TunnelRegistry()
    tunnel = _t("node")
    await registry.claim(tunnel)
    registry.forget(tunnel)
    registry.forget(tunnel)
    registry.release(tunnel)
    assert registry.get("node") is None
    assert list(registry.running()) == []
    assert await registry.claim(_t("node")) is Claim.CLAIMED


async def test_running_is_a_snapshot() -> None:
    registry = TunnelRegistry()
    tunnels = [_t(f"n{i}") for i in range(3)]
    for tunnel in tunnels:
        await registry.claim(tunnel)
    for tunnel in registry.running():  # forgetting while iterating is allowed
        registry.forget(tunnel)
    assert list(registry.running()) == []


async def test_count_for_counts_ids_held_per_credential() -> None:
    registry = TunnelRegistry()
    released = _t("a1")
    for tunnel in (released, _t("a2"), _t("b1", BOB)):
        await registry.claim(tunnel)
    assert await registry.count_for(ALICE.digest) == 2
    assert await registry.count_for(BOB.digest) == 1
    registry.release(released)
    assert await registry.count_for(ALICE.digest) == 1
    assert await registry.count_for(b"nobody") == 0


async def test_claim_enforces_the_per_token_limit() -> None:
    registry = TunnelRegistry()
    assert await registry.claim(_t("a1"), limit=2) is Claim.CLAIMED
    assert await registry.claim(_t("a2"), limit=2) is Claim.CLAIMED
    assert await registry.claim(_t("a3"), limit=2) is Claim.LIMIT_REACHED
    assert registry.get("a3") is None
    # Other tokens have their own count; 0 means no limit.
    assert await registry.claim(_t("b1", BOB), limit=1) is Claim.CLAIMED
    assert await registry.claim(_t("a3"), limit=0) is Claim.CLAIMED
    # The limit is checked before the id, as the 429 came before the 409.
    assert await registry.claim(_t("a1"), limit=2) is Claim.LIMIT_REACHED


async def test_failures_are_tracked_through_the_directory() -> None:
    directory: TunnelDirectory = TunnelRegistry(FailureTracker(2, max_delay=1.0))
    delays = [directory.record_failure("10.0.0.1") for _ in range(4)]
    assert delays[:2] == [0.0, 0.0]
    assert 0 < delays[2] < delays[3] <= 1.0
    assert directory.record_failure("10.0.0.2") == 0.0


def test_default_failure_budget_is_the_servers() -> None:
    registry = TunnelRegistry()
    budget = ServerSettings(client_token="t").bad_token_budget
    delays = [registry.record_failure("a") for _ in range(budget + 1)]
    assert delays[:budget] == [0.0] * budget
    assert delays[budget] > 0


def test_gateway_defaults_to_an_in_process_registry_with_its_budget() -> None:
    gateway = Gateway(ServerSettings(client_token="t", bad_token_budget=1))
    assert isinstance(gateway.directory, TunnelRegistry)
    assert gateway.registry is gateway.directory
    assert gateway.failures is gateway.directory
    assert gateway.directory.record_failure("a") == 0.0
    assert gateway.directory.record_failure("a") > 0


# ---------------------------------------------------------------------- another directory


@dataclass
class SharedDirectoryDouble:
    """A TunnelDirectory as a node of a cluster sees it: ids and tunnel counts held
    by other nodes (``elsewhere``, ``remote_counts``), calls recorded."""

    elsewhere: set[str] = field(default_factory=set)
    remote_counts: dict[bytes, int] = field(default_factory=dict)
    local: dict[str, Tunnel] = field(default_factory=dict)
    alive: list[Tunnel] = field(default_factory=list)
    calls: list[tuple[str, Any]] = field(default_factory=list)
    failure_delay: float = 0.0

    def __len__(self) -> int:
        return len(self.local)

    def get(self, connection_id: str) -> Tunnel | None:
        self.calls.append(("get", connection_id))
        return self.local.get(connection_id)

    def running(self) -> Iterator[Tunnel]:
        return iter(list(self.alive))

    def owner_of(self, hostname: str) -> Tunnel | None:
        self.calls.append(("owner_of", hostname))
        return next((t for t in self.local.values() if hostname in t.hostnames), None)

    def held_elsewhere(self, hostname: str) -> bool:
        return False

    def offline(self, *, connection_id: str = "", hostname: str = "") -> float:
        return -1.0

    async def claim(self, tunnel: Tunnel, *, limit: int = 0) -> Claim:
        self.calls.append(("claim", (tunnel.connection_id, limit)))
        await asyncio.sleep(0)  # a round trip to the shared store
        if limit and await self.count_for(tunnel.credential.digest) >= limit:
            return Claim.LIMIT_REACHED
        if tunnel.connection_id in self.elsewhere or tunnel.connection_id in self.local:
            return Claim.TAKEN
        self.local[tunnel.connection_id] = tunnel
        self.alive.append(tunnel)
        return Claim.CLAIMED

    def release(self, tunnel: Tunnel) -> None:
        self.calls.append(("release", tunnel.connection_id))
        if self.local.get(tunnel.connection_id) is tunnel:
            del self.local[tunnel.connection_id]

    def forget(self, tunnel: Tunnel) -> None:
        self.calls.append(("forget", tunnel.connection_id))
        self.release(tunnel)
        if tunnel in self.alive:
            self.alive.remove(tunnel)

    async def count_for(self, digest: bytes) -> int:
        mine = sum(1 for t in self.local.values() if t.credential.digest == digest)
        return mine + self.remote_counts.get(digest, 0)

    def record_failure(self, address: str) -> float:
        self.calls.append(("record_failure", address))
        return self.failure_delay

    def hand_off(self, tunnel: Tunnel) -> None:
        self.calls.append(("hand_off", tunnel.connection_id))
        self.release(tunnel)

    async def locate(self, *, connection_id: str = "", hostname: str = "") -> Whereabouts:
        self.calls.append(("locate", connection_id or hostname))
        if connection_id in self.elsewhere:
            return Whereabouts(Presence.ELSEWHERE, connection_id, "other-node")
        return Whereabouts(Presence.NOWHERE, connection_id)

    def ask(self, where: Whereabouts, request: ClusterRequest, reason: str = "") -> bool:
        self.calls.append(("ask", (request, where.connection_id, where.node)))
        return where.presence is Presence.ELSEWHERE

    async def start(self, on_request: Callable[[ClusterRequest, str, str], None]) -> None:
        self.calls.append(("start", None))

    async def aclose(self) -> None:
        self.calls.append(("aclose", None))


def test_both_directories_satisfy_the_protocol() -> None:
    directories: list[TunnelDirectory] = [TunnelRegistry(), SharedDirectoryDouble()]
    assert all(len(d) == 0 for d in directories)


async def _handshake_status(port: int, connection_id: str, token: str) -> int:
    with pytest.raises(InvalidStatus) as info:
        async with connect(
            f"ws://127.0.0.1:{port}/{connection_id}",
            additional_headers={"Authorization": f"Bearer {token}"},
            subprotocols=[SUBPROTOCOL],  # type: ignore[list-item]
        ):
            pass
    return info.value.response.status_code


async def test_gateway_claims_relays_and_ends_through_another_directory(pg: Any) -> None:
    directory = SharedDirectoryDouble()
    settings = ServerSettings(client_token=pg.token, max_tunnels_per_token=5)
    async with pg.serve_app(create_app(settings, directory=directory), settings) as server:
        assert server.app.state.gateway.directory is directory
        async with pg.fake_client(server, "node", pg.echo_handler):
            assert ("claim", ("node", 5)) in directory.calls
            assert directory.get("node") is not None
            async with httpx.AsyncClient() as http:
                response = await http.get(f"{server.base}/node/hello")
                health = (await http.get(f"{server.base}/_pipegate/health")).json()
            assert response.status_code == 200
            assert directory.calls.count(("get", "node")) >= 2
            assert health["tunnels"] == 1
        for _ in range(200):
            if ("forget", "node") in directory.calls:
                break
            await asyncio.sleep(0.01)
        assert ("forget", "node") in directory.calls
        assert directory.local == {}
        assert directory.alive == []


async def test_the_directory_decides_409_429_and_bad_token_delays(pg: Any) -> None:
    directory = SharedDirectoryDouble(elsewhere={"held-elsewhere"}, failure_delay=0.2)
    settings = ServerSettings(client_token=pg.token, max_tunnels_per_token=2)
    async with pg.serve_app(create_app(settings, directory=directory), settings) as server:
        port = server.port
        assert await _handshake_status(port, "held-elsewhere", pg.token) == 409
        credential = server.app.state.gateway.authenticator.authenticate(pg.token)
        directory.remote_counts[credential.digest] = 2
        assert await _handshake_status(port, "fresh", pg.token) == 429
        assert ("claim", ("fresh", 2)) in directory.calls
        loop = asyncio.get_running_loop()
        started = loop.time()
        assert await _handshake_status(port, "fresh", "wrong-token") == 403
        assert loop.time() - started >= 0.2
        assert ("record_failure", "127.0.0.1") in directory.calls
        assert directory.local == {}
