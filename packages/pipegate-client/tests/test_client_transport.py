"""--no-fast-path: the client on websockets' public API only (PlainTunnelConnection),
selected by the setting; and connection failures told apart by type."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from pipegate_client import ClientSettings, TunnelClient
from pipegate_client._client import _describe
from pipegate_client._internals import TunnelConnection
from pipegate_client._transport import PlainTunnelConnection
from pipegate_client.cli import build_parser, settings_from_args
from pipegate_protocol import ProtocolVersion
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

WAIT = 10.0


def test_no_fast_path_flag_sets_the_setting() -> None:
    base = ["--server-url", "ws://127.0.0.1:1/node", "--client-token", "t"]
    assert settings_from_args(build_parser().parse_args(base)).fast_path is True
    plain = settings_from_args(build_parser().parse_args([*base, "--no-fast-path"]))
    assert plain.fast_path is False
    assert "--no-fast-path" in build_parser().format_help()


async def _echo(websocket: ServerConnection) -> None:
    async for message in websocket:
        await websocket.send(message)


async def _server() -> AsyncIterator[int]:
    async with serve(_echo, "127.0.0.1", 0, subprotocols=[ProtocolVersion.V1.value]) as server:  # type: ignore[list-item]
        yield server.sockets[0].getsockname()[1]


@pytest.fixture
async def echo_port() -> AsyncIterator[int]:
    async for port in _server():
        yield port


@pytest.mark.parametrize(
    ("fast_path", "kind"), [(True, TunnelConnection), (False, PlainTunnelConnection)]
)
async def test_connect_picks_the_connection_class_from_the_setting(
    echo_port: int, fast_path: bool, kind: type
) -> None:
    settings = ClientSettings(
        server_url=f"ws://127.0.0.1:{echo_port}/node", client_token="t", fast_path=fast_path
    )
    websocket = await TunnelClient(settings)._connect()
    try:
        assert type(websocket) is kind
        assert not websocket.send_now([]) or fast_path  # the plain one never writes at once
        await websocket.send_many(["head", b"body"])
        received: list[str | bytes] = []
        while len(received) < 2:
            received += await asyncio.wait_for(websocket.receive_batch(), WAIT)
        assert received == ["head", b"body"]
    finally:
        await websocket.close(1000, "done")
    assert websocket.close_code == 1000


async def test_the_plain_connection_uses_the_public_api_only(echo_port: int) -> None:
    url = f"ws://127.0.0.1:{echo_port}/node"
    async with connect(url, subprotocols=[ProtocolVersion.V1.value]) as connection:  # type: ignore[list-item]
        plain = PlainTunnelConnection(connection)
        assert plain.send_now(["never"]) is False
        await plain.send_many(["one", b"two", "three"])
        batches = [await asyncio.wait_for(plain.receive_batch(), WAIT) for _ in range(3)]
        assert batches == [["one"], [b"two"], ["three"]]  # one message per batch
        assert plain.transport is connection.transport
        await plain.close(1000, "bye")
        await asyncio.wait_for(plain.wait_closed(), WAIT)
        assert (plain.close_code, plain.close_reason) == (1000, "bye")
        with pytest.raises(ConnectionClosed):
            await plain.receive_batch()
        with pytest.raises(ConnectionClosed):
            await plain.send_many(["late"])


async def test_a_whole_session_relays_on_the_public_api(harness: Any) -> None:
    async with harness.run(harness.settings(fast_path=False)) as (client, _output, _task):
        fake = await harness.server.next_tunnel()
        await asyncio.wait_for(client.connected.wait(), WAIT)
        assert isinstance(client._session.websocket, PlainTunnelConnection)
        for method in ("GET", "PROPFIND"):
            head, body = await fake.request(method, "/echo", body=b"<xml/>")
            assert head.status == 200
            seen: Any = json.loads(body.decode())
            assert seen["method"] == method
            assert seen["body_sha256"] == hashlib.sha256(b"<xml/>").hexdigest()


def test_connection_failures_are_told_apart_by_type_not_text() -> None:
    assert _describe(ConnectionRefusedError(111, "Connect call failed")) == "connection refused"
    assert _describe(TimeoutError()) == "timed out"
    # Text that merely mentions a refusal is not a refusal.
    assert _describe(OSError("the proxy refused to say")) == "the proxy refused to say"
    assert _describe(OSError()) == "OSError"
