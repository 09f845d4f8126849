"""Path mode made as good as it can be: what the local app says about paths, cookies
and service-worker scope reaches the caller rewritten into the tunnel's ``/<id>/``,
through a real server and client (the server's ``_rewrite`` rules and the client's
``tunnel_location``).

The origin's ``/respond`` answers with whatever head a test asks for, so each test
plays the local app it needs, hostile ones included.
"""

from __future__ import annotations

import httpx
import pytest
from e2e_support import TunnelFactory, server_base, wait_relaying
from pipegate_conformance.harness import Tunnel
from pipegate_conformance.origin import ResponseSpec


def _respond(
    http: httpx.Client,
    base: str,
    path: str,
    headers: list[tuple[str, str]],
    status: int = 200,
    *,
    host: str | None = None,
) -> httpx.Response:
    """Have the local app behind ``base`` answer ``path`` with ``status`` and ``headers``
    (sent with ``Host: host`` when given)."""
    spec = ResponseSpec(status=status, headers=[*headers, ("content-length", "0")])
    extra = {"Host": host} if host else {}
    return http.post(f"{base}{path}", content=spec.model_dump_json(), headers=extra)


def test_location_absolute_path_gets_the_prefix_and_works(
    tunnel: Tunnel, http: httpx.Client
) -> None:
    response = _respond(http, tunnel.public_url, "/respond", [("Location", "/echo/next?x=1")], 302)
    assert response.status_code == 302
    assert response.headers["location"] == "/e2e/echo/next?x=1"
    followed = http.get(f"{tunnel.server_base}{response.headers['location']}")
    assert followed.json()["raw_path"] == "/echo/next"


@pytest.mark.parametrize(
    ("location", "expected"),
    [
        ("{origin}/echo/own?q=1#f", "/e2e/echo/own?q=1#f"),
        ("{origin}", "/e2e/"),
        ("http://example.com/x", "http://example.com/x"),
        ("//example.com/x", "//example.com/x"),
        ("next/page", "next/page"),
        ("/e2e/already", "/e2e/already"),
    ],
)
def test_location_of_the_local_origin_becomes_the_public_path(
    tunnel: Tunnel, http: httpx.Client, location: str, expected: str
) -> None:
    value = location.format(origin=tunnel.origin_url)
    response = _respond(http, tunnel.public_url, "/respond", [("Location", value)], 302)
    assert response.headers["location"] == expected


def test_set_cookies_are_confined_to_the_prefix_in_order(
    tunnel: Tunnel, http: httpx.Client
) -> None:
    cookies = [
        ("Set-Cookie", "a=1; Path=/"),
        ("X-Between", "kept"),
        ("set-cookie", "b=2; Domain=127.0.0.1; Path=/x; HttpOnly; SameSite=Lax"),
        ("SET-COOKIE", "c=3"),
        ("Set-Cookie", "d=4; domain=.example.com; Max-Age=60; Secure"),
    ]
    response = _respond(http, tunnel.public_url, "/account/respond", cookies)
    assert response.status_code == 200
    assert response.headers.get_list("set-cookie") == [
        "a=1; Path=/e2e/",
        "b=2; Path=/e2e/x; HttpOnly; SameSite=Lax",
        "c=3; Path=/e2e/account",  # the default path a browser would take, made explicit
        "d=4; Max-Age=60; Secure; Path=/e2e/account",
    ]
    assert response.headers["x-between"] == "kept"


def test_service_worker_allowed_is_limited_to_the_prefix(
    tunnel: Tunnel, http: httpx.Client
) -> None:
    seen = []
    for value in ("/", "/app/", "/e2e", "/x/../../", "https://example.com/"):
        response = _respond(
            http, tunnel.public_url, "/sw.js/respond", [("Service-Worker-Allowed", value)]
        )
        seen.append(response.headers["service-worker-allowed"])
    assert seen == ["/e2e/", "/e2e/app/", "/e2e/", "/e2e/", "/e2e/"]


def test_a_hostile_local_app_cannot_set_cookies_for_another_tenant(
    tunnels: TunnelFactory,
) -> None:
    """Two tenants on one server; ``mallory``'s local app tries to plant a cookie on
    ``alice``'s path and on the whole host. A client that keeps cookies as a browser
    does sends it back to ``mallory`` only."""
    _, port = tunnels.server()
    base = server_base(port)
    clients = {
        name: tunnels.client(f"ws://127.0.0.1:{port}/{name}", name=name)
        for name in ("alice", "mallory")
    }
    for name, process in clients.items():
        wait_relaying(f"{base}/{name}", process=process)
    hostile = [
        ("Set-Cookie", "x=1; Path=/alice; Domain=127.0.0.1"),
        ("Set-Cookie", "y=2; Path=/; Domain=localhost"),
        ("Set-Cookie", "z=3"),
    ]
    with httpx.Client(timeout=30.0) as browser:
        response = _respond(browser, f"{base}/mallory", "/respond", hostile)
        assert response.headers.get_list("set-cookie") == [
            "x=1; Path=/mallory/alice",
            "y=2; Path=/mallory/",
            "z=3; Path=/mallory/",
        ]
        stored = {cookie.name: cookie for cookie in browser.cookies.jar}
        assert {name: c.path for name, c in stored.items()} == {
            "x": "/mallory/alice",
            "y": "/mallory/",
            "z": "/mallory/",
        }
        assert not any(cookie.domain_specified for cookie in stored.values())
        at_alice = browser.get(f"{base}/alice/echo/home").json()
        at_mallory = browser.get(f"{base}/mallory/echo/home").json()
    cookie_headers = {
        "alice": [v for k, v in at_alice["headers"] if k.lower() == "cookie"],
        "mallory": [v for k, v in at_mallory["headers"] if k.lower() == "cookie"],
    }
    assert cookie_headers["alice"] == []
    assert sorted(cookie_headers["mallory"][0].split("; ")) == ["y=2", "z=3"]


def test_rewrites_compose_with_a_local_url_path(tunnels: TunnelFactory) -> None:
    """Local URL ``<origin>/base``: the client takes the local origin and ``/base`` off
    a Location, the server puts ``/node`` in front."""
    _, port = tunnels.server()
    public = f"{server_base(port)}/node"
    client = tunnels.client(f"ws://127.0.0.1:{port}/node", local_url=f"{tunnels.origin_url}/base")
    wait_relaying(public, process=client)
    origin = tunnels.origin_url
    seen = {}
    with httpx.Client(timeout=30.0) as http:
        for location in (
            f"{origin}/base/sub?q=1",
            f"{origin}/base",
            f"{origin}/elsewhere",
            "/base/next/",
            "/elsewhere",
        ):
            response = _respond(http, public, "/respond", [("Location", location)], 303)
            seen[location] = response.headers["location"]
        followed = http.get(f"{server_base(port)}{seen['/base/next/']}echo/x")
    assert seen == {
        f"{origin}/base/sub?q=1": "/node/sub?q=1",
        f"{origin}/base": "/node/",
        f"{origin}/elsewhere": f"{origin}/elsewhere",  # not reachable through the tunnel
        "/base/next/": "/node/next/",
        "/elsewhere": "/node/elsewhere",
    }
    assert followed.json()["raw_path"] == "/base/next/echo/x"


def test_host_routing_only_drops_domain(tunnels: TunnelFactory) -> None:
    """With ``--domain localhost`` the same local answer is rewritten for the route it
    came by: on ``node.localhost`` the tunnel has its own origin, so only Domain goes;
    on the bare address (path routing) everything is confined to ``/node/``."""
    _, port = tunnels.server("--domain", "localhost")
    client = tunnels.client(f"ws://127.0.0.1:{port}/node")
    wait_relaying(f"{server_base(port)}/node", process=client)
    head = [
        ("Location", "/sub/"),
        ("Set-Cookie", "a=1; Path=/; Domain=localhost"),
        ("Set-Cookie", "b=2"),
        ("Service-Worker-Allowed", "/"),
    ]
    with httpx.Client(timeout=30.0) as http:
        by_host = _respond(http, server_base(port), "/respond", head, 302, host="node.localhost")
        by_path = _respond(http, f"{server_base(port)}/node", "/respond", head, 302)
    seen = [
        (
            r.headers["location"],
            r.headers.get_list("set-cookie"),
            r.headers["service-worker-allowed"],
        )
        for r in (by_host, by_path)
    ]
    assert seen == [
        ("/sub/", ["a=1; Path=/", "b=2"], "/"),
        ("/node/sub/", ["a=1; Path=/node/", "b=2; Path=/node/"], "/node/"),
    ]
