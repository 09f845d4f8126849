"""WebSocket framing on the tunnel's hot path, without the library's per-frame machinery.

A tunnel carries a steady stream of small, whole frames: for each small request an
open from the server, a response head and a body frame back. websockets builds and
parses each one with a ``Frame`` object, generator steps and an event list; this
module does only the common case, the way the library would, and says so for
anything else:

* :func:`client_frame` builds one final, masked client frame, with keys from
  :class:`MaskSource`.
* :func:`scan_server_frame` reads one server frame from a byte string. It takes a
  *plain* frame: final, no RSV bits (no extension is negotiated on a tunnel),
  unmasked as RFC 6455 requires of servers, with opcode text, binary, ping or pong,
  and within the size limit. Anything else (a fragment, a close, a masked or
  oversized frame) is :data:`NOT_PLAIN`, and the caller hands the bytes from that
  frame on to the library, which handles it or fails the connection with the right
  close code.
* :func:`library_at_frame_boundary` says when the library's parser may be passed by.

``pipegate_server._wsframes`` is this module's twin for the other direction. The two
packages are released independently and the protocol package stays free of
websockets, so each keeps its own copy: a fix to the framing or to the boundary check
belongs in both.
"""

from __future__ import annotations

import os
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
    "MaskSource",
    "client_frame",
    "library_at_frame_boundary",
    "scan_server_frame",
]

OP_TEXT: Final = 0x1
OP_BINARY: Final = 0x2
OP_PING: Final = 0x9
OP_PONG: Final = 0xA

#: :func:`scan_server_frame` results that are not an opcode.
NEED_MORE: Final = 0
NOT_PLAIN: Final = -1

_U16 = struct.Struct("!H")
_U64 = struct.Struct("!Q")
#: First bytes of plain frames: FIN set, RSV bits clear.
_PLAIN_FIRST = {0x80 | op: op for op in (OP_TEXT, OP_BINARY, OP_PING, OP_PONG)}
_MAX_CONTROL_PAYLOAD = 125


def client_frame(opcode: int, payload: bytes, mask: bytes) -> bytes:
    """One final, masked client frame (RFC 6455 section 5.2), as websockets builds it."""
    length = len(payload)
    if length < 126:
        header = struct.pack("!BB", 0x80 | opcode, 0x80 | length)
    elif length < 65536:
        header = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, length)
    else:
        header = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, length)
    return header + mask + apply_mask(payload, mask)


class MaskSource:
    """Masking keys from the OS's random source, read 4 KiB at a time instead of one
    system call per frame (RFC 6455 asks for keys from a strong source of entropy;
    this is the same source the library uses)."""

    __slots__ = ("_buffer", "_offset")

    def __init__(self) -> None:
        self._buffer = b""
        self._offset = 0

    def take(self) -> bytes:
        if self._offset >= len(self._buffer):
            self._buffer = os.urandom(4096)
            self._offset = 0
        key = self._buffer[self._offset : self._offset + 4]
        self._offset += 4
        return key


def scan_server_frame(data: bytes, pos: int, max_size: int) -> tuple[int, int, int]:
    """Read the server frame that starts at ``data[pos]``.

    Returns ``(opcode, payload_start, payload_end)`` for a plain frame,
    ``(NEED_MORE, 0, size)`` when ``data`` ends before the frame does, where ``size``
    is the whole frame's length once known (else its header's), and
    ``(NOT_PLAIN, 0, 0)`` for any frame this module leaves to the library.
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


def library_at_frame_boundary(protocol: Any) -> bool:
    """True when websockets' sans-I/O parser has nothing buffered and waits for the
    first byte of a frame, with no message in progress and no extension: from there
    on, whole frames can be read past it, and any rest handed back to it at a frame
    boundary.

    An empty buffer alone does not say it: the parser may have taken a frame's header
    and wait for its payload. The innermost generator it waits in tells: ``at_eof``
    between frames, ``read_exact`` within one. On a websockets without these
    attributes the answer is False, and the library reads every frame.
    """
    try:
        if protocol.extensions or protocol.current_size is not None or protocol.reader.buffer:
            return False
        if protocol.max_fragment_size is not None:
            return False
        waiting = protocol.parser
        while waiting.gi_yieldfrom is not None:
            waiting = waiting.gi_yieldfrom
        return bool(waiting.gi_code.co_name == "at_eof")
    except AttributeError:
        return False
