"""Bodies stream both ways under flow control; nothing waits for a whole body."""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterator
from typing import Any

import httpx

MIB = 1024 * 1024


async def _digest_handler(client: Any, stream: Any) -> None:
    body = await stream.read_body()
    digest = hashlib.sha256(body).hexdigest()
    await stream.respond(200, [("x-sha256", digest), ("x-length", str(len(body)))], b"")


async def test_chunked_upload_larger_than_window(server: Any, pg: Any) -> None:
    payload = os.urandom(5 * MIB + 123)

    async def chunks() -> AsyncIterator[bytes]:
        for offset in range(0, len(payload), 256 * 1024):
            yield payload[offset : offset + 256 * 1024]

    async with pg.fake_client(server, "up", _digest_handler), httpx.AsyncClient() as http:
        response = await http.post(f"{server.base}/up/data", content=chunks())
    assert response.status_code == 200
    assert response.headers["x-length"] == str(len(payload))
    assert response.headers["x-sha256"] == hashlib.sha256(payload).hexdigest()


async def test_download_larger_than_window(server: Any, pg: Any) -> None:
    payload = os.urandom(6 * MIB + 7)

    async def handler(client: Any, stream: Any) -> None:
        await stream.respond(200, [("content-length", str(len(payload)))], None)
        await stream.send(payload, end_stream=True)

    async with pg.fake_client(server, "down", handler), httpx.AsyncClient() as http:
        response = await http.get(f"{server.base}/down/file")
    assert response.status_code == 200
    assert hashlib.sha256(response.content).digest() == hashlib.sha256(payload).digest()


async def test_response_streams_before_it_is_complete(server: Any, pg: Any) -> None:
    first_seen = asyncio.Event()

    async def handler(client: Any, stream: Any) -> None:
        await stream.respond(200, [("content-type", "text/event-stream")], None)
        await stream.send(b"data: first\n\n")
        await asyncio.wait_for(first_seen.wait(), 5)
        await stream.send(b"data: last\n\n", end_stream=True)

    async with (
        pg.fake_client(server, "sse", handler),
        httpx.AsyncClient() as http,
        http.stream("GET", f"{server.base}/sse/events") as response,
    ):
        received = b""
        async for chunk in response.aiter_raw():
            received += chunk
            if b"first" in received:
                first_seen.set()
    assert received == b"data: first\n\ndata: last\n\n"


async def test_request_body_streams_before_it_is_complete(server: Any, pg: Any) -> None:
    first_arrived = asyncio.Event()

    async def handler(client: Any, stream: Any) -> None:
        item = await stream.next_item()
        assert item.data == b"part-1"
        stream.client.conn.acknowledge(stream.id, len(item.data))
        first_arrived.set()
        rest = await stream.read_body()
        await stream.respond(200, [], item.data + rest)

    async def body() -> AsyncIterator[bytes]:
        yield b"part-1"
        await asyncio.wait_for(first_arrived.wait(), 5)
        yield b"part-2"

    async with pg.fake_client(server, "req", handler), httpx.AsyncClient() as http:
        response = await http.post(f"{server.base}/req/x", content=body())
    assert response.content == b"part-1part-2"


async def test_a_gateway_observer_sees_each_relayed_stream(server: Any, pg: Any) -> None:
    """The stream observer seam on the server: open, head, body both ways, end."""
    from pipegate_tunnel import StreamChannel, StreamObserver

    events: list[tuple[str, Any]] = []

    class Recorder(StreamObserver):
        def stream_opened(self, channel: StreamChannel) -> None:
            events.append(("open", (channel.method, channel.path)))

        def response_head(self, channel: StreamChannel, status: int) -> None:
            events.append(("head", status))

        def stream_ended(self, channel: StreamChannel) -> None:
            events.append(("end", (channel.status, channel.bytes_sent, channel.bytes_received)))

    server.gateway.observer = Recorder()
    async with pg.fake_client(server, "seen", _digest_handler), httpx.AsyncClient() as http:
        response = await http.post(f"{server.base}/seen/data?q=1", content=b"abc")
        assert response.status_code == 200
        for _ in range(100):
            if events and events[-1][0] == "end":
                break
            await asyncio.sleep(0.01)
    assert events == [("open", ("POST", "/data")), ("head", 200), ("end", (200, 3, 0))]
