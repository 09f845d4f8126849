"""The sans-I/O WebSocket frame scanner and builder (pipegate_tunnel._wsframes),
checked against the websockets library's own framing, by example and by property."""

from __future__ import annotations

import itertools
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pipegate_tunnel import (
    NEED_MORE,
    NOT_PLAIN,
    OP_BINARY,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    MaskSource,
    apply_mask,
    client_frame,
    scan_client_frame,
    scan_server_frame,
    server_frame,
    unmask,
)
from websockets.frames import Frame, Opcode
from websockets.speedups import apply_mask as library_mask
from websockets.streams import StreamReader

SIZES = [0, 1, 125, 126, 65535, 65536, 300_000]
LIMIT = 1 << 20
DATA_OPS = [(Opcode.TEXT, OP_TEXT), (Opcode.BINARY, OP_BINARY)]
OPCODES = {Opcode.TEXT: OP_TEXT, Opcode.BINARY: OP_BINARY, Opcode.PING: OP_PING}
OPCODES[Opcode.PONG] = OP_PONG


def _client(opcode: Opcode, payload: bytes, *, fin: bool = True) -> bytes:
    return Frame(opcode, payload, fin=fin).serialize(mask=True, extensions=[])


def _server(opcode: Opcode, payload: bytes, *, fin: bool = True) -> bytes:
    return Frame(opcode, payload, fin=fin).serialize(mask=False, extensions=[])


def _payload(size: int) -> bytes:
    return bytes(range(256)) * (size // 256) + bytes(size % 256)


# ------------------------------------------------------------ client frames (masked)


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize(("opcode", "op"), DATA_OPS)
def test_a_whole_client_frame_is_read_and_unmasked(opcode: Opcode, op: int, size: int) -> None:
    payload = _payload(size)
    data = b"junk" + _client(opcode, payload) + b"next"
    kind, start, end = scan_client_frame(data, 4, LIMIT)
    assert kind == op
    assert unmask(data, memoryview(data), start, end) == payload
    assert unmask(data, memoryview(data), start, end, library_mask) == payload
    assert data[end:] == b"next"


@pytest.mark.parametrize("size", [0, 125, 126, 70000])
def test_a_cut_client_frame_asks_for_more_and_then_for_all_of_it(size: int) -> None:
    frame = _client(Opcode.BINARY, b"\x07" * size)
    header = len(frame) - size
    for cut in range(min(len(frame), header + 3)):
        kind, _, need = scan_client_frame(frame[:cut], 0, LIMIT)
        assert kind == NEED_MORE
        assert cut < need <= len(frame)
        if cut >= header:
            assert need == len(frame)  # once the length is known, the whole frame
    assert scan_client_frame(frame[:-1], 0, LIMIT)[::2] == (NEED_MORE, len(frame))


@pytest.mark.parametrize(("opcode", "op"), [(Opcode.PING, OP_PING), (Opcode.PONG, OP_PONG)])
def test_client_control_frames_up_to_125_bytes_are_plain(opcode: Opcode, op: int) -> None:
    frame = _client(opcode, b"p" * 125)
    kind, start, end = scan_client_frame(frame, 0, LIMIT)
    assert kind == op
    assert unmask(frame, memoryview(frame), start, end) == b"p" * 125


def _long_client_ping() -> bytes:
    # The library refuses to build it; a peer may still send it.
    mask = b"\x00\x00\x00\x00"
    return bytes([0x80 | 0x9, 0x80 | 126]) + (126).to_bytes(2, "big") + mask + b"p" * 126


@pytest.mark.parametrize(
    "frame",
    [
        _client(Opcode.TEXT, b"part", fin=False),
        _client(Opcode.CONT, b"rest"),
        _client(Opcode.CLOSE, (1000).to_bytes(2, "big")),
        Frame(Opcode.TEXT, b"unmasked").serialize(mask=False, extensions=[]),
        bytes([0x80 | 0x40 | 0x2]) + _client(Opcode.BINARY, b"rsv1")[1:],
        bytes([0x80 | 0x3]) + _client(Opcode.BINARY, b"reserved opcode")[1:],
        _client(Opcode.BINARY, b"\x00" * (LIMIT + 1)),
        _long_client_ping(),
    ],
    ids=[
        "fragment",
        "continuation",
        "close",
        "unmasked",
        "rsv1",
        "reserved-opcode",
        "over-limit",
        "long-ping",
    ],
)
def test_any_other_client_frame_is_left_to_the_library(frame: bytes) -> None:
    assert scan_client_frame(frame, 0, LIMIT)[0] == NOT_PLAIN


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize(("opcode", "op"), DATA_OPS)
def test_server_frames_are_the_library_s_frames(opcode: Opcode, op: int, size: int) -> None:
    payload = b"\xab" * size
    assert server_frame(op, payload) == Frame(opcode, payload).serialize(mask=False, extensions=[])


# ------------------------------------------------------------ server frames (unmasked)


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize(("opcode", "op"), DATA_OPS)
def test_a_whole_server_frame_is_read(opcode: Opcode, op: int, size: int) -> None:
    payload = _payload(size)
    data = b"junk" + _server(opcode, payload) + b"next"
    kind, start, end = scan_server_frame(data, 4, LIMIT)
    assert kind == op
    assert data[start:end] == payload
    assert data[end:] == b"next"


@pytest.mark.parametrize("size", [0, 125, 126, 70000])
def test_a_cut_server_frame_asks_for_more_and_then_for_all_of_it(size: int) -> None:
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
def test_server_control_frames_up_to_125_bytes_are_plain(opcode: Opcode, op: int) -> None:
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
def test_any_other_server_frame_is_left_to_the_library(frame: bytes) -> None:
    assert scan_server_frame(frame, 0, LIMIT)[0] == NOT_PLAIN


def test_client_frames_are_the_library_s_frames_with_the_same_key() -> None:
    key = MaskSource().take()
    for size in SIZES:
        payload = _payload(size)
        built = client_frame(OP_BINARY, payload, key, library_mask)
        # websockets draws its own key; compare everything but the key's bytes.
        parsed = _parse(built, mask=True)
        assert (parsed.opcode, parsed.data, parsed.fin) == (Opcode.BINARY, payload, True)
        theirs = _client(Opcode.BINARY, payload)
        header = len(theirs) - size - 4
        assert built[:header] == theirs[:header]
        assert built[header : header + 4] == key


def test_a_key_is_four_bytes_and_keys_differ() -> None:
    source = MaskSource()
    keys = [source.take() for _ in range(2000)]  # past one 4 KiB refill
    assert {len(key) for key in keys} == {4}
    assert len(set(keys)) > 1900
    with pytest.raises(ValueError, match="4 bytes"):
        apply_mask(b"data", b"abc")


# ------------------------------------------------------------ properties


def _parse(data: bytes, *, mask: bool) -> Frame:
    """One whole frame parsed by the library's own (generator-driven) parser."""
    reader = StreamReader()
    reader.feed_data(data)
    parser = Frame.parse(reader.read_exact, mask=mask, max_size=None, extensions=[])
    try:
        next(parser)
    except StopIteration as done:
        frame: Frame = done.value
        return frame
    raise AssertionError("the library wanted more bytes than one whole frame")


#: Lengths that cover the three length forms: 7-bit, 16-bit and 64-bit.
LENGTHS = st.one_of(st.integers(0, 125), st.integers(126, 65535), st.integers(65536, 70000))
PAYLOADS = LENGTHS.flatmap(lambda n: st.binary(min_size=n, max_size=n))
KEYS = st.binary(min_size=4, max_size=4)
DATA_OPCODES = st.sampled_from([OP_TEXT, OP_BINARY])
SCANNERS = st.sampled_from([scan_client_frame, scan_server_frame])


@settings(max_examples=300)
@given(
    data=st.binary(max_size=64), pos=st.integers(0, 8), max_size=st.integers(0, 200), scan=SCANNERS
)
def test_any_bytes_scan_to_a_frame_need_more_or_not_plain(
    data: bytes, pos: int, max_size: int, scan: Callable[[bytes, int, int], tuple[int, int, int]]
) -> None:
    pos = min(pos, len(data))
    kind, start, end = scan(data, pos, max_size)
    if kind == NEED_MORE:
        assert start == 0
        assert end > len(data) - pos  # asks for more than there is
    elif kind == NOT_PLAIN:
        assert (start, end) == (0, 0)
    else:
        assert kind in (OP_TEXT, OP_BINARY, OP_PING, OP_PONG)
        assert pos + 2 <= start <= end <= len(data)
        assert end - start <= max_size


@settings(max_examples=60, deadline=None)
@given(op=DATA_OPCODES, payload=PAYLOADS, key=KEYS)
def test_client_frames_round_trip_and_the_library_reads_them(
    op: int, payload: bytes, key: bytes
) -> None:
    for mask in (apply_mask, library_mask):
        frame = client_frame(op, payload, key, mask)
        kind, start, end = scan_client_frame(frame, 0, LIMIT)
        assert (kind, end) == (op, len(frame))
        assert unmask(frame, memoryview(frame), start, end, mask) == payload
        assert scan_server_frame(frame, 0, LIMIT)[0] == NOT_PLAIN  # masked: not a server's
        parsed = _parse(frame, mask=True)
        assert (int(parsed.opcode), parsed.data, parsed.fin) == (op, payload, True)


@settings(max_examples=60, deadline=None)
@given(op=DATA_OPCODES, payload=PAYLOADS)
def test_server_frames_round_trip_and_are_the_library_s_bytes(op: int, payload: bytes) -> None:
    frame = server_frame(op, payload)
    assert frame == Frame(Opcode(op), payload).serialize(mask=False, extensions=[])
    kind, start, end = scan_server_frame(frame, 0, LIMIT)
    assert (kind, frame[start:end], end) == (op, payload, len(frame))
    assert scan_client_frame(frame, 0, LIMIT)[0] == NOT_PLAIN  # unmasked: not a client's


@settings(max_examples=60, deadline=None)
@given(op=DATA_OPCODES, payload=PAYLOADS)
def test_frames_the_library_writes_scan_both_ways(op: int, payload: bytes) -> None:
    masked = _client(Opcode(op), payload)
    kind, start, end = scan_client_frame(masked, 0, LIMIT)
    assert (kind, unmask(masked, memoryview(masked), start, end)) == (op, payload)
    unmasked = _server(Opcode(op), payload)
    kind, start, end = scan_server_frame(unmasked, 0, LIMIT)
    assert (kind, unmasked[start:end]) == (op, payload)


@given(data=st.binary(max_size=300), key=KEYS)
def test_masking_is_an_involution_and_matches_the_library(data: bytes, key: bytes) -> None:
    masked = apply_mask(data, key)
    assert masked == library_mask(data, key)
    assert apply_mask(masked, key) == data
    assert library_mask(apply_mask(data, key), key) == data
    assert apply_mask(library_mask(data, key), key) == data


MESSAGES = st.lists(st.tuples(DATA_OPCODES, st.binary(max_size=300)), min_size=1, max_size=6)


def _scan_all(chunks: list[bytes], *, masked: bool) -> list[tuple[int, bytes]]:
    """Feed ``chunks`` as a socket would, holding a cut frame as the callers do."""
    scan = scan_client_frame if masked else scan_server_frame
    frames: list[tuple[int, bytes]] = []
    buffer = b""
    for chunk in chunks:
        buffer += chunk
        pos = 0
        while pos < len(buffer):
            kind, start, end = scan(buffer, pos, LIMIT)
            assert kind != NOT_PLAIN
            if kind == NEED_MORE:
                break
            payload = (
                unmask(buffer, memoryview(buffer), start, end) if masked else buffer[start:end]
            )
            frames.append((kind, payload))
            pos = end
        buffer = buffer[pos:]
    assert buffer == b""
    return frames


@settings(max_examples=150)
@given(messages=MESSAGES, cuts=st.lists(st.integers(0, 2000), max_size=4), masked=st.booleans())
def test_splitting_the_input_anywhere_gives_the_same_frames(
    messages: list[tuple[int, bytes]], cuts: list[int], masked: bool
) -> None:
    source = MaskSource()
    stream = b"".join(
        client_frame(op, payload, source.take()) if masked else server_frame(op, payload)
        for op, payload in messages
    )
    points = sorted({min(cut, len(stream)) for cut in cuts} | {0, len(stream)})
    chunks = [stream[a:b] for a, b in itertools.pairwise(points)]
    assert _scan_all(chunks, masked=masked) == messages
    assert _scan_all([stream], masked=masked) == messages


def test_a_partial_frame_is_held_until_whole_then_scans_as_one() -> None:
    """The readers' loop: scan, keep a PartialFrame on NEED_MORE, resume once whole."""
    from pipegate_tunnel import OP_BINARY, PartialFrame, scan_server_frame, server_frame

    payloads = [b"a" * 3, b"p" * 70_000, b"m" * 300]  # 7-bit, 64-bit, 16-bit lengths
    stream = b"".join(server_frame(OP_BINARY, payload) for payload in payloads)

    def read(pieces: list[bytes]) -> list[bytes]:
        held: PartialFrame | None = None
        out: list[bytes] = []
        for data in pieces:
            if held is not None:
                whole = held.add(data)
                if whole is None:
                    continue
                held, data = None, whole
            pos = 0
            while pos < len(data):
                opcode, start, end = scan_server_frame(data, pos, 1 << 20)
                if opcode == NEED_MORE:
                    held = PartialFrame(data[pos:], end)
                    break
                assert opcode == OP_BINARY
                out.append(data[start:end])
                pos = end
        assert held is None
        return out

    for size in (1, 2, 3, 7, 64, 1000, 4096, len(stream)):
        pieces = [stream[i : i + size] for i in range(0, len(stream), size)]
        assert read(pieces) == payloads
