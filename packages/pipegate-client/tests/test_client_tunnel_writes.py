"""The tunnel WebSocket writes a head and its body in one system call, and holds
nothing back for later."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

import pytest
from pipegate_client._internals import TunnelConnection
from pipegate_client._settings import ClientSettings
from pipegate_client._tunnel import TunnelSession
from pipegate_tunnel import MaskSource, client_frame
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.frames import Frame, Opcode
from websockets.streams import StreamReader


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


@pytest.mark.parametrize("size", [0, 1, 125, 126, 65535, 65536, 300_000])
@pytest.mark.parametrize("opcode", [Opcode.TEXT, Opcode.BINARY])
def test_our_frames_parse_as_the_library_reads_them(size: int, opcode: Opcode) -> None:
    payload = bytes(index % 251 for index in range(size))
    masks = MaskSource()
    data = client_frame(opcode.value, payload, masks.take())
    reader = StreamReader()
    reader.feed_data(data)
    reader.feed_eof()
    parser = Frame.parse(reader.read_exact, mask=True)
    with pytest.raises(StopIteration) as parsed:
        next(parser)
    frame = parsed.value.value
    assert frame.opcode is opcode
    assert frame.fin
    assert frame.data == payload
    assert reader.at_eof()


def test_masking_keys_differ_and_cross_buffer_refills() -> None:
    masks = MaskSource()
    keys = [masks.take() for _ in range(2000)]  # two 4 KiB refills
    assert all(len(key) == 4 for key in keys)
    assert len(set(keys)) > 1900  # random 32-bit keys: collisions are rare


class _StubWebSocket:
    """Records what a session sends; ``send_now`` refuses while ``paused``, and
    ``send_many`` then waits for ``resumed``, like a backed-up socket."""

    def __init__(self) -> None:
        self.paused = False
        self.resumed = asyncio.Event()
        self.sent: list[list[str | bytes]] = []

    def send_now(self, messages: list[str | bytes]) -> bool:
        if self.paused:
            return False
        self.sent.append(list(messages))
        return True

    async def send_many(self, messages: list[str | bytes]) -> None:
        if self.paused:
            await self.resumed.wait()
        self.sent.append(list(messages))


async def test_flush_keeps_order_while_a_send_waits_for_the_socket() -> None:
    stub = _StubWebSocket()
    session = TunnelSession(
        stub,  # type: ignore[arg-type]
        ClientSettings(server_url="ws://127.0.0.1:1/node", client_token="t"),
        None,  # type: ignore[arg-type]
        on_established=lambda hello: None,
    )
    session.conn.data_to_send()  # our hello: not part of this test
    pending: list[str | bytes] = []

    def take() -> list[str | bytes]:
        out = list(pending)
        pending.clear()
        return out

    session.conn.data_to_send = take  # type: ignore[method-assign]
    writer = asyncio.create_task(session._write_loop())
    stub.paused = True
    pending[:] = ["a"]
    session.flush()  # refused by the socket: the writer takes it and waits
    await asyncio.sleep(0)
    stub.paused = False  # writable again, but the writer has not sent yet
    pending[:] = ["b"]
    session.flush()
    await asyncio.sleep(0)
    assert stub.sent == []  # "b" must not overtake "a"
    stub.resumed.set()
    for _ in range(10):
        await asyncio.sleep(0)
    assert stub.sent == [["a"], ["b"]]
    pending[:] = ["c", b"d"]
    session.flush()  # nothing in progress: written at once, by the caller
    assert stub.sent == [["a"], ["b"], ["c", b"d"]]
    writer.cancel()


async def test_send_now_writes_nothing_while_the_socket_is_backed_up() -> None:
    async with serve(_echo, "127.0.0.1", 0, compression=None) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        async with connect(
            f"ws://127.0.0.1:{port}", create_connection=TunnelConnection, compression=None
        ) as websocket:
            assert isinstance(websocket, TunnelConnection)
            websocket.pause_writing()
            assert not websocket.send_now(["held"])
            sending = asyncio.create_task(websocket.send_many(["later"]))
            await asyncio.sleep(0.01)
            assert not sending.done()  # the library's path waits for the socket
            websocket.resume_writing()
            await asyncio.wait_for(sending, 5)
            assert await asyncio.wait_for(websocket.recv(), 5) == "later"
