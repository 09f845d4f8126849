"""Binary data frames and the one codec entry point for every message.

A binary WebSocket message is a data frame with a 5-byte header (rule FR-2)::

    0        1                               5
    +--------+-------------------------------+------------------
    | kind   | stream id (uint32, big endian)| payload ...
    +--------+-------------------------------+------------------

``kind`` is one byte: the low 7 bits select the frame type (0 body data, 1 WebSocket
text, 2 WebSocket binary) and the top bit is FIN: end of stream for body data, last
fragment of the message for WebSocket data. The top bit of the stream id is reserved
and must be zero. Text WebSocket messages hold JSON control messages.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import pydantic

from ._models import CONTROL_MESSAGE_ADAPTER, MAX_STREAM_ID, ControlMessage
from .errors import DecodeError, LocalProtocolError

__all__ = ["FRAME_HEADER_SIZE", "Data", "Message", "WebSocketData", "decode", "encode"]

FRAME_HEADER_SIZE = 5
_HEADER = struct.Struct(">BI")
_FIN = 0x80
_KIND_DATA = 0x00
_KIND_WS_TEXT = 0x01
_KIND_WS_BINARY = 0x02


@dataclass(frozen=True, slots=True)
class Data:
    """A piece of an HTTP body on a stream; ``end_stream`` closes that direction (ST-5)."""

    stream_id: int
    data: bytes
    end_stream: bool = False


@dataclass(frozen=True, slots=True)
class WebSocketData:
    """A fragment of a relayed WebSocket message (WS-2).

    A message is the concatenation of the payloads up to and including the fragment
    with ``fin`` set; ``text`` is the same on every fragment of one message and says
    whether the whole message is UTF-8 text.
    """

    stream_id: int
    data: bytes
    text: bool
    fin: bool = True


#: Anything that travels as one WebSocket message on a tunnel.
Message = ControlMessage | Data | WebSocketData


def encode(message: Message) -> str | bytes:
    """Encode a message for one WebSocket message: ``str`` means text, ``bytes`` binary.

    A data frame whose stream id is outside 1..2**31-1 raises
    :class:`~pipegate_protocol.errors.LocalProtocolError` (FR-7): no peer would accept it.
    """
    if isinstance(message, Data | WebSocketData) and not 1 <= message.stream_id <= MAX_STREAM_ID:
        raise LocalProtocolError(f"data frame with invalid stream id {message.stream_id}")
    if isinstance(message, Data):
        kind = _KIND_DATA | (_FIN if message.end_stream else 0)
        return _HEADER.pack(kind, message.stream_id) + message.data
    if isinstance(message, WebSocketData):
        kind = (_KIND_WS_TEXT if message.text else _KIND_WS_BINARY) | (_FIN if message.fin else 0)
        return _HEADER.pack(kind, message.stream_id) + message.data
    # The model's own serializer gives the same JSON as the union adapter at less than
    # half the cost: the adapter first works out which member of the union it has.
    return message.model_dump_json()


def decode(payload: str | bytes) -> Message:
    """Decode one WebSocket message.

    Text is a JSON control message, bytes are a data frame. Anything else, or anything
    malformed, raises :class:`~pipegate_protocol.errors.DecodeError` and nothing else
    (rule FR-6). JSON members must have exactly their schema's JSON type (FR-1).
    """
    if isinstance(payload, str):
        try:
            # Strict: every member has one JSON type (FR-1); "1" is not a stream id and
            # 1 is not a boolean, so peers cannot come to rely on lenient coercions.
            return CONTROL_MESSAGE_ADAPTER.validate_json(payload, strict=True)
        except pydantic.ValidationError as exc:
            raise DecodeError(f"malformed control message: {_first_error(exc)}") from None
        except (ValueError, RecursionError) as exc:  # pragma: no cover - pydantic wraps most
            raise DecodeError(f"malformed control message: {exc}") from None
    if not isinstance(payload, bytes | bytearray | memoryview):
        raise DecodeError(f"cannot decode a {type(payload).__name__}")
    if len(payload) < FRAME_HEADER_SIZE:
        raise DecodeError(f"binary frame of {len(payload)} bytes is shorter than its header")
    kind, stream_id = _HEADER.unpack_from(payload)
    if stream_id == 0 or stream_id > MAX_STREAM_ID:
        raise DecodeError(f"binary frame has invalid stream id {stream_id}")
    data = bytes(payload[FRAME_HEADER_SIZE:])
    fin = bool(kind & _FIN)
    frame_type = kind & ~_FIN
    if frame_type == _KIND_DATA:
        return Data(stream_id, data, fin)
    if frame_type == _KIND_WS_TEXT:
        return WebSocketData(stream_id, data, text=True, fin=fin)
    if frame_type == _KIND_WS_BINARY:
        return WebSocketData(stream_id, data, text=False, fin=fin)
    raise DecodeError(f"unknown binary frame kind 0x{kind:02x}")


def _first_error(exc: pydantic.ValidationError) -> str:
    errors = exc.errors(include_url=False, include_input=False)
    if not errors:  # pragma: no cover - pydantic always reports one
        return "invalid"
    first = errors[0]
    where = ".".join(str(part) for part in first["loc"]) or "message"
    return f"{where}: {first['msg']}"
