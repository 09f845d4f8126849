"""The direct line between a tunnel and our uvicorn WebSocket protocol (_direct)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import uvicorn
from pipegate_server._direct import DIRECT_EXTENSION, DirectWebSocket
from pipegate_server._http import ws_protocol_class
from uvicorn.server import ServerState
from websockets.frames import Frame, Opcode

HANDSHAKE = (
    b"GET /node HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


class FakeTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.written: list[bytes] = []
        self.reading = True
        self.closing = False

    def write(self, data: Any) -> None:
        self.written.append(bytes(data))

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 5000), "sockname": ("127.0.0.1", 8000)}.get(name, default)

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True


def _frame(opcode: Opcode, data: bytes) -> bytes:
    return Frame(opcode, data).serialize(mask=True, extensions=[])


class Harness:
    """Our protocol on a fake transport, with an app that accepts and waits."""

    def __init__(self) -> None:
        self.accepted = asyncio.Event()
        self.release = asyncio.Event()
        self.direct: DirectWebSocket | None = None
        self.transport = FakeTransport()

        async def app(scope: Any, receive: Any, send: Any) -> None:
            assert scope["type"] == "websocket"
            await receive()  # websocket.connect
            await send({"type": "websocket.accept"})
            self.direct = scope["extensions"][DIRECT_EXTENSION]
            self.accepted.set()
            await self.release.wait()

        config = uvicorn.Config(
            app, ws=ws_protocol_class(), ws_ping_interval=None, ws_ping_timeout=None
        )
        config.load()
        protocol_class: Any = config.ws_protocol_class
        self.protocol: Any = protocol_class(config=config, server_state=ServerState(), app_state={})
        self.protocol.connection_made(self.transport)

    async def open(self) -> DirectWebSocket:
        self.protocol.data_received(HANDSHAKE)
        await asyncio.wait_for(self.accepted.wait(), 5)
        assert self.direct is not None
        return self.direct


async def test_queued_messages_reach_the_sink_first_then_new_ones_directly() -> None:
    harness = Harness()
    direct = await harness.open()
    harness.protocol.data_received(_frame(Opcode.TEXT, b"one") + _frame(Opcode.BINARY, b"two"))
    got: list[str | bytes] = []
    direct.attach_sink(got.append)
    assert got == ["one", b"two"]  # what waited in the ASGI queue, in order
    harness.protocol.data_received(_frame(Opcode.TEXT, b"three"))
    assert got == ["one", b"two", "three"]  # at once, inside data_received
    assert harness.protocol.queue.empty()
    assert harness.transport.reading
    harness.release.set()


async def test_send_message_writes_frames_and_fails_once_the_peer_is_gone() -> None:
    harness = Harness()
    direct = await harness.open()
    before = len(harness.transport.written)
    assert direct.can_send_now()
    direct.send_message("hello")
    direct.send_message(b"\x00\x01")
    frames = harness.transport.written[before:]
    assert frames[0][:2] == b"\x81\x05"  # FIN + text, unmasked, 5 bytes
    assert frames[0][2:] == b"hello"
    assert frames[1] == b"\x82\x02\x00\x01"
    harness.protocol.connection_lost(None)
    with pytest.raises(OSError):
        direct.send_message("late")
    harness.release.set()


async def test_invalid_utf8_in_a_text_message_closes_with_1007() -> None:
    harness = Harness()
    direct = await harness.open()
    got: list[str | bytes] = []
    direct.attach_sink(got.append)
    before = len(harness.transport.written)
    harness.protocol.data_received(_frame(Opcode.TEXT, b"\xff\xfe"))
    assert got == []
    closes = [frame for frame in harness.transport.written[before:] if frame[:1] == b"\x88"]
    assert closes
    assert closes[0][2:4] == (1007).to_bytes(2, "big")
    harness.release.set()
