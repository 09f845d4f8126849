"""RT-4 and RT-5 at the client: asking for hostnames, failing closed on a server that
cannot serve them, printing every public URL, and ``--host-header preserve``."""

from __future__ import annotations

import asyncio
import json
from typing import Any
from urllib.parse import urlsplit

import pytest
from pipegate_client import ClientSettings
from pipegate_client.cli import build_parser, settings_from_args
from pipegate_client.errors import ConfigurationError, HostnamesUnsupportedError
from pipegate_protocol import CAPABILITY_HOSTNAMES, HOSTNAME_HEADER, StreamKind

WAIT = 10.0


async def test_hostnames_are_asked_for_and_every_public_url_printed(harness: Any) -> None:
    harness.server.hello_extras = {
        "capabilities": [CAPABILITY_HOSTNAMES],
        "hostnames": ["api.example.com", "node.example.com"],
        "public_urls": [
            "https://api.example.com/",
            "https://node.example.com/",
            "https://example.com/node/",
        ],
    }
    settings = harness.settings(hostnames=("API.example.com.", "api.example.com"))
    assert settings.hostnames == ("api.example.com",)
    async with harness.run(settings) as (client, output, _task):
        await asyncio.wait_for(client.connected.wait(), WAIT)
        sent = harness.server.requests[-1]
        assert [v for n, v in sent if n.lower() == HOSTNAME_HEADER] == ["api.example.com"]
        assert output.getvalue().splitlines() == [
            "https://api.example.com/",
            "https://node.example.com/",
            "https://example.com/node/",
        ]
        assert client.public_urls == output.getvalue().splitlines()
        assert client.public_url == "https://public.example/node"


async def test_a_server_without_hostnames_is_refused_not_used(harness: Any) -> None:
    settings = harness.settings(hostnames=("api.example.com",))
    async with harness.run(settings) as (client, output, task):
        with pytest.raises(HostnamesUnsupportedError, match="refusing to expose 'node'"):
            await asyncio.wait_for(task, WAIT)
        assert output.getvalue() == ""  # no URL was ever shown
        assert not client.connected.is_set()
    assert harness.server.attempts == 1  # and no retry


async def test_without_hostnames_no_header_is_sent(tunnel: Any, harness: Any) -> None:
    assert all(
        n.lower() != HOSTNAME_HEADER for request in harness.server.requests for n, _ in request
    )


async def test_a_hostile_servers_url_list_is_bounded_and_escaped(harness: Any) -> None:
    harness.server.hello_extras = {
        "public_urls": ["https://x/\x1b[31mred\n"] + [f"https://{i}.example/" for i in range(40)]
    }
    async with harness.run() as (client, output, _task):
        await asyncio.wait_for(client.connected.wait(), WAIT)
        lines = output.getvalue().splitlines()
        assert len(lines) == 16
        assert "\x1b" not in output.getvalue()


async def test_host_header_preserve_sends_the_callers_host(harness: Any) -> None:
    async with harness.run(harness.settings(preserve_host=True)) as (client, _output, _task):
        fake = await harness.server.next_tunnel()
        await asyncio.wait_for(client.connected.wait(), WAIT)
        _head, body = await fake.request(
            "GET", "/echo/h", "", [("host", "node.example.com"), ("x-forwarded-host", "x")]
        )
        headers = json.loads(body)["headers"]
        assert [v for n, v in headers if n.lower() == "host"] == ["node.example.com"]


@pytest.mark.parametrize("preserve", [True, False])
async def test_host_header_applies_to_websocket_handshakes(harness: Any, preserve: bool) -> None:
    """websockets builds Host from the URI: with preserve, the URI carries the caller's
    Host and the connection still goes to the local app."""
    headers = [
        ("Host", "node.example.com:8443"),
        ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ("Sec-WebSocket-Version", "13"),
    ]
    async with harness.run(harness.settings(preserve_host=preserve)) as (client, _output, _task):
        fake = await harness.server.next_tunnel()
        await asyncio.wait_for(client.connected.wait(), WAIT)
        stream = await fake.open("GET", "/ws", headers=headers, kind=StreamKind.WEBSOCKET)
        head = await fake.response(stream)
        assert head.status == 101, head
        fake.conn.send_websocket_close(stream, 1000, "done")
        await fake.flush()
    local = urlsplit(harness.local_url).netloc
    assert harness.local.ws_hosts == ["node.example.com:8443" if preserve else local]


async def test_host_header_rewrite_is_the_default(tunnel: Any) -> None:
    fake, _client, _output = tunnel
    _head, body = await fake.request("GET", "/echo/h", "", [("host", "node.example.com")])
    hosts = [v for n, v in json.loads(body)["headers"] if n.lower() == "host"]
    assert hosts != ["node.example.com"]
    assert len(hosts) == 1


def test_flags() -> None:
    args = build_parser().parse_args(
        [
            "--server-url", "ws://127.0.0.1:1/node", "--client-token", "t",
            "--hostname", "a.example.com", "--hostname", "b.example.com",
            "--host-header", "preserve", "--no-inspect",
        ]
    )  # fmt: skip
    settings = settings_from_args(args)
    assert settings.hostnames == ("a.example.com", "b.example.com")
    assert settings.preserve_host


@pytest.mark.parametrize("bad", ["bad_name.example.com", "-x.example.com", "é.example"])
def test_bad_hostnames_are_refused_by_the_settings(bad: str) -> None:
    with pytest.raises(ConfigurationError, match="--hostname"):
        ClientSettings(server_url="ws://127.0.0.1:1/node", client_token="t", hostnames=(bad,))
