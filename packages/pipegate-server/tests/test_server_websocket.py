"""Public WebSocket sessions relayed through the tunnel (rules WS-*)."""

from __future__ import annotations

import asyncio
import os
from typing import Any

import pytest
from pipegate_protocol import ResetCode, StreamKind, WebSocketClose, WebSocketData
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus


async def _ws_app(client: Any, stream: Any) -> None:
    assert stream.open.kind is StreamKind.WEBSOCKET
    names = [name for name, _ in stream.open.headers]
    assert "sec-websocket-key" not in names
    if stream.open.path == "/refuse":
        await stream.respond(403, [("content-type", "text/plain")], b"nope")
        return
    offered = [v for n, v in stream.open.headers if n == "sec-websocket-protocol"]
    assert offered == ["chat, other"]
    client.conn.send_response(stream.id, 101, [("sec-websocket-protocol", "chat")])
    await client.flush()
    parts: list[bytes] = []
    while True:
        item = await stream.next_item()
        if isinstance(item, WebSocketClose):
            client.closes.append(item.code)
            return
        if isinstance(item, WebSocketData):
            parts.append(item.data)
            client.conn.acknowledge(stream.id, len(item.data))
            await client.flush()
            if item.fin:
                message = b"".join(parts)
                parts = []
                if message == b"reset-please":
                    client.conn.reset_stream(stream.id, ResetCode.CANCELLED)
                    await client.flush()
                    return
                if message in (b"close-please", b"close-1006"):
                    code = 4000 if message == b"close-please" else 1006
                    client.conn.send_websocket_close(stream.id, code, "bye")
                    await client.flush()
                    return
                await stream.send(message, text=item.text)


async def test_websocket_echo_text_binary_and_close(server: Any, pg: Any) -> None:
    big = os.urandom(3 * 1024 * 1024 + 5)  # larger than a frame and than the window
    async with pg.fake_client(server, "node", _ws_app) as client:
        client.closes = []
        async with connect(
            f"ws://127.0.0.1:{server.port}/node/chat?room=1",
            subprotocols=["chat", "other"],  # type: ignore[list-item]
            max_size=None,
        ) as ws:
            assert ws.subprotocol == "chat"
            await ws.send("hello")
            assert await ws.recv() == "hello"
            await ws.send(big)
            assert await asyncio.wait_for(ws.recv(), 20) == big
            text = "x\u00e9" * (len(big) // 3)
            await ws.send(text)
            assert await asyncio.wait_for(ws.recv(), 20) == text
        for _ in range(100):
            if client.closes:
                break
            await asyncio.sleep(0.01)
        assert client.closes == [1000]


async def test_websocket_close_from_local_app_reaches_caller(server: Any, pg: Any) -> None:
    async with (
        pg.fake_client(server, "node", _ws_app) as client,
        connect(
            f"ws://127.0.0.1:{server.port}/node/chat",
            subprotocols=["chat", "other"],  # type: ignore[list-item]
        ) as ws,
    ):
        client.closes = []
        await ws.send("close-please")
        await ws.wait_closed()
        assert ws.close_code == 4000
        assert ws.close_reason == "bye"


async def test_websocket_refusal_passes_status_and_body(server: Any, pg: Any) -> None:
    async with pg.fake_client(server, "node", _ws_app):
        with pytest.raises(InvalidStatus) as info:
            async with connect(f"ws://127.0.0.1:{server.port}/node/refuse"):
                pass
    assert info.value.response.status_code == 403
    assert info.value.response.body == b"nope"


async def test_websocket_to_unknown_id_is_404(server: Any) -> None:
    with pytest.raises(InvalidStatus) as info:
        async with connect(f"ws://127.0.0.1:{server.port}/nobody/chat"):
            pass
    assert info.value.response.status_code == 404


async def test_client_without_websocket_capability_is_502(server: Any, pg: Any) -> None:
    async with pg.fake_client(server, "node", _ws_app, websocket=False):
        with pytest.raises(InvalidStatus) as info:
            async with connect(f"ws://127.0.0.1:{server.port}/node/chat"):
                pass
    assert info.value.response.status_code == 502


async def test_abnormal_close_from_local_app_becomes_1011(server: Any, pg: Any) -> None:
    async with (
        pg.fake_client(server, "node", _ws_app) as client,
        connect(
            f"ws://127.0.0.1:{server.port}/node/chat",
            subprotocols=["chat", "other"],  # type: ignore[list-item]
        ) as ws,
    ):
        client.closes = []
        await ws.send("close-1006")
        await ws.wait_closed()
        assert ws.close_code == 1011


async def test_cancelled_reset_closes_caller_with_1001(server: Any, pg: Any) -> None:
    async with (
        pg.fake_client(server, "node", _ws_app) as client,
        connect(
            f"ws://127.0.0.1:{server.port}/node/chat",
            subprotocols=["chat", "other"],  # type: ignore[list-item]
        ) as ws,
    ):
        client.closes = []
        await ws.send("reset-please")
        await ws.wait_closed()
        assert ws.close_code == 1001
