"""``Location`` of the local app's own origin made the tunnel's (``tunnel_location``):
a table of values, properties, then a local app behind a running client."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from hypothesis import given
from hypothesis import strategies as st
from pipegate_client._http1 import Origin
from pipegate_client._local import tunnel_location
from pipegate_protocol import StreamKind

from .conftest import WAIT, FakeServer, make_settings, running_client

LOCAL = Origin("http://127.0.0.1:5001")


@pytest.mark.parametrize(
    ("value", "base_path", "expected"),
    [
        # The local origin below the base path: the absolute path after it.
        ("http://127.0.0.1:5001/app/sub?q=1", "/app", "/sub?q=1"),
        ("http://127.0.0.1:5001/app/", "/app", "/"),
        ("http://127.0.0.1:5001/app", "/app", "/"),
        ("http://127.0.0.1:5001/app?next=/x", "/app", "/?next=/x"),
        ("http://127.0.0.1:5001/app#top", "/app", "/#top"),
        ("HTTP://127.0.0.1:5001/app/a", "/app", "/a"),
        ("http://127.0.0.1:5001/sub/", "", "/sub/"),
        ("http://127.0.0.1:5001", "", "/"),
        ("http://127.0.0.1:5001?x=1", "", "/?x=1"),
        ("http://127.0.0.1:5001/a//b/%2e%2e/c", "", "/a//b/%2e%2e/c"),
        # Outside the base path, or another origin: unchanged.
        ("http://127.0.0.1:5001/apple", "/app", "http://127.0.0.1:5001/apple"),
        ("http://127.0.0.1:5001/other", "/app", "http://127.0.0.1:5001/other"),
        ("http://127.0.0.1:5002/app/a", "/app", "http://127.0.0.1:5002/app/a"),
        ("http://127.0.0.1/app/a", "/app", "http://127.0.0.1/app/a"),
        ("https://127.0.0.1:5001/a", "", "https://127.0.0.1:5001/a"),
        ("http://localhost:5001/a", "", "http://localhost:5001/a"),
        ("http://example.com/a", "", "http://example.com/a"),
        ("http://user@127.0.0.1:5001/a", "", "http://user@127.0.0.1:5001/a"),
        ("http://127.0.0.1:5001@evil.example/a", "", "http://127.0.0.1:5001@evil.example/a"),
        ("http://127.0.0.1:x/a", "", "http://127.0.0.1:x/a"),
        ("ftp://127.0.0.1:5001/a", "", "ftp://127.0.0.1:5001/a"),
        # Paths: only a base path is taken off.
        ("/app/sub", "/app", "/sub"),
        ("/app", "/app", "/"),
        ("/app?x=1", "/app", "/?x=1"),
        ("/apple", "/app", "/apple"),
        ("/other", "/app", "/other"),
        ("/sub", "", "/sub"),
        ("//127.0.0.1:5001/app/a", "/app", "//127.0.0.1:5001/app/a"),
        ("sub/page", "/app", "sub/page"),
        ("", "/app", ""),
    ],
)
def test_tunnel_location(value: str, base_path: str, expected: str) -> None:
    assert tunnel_location(value, LOCAL, base_path) == expected


@pytest.mark.parametrize(
    ("local_url", "value", "expected"),
    [
        ("http://Example.COM", "http://example.com:80/a", "/a"),
        ("http://example.com:80", "http://EXAMPLE.com/a", "/a"),
        ("https://example.com", "https://example.com:443/a", "/a"),
        ("https://example.com", "https://example.com:80/a", "https://example.com:80/a"),
        ("http://[::1]:8080", "http://[::1]:8080/a", "/a"),
        ("http://[::1]:8080", "http://[::1]/a", "http://[::1]/a"),
        ("http://[::1]:8080", "http://[::1:8080/a", "http://[::1:8080/a"),
    ],
)
def test_default_ports_and_host_case_are_equivalent(
    local_url: str, value: str, expected: str
) -> None:
    assert tunnel_location(value, Origin(local_url), "") == expected


@given(st.text(max_size=80), st.sampled_from(["", "/app"]))
def test_a_location_is_kept_or_becomes_an_absolute_path(value: str, base_path: str) -> None:
    result = tunnel_location(value, LOCAL, base_path)
    assert result == value or (result.startswith("/") and not result.startswith("//"))


@given(st.sampled_from(["/", "/a", "/a/b?c#d", "/app", "/app/", "/app/x?y", "/apple"]))
def test_an_own_origin_url_and_its_path_agree(target: str) -> None:
    """With a base path, the URL form and the absolute-path form of one place give the
    same path, or are both left alone."""
    url = f"http://127.0.0.1:5001{target}"
    by_url = tunnel_location(url, LOCAL, "/app")
    by_path = tunnel_location(target, LOCAL, "/app")
    if by_path == target:
        assert by_url == url
    else:
        assert by_url == by_path


# ---------------------------------------------------------------------- in a client


def _redirect(location: str) -> Any:
    async def handler(request: web.Request) -> web.Response:
        return web.Response(status=302, headers={"Location": location.format(host=request.host)})

    return handler


@pytest.fixture
async def redirecting_app() -> AsyncIterator[str]:
    """A local app under ``/app`` whose redirects name its own origin (from Host)."""
    app = web.Application()
    app.router.add_get("/app/own", _redirect("http://{host}/app/sub?q=1"))
    app.router.add_get("/app/path", _redirect("/app/next/"))
    app.router.add_get("/app/outside", _redirect("/elsewhere"))
    app.router.add_get("/app/foreign", _redirect("https://example.com/app/x"))
    app.router.add_get("/app/ws", _redirect("http://{host}/app/login"))
    runner = web.AppRunner(app)
    await runner.setup()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    await web.SockSite(runner, sock).start()
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/app"
    finally:
        await runner.cleanup()


async def test_the_client_rewrites_locations_of_its_local_app(
    fake_server: FakeServer, redirecting_app: str
) -> None:
    settings = make_settings(fake_server, local_url=redirecting_app)
    async with running_client(settings) as (client, _output, _task):
        fake = await fake_server.next_tunnel()
        await asyncio.wait_for(client.connected.wait(), WAIT)
        seen = {}
        for path in ("/own", "/path", "/outside", "/foreign"):
            head, _ = await fake.request("GET", path)
            assert head.status == 302
            seen[path] = [value for name, value in head.headers if name.lower() == "location"]
        stream = await fake.open(
            "GET",
            "/ws",
            headers=[
                ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
                ("Sec-WebSocket-Version", "13"),
            ],
            kind=StreamKind.WEBSOCKET,
        )
        refusal = await fake.response(stream)
    assert seen == {
        "/own": ["/sub?q=1"],
        "/path": ["/next/"],
        "/outside": ["/elsewhere"],  # the server adds the prefix; not reachable, but kept
        "/foreign": ["https://example.com/app/x"],
    }
    assert refusal.status == 302
    assert [value for name, value in refusal.headers if name.lower() == "location"] == ["/login"]
