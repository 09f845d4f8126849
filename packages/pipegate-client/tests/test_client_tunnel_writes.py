"""The tunnel WebSocket writes a head and its body in one system call, and holds
nothing back for later."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

from pipegate_client._tunnel import TunnelConnection
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve


async def _echo(websocket: ServerConnection) -> None:
    async for message in websocket:
        await websocket.send(message)


async def test_send_many_is_one_write_and_single_sends_are_not_delayed() -> None:
    async with serve(_echo, "127.0.0.1", 0, compression=None) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        async with connect(
            f"ws://127.0.0.1:{port}",
            create_connection=TunnelConnection,
            compression=None,
            ping_interval=None,
        ) as websocket:
            assert isinstance(websocket, TunnelConnection)
            transport = websocket.transport
            writes: list[int] = []
            write = transport.write

            def counting_write(data: bytes | bytearray | memoryview) -> None:
                writes.append(1)
                write(data)

            def counting_writelines(frames: Iterable[bytes | bytearray | memoryview]) -> None:
                pieces = list(frames)
                writes.append(len(pieces))
                write(b"".join(pieces))  # not writelines: on asyncio it calls write()

            transport.write = counting_write  # type: ignore[method-assign]
            transport.writelines = counting_writelines  # type: ignore[method-assign,assignment]
            await websocket.send_many(["head-1", b"body-1"])
            assert writes == [2]  # two frames, one writev, already written
            await websocket.send("head-2")
            assert writes == [2, 1]
            await websocket.send(b"body-2")
            assert writes == [2, 1, 1]
            received = [await asyncio.wait_for(websocket.recv(), 5) for _ in range(4)]
            assert received == ["head-1", b"body-1", "head-2", b"body-2"]


async def test_close_sends_what_was_queued_first() -> None:
    async with serve(_echo, "127.0.0.1", 0, compression=None) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        websocket = await connect(
            f"ws://127.0.0.1:{port}", create_connection=TunnelConnection, compression=None
        )
        assert isinstance(websocket, TunnelConnection)
        await websocket.send("last words")
        assert await asyncio.wait_for(websocket.recv(), 5) == "last words"
        await asyncio.wait_for(websocket.close(1000, "bye"), 5)
        assert websocket.close_code == 1000
