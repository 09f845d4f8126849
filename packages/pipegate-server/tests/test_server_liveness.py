"""Hello timeout, heartbeat, and graceful shutdown (rules LV-*)."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
from pipegate_protocol import Connection, GoAway, Role
from websockets.asyncio.client import connect


async def _raw_tunnel(server: Any, pg: Any, connection_id: str) -> Any:
    return await connect(
        server.ws_url(connection_id),
        subprotocols=["pipegate.v1"],  # type: ignore[list-item]
        additional_headers={"Authorization": f"Bearer {pg.token}"},
    )


async def test_missing_hello_closes_with_4004(pg: Any) -> None:
    async with pg.start_server(hello_timeout=0.2) as server:
        ws = await _raw_tunnel(server, pg, "quiet")
        await asyncio.wait_for(ws.wait_closed(), 5)
        assert ws.close_code == 4004


async def test_silent_peer_is_closed_with_4005_and_id_freed(pg: Any) -> None:
    async with pg.start_server(heartbeat_interval=0.1, heartbeat_timeout=0.3) as server:
        ws = await _raw_tunnel(server, pg, "frozen")
        conn = Connection(Role.CLIENT)
        for item in conn.data_to_send():
            await ws.send(item)
        # never answer the pings: like a process frozen with SIGSTOP
        await asyncio.wait_for(ws.wait_closed(), 5)
        assert ws.close_code == 4005
        async with pg.fake_client(server, "frozen", pg.echo_handler) as again:
            assert again.conn.peer_hello is not None


async def test_answering_peer_survives_heartbeats(pg: Any) -> None:
    async with (
        pg.start_server(heartbeat_interval=0.05, heartbeat_timeout=0.2) as server,
        pg.fake_client(server, "alive", pg.echo_handler) as client,
    ):
        await asyncio.sleep(0.5)
        assert any(getattr(m, "type", "") == "ping" for m in client.received)
        async with httpx.AsyncClient() as http:
            assert (await http.get(f"{server.base}/alive/x")).status_code == 200


async def test_drain_finishes_in_flight_then_closes(pg: Any) -> None:
    release = asyncio.Event()
    payload = b"a" * 300_000

    async def slow_download(client: Any, stream: Any) -> None:
        await stream.respond(200, [("content-length", str(len(payload)))], None)
        await stream.send(payload[:1000])
        await release.wait()
        await stream.send(payload[1000:], end_stream=True)

    async with (
        pg.start_server() as server,
        pg.fake_client(server, "node", slow_download) as client,
        httpx.AsyncClient() as http,
    ):
        download = asyncio.create_task(http.get(f"{server.base}/node/big"))
        for _ in range(200):
            if client.streams:
                break
            await asyncio.sleep(0.01)
        drain = asyncio.create_task(server.gateway.drain(grace=5))
        for _ in range(200):
            if any(isinstance(m, GoAway) for m in client.received):
                break
            await asyncio.sleep(0.01)
        assert any(isinstance(m, GoAway) for m in client.received)
        refused = await http.get(f"{server.base}/node/new")
        assert refused.status_code == 503
        health = (await http.get(f"{server.base}/_pipegate/health")).json()
        assert health["status"] == "draining"
        assert not drain.done()
        release.set()
        response = await download
        assert response.status_code == 200
        assert response.content == payload
        await asyncio.wait_for(drain, 5)
        await asyncio.wait_for(client.ws.wait_closed(), 5)
        assert client.ws.close_code == 1001
