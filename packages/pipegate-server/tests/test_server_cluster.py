"""ClusterDirectory (issue 17) against a real ``redis-server``: leases shared by two
nodes, the settle period after Redis lost its data, lost leases, Redis outages,
hostile inbox messages, and the Gateway of a cluster node.

Each test gets its own key prefix on one Redis started for the module; the tests
that stop Redis start their own. Timings are small (heartbeat 0.1 s, node TTL
0.5 s, settle 0.5 s) and every wait is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, cast

import httpx
import pytest
from pipegate_protocol import CAPABILITY_HOSTNAMES, CloseCode, GoAwayReason
from pipegate_server import ServerSettings, create_app
from pipegate_server import _cluster as cluster_module
from pipegate_server._auth import Credential
from pipegate_server._cluster import ClusterDirectory
from pipegate_server._registry import Claim, ClusterRequest, Presence, Whereabouts
from pipegate_server._tunnel import Tunnel
from redis.asyncio import Redis
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

ALICE = Credential(label="alice", digest=b"a" * 32)
BOB = Credential(label="bob", digest=b"b" * 32)
ADMIN = "cluster-admin-token-0123456789"
SUBPROTOCOL = "pipegate.v1"
#: Small timings so that heartbeats, node expiry and the settle period fit a test.
TIMINGS: dict[str, float] = {
    "heartbeat": 0.1,
    "node_ttl": 0.5,
    "lease_ttl": 2.0,
    "lease_refresh": 0.2,
    "settle": 0.5,
    "move_interval": 0.3,
    "offline_grace": 30.0,
}


# ---------------------------------------------------------------------- redis-server


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class RedisProcess:
    """One ``redis-server`` without persistence on a free port, in ``directory``;
    :meth:`stop` and :meth:`start` again keep the port (and, after
    ``stop(save=True)``, the data: Redis loads its dump file on start)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = _free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.directory),
            ],
            cwd=self.directory,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            assert self.process.poll() is None, "redis-server exited at start"
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as sock,
            ):
                # Not PING: Redis answers it while still loading its dump file.
                sock.sendall(b"GET pgtest-ready\r\n")
                if sock.recv(64).startswith(b"$-1"):
                    return
            time.sleep(0.02)
        raise AssertionError("redis-server did not answer within 10 s")

    def stop(self, *, save: bool = False) -> None:
        if self.process is None:
            return
        if save:
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=2) as sock,
            ):
                sock.sendall(b"SHUTDOWN SAVE\r\n")
                sock.recv(16)
        else:
            self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)
        self.process = None


def _require_redis() -> None:
    if shutil.which("redis-server") is None:
        message = "redis-server is not installed (apt-get install redis-server)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisProcess]:
    _require_redis()
    process = RedisProcess(tmp_path_factory.mktemp("redis"))
    process.start()
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisProcess]:
    """A Redis of the test's own, which it may stop and start again."""
    _require_redis()
    process = RedisProcess(tmp_path)
    process.start()
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture
def prefix() -> str:
    return f"pgtest-{uuid.uuid4().hex[:8]}:"


@pytest.fixture
async def raw(redis_server: RedisProcess) -> AsyncIterator[Redis]:
    """A plain client of the module's Redis, to look at and tamper with keys."""
    client = Redis.from_url(redis_server.url, decode_responses=True)
    try:
        yield client
    finally:
        await client.aclose()


# ---------------------------------------------------------------------- tunnels, nodes


@dataclass(eq=False)
class FakeTunnel:
    """What ClusterDirectory reads of a tunnel, with goaway() and close() recorded."""

    connection_id: str
    credential: Credential = ALICE
    hostnames: tuple[str, ...] = ()
    custom_hostnames: tuple[str, ...] = ()
    remote: str = "127.0.0.1"
    connected_since: float = field(default_factory=time.time)
    comes_back: bool = True
    closed: bool = False
    goaways: list[tuple[GoAwayReason, str]] = field(default_factory=list)
    closes: list[tuple[int, str]] = field(default_factory=list)

    def goaway(self, reason: GoAwayReason = GoAwayReason.SHUTDOWN, message: str = "") -> None:
        self.goaways.append((reason, message))

    def close(self, code: int, reason: str) -> None:
        self.closes.append((code, reason))
        self.closed = True


def _t(
    connection_id: str, credential: Credential = ALICE, hostnames: tuple[str, ...] = ()
) -> Tunnel:
    return cast(Tunnel, FakeTunnel(connection_id, credential, hostnames))


def _fake(tunnel: Tunnel) -> FakeTunnel:
    return cast(FakeTunnel, tunnel)


@dataclass
class Node:
    directory: ClusterDirectory
    requests: list[tuple[ClusterRequest, str, str]] = field(default_factory=list)

    def on_request(self, request: ClusterRequest, connection_id: str, reason: str) -> None:
        self.requests.append((request, connection_id, reason))


@contextlib.asynccontextmanager
async def _nodes(
    url: str, prefix: str, *names: str, start: bool = True, **overrides: float
) -> AsyncIterator[list[Node]]:
    """Started cluster directories on one Redis, closed afterwards."""
    nodes = [
        Node(ClusterDirectory.from_url(url, name=name, prefix=prefix, **(TIMINGS | overrides)))
        for name in names
    ]
    try:
        if start:
            for node in nodes:
                await node.directory.start(node.on_request)
            if nodes and not nodes[0].directory.redis_down:
                await _past_settle(nodes[0].directory)
        yield nodes
    finally:
        for node in nodes:
            await node.directory.aclose()


async def _until(probe: Callable[[], Awaitable[bool]], what: str, within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while not await probe():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


async def _past_settle(directory: ClusterDirectory) -> None:
    """Wait for the settle period a new cluster (a fresh prefix) starts with."""

    async def over() -> bool:
        return await directory.redis.exists(f"{directory.prefix}settle:cluster") == 0

    await _until(over, "the settle period to end", within=3.0)


async def _settled(directory: ClusterDirectory) -> None:
    """Wait for every task the directory spawned (releases, publishes) except its
    heartbeat and listener to finish."""

    async def idle() -> bool:
        return len(directory._tasks) <= 2

    await _until(idle, "the directory's releases")


def _text(value: object) -> str:
    """A value read with ``decode_responses=True`` ('' for none)."""
    return value if isinstance(value, str) else ""


def _logged(caplog: pytest.LogCaptureFixture, text: str) -> int:
    return sum(text in record.getMessage() for record in caplog.records)


# ---------------------------------------------------------------------- claims


async def test_an_id_claimed_by_two_nodes_at_once_has_one_holder(
    redis_server: RedisProcess, prefix: str
) -> None:
    async with _nodes(redis_server.url, prefix, "a", "b") as (a, b):
        for i in range(20):
            first, second = _t(f"race{i}"), _t(f"race{i}")
            outcomes = await asyncio.gather(a.directory.claim(first), b.directory.claim(second))
            assert sorted(o.value for o in outcomes) == ["claimed", "taken"]
            winner = a if outcomes[0] is Claim.CLAIMED else b
            loser = b if winner is a else a
            assert winner.directory.get(f"race{i}") is not None
            assert loser.directory.get(f"race{i}") is None
            where = await loser.directory.locate(connection_id=f"race{i}")
            assert where.presence is Presence.ELSEWHERE
            assert where.node == winner.directory.node


async def test_a_hostname_held_by_another_node_is_hostname_taken(
    redis_server: RedisProcess, prefix: str, raw: Redis
) -> None:
    async with _nodes(redis_server.url, prefix, "a", "b") as (a, b):
        first = _t("h1", hostnames=("shop.example.com", "h1.example.com"))
        assert await a.directory.claim(first) is Claim.CLAIMED
        second = _t("h2", hostnames=("h2.example.com", "shop.example.com"))
        assert await b.directory.claim(second) is Claim.HOSTNAME_TAKEN
        assert b.directory.get("h2") is None
        # Nothing of the refused claim was written.
        assert await raw.exists(f"{prefix}id:h2", f"{prefix}host:h2.example.com") == 0
        where = await b.directory.locate(hostname="shop.example.com")
        assert (where.presence, where.connection_id) == (Presence.ELSEWHERE, "h1")
        # The hostname is free again once its tunnel is released.
        a.directory.forget(first)
        await _settled(a.directory)
        assert await b.directory.claim(second) is Claim.CLAIMED


async def test_the_per_token_limit_counts_the_tunnels_of_every_node(
    redis_server: RedisProcess, prefix: str
) -> None:
    async with _nodes(redis_server.url, prefix, "a", "b") as (a, b):
        one = _t("alice1")
        assert await a.directory.claim(one, limit=2) is Claim.CLAIMED
        assert await b.directory.claim(_t("alice2"), limit=2) is Claim.CLAIMED
        assert await a.directory.claim(_t("alice3"), limit=2) is Claim.LIMIT_REACHED
        assert await b.directory.claim(_t("alice3"), limit=2) is Claim.LIMIT_REACHED
        assert await a.directory.count_for(ALICE.digest) == 2
        assert await b.directory.count_for(ALICE.digest) == 2
        # Another token has its own count; 0 is no limit.
        assert await b.directory.claim(_t("bob1", BOB), limit=1) is Claim.CLAIMED
        assert await b.directory.claim(_t("alice4"), limit=0) is Claim.CLAIMED
        # The limit is checked before the id, whoever holds the id.
        assert await b.directory.claim(_t("alice1"), limit=3) is Claim.LIMIT_REACHED
        a.directory.release(one)
        await _settled(a.directory)
        assert await b.directory.count_for(ALICE.digest) == 2
        assert await b.directory.claim(_t("alice3"), limit=3) is Claim.CLAIMED


async def test_locate_tells_here_elsewhere_and_nowhere(
    redis_server: RedisProcess, prefix: str
) -> None:
    async with _nodes(redis_server.url, prefix, "a", "b") as (a, b):
        await a.directory.claim(_t("held", hostnames=("held.example.com",)))
        here = await a.directory.locate(connection_id="held")
        assert (here.presence, here.connection_id, here.node) == (
            Presence.HERE,
            "held",
            a.directory.node,
        )
        there = await b.directory.locate(connection_id="held")
        assert (there.presence, there.connection_id, there.node) == (
            Presence.ELSEWHERE,
            "held",
            a.directory.node,
        )
        assert there.lease.startswith(f"{a.directory.node}|")
        by_host = await b.directory.locate(hostname="held.example.com")
        assert (by_host.presence, by_host.connection_id) == (Presence.ELSEWHERE, "held")
        nowhere = await b.directory.locate(connection_id="nobody")
        assert nowhere == Whereabouts(Presence.NOWHERE, "nobody")


async def test_a_released_tunnel_is_offline_and_a_handed_off_one_moving(
    redis_server: RedisProcess, prefix: str, raw: Redis
) -> None:
    async with _nodes(redis_server.url, prefix, "a", "b") as (a, b):
        back = _t("back", hostnames=("back.example.com",))
        gone = _t("gone")
        _fake(gone).comes_back = False
        moved = _t("moved")
        for tunnel in (back, gone, moved):
            assert await a.directory.claim(tunnel) is Claim.CLAIMED
        a.directory.release(back)
        a.directory.forget(gone)
        a.directory.hand_off(moved)
        await _settled(a.directory)

        offline = await b.directory.locate(connection_id="back")
        assert offline.presence is Presence.OFFLINE
        assert 0.0 <= offline.age < 5.0
        assert (await b.directory.locate(hostname="back.example.com")).presence is (
            Presence.OFFLINE
        )
        assert 0 < await raw.pttl(f"{prefix}off:id:back") <= 30_000
        assert (await b.directory.locate(connection_id="gone")).presence is Presence.NOWHERE
        moving = await b.directory.locate(connection_id="moved")
        assert moving.presence is Presence.MOVING
        assert a.directory.get("moved") is None

        # The client reconnects to the other node: the marker goes with the claim.
        assert await b.directory.claim(_t("moved")) is Claim.CLAIMED
        assert await raw.exists(f"{prefix}off:id:moved") == 0
        assert (await a.directory.locate(connection_id="moved")).presence is Presence.ELSEWHERE
        assert await b.directory.claim(_t("back", hostnames=("back.example.com",))) is (
            Claim.CLAIMED
        )
        assert await raw.exists(f"{prefix}off:id:back", f"{prefix}off:host:back.example.com") == 0


async def test_the_ids_of_a_dead_node_can_be_claimed_and_it_closes_their_tunnels(
    redis_server: RedisProcess, prefix: str, raw: Redis, caplog: pytest.LogCaptureFixture
) -> None:
    async with _nodes(redis_server.url, prefix, "a", "b") as (a, b):
        tunnel = _t("orphan", hostnames=("orphan.example.com",))
        assert await a.directory.claim(tunnel) is Claim.CLAIMED
        assert await b.directory.claim(_t("orphan")) is Claim.TAKEN
        # Node a stops answering: its heartbeat ends (its lease stays in Redis).
        for task in list(a.directory._tasks):
            task.cancel()
        await asyncio.wait_for(
            asyncio.gather(*a.directory._tasks, return_exceptions=True), timeout=10
        )

        async def dead() -> bool:
            where = await b.directory.locate(connection_id="orphan")
            return where.presence is Presence.OFFLINE

        await _until(dead, "node a's heartbeat to expire", within=3.0)
        assert await raw.exists(f"{prefix}node:{a.directory.node}") == 0
        assert await raw.exists(f"{prefix}id:orphan") == 1
        claimed = _t("orphan", hostnames=("orphan.example.com",))
        assert await b.directory.claim(claimed) is Claim.CLAIMED
        assert _text(await raw.get(f"{prefix}id:orphan")).startswith(f"{b.directory.node}|")

        # Node a comes back: its next refresh finds the lease taken and closes.
        with caplog.at_level(logging.INFO, logger="pipegate.server"):
            await a.directory._heartbeat_once()
            await a.directory._refresh_leases()
            await _until(_closed(tunnel), "the tunnel whose lease was lost to close")
        assert _logged(caplog, "lease lost: id=orphan") == 1
        assert await b.directory.locate(connection_id="orphan") == Whereabouts(
            Presence.HERE, "orphan", b.directory.node, _text(await raw.get(f"{prefix}id:orphan"))
        )


def _closed(tunnel: Tunnel) -> Callable[[], Awaitable[bool]]:
    async def probe() -> bool:
        return bool(_fake(tunnel).closes)

    return probe


# ---------------------------------------------------------------------- settle, lost lease


async def test_after_redis_lost_its_data_claims_wait_and_held_ids_stay_held(
    redis_server: RedisProcess, prefix: str, raw: Redis, caplog: pytest.LogCaptureFixture
) -> None:
    async with _nodes(redis_server.url, prefix, "a", "b") as (a, b):
        assert await a.directory.claim(_t("kept", hostnames=("kept.example.com",))) is (
            Claim.CLAIMED
        )
        with caplog.at_level(logging.INFO, logger="pipegate.server"):
            await raw.flushall()
            started = time.monotonic()
            outcomes: list[Claim] = []
            fresh: list[Claim] = []
            for i in itertools.count():
                assert time.monotonic() - started < 5.0, f"never settled: {outcomes}"
                outcomes.append(await b.directory.claim(_t("kept")))
                if outcomes[-1] is Claim.TAKEN:
                    break
                fresh.append(await b.directory.claim(_t(f"fresh{i}")))
                await asyncio.sleep(0.02)
        elapsed = time.monotonic() - started
        assert Claim.CLAIMED not in outcomes
        assert set(outcomes[:-1]) <= {Claim.UNAVAILABLE}
        assert outcomes[0] is Claim.UNAVAILABLE
        # Each fresh claim but the last came before a refused one (the settle may end
        # between the last two).
        assert fresh
        assert set(fresh[:-1]) <= {Claim.UNAVAILABLE}
        assert fresh[0] is Claim.UNAVAILABLE
        assert elapsed >= 0.4  # the settle period (0.5 s) from the first heartbeat after
        assert _logged(caplog, "redis lost the cluster's state") >= 1
        assert await raw.get(f"{prefix}id:kept") is not None
        assert _text(await raw.get(f"{prefix}host:kept.example.com")).startswith(
            f"{a.directory.node}|"
        )
        assert await b.directory.claim(_t("other", hostnames=("kept.example.com",))) is (
            Claim.HOSTNAME_TAKEN
        )
        assert await b.directory.claim(_t("after")) is Claim.CLAIMED


async def test_a_lease_overwritten_by_another_node_closes_the_tunnel(
    redis_server: RedisProcess, prefix: str, raw: Redis, caplog: pytest.LogCaptureFixture
) -> None:
    async with _nodes(redis_server.url, prefix, "a") as (a,):
        tunnel = _t("stolen")
        kept = _t("kept")
        assert await a.directory.claim(tunnel) is Claim.CLAIMED
        assert await a.directory.claim(kept) is Claim.CLAIMED
        with caplog.at_level(logging.INFO, logger="pipegate.server"):
            await raw.set(f"{prefix}id:stolen", "elsewhere-0001|1|stolen")
            await _until(_closed(tunnel), "the refresh to close the tunnel", within=3.0)
        fake = _fake(tunnel)
        assert [reason for reason, _ in fake.goaways] == [GoAwayReason.SHUTDOWN]
        assert fake.closes == [(CloseCode.GOING_AWAY, "lease lost")]
        assert _logged(caplog, "lease lost: id=stolen") == 1
        assert _fake(kept).closes == []
        # Releasing the closed tunnel must not free the other node's lease.
        a.directory.forget(tunnel)
        await _settled(a.directory)
        assert await raw.get(f"{prefix}id:stolen") == "elsewhere-0001|1|stolen"
        assert _text(await raw.get(f"{prefix}id:kept")).startswith(f"{a.directory.node}|")


# ---------------------------------------------------------------------- Redis down


async def test_redis_down_refuses_claims_quickly_and_retries_releases(
    own_redis: RedisProcess, caplog: pytest.LogCaptureFixture
) -> None:
    prefix = "down:"
    async with _nodes(own_redis.url, prefix, "a") as (a,):
        directory = a.directory
        held = _t("held")
        assert await directory.claim(held) is Claim.CLAIMED
        with caplog.at_level(logging.INFO, logger="pipegate.server"):
            # Stopped with a dump: it comes back with its data (no new epoch).
            own_redis.stop(save=True)
            started = time.monotonic()
            assert await directory.claim(_t("new")) is Claim.UNAVAILABLE
            assert time.monotonic() - started < 3.0
            for _ in range(3):
                started = time.monotonic()
                assert (await directory.locate(connection_id="other")).presence is (
                    Presence.UNAVAILABLE
                )
                assert await directory.claim(_t("new")) is Claim.UNAVAILABLE
                assert time.monotonic() - started < 3.0
            assert directory.get("held") is held  # connected tunnels keep serving
            assert await directory.count_for(ALICE.digest) == 1
            directory.release(held)
            await asyncio.sleep(0.3)  # a few heartbeats fail too
            assert _logged(caplog, "redis unavailable") == 1
            assert _logged(caplog, "redis reachable again") == 0

            own_redis.start()
            probe = Redis.from_url(own_redis.url, decode_responses=True)
            try:
                assert await probe.get(f"{prefix}id:held") is not None  # from the dump

                async def released() -> bool:
                    return await probe.exists(f"{prefix}id:held") == 0

                await _until(released, "the heartbeat to retry the release", within=3.0)
                assert await probe.exists(f"{prefix}off:id:held") == 1
                assert await probe.hget(f"{prefix}tok:{ALICE.digest.hex()}", "held") is None
            finally:
                await probe.aclose()
            assert _logged(caplog, "redis reachable again") >= 1
            assert await directory.claim(_t("new")) is Claim.CLAIMED


async def test_a_node_whose_redis_never_answers_refuses_and_logs_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    port = _free_port()
    with caplog.at_level(logging.INFO, logger="pipegate.server"):
        async with _nodes(f"redis://127.0.0.1:{port}/0", "closed:", "a") as (a,):
            started = time.monotonic()
            for i in range(5):
                assert await a.directory.claim(_t(f"t{i}")) is Claim.UNAVAILABLE
                where = await a.directory.locate(connection_id=f"t{i}")
                assert where.presence is Presence.UNAVAILABLE
            assert time.monotonic() - started < 3.0
            assert len(a.directory) == 0
            await asyncio.sleep(0.3)
            assert _logged(caplog, "redis unavailable") == 1
            assert _logged(caplog, "cluster node started") == 1


# ---------------------------------------------------------------------- the inbox


async def _subscribed(raw: Redis, channel: str) -> None:
    async def probe() -> bool:
        numsub = await raw.pubsub_numsub(channel)
        return bool(numsub and numsub[0][1] >= 1)

    await _until(probe, f"a subscriber on {channel}")


async def test_malformed_inbox_messages_are_ignored(
    redis_server: RedisProcess, prefix: str, raw: Redis, caplog: pytest.LogCaptureFixture
) -> None:
    async with _nodes(redis_server.url, prefix, "a") as (a,):
        channel = f"{prefix}inbox:{a.directory.node}"
        await _subscribed(raw, channel)
        hostile = [
            "not json",
            "",
            "[1, 2, 3]",
            '"move"',
            "null",
            '{"op": "explode", "id": "x"}',
            '{"op": ["move"], "id": "x"}',
            '{"op": "move"}',
            '{"id": "x"}',
            "[" * 100_000 + "]" * 100_000,
            '{"op": "move", "id": "x", "reason": ' + "[" * 50_000 + "]" * 50_000 + "}",
        ]
        bad_ids = [
            '{"op": "move", "id": "bad id!"}',
            '{"op": "move", "id": 12}',
            '{"op": "move", "id": "' + "x" * 65 + '"}',
            '{"op": "kick", "id": null}',
            '{"op": "kick", "id": ""}',
        ]
        with caplog.at_level(logging.INFO, logger="pipegate.server"):
            for message in [*hostile, *bad_ids]:
                await raw.publish(channel, message)
            await raw.publish(
                channel, json.dumps({"op": "kick", "id": "fine", "reason": "r" * 100_000})
            )
            await _until(lambda: _count_at_least(a.requests, 1), "the kick after the hostile ones")
            assert a.requests == [(ClusterRequest.KICK, "fine", "r" * 200)]
            assert _logged(caplog, "cluster message ignored") == len(hostile)

            # Not UTF-8: the listener subscribes again (what came meanwhile is lost,
            # as with any pub/sub message; a move is asked again after move_interval).
            await raw.publish(channel, b"\xff\xfe not utf-8")
            move = json.dumps({"op": "move", "id": "also-fine"})
            deadline = time.monotonic() + 5.0
            while len(a.requests) < 2:
                assert time.monotonic() < deadline, "the listener did not come back"
                await raw.publish(channel, move)
                await asyncio.sleep(0.1)
        assert set(a.requests[1:]) == {(ClusterRequest.MOVE, "also-fine", "")}
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_ask_sends_a_move_once_per_interval_and_remembers_little(
    redis_server: RedisProcess,
    prefix: str,
    raw: Redis,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with _nodes(redis_server.url, prefix, "a", "b") as (a, b):
        await _subscribed(raw, f"{prefix}inbox:{a.directory.node}")
        assert await a.directory.claim(_t("busy")) is Claim.CLAIMED
        where = await b.directory.locate(connection_id="busy")
        assert where.presence is Presence.ELSEWHERE
        assert b.directory.ask(where, ClusterRequest.MOVE, "balancer") is True
        assert b.directory.ask(where, ClusterRequest.MOVE) is False
        assert b.directory.ask(where, ClusterRequest.MOVE) is False
        assert b.directory.ask(where, ClusterRequest.KICK, "k" * 1000) is True

        async def two() -> bool:
            return len(a.requests) >= 2

        await _until(two, "node a to get the move and the kick")
        assert sorted(a.requests, key=lambda r: r[0].value) == [
            (ClusterRequest.KICK, "busy", "k" * 200),
            (ClusterRequest.MOVE, "busy", "balancer"),
        ]
        await asyncio.sleep(0.35)  # move_interval is 0.3 s
        assert b.directory.ask(where, ClusterRequest.MOVE) is True
        await _until(lambda: _count_at_least(a.requests, 3), "the second move")
        assert a.requests[-1] == (ClusterRequest.MOVE, "busy", "")

        # Nothing is sent for a tunnel that is not held by another node.
        assert b.directory.ask(Whereabouts(Presence.HERE, "busy"), ClusterRequest.MOVE) is False
        assert b.directory.ask(Whereabouts(Presence.NOWHERE, "x"), ClusterRequest.KICK) is False
        assert b.directory.ask(Whereabouts(Presence.ELSEWHERE, "", "n"), ClusterRequest.KICK) is (
            False
        )

        monkeypatch.setattr(cluster_module, "_MAX_ASKED", 50)
        for i in range(300):
            asked = Whereabouts(Presence.ELSEWHERE, f"id{i}", "nonexistent-node")
            assert b.directory.ask(asked, ClusterRequest.MOVE) is True
            assert len(b.directory._asked) <= 50
        await _settled(b.directory)


async def _count_at_least(items: list[Any], n: int) -> bool:
    return len(items) >= n


# ---------------------------------------------------------------------- the Gateway


def _settings(token: str, url: str, name: str, prefix: str) -> ServerSettings:
    return replace(
        ServerSettings(client_token=token),
        redis_url=url,
        node_name=name,
        redis_prefix=prefix,
        admin_token=ADMIN,
    )


@contextlib.asynccontextmanager
async def _serve(pg: Any, settings: ServerSettings) -> AsyncIterator[Any]:
    """A cluster node (conftest's RunningServer) on the test Redis, past its settle."""
    assert settings.redis_url is not None
    directory = ClusterDirectory.from_url(
        settings.redis_url, name=settings.node_name, prefix=settings.redis_prefix, **TIMINGS
    )
    async with pg.serve_app(create_app(settings, directory=directory), settings) as running:
        await _past_settle(directory)
        yield running


def _directory_of(running: Any) -> ClusterDirectory:
    return cast(ClusterDirectory, running.gateway.directory)


async def _handshake_status(port: int, connection_id: str, token: str) -> tuple[int, str]:
    with pytest.raises(InvalidStatus) as info:
        async with connect(
            f"ws://127.0.0.1:{port}/{connection_id}",
            additional_headers={"Authorization": f"Bearer {token}"},
            subprotocols=[SUBPROTOCOL],  # type: ignore[list-item]
            open_timeout=5,
        ):
            pass
    response = info.value.response
    return response.status_code, response.headers.get("retry-after", "")


async def test_a_request_for_another_nodes_tunnel_gets_503_and_moves_it(
    redis_server: RedisProcess, prefix: str, pg: Any
) -> None:
    url = redis_server.url
    async with (
        _serve(pg, _settings(pg.token, url, "gw-a", prefix)) as a,
        _serve(pg, _settings(pg.token, url, "gw-b", prefix)) as b,
        httpx.AsyncClient(timeout=5.0) as http,
    ):
        async with pg.fake_client(a, "roamer", pg.echo_handler) as client:
            hello = client.conn.peer_hello
            assert hello is not None
            assert CAPABILITY_HOSTNAMES not in hello.capabilities
            assert (await http.get(f"{a.base}/roamer/x")).status_code == 200
            # A second tunnel for the id, through the other node, is refused.
            assert (await _handshake_status(b.port, "roamer", pg.token))[0] == 409

            view = await http.get(
                f"{a.base}/_pipegate/admin/cluster",
                headers={"Authorization": f"Bearer {ADMIN}"},
            )
            assert view.status_code == 200
            body = view.json()
            assert body["node"] == "gw-a"
            assert sorted(n["name"] for n in body["nodes"]) == ["gw-a", "gw-b"]
            assert [(t["id"], t["node"]) for t in body["tunnels"]] == [("roamer", "gw-a")]

            response = await http.get(f"{b.base}/roamer/x")
            assert response.status_code == 503
            assert response.headers["retry-after"] == "1"

            async def goaway() -> bool:
                return any(getattr(m, "type", "") == "goaway" for m in client.received)

            await _until(goaway, "node gw-a to hand the tunnel off", within=5.0)

            async def moving() -> bool:
                where = await _directory_of(b).locate(connection_id="roamer")
                return where.presence is Presence.MOVING

            await _until(moving, "the id to be marked moving")
            assert a.app.state.gateway.directory.get("roamer") is None
            again = await http.get(f"{b.base}/roamer/x")
            assert (again.status_code, again.headers["retry-after"]) == (503, "1")
        # The client reconnects through the balancer to the node the id maps to now.
        async with pg.fake_client(b, "roamer", pg.echo_handler):
            assert (await http.get(f"{b.base}/roamer/x")).status_code == 200
            assert (await http.get(f"{a.base}/roamer/x")).status_code == 503
        assert (await http.get(f"{b.base}/never-seen/x")).status_code == 404


async def test_a_node_without_redis_refuses_tunnels_and_unknown_ids_with_503(
    own_redis: RedisProcess, pg: Any
) -> None:
    settings = _settings(pg.token, own_redis.url, "gw-down", "gwdown:")
    async with (
        _serve(pg, settings) as node,
        httpx.AsyncClient(timeout=5.0) as http,
    ):
        admin = {"Authorization": f"Bearer {ADMIN}"}
        assert (await http.get(f"{node.base}/unknown/x")).status_code == 404
        assert (await http.get(f"{node.base}/_pipegate/admin/cluster", headers=admin)).json()[
            "nodes"
        ][0]["name"] == "gw-down"
        async with pg.fake_client(node, "steady", pg.echo_handler):
            own_redis.stop()
            started = time.monotonic()
            assert await _handshake_status(node.port, "newcomer", pg.token) == (503, "2")
            assert time.monotonic() - started < 3.0
            unknown = await http.get(f"{node.base}/unknown/x")
            assert (unknown.status_code, unknown.headers["retry-after"]) == (503, "2")
            view = await http.get(f"{node.base}/_pipegate/admin/cluster", headers=admin)
            assert view.status_code == 503
            # The tunnel already connected keeps serving.
            assert (await http.get(f"{node.base}/steady/x")).status_code == 200
