"""Relaying public HTTP requests: head, body, headers, statuses."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx


async def test_get_relays_method_path_query_and_forwarded_headers(server: Any, pg: Any) -> None:
    async with pg.fake_client(server, "node", pg.echo_handler), httpx.AsyncClient() as http:
        response = await http.get(
            f"{server.base}/node/a%2Fb/c?x=1&x=2&y=%20",
            headers=[("X-Dup", "one"), ("X-Dup", "two"), ("Connection", "keep-alive")],
        )
    assert response.status_code == 200
    info = json.loads(response.headers["x-echo"])
    assert info["method"] == "GET"
    assert info["path"] == "/a%2Fb/c"
    assert info["query"] == "x=1&x=2&y=%20"
    headers = [tuple(h) for h in info["headers"]]
    assert [v for n, v in headers if n == "x-dup"] == ["one", "two"]
    assert ("x-forwarded-prefix", "/node") in headers
    assert ("x-forwarded-proto", "http") in headers
    assert ("x-forwarded-for", "127.0.0.1") in headers
    assert ("x-forwarded-host", f"127.0.0.1:{server.port}") in headers
    assert not any(n in ("connection", "keep-alive") for n, _ in headers)
    assert info["client_host"] == "127.0.0.1"


async def test_a_trusted_proxy_s_forwarded_headers_are_kept_and_its_address_appended(
    pg: Any,
) -> None:
    # The test's requests come from 127.0.0.1, trusted here explicitly (the default
    # trusts nobody): as if through a TLS-terminating reverse proxy on the server's host.
    async with (
        pg.start_server(forwarded_allow_ips="127.0.0.1") as server,
        pg.fake_client(server, "node", pg.echo_handler),
        httpx.AsyncClient() as http,
    ):
        response = await http.get(
            f"{server.base}/node/p",
            headers=[
                ("X-Forwarded-For", "198.51.100.1, 203.0.113.9"),
                ("X-Forwarded-Proto", "https"),
            ],
        )
    info = json.loads(response.headers["x-echo"])
    headers = [tuple(h) for h in info["headers"]]
    assert [v for n, v in headers if n == "x-forwarded-for"] == [
        "198.51.100.1, 203.0.113.9, 127.0.0.1"  # the proxy's chain, then the proxy
    ]
    assert ("x-forwarded-proto", "https") in headers  # what the caller used
    assert info["client_host"] == "203.0.113.9"  # the caller the proxy reported


async def test_root_of_id_is_slash_and_body_echoes(server: Any, pg: Any) -> None:
    async with pg.fake_client(server, "node", pg.echo_handler), httpx.AsyncClient() as http:
        bare = await http.request("PROPFIND", f"{server.base}/node?a=1", content=b"hello")
        response = await http.request("PROPFIND", f"{server.base}/node/", content=b"hello")
    # RT-1: the bare id is redirected (308 keeps the method and body) to the id's root.
    assert bare.status_code == 308
    assert bare.headers["location"] == "/node/?a=1"
    assert response.status_code == 200
    info = json.loads(response.headers["x-echo"])
    assert info["method"] == "PROPFIND"
    assert info["path"] == "/"
    assert response.content == b"hello"


async def test_any_method_token_is_relayed(server: Any, pg: Any) -> None:
    async with pg.fake_client(server, "node", pg.echo_handler), httpx.AsyncClient() as http:
        for method in ("X-0", "BREW", "PROPFIND", "GET", "M-SEARCH"):
            response = await http.request(method, f"{server.base}/node/m", content=b"b")
            assert response.status_code == 200, method
            assert json.loads(response.headers["x-echo"])["method"] == method
            assert response.content == b"b"
        # methods are case-sensitive (httpx would upper-case this one)
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"get /node/lower HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        raw = await asyncio.wait_for(reader.read(), 5)
        writer.close()
        assert raw.startswith(b"HTTP/1.1 200")
        assert b'\\"method\\": \\"get\\"' in raw or b'"method": "get"' in raw
