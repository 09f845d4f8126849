"""The direct line between a tunnel and our uvicorn WebSocket protocol (_direct)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import uvicorn
from pipegate_server._direct import DIRECT_EXTENSION, DirectWebSocket
from pipegate_server._internals import ws_protocol_class
from uvicorn.server import ServerState
from websockets.frames import Frame, Opcode
from websockets.speedups import apply_mask

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

    def __init__(self, max_size: int = 16 * 1024 * 1024) -> None:
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
            app,
            ws=ws_protocol_class(),
            ws_ping_interval=None,
            ws_ping_timeout=None,
            ws_max_size=max_size,
            ws_per_message_deflate=False,
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


# ---------------------------------------------------------------- reading frames itself


def _stream() -> tuple[bytes, list[str | bytes]]:
    """Client frames of every length form, with what the sink must get from them."""
    messages: list[str | bytes] = [
        "",
        "a",
        b"",
        b"\x00" * 125,
        "é" * 63,  # 126 bytes of UTF-8: the 16-bit length form
        bytes(range(256)) * 256,  # 65536 bytes: the 64-bit length form
        '{"type":"ping","id":1}',
    ]
    data = b"".join(
        _frame(Opcode.TEXT, m.encode()) if isinstance(m, str) else _frame(Opcode.BINARY, m)
        for m in messages
    )
    return data, messages


@pytest.mark.parametrize("piece", [1, 2, 3, 7, 64, 1000, 1 << 20])
async def test_frames_split_anywhere_arrive_whole_and_in_order(piece: int) -> None:
    harness = Harness()
    direct = await harness.open()
    got: list[str | bytes] = []
    direct.attach_sink(got.append)
    data, messages = _stream()
    for offset in range(0, len(data), piece):
        harness.protocol.data_received(data[offset : offset + piece])
    assert got == messages
    assert harness.protocol._fast is True  # all of it was read past the library
    harness.release.set()


async def test_messages_before_the_sink_wait_in_the_queue_in_order() -> None:
    harness = Harness()
    direct = await harness.open()
    data, messages = _stream()
    harness.protocol.data_received(data)
    got: list[str | bytes] = []
    direct.attach_sink(got.append)
    assert got == messages
    harness.release.set()


async def test_a_fragmented_message_hands_the_rest_to_the_library() -> None:
    harness = Harness()
    direct = await harness.open()
    got: list[str | bytes] = []
    direct.attach_sink(got.append)
    first = Frame(Opcode.TEXT, b"hel", fin=False).serialize(mask=True, extensions=[])
    rest = Frame(Opcode.CONT, b"lo").serialize(mask=True, extensions=[])
    harness.protocol.data_received(_frame(Opcode.BINARY, b"before") + first)
    harness.protocol.data_received(rest + _frame(Opcode.TEXT, b"after"))
    assert got == [b"before", "hello", "after"]
    assert harness.protocol._fast is False  # the library reads from then on
    harness.release.set()


async def test_a_ping_is_answered_and_a_pong_ignored() -> None:
    harness = Harness()
    direct = await harness.open()
    got: list[str | bytes] = []
    direct.attach_sink(got.append)
    before = len(harness.transport.written)
    harness.protocol.data_received(
        _frame(Opcode.PING, b"abc") + _frame(Opcode.PONG, b"x") + _frame(Opcode.TEXT, b"t")
    )
    assert harness.transport.written[before:] == [b"\x8a\x03abc"]  # the pong, unmasked
    assert got == ["t"]
    assert harness.protocol._fast is True
    harness.release.set()


async def test_a_close_frame_reaches_the_library_and_the_app() -> None:
    harness = Harness()
    direct = await harness.open()
    got: list[str | bytes] = []
    direct.attach_sink(got.append)
    close = Frame(Opcode.CLOSE, (1000).to_bytes(2, "big") + b"bye").serialize(
        mask=True, extensions=[]
    )
    harness.protocol.data_received(_frame(Opcode.TEXT, b"last") + close)
    assert got == ["last"]
    event = await asyncio.wait_for(harness.protocol.queue.get(), 5)
    assert event["type"] == "websocket.disconnect"
    assert event["code"] == 1000
    harness.release.set()


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        (Frame(Opcode.TEXT, b"unmasked").serialize(mask=False, extensions=[]), 1002),
        (bytes([0x80 | 0x40 | 0x1]) + _frame(Opcode.TEXT, b"x")[1:], 1002),  # RSV1 set
        (Frame(Opcode.BINARY, b"\x00" * 70000).serialize(mask=True, extensions=[]), 1009),
    ],
    ids=["unmasked", "rsv1", "too-big"],
)
async def test_bad_frames_close_with_the_library_code(frame: bytes, code: int) -> None:
    harness = Harness(max_size=65536)
    direct = await harness.open()
    got: list[str | bytes] = []
    direct.attach_sink(got.append)
    before = len(harness.transport.written)
    harness.protocol.data_received(_frame(Opcode.TEXT, b"ok") + frame)
    assert got == ["ok"]
    closes = [f for f in harness.transport.written[before:] if f[:1] == b"\x88"]
    assert closes
    assert closes[0][2:4] == code.to_bytes(2, "big")
    assert harness.transport.closing
    harness.release.set()


async def test_frames_after_a_sent_close_are_left_to_the_library() -> None:
    harness = Harness()
    direct = await harness.open()
    got: list[str | bytes] = []

    def sink(message: str | bytes) -> None:
        got.append(message)
        harness.protocol.conn.send_close(1000)
        harness.protocol.close_sent = True

    direct.attach_sink(sink)
    harness.protocol.data_received(_frame(Opcode.TEXT, b"one") + _frame(Opcode.TEXT, b"two"))
    assert got == ["one"]  # "two" came after the close: dropped, as uvicorn does
    harness.release.set()


async def test_a_frame_the_library_began_stays_with_the_library() -> None:
    harness = Harness()
    harness.protocol.data_received(HANDSHAKE)
    # A masking key that reads as the start of a plain frame (binary, masked, empty),
    # so that reading from the middle of this frame would deliver a wrong message.
    mask = b"\x82\x80\x00\x00"
    frame = b"\x81\xfe" + (300).to_bytes(2, "big") + mask + apply_mask(b"x" * 300, mask)
    harness.protocol.data_received(frame[:4])  # before the app accepted: the library's
    await asyncio.wait_for(harness.accepted.wait(), 5)
    assert harness.direct is not None
    got: list[str | bytes] = []
    harness.direct.attach_sink(got.append)
    harness.protocol.data_received(frame[4:] + _frame(Opcode.TEXT, b"next"))
    assert got == ["x" * 300, "next"]
    assert harness.protocol._fast is False
    harness.release.set()
