"""WebSocket passthrough: handshake outcome, messages both ways (fragmented when large),
and close codes relayed in both directions."""

from __future__ import annotations

import asyncio
from typing import Any

from pipegate_protocol import Data, Limits, StreamKind, WebSocketClose, WebSocketData

WS_HEADERS = [
    ("Host", "public.example"),
    ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ("Sec-WebSocket-Version", "13"),
    ("Sec-WebSocket-Protocol", "superchat, other"),
    ("Origin", "https://public.example"),
]


async def _open_websocket(fake: Any, path: str = "/ws") -> int:
    stream = await fake.open("GET", path, headers=WS_HEADERS, kind=StreamKind.WEBSOCKET)
    head = await fake.response(stream)
    assert head.status == 101, head
    assert ("sec-websocket-protocol", "superchat") in [(n.lower(), v) for n, v in head.headers]
    assert not any(n.lower() == "sec-websocket-accept" for n, _ in head.headers)
    return int(stream)


async def _read_message(fake: Any, stream: int) -> tuple[bool, bytes, int]:
    """One whole message from the client: (text, payload, number of fragments)."""
    parts: list[bytes] = []
    while True:
        item = await fake.next_item(stream)
        assert isinstance(item, WebSocketData), item
        parts.append(item.data)
        fake.conn.acknowledge(stream, len(item.data))
        await fake.flush()
        if item.fin:
            return item.text, b"".join(parts), len(parts)


async def _send_message(fake: Any, stream: int, data: bytes, *, text: bool) -> None:
    size = fake.conn.max_data_size
    pieces = [data[i : i + size] for i in range(0, len(data), size)] or [b""]
    for index, piece in enumerate(pieces):
        while fake.conn.send_window(stream) < len(piece):
            fake.streams[stream].window.clear()
            await fake.streams[stream].window.wait()
        fake.conn.send_websocket_data(stream, piece, text=text, fin=index == len(pieces) - 1)
        await fake.flush()


async def test_client_websocket_echo_text_and_binary(tunnel: Any) -> None:
    fake, _client, _output = tunnel
    stream = await _open_websocket(fake)
    await _send_message(fake, stream, "héllo".encode(), text=True)
    assert await _read_message(fake, stream) == (True, "héllo".encode(), 1)
    await _send_message(fake, stream, b"\x00\x01\xff", text=False)
    assert await _read_message(fake, stream) == (False, b"\x00\x01\xff", 1)


async def test_client_websocket_large_messages_are_fragmented(harness: Any) -> None:
    # Small frames and windows on both sides: the client must split what the local
    # app sends and wait for credit; what we send arrives in 16 KiB fragments.
    harness.server.limits = Limits(initial_window=64 * 1024, max_frame_size=16 * 1024)
    settings = harness.settings(initial_window=64 * 1024, max_frame_size=16 * 1024)
    async with harness.run(settings) as (_client, _output, _task):
        fake = await harness.server.next_tunnel()
        stream = await _open_websocket(fake)
        # 2 MiB: the local app echoes it as one frame, which must still be accepted
        # and split into 16 KiB fragments for the tunnel.
        big = bytes(range(256)) * 8 * 1024
        await _send_message(fake, stream, big, text=False)
        text, data, fragments = await _read_message(fake, stream)
        assert (text, data) == (False, big)
        assert fragments >= len(big) // (16 * 1024)
        big_text = ("é" * 100_000).encode()
        await _send_message(fake, stream, big_text, text=True)
        text, data, _ = await _read_message(fake, stream)
        assert (text, data) == (True, big_text)


async def test_client_websocket_close_from_local_app_is_relayed(tunnel: Any) -> None:
    fake, _client, _output = tunnel
    stream = await _open_websocket(fake)
    await _send_message(fake, stream, b"close:4321", text=True)
    item = await fake.next_item(stream)
    assert isinstance(item, WebSocketClose)
    assert (item.code, item.reason) == (4321, "bye from app")
    assert not fake.conn.is_open(stream)


async def test_client_websocket_close_from_caller_is_relayed(tunnel: Any, local_app: Any) -> None:
    fake, _client, _output = tunnel
    _url, state = local_app
    stream = await _open_websocket(fake)
    await _send_message(fake, stream, b"ping", text=True)
    await _read_message(fake, stream)
    fake.conn.send_websocket_close(stream, 4000, "caller done")
    await fake.flush()
    for _ in range(100):
        if getattr(state, "ws_close_code", None) is not None:
            break
        await asyncio.sleep(0.05)
    assert state.ws_close_code == 4000


async def test_client_websocket_refused_by_local_app(tunnel: Any) -> None:
    fake, _client, _output = tunnel
    stream = await fake.open("GET", "/ws-refuse", headers=WS_HEADERS, kind=StreamKind.WEBSOCKET)
    head = await fake.response(stream)
    assert head.status == 403
    body = b""
    if not head.end_stream:
        while True:
            item = await fake.next_item(stream)
            assert isinstance(item, Data)
            body += item.data
            if item.end_stream:
                break
    assert body == b"no websockets for you"


async def test_client_websocket_local_app_down_gives_502(harness: Any, unused_port: int) -> None:
    settings = harness.settings(local_url=f"http://127.0.0.1:{unused_port}")
    async with harness.run(settings) as (_client, _output, _task):
        fake = await harness.server.next_tunnel()
        stream = await fake.open("GET", "/ws", headers=WS_HEADERS, kind=StreamKind.WEBSOCKET)
        head = await fake.response(stream)
        assert head.status == 502
        body = await fake.read_body(stream)
        assert b"unreachable: connection refused" in body
