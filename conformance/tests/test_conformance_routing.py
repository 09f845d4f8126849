"""Public routing and hostnames (RT-1 to RT-7), black box, against any server.

Callers are plain HTTP clients; tunnels are the session tunnel (through the client
under test) and reference clients. Host routing is reached with explicit ``Host``
headers on the server's own address, so no DNS is needed; the domain is the one the
suite started our server with (``localhost``) or ``--server-domain`` for another
server (without it those checks are skipped, with that reason).
"""

from __future__ import annotations

import asyncio
import secrets

import httpx
import pytest
from pipegate_conformance.harness import Tunnel
from pipegate_conformance.origin import ResponseSpec
from pipegate_conformance.plugin import ServerUnderTest
from pipegate_conformance.refpeer import TunnelRefused
from pipegate_conformance.support import connect_reference, new_connection_id, release_reference
from pipegate_protocol import CAPABILITY_HOSTNAMES, HOSTNAME_HEADER

pytestmark = pytest.mark.usefixtures("reference_clients_closed")


def _new_id() -> str:
    return new_connection_id("rt")


def _domain(server: ServerUnderTest) -> str:
    if not server.domain:
        pytest.skip("the server's domain is unknown: pass --server-domain to check RT-2/RT-3")
    return server.domain


def _respond(
    url: str, headers: list[tuple[str, str]], status: int = 200, host: str | None = None
) -> httpx.Response:
    spec = ResponseSpec(status=status, headers=[*headers, ("content-length", "0")])
    extra = {"Host": host} if host else {}
    return httpx.post(url, content=spec.model_dump_json(), headers=extra, timeout=30)


# ---------------------------------------------------------------------- RT-1 / RT-5


@pytest.mark.rule("RT-1", "HD-1")
def test_the_bare_id_redirects_to_the_id_with_a_slash(tunnel: Tunnel) -> None:
    for method in ("GET", "POST"):
        response = httpx.request(method, f"{tunnel.public_url}?a=1&a=2", timeout=30)
        assert response.status_code == 308, method
        assert response.headers["location"].endswith(f"/{tunnel.connection_id}/?a=1&a=2")
    followed = httpx.get(tunnel.public_url, follow_redirects=True, timeout=30)
    assert followed.url.path == f"/{tunnel.connection_id}/"


@pytest.mark.rule("RT-5", "HS-12")
async def test_the_hello_lists_every_public_url_ending_with_a_slash(
    server: ServerUnderTest,
) -> None:
    connection_id = _new_id()
    peer = await connect_reference(server, connection_id)
    hello = peer.server_hello
    assert hello is not None
    assert hello.public_urls, "RT-5: the server's hello lists no public_urls"
    assert all(url.endswith("/") for url in hello.public_urls), hello.public_urls
    assert hello.public_urls[-1].endswith(f"/{connection_id}/")  # the path URL last
    if server.domain:
        label = f"{connection_id}.{server.domain}"
        assert label in hello.hostnames
        assert any(url.split("://", 1)[1].startswith(label) for url in hello.public_urls)


# ---------------------------------------------------------------------- RT-2 / RT-3


@pytest.mark.rule("RT-2", "HD-5", "HD-13")
def test_a_tunnel_host_gets_the_whole_path(tunnel: Tunnel, server: ServerUnderTest) -> None:
    host = f"{tunnel.connection_id.upper()}.{_domain(server)}"
    base = server.http_base
    report = httpx.get(f"{base}/echo/a%2Fb?x=1", headers={"Host": host}, timeout=30).json()
    assert (report["raw_path"], report["query"]) == ("/echo/a%2Fb", "x=1")
    names = [name.lower() for name, _ in report["headers"]]
    assert "x-forwarded-prefix" not in names
    assert ["x-forwarded-host", host] in report["headers"]
    # Every path belongs to the tunnel on its host, the server's own included.
    health = httpx.get(f"{base}/_pipegate/health", headers={"Host": host}, timeout=30)
    assert health.text.startswith("origin: no such endpoint")
    # Deeper names and names nobody holds are not found; path URLs still work.
    for other in (f"a.{host}", f"nobody-{secrets.token_hex(3)}.{server.domain}"):
        assert httpx.get(f"{base}/echo/x", headers={"Host": other}, timeout=30).status_code == 404
    assert httpx.get(f"{tunnel.public_url}/echo/p", timeout=30).json()["raw_path"] == "/echo/p"


@pytest.mark.rule("RT-2", "WS-3")
async def test_a_websocket_at_a_tunnel_host(tunnel: Tunnel, server: ServerUnderTest) -> None:
    from websockets.asyncio.client import connect

    host = f"{tunnel.connection_id}.{_domain(server)}"
    scheme = "wss" if server.tls else "ws"
    async with connect(
        f"{scheme}://{host}:{server.port}/ws/echo",
        host=server.host,
        port=server.port,
        ssl=server.ssl_context(),
        server_hostname=host if server.tls else None,
        open_timeout=15,
    ) as ws:
        await ws.send("through the host")
        assert await asyncio.wait_for(ws.recv(), 15) == "through the host"


@pytest.mark.rule("RT-3", "HS-7")
async def test_ids_that_cannot_be_labels_and_labels_in_another_case(
    server: ServerUnderTest,
) -> None:
    _domain(server)
    with pytest.raises(TunnelRefused) as refused:
        await connect_reference(server, f"rt_{secrets.token_hex(4)}")
    assert refused.value.status == 400
    connection_id = _new_id()
    await connect_reference(server, connection_id)
    with pytest.raises(TunnelRefused) as taken:
        await connect_reference(server, connection_id.upper())
    assert taken.value.status == 409


# ---------------------------------------------------------------------- RT-4


@pytest.mark.rule("RT-4", "VE-2")
async def test_hostname_requests_are_checked_or_ignored(server: ServerUnderTest) -> None:
    probe = await connect_reference(server, _new_id())
    assert probe.server_hello is not None
    honours = CAPABILITY_HOSTNAMES in probe.server_hello.capabilities
    await probe.close()
    release_reference(probe)
    bad = [(HOSTNAME_HEADER, "not_a_hostname.example")]
    if honours:
        with pytest.raises(TunnelRefused) as refused:
            await connect_reference(server, _new_id(), extra_headers=bad)
        assert refused.value.status == 400
        # A well-formed name the token was not granted (the suite's token holds none
        # it knows of, and nobody is granted this random name): 403.
        name = [(HOSTNAME_HEADER, f"rt-{secrets.token_hex(6)}.invalid")]
        with pytest.raises(TunnelRefused) as denied:
            await connect_reference(server, _new_id(), extra_headers=name)
        assert denied.value.status == 403
    else:  # a server without the extension ignores the header (VE-2)
        peer = await connect_reference(server, _new_id(), extra_headers=bad)
        assert peer.server_hello is not None
        assert not peer.server_hello.hostnames


# ---------------------------------------------------------------------- RT-6


@pytest.mark.rule("RT-6", "HD-10")
async def test_offline_is_not_unknown(server: ServerUnderTest) -> None:
    connection_id = _new_id()
    peer = await connect_reference(server, connection_id)
    await peer.close()
    release_reference(peer)
    url = f"{server.public_url(connection_id)}/x"
    async with httpx.AsyncClient(timeout=30) as http:
        for _ in range(100):  # the server notices the close
            response = await http.get(url)
            if response.status_code != 502:
                break
            await asyncio.sleep(0.05)
        if response.status_code == 503:
            assert response.headers.get("retry-after", "").isdigit()
            assert response.text.strip() == f"tunnel {connection_id} is offline"
        else:  # RT-6 is a SHOULD: an unknown answer is allowed, never anything else
            assert response.status_code == 404, response.text
        never = await http.get(f"{server.public_url(_new_id())}/x")
        assert never.status_code == 404


# ---------------------------------------------------------------------- RT-7


@pytest.mark.rule("RT-7", "HD-3")
def test_path_mode_rewrites(tunnel: Tunnel) -> None:
    prefix = f"/{tunnel.connection_id}"
    url = f"{tunnel.public_url}/respond"
    redirect = _respond(url, [("Location", "/echo/next?x=1")], 302)
    assert redirect.headers["location"] == f"{prefix}/echo/next?x=1"
    assert _respond(url, [("Location", "//other.example/x")], 302).headers["location"] == (
        "//other.example/x"
    )
    cookies = _respond(
        url,
        [
            ("Set-Cookie", "a=1; Path=/; Domain=example.com; HttpOnly"),
            ("Set-Cookie", "b=2; path=/sub"),
            ("Set-Cookie", "c=3"),
        ],
    ).headers.get_list("set-cookie")
    assert len(cookies) == 3
    assert all("domain" not in cookie.lower() for cookie in cookies)
    assert f"Path={prefix}/" in cookies[0]
    assert "HttpOnly" in cookies[0]
    assert f"={prefix}/sub" in cookies[1]
    assert f"Path={prefix}/" in cookies[2]
    allowed = _respond(url, [("Service-Worker-Allowed", "/")]).headers["service-worker-allowed"]
    assert allowed == f"{prefix}/"
    # One tenant cannot clear the whole shared origin's storage.
    assert "clear-site-data" not in _respond(url, [("Clear-Site-Data", '"*"')]).headers


@pytest.mark.rule("RT-7", "RT-2")
def test_host_mode_drops_only_the_cookie_domain(tunnel: Tunnel, server: ServerUnderTest) -> None:
    host = f"{tunnel.connection_id}.{_domain(server)}"
    url = f"{server.http_base}/respond"
    response = _respond(
        url,
        [
            ("Location", "/login"),
            ("Set-Cookie", f"a=1; Path=/; Domain={_domain(server)}"),
            ("Service-Worker-Allowed", "/"),
            ("Clear-Site-Data", '"cookies"'),
        ],
        302,
        host=host,
    )
    assert response.headers["location"] == "/login"
    assert response.headers["set-cookie"].replace(" ", "").lower() == "a=1;path=/"
    assert response.headers["service-worker-allowed"] == "/"
    assert response.headers["clear-site-data"] == '"cookies"'
