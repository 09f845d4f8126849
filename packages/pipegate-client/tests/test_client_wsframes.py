"""Reading server frames on the hot path (_wsframes), checked against the websockets
library's own framing."""

from __future__ import annotations

import pytest
from pipegate_client._wsframes import (
    NEED_MORE,
    NOT_PLAIN,
    OP_BINARY,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    scan_server_frame,
)
from websockets.frames import Frame, Opcode

SIZES = [0, 1, 125, 126, 65535, 65536, 300_000]
LIMIT = 1 << 20


def _server(opcode: Opcode, payload: bytes, *, fin: bool = True) -> bytes:
    return Frame(opcode, payload, fin=fin).serialize(mask=False, extensions=[])


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize(("opcode", "op"), [(Opcode.TEXT, OP_TEXT), (Opcode.BINARY, OP_BINARY)])
def test_a_whole_data_frame_is_read(opcode: Opcode, op: int, size: int) -> None:
    payload = bytes(range(256)) * (size // 256) + bytes(size % 256)
    data = b"junk" + _server(opcode, payload) + b"next"
    kind, start, end = scan_server_frame(data, 4, LIMIT)
    assert kind == op
    assert data[start:end] == payload
    assert data[end:] == b"next"


@pytest.mark.parametrize("size", [0, 125, 126, 70000])
def test_a_cut_frame_asks_for_more_and_then_for_all_of_it(size: int) -> None:
    frame = _server(Opcode.BINARY, b"\x07" * size)
    header = len(frame) - size
    for cut in range(min(len(frame), header + 3)):
        kind, _, need = scan_server_frame(frame[:cut], 0, LIMIT)
        assert kind == NEED_MORE
        assert cut < need <= len(frame)
        if cut >= header:
            assert need == len(frame)  # once the length is known, the whole frame
    assert scan_server_frame(frame[:-1], 0, LIMIT)[::2] == (NEED_MORE, len(frame))


@pytest.mark.parametrize(("opcode", "op"), [(Opcode.PING, OP_PING), (Opcode.PONG, OP_PONG)])
def test_control_frames_up_to_125_bytes_are_plain(opcode: Opcode, op: int) -> None:
    frame = _server(opcode, b"p" * 125)
    kind, start, end = scan_server_frame(frame, 0, LIMIT)
    assert kind == op
    assert frame[start:end] == b"p" * 125


@pytest.mark.parametrize(
    "frame",
    [
        _server(Opcode.TEXT, b"part", fin=False),
        _server(Opcode.CONT, b"rest"),
        _server(Opcode.CLOSE, (1000).to_bytes(2, "big")),
        Frame(Opcode.TEXT, b"masked").serialize(mask=True, extensions=[]),
        bytes([0x80 | 0x40 | 0x2]) + _server(Opcode.BINARY, b"rsv1")[1:],
        bytes([0x80 | 0x3]) + _server(Opcode.BINARY, b"reserved opcode")[1:],
        _server(Opcode.BINARY, b"\x00" * (LIMIT + 1)),
        bytes([0x80 | 0x9, 126]) + (126).to_bytes(2, "big") + b"p" * 126,  # a long ping
    ],
    ids=[
        "fragment",
        "continuation",
        "close",
        "masked",
        "rsv1",
        "reserved-opcode",
        "over-limit",
        "long-ping",
    ],
)
def test_anything_else_is_left_to_the_library(frame: bytes) -> None:
    assert scan_server_frame(frame, 0, LIMIT)[0] == NOT_PLAIN
