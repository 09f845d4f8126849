"""Robustness rules that need a peer to send legal but unusual input: unknown JSON
members (VE-2), late frames for streams that are gone (ST-8), pings (LV-1). Both the
server (driven by the reference client) and the client (driven by the reference server)
must accept them and keep working; "keeps working" is proven with a ping round trip."""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import AsyncIterator

import httpx
import pytest
from pipegate_conformance.plugin import Implementations, Origin, ServerUnderTest
from pipegate_conformance.refpeer import (
    ReferenceClient,
    ReferenceServer,
    ServerSession,
    connect_reference_client,
)
from pipegate_protocol import Open, Pong, Response


async def _alive(peer: ReferenceClient | ServerSession, ping_id: int) -> None:
    peer.conn.send_ping(ping_id)
    await peer.flush()
    pong = await peer.next_of(Pong, within=30.0)
    assert pong.id == ping_id


@pytest.fixture
async def peer(server: ServerUnderTest) -> AsyncIterator[ReferenceClient]:
    client = await connect_reference_client(
        server.ws_url(f"ref-{secrets.token_hex(5)}"),
        server.token,
        ssl_context=server.ssl_context(),
    )
    yield client
    await client.close()


@pytest.fixture
async def session(implementations: Implementations, origin: Origin) -> AsyncIterator[ServerSession]:
    async with ReferenceServer(implementations.token) as ref:
        process = implementations.start_client(origin.url, ref.url("refnode"))
        try:
            yield await ref.next_session(within=30.0)
        finally:
            await asyncio.to_thread(process.stop, 5.0)


@pytest.mark.rule("LV-1")
async def test_server_answers_ping(peer: ReferenceClient) -> None:
    """LV-1: the server answers a ping with a pong of the same id."""
    await _alive(peer, 2**62)


@pytest.mark.rule("VE-2")
async def test_server_ignores_unknown_members(server: ServerUnderTest) -> None:
    """VE-2: unknown members in the hello, in its limits and in later messages are
    ignored."""
    client = await connect_reference_client(
        server.ws_url(f"ref-{secrets.token_hex(5)}"),
        server.token,
        ssl_context=server.ssl_context(),
        send_hello=False,
    )
    try:
        hello = json.loads(str(client.conn.data_to_send()[0]))
        hello["from_the_future"] = {"nested": [1, 2]}
        hello["limits"]["max_frame_size"] = 262144
        hello["limits"]["max_header_bytes"] = 8192
        await client.send_raw(json.dumps(hello))
        await client.send_raw('{"type": "ping", "id": 5, "priority": "high"}')
        server_hello = None
        while True:
            message = await client.next_message(within=30.0)
            if isinstance(message, Pong):
                assert message.id == 5
                break
            server_hello = server_hello or message
        assert server_hello is not None
    finally:
        await client.close()


@pytest.mark.rule("ST-8", "FC-7", "ST-10")
async def test_server_ignores_frames_for_gone_streams(
    server: ServerUnderTest, peer: ReferenceClient
) -> None:
    """ST-8/FC-7: after a stream is gone (both directions ended), a window update, a
    data frame and a reset for it are ignored; the tunnel keeps working."""
    connection_id = peer.server_hello.connection_id if peer.server_hello else None
    assert connection_id is not None
    caller = asyncio.create_task(
        asyncio.to_thread(httpx.get, f"{server.public_url(connection_id)}/done", timeout=30.0)
    )
    opened = await peer.next_of(Open)
    peer.conn.send_response(opened.stream_id, 204, end_stream=True)
    await peer.flush()
    assert (await caller).status_code == 204
    sid = opened.stream_id
    await peer.send_raw(f'{{"type": "window_update", "stream_id": {sid}, "increment": 100}}')
    await peer.send_raw(b"\x80" + sid.to_bytes(4, "big") + b"late")
    await peer.send_raw(f'{{"type": "reset", "stream_id": {sid}, "code": "cancelled"}}')
    await _alive(peer, 11)


@pytest.mark.rule("LV-1", "VE-2")
async def test_client_ignores_unknown_members(session: ServerSession) -> None:
    """VE-2: unknown members in a ping and an open are ignored by the client."""
    await session.send_raw('{"type": "ping", "id": 9, "from_the_future": true}')
    assert (await session.next_of(Pong)).id == 9
    session.conn.open_stream(method="GET", path="/echo/future", end_stream=True)
    (queued,) = session.conn.data_to_send()
    opened = json.loads(str(queued))
    opened["priority"] = 3
    opened["trace"] = {"id": "abc"}
    await session.send_raw(json.dumps(opened))
    response = await session.next_of(Response)
    assert response.status == 200


@pytest.mark.rule("ST-8", "ST-10")
async def test_client_ignores_frames_for_gone_streams(session: ServerSession) -> None:
    """ST-8: frames for a finished stream are ignored by the client."""
    stream_id = session.conn.open_stream(method="GET", path="/status/204", end_stream=True)
    await session.flush()
    response = await session.next_of(Response)
    assert response.status == 204
    assert response.end_stream
    await session.send_raw(f'{{"type": "window_update", "stream_id": {stream_id}, "increment": 1}}')
    await session.send_raw(f'{{"type": "reset", "stream_id": {stream_id}, "code": "caller_gone"}}')
    await _alive(session, 12)
