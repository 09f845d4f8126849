"""WebSocket framing on the tunnel's hot path, without a library's per-frame machinery.

A tunnel WebSocket carries a steady stream of small, whole data frames: for each small
request an open one way, a response head and a body frame the other. websockets'
sans-I/O parser spends about 3.7 µs on each (a generator step per field, a ``Frame``
object, an event list, then uvicorn's handlers); reading such a frame here costs about
0.7 µs. This module does only that common case, for both directions of RFC 6455, and
says so for anything else. It does no I/O and imports nothing but the standard library:

* :func:`scan_client_frame` reads one frame a client sent (masked, as RFC 6455
  section 5.3 requires of clients); :func:`unmask` takes its payload out.
* :func:`scan_server_frame` reads one frame a server sent (unmasked).
* :func:`server_frame` builds one final, unmasked server frame, as websockets does.
* :func:`client_frame` builds one final, masked client frame, with keys from
  :class:`MaskSource`.

A scanner takes a *plain* frame only: final, no RSV bits (no extension is negotiated on
a tunnel), masked the way its direction requires, with opcode text, binary, ping or pong,
within the size limit (125 bytes for a control frame). Anything else (a fragment, a
close, a frame masked the wrong way, an oversized frame) is :data:`NOT_PLAIN`, and the
caller hands the bytes from that frame on to its WebSocket library, which handles it or
fails the connection with the right close code. A scanner never raises on input bytes:
every byte string scans to a plain frame, :data:`NEED_MORE` or :data:`NOT_PLAIN`.

Masking is an XOR with a repeated 4-byte key, so the same function masks and unmasks.
:func:`apply_mask` here is the standard-library reference (an XOR of two big integers);
it is 6 times slower than websockets' C ``apply_mask`` on a 100-byte payload and 170 times on
256 KiB, so the server and the client pass the library's function in as ``mask`` (their
``_internals`` modules say so) and this package stays free of websockets.

Checking whether a library's parser may be passed by (it waits between frames) reads
that library's internals, so it lives in each package's ``_internals`` module, not here.
"""

from __future__ import annotations

import os
import struct
import sys
from collections.abc import Callable
from typing import Final

__all__ = [
    "NEED_MORE",
    "NOT_PLAIN",
    "OP_BINARY",
    "OP_PING",
    "OP_PONG",
    "OP_TEXT",
    "MaskFunction",
    "MaskSource",
    "apply_mask",
    "client_frame",
    "scan_client_frame",
    "scan_server_frame",
    "server_frame",
    "unmask",
]

OP_TEXT: Final = 0x1
OP_BINARY: Final = 0x2
OP_PING: Final = 0x9
OP_PONG: Final = 0xA

#: Scanner results that are not an opcode: the frame is not complete yet ...
NEED_MORE: Final = 0
#: ... or it is not a plain frame (the caller's library must read it).
NOT_PLAIN: Final = -1

#: ``mask(payload, key) -> masked payload``: websockets' ``apply_mask`` has this shape.
MaskFunction = Callable[[bytes | bytearray | memoryview, bytes], bytes]

_U16 = struct.Struct("!H")
_U64 = struct.Struct("!Q")
#: First bytes of plain frames: FIN set, RSV bits clear.
_PLAIN_FIRST = {0x80 | op: op for op in (OP_TEXT, OP_BINARY, OP_PING, OP_PONG)}
_MAX_CONTROL_PAYLOAD = 125


def apply_mask(data: bytes | bytearray | memoryview, key: bytes) -> bytes:
    """``data`` XOR the 4-byte ``key`` repeated (RFC 6455 section 5.3), both ways.

    The standard-library reference; see the module docstring for the fast one.
    Raises :class:`ValueError` for a key that is not 4 bytes long.
    """
    if len(key) != 4:
        raise ValueError(f"a masking key is 4 bytes, not {len(key)}")
    size = len(data)
    repeated = key * (size // 4) + key[: size % 4]
    masked = int.from_bytes(data, sys.byteorder) ^ int.from_bytes(repeated, sys.byteorder)
    return masked.to_bytes(size, sys.byteorder)


def scan_client_frame(data: bytes, pos: int, max_size: int) -> tuple[int, int, int]:
    """Read the masked (client) frame that starts at ``data[pos]``.

    Returns ``(opcode, payload_start, payload_end)`` for a plain frame; the 4-byte
    masking key sits just before ``payload_start`` (see :func:`unmask`). Returns
    ``(NEED_MORE, 0, size)`` when ``data`` ends before the frame does, where ``size``
    is the whole frame's length once known (else its header's), and
    ``(NOT_PLAIN, 0, 0)`` for any frame this module leaves to the library.
    """
    available = len(data) - pos
    if available < 2:
        return NEED_MORE, 0, 2
    opcode = _PLAIN_FIRST.get(data[pos], NOT_PLAIN)
    second = data[pos + 1]
    if opcode == NOT_PLAIN or not second & 0x80:
        return NOT_PLAIN, 0, 0
    length = second & 0x7F
    start = pos + 6
    if length == 126:
        start += 2
        if available < 4:
            return NEED_MORE, 0, 8
        length = _U16.unpack_from(data, pos + 2)[0]
    elif length == 127:
        start += 8
        if available < 10:
            return NEED_MORE, 0, 14
        length = _U64.unpack_from(data, pos + 2)[0]
    if length > max_size or (opcode >= OP_PING and length > _MAX_CONTROL_PAYLOAD):
        return NOT_PLAIN, 0, 0
    end = start + length
    if end > len(data):
        return NEED_MORE, 0, end - pos
    return opcode, start, end


def scan_server_frame(data: bytes, pos: int, max_size: int) -> tuple[int, int, int]:
    """Read the unmasked (server) frame that starts at ``data[pos]``.

    Returns ``(opcode, payload_start, payload_end)`` for a plain frame, else
    ``(NEED_MORE, 0, size)`` or ``(NOT_PLAIN, 0, 0)`` as :func:`scan_client_frame`.
    """
    available = len(data) - pos
    if available < 2:
        return NEED_MORE, 0, 2
    opcode = _PLAIN_FIRST.get(data[pos], NOT_PLAIN)
    second = data[pos + 1]
    if opcode == NOT_PLAIN or second & 0x80:
        return NOT_PLAIN, 0, 0
    length = second
    start = pos + 2
    if length == 126:
        start += 2
        if available < 4:
            return NEED_MORE, 0, 4
        length = _U16.unpack_from(data, pos + 2)[0]
    elif length == 127:
        start += 8
        if available < 10:
            return NEED_MORE, 0, 10
        length = _U64.unpack_from(data, pos + 2)[0]
    if length > max_size or (opcode >= OP_PING and length > _MAX_CONTROL_PAYLOAD):
        return NOT_PLAIN, 0, 0
    end = start + length
    if end > len(data):
        return NEED_MORE, 0, end - pos
    return opcode, start, end


def unmask(
    data: bytes, view: memoryview, start: int, end: int, mask: MaskFunction = apply_mask
) -> bytes:
    """The payload of a frame read by :func:`scan_client_frame`, unmasked.

    ``view`` is ``memoryview(data)``, made once per buffer by the caller.
    """
    return mask(view[start:end], data[start - 4 : start])


def server_frame(opcode: int, payload: bytes) -> bytes:
    """One final, unmasked server frame (RFC 6455 section 5.2)."""
    length = len(payload)
    if length < 126:
        return bytes((0x80 | opcode, length)) + payload
    if length < 65536:
        return struct.pack("!BBH", 0x80 | opcode, 126, length) + payload
    return struct.pack("!BBQ", 0x80 | opcode, 127, length) + payload


def client_frame(opcode: int, payload: bytes, key: bytes, mask: MaskFunction = apply_mask) -> bytes:
    """One final client frame (RFC 6455 section 5.2), masked with the 4-byte ``key``."""
    length = len(payload)
    if length < 126:
        header = struct.pack("!BB", 0x80 | opcode, 0x80 | length)
    elif length < 65536:
        header = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, length)
    else:
        header = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, length)
    return header + key + mask(payload, key)


class MaskSource:
    """Masking keys from the OS's random source, read 4 KiB at a time instead of one
    system call per frame (RFC 6455 asks for keys from a strong source of entropy;
    this is the source websockets uses)."""

    __slots__ = ("_buffer", "_offset")

    def __init__(self) -> None:
        self._buffer = b""
        self._offset = 0

    def take(self) -> bytes:
        """The next 4-byte key."""
        if self._offset >= len(self._buffer):
            self._buffer = os.urandom(4096)
            self._offset = 0
        key = self._buffer[self._offset : self._offset + 4]
        self._offset += 4
        return key


class PartialFrame:
    """The start of a plain frame that did not arrive whole, kept until it is.

    A reader that scanned ``NEED_MORE`` at ``pos`` with ``need`` bytes required keeps
    ``PartialFrame(data[pos:], need)`` and hands it each later piece: :meth:`add`
    returns None until ``need`` bytes are there, then all of them joined, to be
    scanned again from offset 0. Pieces are kept as they came (no copy per piece);
    one join happens when the frame is complete. The bytes held are bounded by the
    size the scanner asked for, itself bounded by the reader's frame size limit.
    """

    __slots__ = ("_need", "_pieces", "_size")

    def __init__(self, start: bytes, need: int) -> None:
        self._pieces = [start]
        self._size = len(start)
        self._need = need

    def add(self, data: bytes) -> bytes | None:
        self._pieces.append(data)
        self._size += len(data)
        if self._size < self._need:
            return None
        return b"".join(self._pieces)
