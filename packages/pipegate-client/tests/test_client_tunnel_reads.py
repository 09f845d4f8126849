"""The tunnel WebSocket reads plain frames itself and hands them over in batches, in
order with anything the library read (TunnelConnection's receiving side)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from pipegate_client._internals import TunnelConnection
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.frames import Frame, Opcode
from websockets.utils import accept_key


def _frame(opcode: Opcode, data: bytes, *, fin: bool = True) -> bytes:
    return Frame(opcode, data, fin=fin).serialize(mask=False, extensions=[])


def _encode(messages: list[str | bytes]) -> bytes:
    return b"".join(
        _frame(Opcode.TEXT, m.encode()) if isinstance(m, str) else _frame(Opcode.BINARY, m)
        for m in messages
    )


MESSAGES: list[str | bytes] = [
    "",
    "a",
    b"",
    b"\x00" * 125,
    "é" * 63,  # 126 bytes of UTF-8: the 16-bit length form
    bytes(range(256)) * 256,  # 65536 bytes: the 64-bit length form
    '{"type":"pong","id":1}',
]


async def _silent(websocket: ServerConnection) -> None:
    await websocket.wait_closed()


async def _connected() -> AsyncIterator[tuple[TunnelConnection, list[bytes]]]:
    """A tunnel connection to a server that sends nothing by itself; bytes fed to its
    ``data_received`` stand for frames from the server. Yields it and its writes."""
    async with serve(_silent, "127.0.0.1", 0, compression=None) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        async with connect(
            f"ws://127.0.0.1:{port}",
            create_connection=TunnelConnection,
            compression=None,
            ping_interval=None,
            max_size=1 << 20,
        ) as websocket:
            assert isinstance(websocket, TunnelConnection)
            written: list[bytes] = []
            write = websocket.transport.write

            def recording_write(data: Any) -> None:
                written.append(bytes(data))
                write(data)

            websocket.transport.write = recording_write  # type: ignore[method-assign]
            yield websocket, written


@pytest.fixture
async def tunnel() -> AsyncIterator[tuple[TunnelConnection, list[bytes]]]:
    async for pair in _connected():
        yield pair


async def _batch(websocket: TunnelConnection) -> list[str | bytes]:
    return await asyncio.wait_for(websocket.receive_batch(), 5)


@pytest.mark.parametrize("piece", [1, 2, 3, 7, 64, 1000, 1 << 20])
async def test_frames_split_anywhere_arrive_whole_and_in_order(piece: int, tunnel: Any) -> None:
    websocket, _ = tunnel
    data = _encode(MESSAGES)
    for offset in range(0, len(data), piece):
        websocket.data_received(data[offset : offset + piece])
    assert await _batch(websocket) == MESSAGES
    assert websocket._fast is True  # read past the library


async def test_recv_and_async_for_read_the_same_inbox(tunnel: Any) -> None:
    websocket, _ = tunnel
    websocket.data_received(_encode(["one", b"two", "three", b"four"]))
    assert await websocket.recv() == "one"
    assert await websocket.recv(decode=True) == "two"
    assert await websocket.recv(decode=False) == b"three"
    async for message in websocket:
        assert message == b"four"
        break


async def test_a_fragmented_message_keeps_its_place(tunnel: Any) -> None:
    websocket, _ = tunnel
    websocket.data_received(
        _frame(Opcode.BINARY, b"before") + _frame(Opcode.TEXT, b"hel", fin=False)
    )
    websocket.data_received(_frame(Opcode.CONT, b"lo") + _frame(Opcode.TEXT, b"after"))
    assert await _batch(websocket) == [b"before", "hello", "after"]
    assert websocket._fast is False  # the library reads from then on
    websocket.data_received(_frame(Opcode.BINARY, b"later"))
    assert await _batch(websocket) == [b"later"]


async def test_a_ping_is_answered(tunnel: Any) -> None:
    websocket, written = tunnel
    websocket.data_received(_frame(Opcode.PING, b"abc") + _frame(Opcode.TEXT, b"t"))
    assert await _batch(websocket) == ["t"]
    pongs = [data for data in written if data[:1] == b"\x8a"]
    assert len(pongs) == 1
    assert pongs[0][1] == 0x80 | 3  # masked, 3 bytes


async def test_a_pong_acknowledges_our_ping(tunnel: Any) -> None:
    websocket, _ = tunnel
    websocket.transport.pause_reading()  # the real server's pong stays unread
    pong_received = await websocket.ping(b"1234")
    websocket.data_received(_frame(Opcode.PONG, b"1234"))
    assert await asyncio.wait_for(pong_received, 5) >= 0  # the latency
    websocket.transport.resume_reading()


async def test_invalid_utf8_closes_the_connection_with_1007(tunnel: Any) -> None:
    websocket, written = tunnel
    websocket.data_received(_frame(Opcode.TEXT, b"ok") + _frame(Opcode.TEXT, b"\xff\xfe"))
    assert await _batch(websocket) == ["ok"]
    closes = [data for data in written if data[:1] == b"\x88"]
    assert closes
    key, body = closes[0][2:6], closes[0][6:]
    code = bytes(b ^ key[i % 4] for i, b in enumerate(body))[:2]  # unmasked
    assert code == (1007).to_bytes(2, "big")
    with pytest.raises(ConnectionClosed):
        await _batch(websocket)


async def test_a_masked_server_frame_fails_the_connection(tunnel: Any) -> None:
    websocket, _ = tunnel
    masked = Frame(Opcode.TEXT, b"x").serialize(mask=True, extensions=[])
    websocket.data_received(_frame(Opcode.TEXT, b"ok") + masked)
    assert await _batch(websocket) == ["ok"]
    with pytest.raises(ConnectionClosed):
        await _batch(websocket)
    assert websocket.protocol.close_sent is not None
    assert websocket.protocol.close_sent.code == 1002


async def test_reading_pauses_while_the_inbox_is_full(tunnel: Any) -> None:
    websocket, _ = tunnel
    websocket.data_received(_encode([b"m"] * 100))
    assert not websocket.transport.is_reading()
    assert len(await _batch(websocket)) == 100
    assert websocket.transport.is_reading()


async def test_a_lost_connection_ends_the_batches_after_the_last_message(tunnel: Any) -> None:
    websocket, _ = tunnel
    websocket.data_received(_encode(["last"]))
    websocket.transport.abort()
    await asyncio.sleep(0.05)
    assert await _batch(websocket) == ["last"]
    with pytest.raises(ConnectionClosed):
        await _batch(websocket)


async def test_messages_in_the_handshake_s_segment_come_first() -> None:
    """A server may send its first frame in the same segment as its 101: the library
    reads that one, and later frames are read past it, in order."""
    first_frames = _encode(["hello"])

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        key = next(
            line.split(b":", 1)[1].strip()
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"sec-websocket-key:")
        )
        writer.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Accept: "
            + accept_key(key.decode()).encode()
            + b"\r\n\r\n"
            + first_frames  # in the same write as the handshake
        )
        await writer.drain()
        await reader.read()  # until the client goes away
        writer.close()
        await writer.wait_closed()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        websocket = await connect(
            f"ws://127.0.0.1:{port}",
            create_connection=TunnelConnection,
            compression=None,
            ping_interval=None,
        )
        assert isinstance(websocket, TunnelConnection)
        websocket.data_received(_encode([b"second", "third"]))
        assert await _batch(websocket) == ["hello", b"second", "third"]
        assert websocket._fast is True
        websocket.transport.abort()
        await websocket.wait_closed()
