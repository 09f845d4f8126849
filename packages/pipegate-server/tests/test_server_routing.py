"""PathRouter alone: which route each scope gets, and the public URL of a tunnel.

Run as a script, this module prints the micro-benchmark quoted in ``_routing``'s
docstring (the inline split it replaced against ``PathRouter.route``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import httpx
import pipegate_server._app
import pytest
from pipegate_protocol import RESERVED_PREFIX, is_valid_connection_id
from pipegate_server._asgi import Scope
from pipegate_server._routing import PathRouter, Route, RouteKind, Router

ROUTER = PathRouter()
_RESERVED = RESERVED_PREFIX.encode("ascii")


def _scope(kind: str, raw_path: bytes, **extra: Any) -> dict[str, Any]:
    return {
        "type": kind,
        "path": raw_path.decode("latin-1"),
        "raw_path": raw_path,
        "headers": [],
        **extra,
    }


def test_path_router_is_a_router() -> None:
    router: Router = ROUTER
    assert router.route({"type": "lifespan"}) == Route(RouteKind.SERVER)


@pytest.mark.parametrize(
    ("raw", "route"),
    [
        (b"/node/api/items", Route(RouteKind.RELAY_HTTP, "node", "/api/items")),
        (b"/node/", Route(RouteKind.RELAY_HTTP, "node", "/")),
        (b"/a-B_9/x/y/", Route(RouteKind.RELAY_HTTP, "a-B_9", "/x/y/")),
        (b"/node//double", Route(RouteKind.RELAY_HTTP, "node", "//double")),
        (b"/" + b"x" * 64 + b"/p", Route(RouteKind.RELAY_HTTP, "x" * 64, "/p")),
    ],
)
def test_http_below_an_id_is_relayed_with_the_rest_of_the_path(raw: bytes, route: Route) -> None:
    assert ROUTER.route(_scope("http", raw)) == route


@pytest.mark.parametrize(
    ("raw", "route"),
    [
        (b"/", Route(RouteKind.NOT_FOUND, "", "")),
        (b"//x", Route(RouteKind.NOT_FOUND, "", "/x")),
        (b"/bad.id/x", Route(RouteKind.NOT_FOUND, "bad.id", "/x")),
        (b"/" + b"x" * 65, Route(RouteKind.NOT_FOUND, "x" * 65, "")),
        (b"*", Route(RouteKind.NOT_FOUND, "", "")),
    ],
)
def test_http_without_a_valid_id_is_not_found(raw: bytes, route: Route) -> None:
    assert ROUTER.route(_scope("http", raw)) == route


@pytest.mark.parametrize("raw", [b"/_pipegate", b"/_pipegate/", b"/_pipegate/health"])
def test_reserved_prefix_goes_to_the_server_over_http(raw: bytes) -> None:
    assert ROUTER.route(_scope("http", raw)) == Route(RouteKind.SERVER)


def test_reserved_prefix_over_websocket() -> None:
    # Below the prefix: the server's own endpoints; exactly at it: a tunnel
    # handshake for an id the endpoint refuses (so the refusal is logged).
    assert ROUTER.route(_scope("websocket", b"/_pipegate/x")) == Route(RouteKind.SERVER)
    assert ROUTER.route(_scope("websocket", b"/_pipegate")) == Route(RouteKind.TUNNEL, "_pipegate")


def test_reserved_prefix_is_matched_on_the_whole_segment() -> None:
    assert ROUTER.route(_scope("http", b"/_pipegatex/y")) == Route(
        RouteKind.RELAY_HTTP, "_pipegatex", "/y"
    )


def test_websocket_at_exactly_the_id_is_the_tunnel_endpoint() -> None:
    assert ROUTER.route(_scope("websocket", b"/node")) == Route(RouteKind.TUNNEL, "node")
    # The endpoint checks the id, so even an invalid or empty one is routed there.
    assert ROUTER.route(_scope("websocket", b"/bad.id")) == Route(RouteKind.TUNNEL, "bad.id")
    assert ROUTER.route(_scope("websocket", b"/")) == Route(RouteKind.TUNNEL, "")


def test_websocket_below_the_id_is_relayed() -> None:
    assert ROUTER.route(_scope("websocket", b"/node/")) == Route(
        RouteKind.RELAY_WEBSOCKET, "node", "/"
    )
    assert ROUTER.route(_scope("websocket", b"/node/ws/chat")) == Route(
        RouteKind.RELAY_WEBSOCKET, "node", "/ws/chat"
    )
    assert ROUTER.route(_scope("websocket", b"/bad.id/ws")) == Route(
        RouteKind.NOT_FOUND, "bad.id", "/ws"
    )


def test_slash_after_the_id_decides_tunnel_or_relay_only_for_websockets() -> None:
    # RT-1: an HTTP request to the bare id is redirected to the id with a slash.
    assert ROUTER.route(_scope("http", b"/node")) == Route(RouteKind.REDIRECT_SLASH, "node")
    assert ROUTER.route(_scope("websocket", b"/node")).kind is RouteKind.TUNNEL
    assert ROUTER.route(_scope("websocket", b"/node/")).kind is RouteKind.RELAY_WEBSOCKET


def test_percent_escapes_are_not_decoded() -> None:
    # %61 is "a": the raw path decides, so the escaped id is not the id "abc".
    scope = _scope("http", b"/%61bc/x%2Fy")
    scope["path"] = "/abc/x/y"
    assert ROUTER.route(scope) == Route(RouteKind.NOT_FOUND, "%61bc", "/x%2Fy")
    assert ROUTER.route(_scope("http", b"/abc/x%2Fy%20z")) == Route(
        RouteKind.RELAY_HTTP, "abc", "/x%2Fy%20z"
    )


def test_every_byte_of_the_local_path_survives() -> None:
    raw = b"/node/caf\xc3\xa9/\xff"
    route = ROUTER.route(_scope("http", raw))
    assert route.kind is RouteKind.RELAY_HTTP
    assert route.local_path.encode("latin-1") == b"/caf\xc3\xa9/\xff"


def test_the_query_is_not_part_of_the_local_path() -> None:
    scope = _scope("http", b"/node/search", query_string=b"q=1")
    assert ROUTER.route(scope) == Route(RouteKind.RELAY_HTTP, "node", "/search")


def test_path_is_used_when_raw_path_is_missing() -> None:
    scope = {"type": "http", "path": "/node/caf\u00e9", "headers": []}
    route = ROUTER.route(scope)
    assert route.connection_id == "node"
    assert route.local_path.encode("latin-1") == "/caf\u00e9".encode()


def test_every_other_scope_type_goes_to_the_server() -> None:
    assert ROUTER.route({"type": "lifespan"}) == Route(RouteKind.SERVER)


def test_route_is_an_immutable_value() -> None:
    route = Route(RouteKind.RELAY_HTTP, "node", "/")
    assert route == Route(RouteKind.RELAY_HTTP, "node", "/")
    assert hash(route) == hash(Route(RouteKind.RELAY_HTTP, "node", "/"))
    with pytest.raises(AttributeError):
        route.connection_id = "other"  # type: ignore[misc]


def test_public_prefix_is_the_id_segment() -> None:
    route = ROUTER.route(_scope("http", b"/node/a/b"))
    assert route.public_prefix + route.local_path == "/node/a/b"


# ---------------------------------------------------------------------- public URL


def _handshake(headers: list[tuple[bytes, bytes]], **extra: Any) -> dict[str, Any]:
    return _scope("websocket", b"/node", headers=headers, **extra)


def test_public_url_from_the_host_and_scheme_of_the_handshake() -> None:
    scope = _handshake([(b"host", b"tunnel.example:8443")], scheme="wss")
    assert ROUTER.public_url(scope, "node") == "https://tunnel.example:8443/node"
    scope = _handshake([(b"host", b"example.org")], scheme="ws")
    assert ROUTER.public_url(scope, "node") == "http://example.org/node"


def test_public_url_takes_the_first_host_header_whatever_its_case() -> None:
    scope = _handshake([(b"Host", b"first"), (b"host", b"second")], scheme="ws")
    assert ROUTER.public_url(scope, "node") == "http://first/node"


def test_public_url_falls_back_to_the_server_address() -> None:
    assert (
        ROUTER.public_url(_handshake([], server=("10.0.0.1", 8000)), "n")
        == "http://10.0.0.1:8000/n"
    )
    assert ROUTER.public_url(_handshake([], server=("sock", None)), "n") == "http://sock/n"
    assert ROUTER.public_url(_handshake([]), "n") == "http://localhost/n"


@pytest.mark.parametrize("base", ["https://pub.example/t", "https://pub.example/t/"])
def test_configured_public_url_wins(base: str) -> None:
    router = PathRouter(base)
    scope = _handshake([(b"host", b"internal:8000")], scheme="ws")
    assert router.public_url(scope, "node") == "https://pub.example/t/node"


# ---------------------------------------------------------------------- another router


class SubdomainRouter:
    """A test-only Router: ``<id>.tunnels.test`` reaches tunnel ``<id>`` with the path
    unchanged; everything else is routed by a PathRouter. Calls are recorded."""

    def __init__(self) -> None:
        self.fallback = PathRouter()
        self.routed: list[Route] = []

    def route(self, scope: Scope) -> Route:
        host = dict(scope.get("headers") or ()).get(b"host", b"").decode("latin-1")
        name, _, domain = host.partition(".")
        if scope["type"] == "http" and domain == "tunnels.test":
            path = (scope.get("raw_path") or b"/").decode("latin-1")
            route = Route(RouteKind.RELAY_HTTP, name, path)
        else:
            route = self.fallback.route(scope)
        self.routed.append(route)
        return route

    def public_url(self, scope: Scope, connection_id: str) -> str:
        return f"http://{connection_id}.tunnels.test"

    def public_urls(
        self, scope: Scope, connection_id: str, hostnames: Sequence[str] = ()
    ) -> list[str]:
        return [self.public_url(scope, connection_id) + "/"]


async def test_gateway_dispatches_on_another_router(
    pg: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # conftest's start_server builds the app with the default router: make that
    # default this one (test_server_directory passes a directory to create_app).
    router = SubdomainRouter()
    monkeypatch.setattr(pipegate_server._app, "HostRouter", lambda domains, directory, path: router)
    async with (
        pg.start_server() as server,
        pg.fake_client(server, "node", pg.echo_handler) as client,
    ):
        assert server.gateway.router is router
        assert client.conn.peer_hello.public_url == "http://node.tunnels.test"
        assert Route(RouteKind.TUNNEL, "node") in router.routed
        async with httpx.AsyncClient() as http:
            response = await http.get(
                f"{server.base}/deep/path?q=1", headers={"Host": "node.tunnels.test"}
            )
            health = await http.get(f"{server.base}/_pipegate/health")
    assert response.status_code == 200
    assert json.loads(response.headers["x-echo"])["path"] == "/deep/path"
    assert Route(RouteKind.RELAY_HTTP, "node", "/deep/path") in router.routed
    assert health.status_code == 200
    assert router.routed[-1] == Route(RouteKind.SERVER)


# ---------------------------------------------------------------------- benchmark


def _inline_split(scope: dict[str, Any]) -> tuple[str, str]:
    """The split ``PipeGateApp.__call__`` did inline before the router existed."""
    kind = scope["type"]
    if kind != "http" and kind != "websocket":
        return "", ""
    raw: bytes = scope.get("raw_path") or scope["path"].encode("utf-8")
    slash = raw.find(b"/", 1)
    if slash == -1:
        segment, rest = raw[1:], b""
    else:
        segment, rest = raw[1:slash], raw[slash:]
    if segment == _RESERVED and (kind == "http" or rest):
        return "", ""
    connection_id = segment.decode("latin-1")
    if not is_valid_connection_id(connection_id):
        return "", ""
    return connection_id, rest.decode("latin-1") or "/"


def test_inline_split_and_router_agree() -> None:
    for raw in (b"/node/api/items", b"/node/", b"/x/y%20z/\xff"):
        route = ROUTER.route(_scope("http", raw))
        assert _inline_split(_scope("http", raw)) == (route.connection_id, route.local_path)


def main() -> None:  # pragma: no cover - a measurement, not a test
    import timeit

    from pipegate_server._registry import TunnelRegistry
    from pipegate_server._routing import HostRouter

    scope = _scope("http", b"/node/api/items", query_string=b"x=1")
    headers = [(b"host", b"127.0.0.1:8000"), (b"user-agent", b"bench"), (b"accept", b"*/*")]
    scope["headers"] = headers
    host_scope = dict(scope, headers=[(b"host", b"node.localhost:8000"), *headers[1:]])
    host_router = HostRouter(["localhost"], TunnelRegistry())
    number = 200_000
    calls = {
        "inline split": (_inline_split, scope),
        "router.route": (ROUTER.route, scope),
        "host router, path URL": (host_router.route, scope),
        "host router, host URL": (host_router.route, host_scope),
    }
    best = dict.fromkeys(calls, float("inf"))
    for _ in range(15):  # interleaved, best of 15: the machine is shared
        for name, (call, scope) in calls.items():
            namespace = {"call": call, "scope": scope}
            elapsed = timeit.timeit("call(scope)", globals=namespace, number=number)
            best[name] = min(best[name], elapsed / number)
    for name, seconds in best.items():
        print(f"{name:>22}: {seconds * 1e6:.2f} µs per request")


if __name__ == "__main__":  # pragma: no cover
    main()
