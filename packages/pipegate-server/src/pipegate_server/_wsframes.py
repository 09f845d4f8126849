"""WebSocket framing on the tunnel's hot path, without the library's per-frame machinery.

A tunnel WebSocket carries a steady stream of small, whole data frames: an open one
way, a response head and a body frame the other, for each small request. websockets'
sans-I/O parser spends about 3.7 µs on each (a generator step per field, a ``Frame``
object, an event list, then uvicorn's handlers); reading such a frame here costs
about 0.7 µs. This module does only the common case and says so for anything else:

* :func:`scan_client_frame` reads one client frame from a byte string. It takes a
  *plain* frame: final, no RSV bits (no extension is negotiated on a tunnel), masked
  as RFC 6455 requires of clients, with opcode text, binary, ping or pong, and within
  the size limit. Anything else (a fragment, a close, an unmasked or oversized frame)
  is :data:`NOT_PLAIN`, and the caller hands the bytes from that frame on to the
  library, which handles it or closes the connection with the right code.
* :func:`server_frame` builds one final, unmasked server frame, as the library does.
* :func:`library_at_frame_boundary` says when the library's parser may be passed by.

``pipegate_client._wsframes`` is this module's twin for the other direction (unmasked
server frames, masked client frames). The two packages are released independently
and the protocol package stays free of websockets, so each keeps its own copy: a fix
to the framing or to the boundary check belongs in both.
"""

from __future__ import annotations

import struct
from typing import Any, Final

try:  # the library's C extension, as its own framing uses
    from websockets.speedups import apply_mask
except ImportError:  # pragma: no cover - a pure-Python build of websockets
    from websockets.utils import apply_mask

__all__ = [
    "NEED_MORE",
    "NOT_PLAIN",
    "OP_BINARY",
    "OP_PING",
    "OP_PONG",
    "OP_TEXT",
    "library_at_frame_boundary",
    "scan_client_frame",
    "server_frame",
    "unmask",
]

OP_TEXT: Final = 0x1
OP_BINARY: Final = 0x2
OP_PING: Final = 0x9
OP_PONG: Final = 0xA

#: :func:`scan_client_frame` results that are not an opcode.
NEED_MORE: Final = 0
NOT_PLAIN: Final = -1

_U16 = struct.Struct("!H")
_U64 = struct.Struct("!Q")
#: First bytes of plain frames: FIN set, RSV bits clear.
_PLAIN_FIRST = {0x80 | op: op for op in (OP_TEXT, OP_BINARY, OP_PING, OP_PONG)}
_MAX_CONTROL_PAYLOAD = 125


def scan_client_frame(data: bytes, pos: int, max_size: int) -> tuple[int, int, int]:
    """Read the client frame that starts at ``data[pos]``.

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


def unmask(data: bytes, view: memoryview, start: int, end: int) -> bytes:
    """The payload of a frame read by :func:`scan_client_frame`, unmasked."""
    return apply_mask(view[start:end], data[start - 4 : start])


def server_frame(opcode: int, payload: bytes) -> bytes:
    """One final, unmasked server frame (RFC 6455 section 5.2)."""
    length = len(payload)
    if length < 126:
        return bytes((0x80 | opcode, length)) + payload
    if length < 65536:
        return struct.pack("!BBH", 0x80 | opcode, 126, length) + payload
    return struct.pack("!BBQ", 0x80 | opcode, 127, length) + payload


def library_at_frame_boundary(conn: Any) -> bool:
    """True when websockets' parser has nothing buffered and waits for the first byte
    of a frame, with no message in progress and no extension: from there on, whole
    frames can be read past it, and any rest handed back to it at a frame boundary.

    An empty buffer alone does not say it: the parser may have taken a frame's header
    and wait for its payload. The innermost generator it waits in tells: ``at_eof``
    between frames, ``read_exact`` within one. On a websockets without these
    attributes the answer is False, and the library reads every frame.
    """
    try:
        if conn.extensions or conn.current_size is not None or conn.reader.buffer:
            return False
        if conn.max_fragment_size is not None:
            return False
        waiting = conn.parser
        while waiting.gi_yieldfrom is not None:
            waiting = waiting.gi_yieldfrom
        return bool(waiting.gi_code.co_name == "at_eof")
    except AttributeError:
        return False
