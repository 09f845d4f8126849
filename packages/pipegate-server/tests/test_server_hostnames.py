"""Host routing, custom hostnames and offline tunnels (RT-1 to RT-6), in process.

The router and the registry are tested as values; the handshake refusals, the hello
and the offline answers through a real server on a loopback port with a fake client.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from pipegate_protocol import CAPABILITY_HOSTNAMES, ProtocolVersion
from pipegate_server._auth import Credential, load_tokens_file
from pipegate_server._registry import Claim, TunnelRegistry
from pipegate_server._routing import HostRoute, HostRouter, PathRouter, Route, RouteKind
from pipegate_server.errors import TokensFileError
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

ALICE = Credential(label="alice", digest=b"a" * 32)


@dataclass(eq=False)
class StubTunnel:
    connection_id: str
    hostnames: tuple[str, ...] = ()
    credential: Credential = ALICE
    comes_back: bool = True


def _tunnel(connection_id: str, hostnames: tuple[str, ...] = ()) -> Any:
    """A stub where the registry expects a Tunnel."""
    return StubTunnel(connection_id, hostnames)


def _scope(kind: str, path: bytes, host: bytes | None) -> dict[str, Any]:
    headers = [(b"host", host)] if host is not None else []
    return {"type": kind, "path": path.decode("latin-1"), "raw_path": path, "headers": headers}


async def _registry_with(*tunnels: Any, grace: float = 300.0) -> TunnelRegistry:
    registry = TunnelRegistry(offline_grace=grace)
    for tunnel in tunnels:
        assert await registry.claim(tunnel) is Claim.CLAIMED
    return registry


# ---------------------------------------------------------------------- the router


async def test_host_routing_sends_the_whole_path_to_the_tunnel_of_the_host() -> None:
    node = _tunnel("Node", ("node.localhost", "api.example.com"))
    router = HostRouter(["localhost"], await _registry_with(node))
    route = router.route(_scope("http", b"/static/app.js", b"Node.LOCALHOST:8000"))
    assert route == HostRoute(RouteKind.RELAY_HTTP, "Node", "/static/app.js", "node.localhost")
    assert route.public_prefix == ""
    # The server's own paths belong to the tunnel on its host (RT-2, HD-13).
    assert router.route(_scope("http", b"/_pipegate/health", b"node.localhost")).kind is (
        RouteKind.RELAY_HTTP
    )
    # WebSockets at any path, the root included, are relayed.
    assert router.route(_scope("websocket", b"/", b"node.localhost:8000")) == HostRoute(
        RouteKind.RELAY_WEBSOCKET, "Node", "/", "node.localhost"
    )
    # A custom hostname, with a trailing dot.
    assert router.route(_scope("http", b"/x", b"api.example.com.")).connection_id == "Node"


async def test_other_hosts_are_routed_by_path() -> None:
    router = HostRouter(["localhost"], await _registry_with(_tunnel("node", ("node.localhost",))))
    for host in (b"localhost:8000", b"127.0.0.1:8000", b"[::1]:8000", b"other.test", None):
        assert router.route(_scope("http", b"/node/x", host)) == Route(
            RouteKind.RELAY_HTTP, "node", "/x"
        ), host
        assert router.route(_scope("websocket", b"/node", host)) == Route(RouteKind.TUNNEL, "node")
    assert router.route(_scope("http", b"/node", b"localhost")).kind is RouteKind.REDIRECT_SLASH
    assert router.route({"type": "lifespan"}).kind is RouteKind.SERVER


async def test_names_under_a_domain_that_no_tunnel_holds_are_not_found() -> None:
    router = HostRouter(["localhost"], await _registry_with(_tunnel("node", ("node.localhost",))))
    for host in (b"ghost.localhost", b"a.node.localhost", b"node.localhost.evil.test"):
        route = router.route(_scope("http", b"/node/x", host))
        if host == b"node.localhost.evil.test":
            assert route.kind is RouteKind.RELAY_HTTP  # not under the domain: path routing
            continue
        assert isinstance(route, HostRoute)
        assert (route.kind, route.connection_id) == (RouteKind.NOT_FOUND, "")


async def test_host_cache_is_bounded() -> None:
    router = HostRouter(["localhost"], await _registry_with())
    for index in range(HostRouter._HOST_CACHE_SIZE * 3):
        router.route(_scope("http", b"/x/y", f"h{index}.localhost".encode()))
    assert len(router._host_cache) <= HostRouter._HOST_CACHE_SIZE


def test_public_urls_follow_the_handshake_or_the_public_url() -> None:
    scope = _scope("websocket", b"/node", b"127.0.0.1:8000")
    scope["scheme"] = "ws"
    assert PathRouter().public_urls(scope, "node", ["node.localhost"]) == [
        "http://node.localhost:8000/",
        "http://127.0.0.1:8000/node/",
    ]
    assert PathRouter("https://example.com/").public_urls(scope, "node", ["node.example.com"]) == [
        "https://node.example.com/",
        "https://example.com/node/",
    ]


# ---------------------------------------------------------------------- the registry


async def test_hostnames_are_claimed_with_the_id_all_or_nothing() -> None:
    first = _tunnel("a", ("a.localhost", "api.example.com"))
    registry = await _registry_with(first)
    clash = _tunnel("b", ("b.localhost", "api.example.com"))
    assert await registry.claim(clash) is Claim.HOSTNAME_TAKEN
    assert registry.get("b") is None
    assert registry.owner_of("b.localhost") is None
    owner = registry.owner_of("api.example.com")
    assert owner is not None
    assert owner.connection_id == "a"
    registry.forget(first)
    assert await registry.claim(clash) is Claim.CLAIMED


async def test_ended_tunnels_are_offline_for_the_grace_then_unknown() -> None:
    tunnel = _tunnel("node", ("node.localhost",))
    registry = await _registry_with(tunnel, grace=0.2)
    assert registry.offline(connection_id="node") == -1.0  # connected
    registry.forget(tunnel)
    assert registry.offline(connection_id="node") >= 0
    assert registry.offline(hostname="node.localhost") >= 0
    assert registry.offline(connection_id="never") == -1.0
    await asyncio.sleep(0.3)
    assert registry.offline(connection_id="node") == -1.0
    assert registry.offline(hostname="node.localhost") == -1.0


async def test_a_reconnect_ends_the_offline_state_and_revoked_tunnels_are_not_remembered() -> None:
    registry = await _registry_with()
    old = _tunnel("node")
    assert await registry.claim(old) is Claim.CLAIMED
    registry.forget(old)
    new = _tunnel("node")
    assert await registry.claim(new) is Claim.CLAIMED
    assert registry.offline(connection_id="node") == -1.0
    new.comes_back = False
    registry.forget(new)
    assert registry.offline(connection_id="node") == -1.0


async def test_offline_memory_is_bounded() -> None:
    registry = TunnelRegistry(max_offline=50)
    for index in range(200):
        tunnel = _tunnel(f"t{index}", (f"t{index}.localhost",))
        await registry.claim(tunnel)
        registry.forget(tunnel)
    assert len(registry._offline_ids) == 50
    assert len(registry._offline_hosts) == 50
    assert registry.offline(connection_id="t199") >= 0
    assert registry.offline(connection_id="t0") == -1.0


# ---------------------------------------------------------------------- tokens file


def test_tokens_file_grants_hostnames(tmp_path: Path) -> None:
    path = tmp_path / "tokens.toml"
    path.write_text(
        '[[tokens]]\nname = "alice"\ntoken = "t-alice-0123456789"\nids = ["alice*"]\n'
        'hostnames = ["API.example.com.", "*.alice.example.com"]\n'
    )
    (credential,) = load_tokens_file(path)
    assert credential.hostnames == ("api.example.com", "*.alice.example.com")
    assert credential.allows_hostname("api.example.com")
    assert credential.allows_hostname("www.alice.example.com")
    assert not credential.allows_hostname("a.b.alice.example.com")
    assert not credential.allows_hostname("www.example.com")


@pytest.mark.parametrize("bad", ['"api.example.com"', '["bad_name.example.com"]', '["*."]', "[1]"])
def test_tokens_file_refuses_bad_hostname_grants(tmp_path: Path, bad: str) -> None:
    path = tmp_path / "tokens.toml"
    path.write_text(f'[[tokens]]\ntoken = "t-0123456789"\nids = ["x"]\nhostnames = {bad}\n')
    with pytest.raises(TokensFileError, match="hostnames"):
        load_tokens_file(path)


# ---------------------------------------------------------------------- a real server

ALICE_TOKEN = "alice-token-0123456789"
BOB_TOKEN = "bob-token-0123456789"


def _tokens(tmp_path: Path) -> Path:
    path = tmp_path / "tokens.toml"
    path.write_text(
        f'[[tokens]]\nname = "alice"\ntoken = "{ALICE_TOKEN}"\nids = ["*"]\n'
        'hostnames = ["api.example.com", "*.alice.example.com"]\n'
        f'[[tokens]]\nname = "bob"\ntoken = "{BOB_TOKEN}"\nids = ["*"]\n'
        'hostnames = ["*.alice.example.com"]\n'
    )
    return path


async def _refusal(server: Any, connection_id: str, token: str, **headers: str) -> tuple[int, str]:
    try:
        async with connect(
            server.ws_url(connection_id),
            subprotocols=[ProtocolVersion.V1.value],  # type: ignore[list-item]
            additional_headers={"Authorization": f"Bearer {token}", **headers},
        ):
            pass
    except InvalidStatus as exc:
        return exc.response.status_code, exc.response.body.decode()
    raise AssertionError("the handshake was accepted")


async def test_hello_names_every_hostname_and_url(pg: Any, tmp_path: Path) -> None:
    async with (
        pg.start_server(
            domains=("localhost", "Tunnels.Test."), tokens_file=_tokens(tmp_path)
        ) as server,
        pg.fake_client(
            server,
            "Node",
            pg.echo_handler,
            token=ALICE_TOKEN,
            headers={"PipeGate-Hostname": "API.example.com"},
        ) as client,
    ):
        hello = client.conn.peer_hello
        assert CAPABILITY_HOSTNAMES in hello.capabilities
        assert hello.hostnames == ("api.example.com", "node.localhost", "node.tunnels.test")
        port = server.port
        assert hello.public_urls == (
            f"http://api.example.com:{port}/",
            f"http://node.localhost:{port}/",
            f"http://node.tunnels.test:{port}/",
            f"http://127.0.0.1:{port}/Node/",
        )
        assert hello.public_url == f"http://127.0.0.1:{port}/Node"
        async with httpx.AsyncClient() as http:
            for host in ("node.localhost", "NODE.tunnels.test", "api.example.com"):
                response = await http.get(f"{server.base}/a/b?c=1", headers={"Host": host})
                info = json.loads(response.headers["x-echo"])
                assert (info["path"], info["query"]) == ("/a/b", "c=1"), host
                names = [name for name, _ in info["headers"]]
                assert "x-forwarded-prefix" not in names  # no prefix in host routing
                assert ["x-forwarded-host", host] in info["headers"]
            # Path routing still works on the bare address.
            response = await http.get(f"{server.base}/Node/a")
            assert json.loads(response.headers["x-echo"])["path"] == "/a"


async def test_handshake_refusals_for_hostnames(pg: Any, tmp_path: Path) -> None:
    async with pg.start_server(domains=("localhost",), tokens_file=_tokens(tmp_path)) as server:
        # RT-3: an id that cannot be a label is refused on a server with domains.
        status, text = await _refusal(server, "my_app", ALICE_TOKEN)
        assert status == 400
        assert "hostname label" in text
        # RT-4: not granted, invalid, too many.
        assert (await _refusal(server, "x", BOB_TOKEN, **{"PipeGate-Hostname": "api.example.com"}))[
            0
        ] == 403
        assert (await _refusal(server, "x", ALICE_TOKEN, **{"PipeGate-Hostname": "bad_host.test"}))[
            0
        ] == 400
        many = ",".join(f"h{i}.alice.example.com" for i in range(9))
        assert (await _refusal(server, "x", ALICE_TOKEN, **{"PipeGate-Hostname": many}))[0] == 400
        async with pg.fake_client(
            server,
            "node",
            pg.echo_handler,
            token=ALICE_TOKEN,
            headers={"PipeGate-Hostname": "www.alice.example.com"},
        ):
            # The same label in another case, and a hostname another tunnel holds: 409.
            status, text = await _refusal(server, "NODE", ALICE_TOKEN)
            assert status == 409
            assert "node.localhost" in text
            status, text = await _refusal(
                server, "other", BOB_TOKEN, **{"PipeGate-Hostname": "WWW.alice.example.com"}
            )
            assert (status, "www.alice.example.com" in text) == (409, True)


async def test_names_of_ids_under_a_domain_are_never_custom_hostnames(
    pg: Any, tmp_path: Path
) -> None:
    path = tmp_path / "tokens.toml"
    path.write_text(
        f'[[tokens]]\nname = "mallory"\ntoken = "{ALICE_TOKEN}"\nids = ["*"]\n'
        'hostnames = ["*.localhost", "*.x.localhost"]\n'
    )
    async with pg.start_server(domains=("localhost",), tokens_file=path) as server:
        # Mallory may not take bob's name before bob connects, whatever she is granted.
        status, text = await _refusal(
            server, "mallory", ALICE_TOKEN, **{"PipeGate-Hostname": "bob.localhost"}
        )
        assert (status, "tunnel id 'bob'" in text) == (403, True)
        # Deeper names under the domain are not ids' names: grantable.
        async with pg.fake_client(
            server,
            "mallory",
            pg.echo_handler,
            token=ALICE_TOKEN,
            headers={"PipeGate-Hostname": "app.x.localhost"},
        ) as client:
            assert "app.x.localhost" in client.conn.peer_hello.hostnames


async def test_the_shared_token_holds_no_hostnames(pg: Any) -> None:
    async with pg.start_server() as server:
        status, text = await _refusal(
            server, "node", pg.token, **{"PipeGate-Hostname": "api.example.com"}
        )
        assert (status, "may not claim hostname" in text) == (403, True)
        # Without domains, ids that are not labels are fine (path routing only).
        async with pg.fake_client(server, "my_app", pg.echo_handler) as client:
            assert client.conn.peer_hello.hostnames == ()


async def test_offline_then_back_then_unknown(pg: Any) -> None:
    async with (
        pg.start_server(domains=("localhost",), offline_grace=0.5) as server,
        httpx.AsyncClient() as http,
    ):
        async with pg.fake_client(server, "node", pg.echo_handler):
            assert (await http.get(f"{server.base}/node/x")).status_code == 200
        for url, headers in (
            (f"{server.base}/node/x", {}),
            (f"{server.base}/x", {"Host": "node.localhost"}),
        ):
            response = await http.get(url, headers=headers)
            assert response.status_code == 503
            assert response.headers["retry-after"] == "5"
            assert "is offline" in response.text
        never = await http.get(f"{server.base}/never/x")
        assert (never.status_code, "no tunnel" in never.text) == (404, True)
        async with pg.fake_client(server, "node", pg.echo_handler):
            assert (
                await http.get(f"{server.base}/x", headers={"Host": "node.localhost"})
            ).status_code == 200
        await asyncio.sleep(0.7)
        assert (await http.get(f"{server.base}/node/x")).status_code == 404
        assert (
            await http.get(f"{server.base}/x", headers={"Host": "node.localhost"})
        ).status_code == 404
