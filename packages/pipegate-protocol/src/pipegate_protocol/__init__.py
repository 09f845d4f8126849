"""PipeGate wire protocol, version 1: models, frame codec and a sans-I/O connection.

This package does no I/O. The server and client packages, and third-party
implementations, wrap :class:`Connection` in their own networking code. Everything
importable from here is public and covered by semantic versioning of this package;
the *protocol* version is separate (:class:`ProtocolVersion`).
"""

from ._connection import CAPABILITY_WEBSOCKET, Connection, ConnectionState
from ._frames import FRAME_HEADER_SIZE, Data, Message, WebSocketData, decode, encode
from ._handshake import (
    CLIENT_TOKEN_HEADER,
    CONNECTION_ID_PATTERN,
    HOP_BY_HOP_HEADERS,
    RESERVED_PREFIX,
    connection_id_from_url,
    extract_client_token,
    is_valid_connection_id,
    public_url_for,
    strip_hop_by_hop,
)
from ._models import (
    MAX_STREAM_ID,
    MAX_WINDOW,
    ControlMessage,
    GoAway,
    GoAwayReason,
    Header,
    Hello,
    Limits,
    Open,
    Ping,
    Pong,
    Reset,
    ResetCode,
    Response,
    Role,
    StreamKind,
    WebSocketClose,
    WindowUpdate,
)
from ._schema import protocol_json_schema
from ._versions import KNOWN_VERSIONS, ProtocolVersion, negotiate_version
from .errors import (
    CloseCode,
    DecodeError,
    FlowControlError,
    FrameTooLargeError,
    LocalProtocolError,
    ProtocolError,
    RemoteProtocolError,
    StreamLimitError,
    StreamStateError,
    VersionMismatchError,
)

__all__ = [
    "CAPABILITY_WEBSOCKET",
    "CLIENT_TOKEN_HEADER",
    "CONNECTION_ID_PATTERN",
    "FRAME_HEADER_SIZE",
    "HOP_BY_HOP_HEADERS",
    "KNOWN_VERSIONS",
    "MAX_STREAM_ID",
    "MAX_WINDOW",
    "RESERVED_PREFIX",
    "CloseCode",
    "Connection",
    "ConnectionState",
    "ControlMessage",
    "Data",
    "DecodeError",
    "FlowControlError",
    "FrameTooLargeError",
    "GoAway",
    "GoAwayReason",
    "Header",
    "Hello",
    "Limits",
    "LocalProtocolError",
    "Message",
    "Open",
    "Ping",
    "Pong",
    "ProtocolError",
    "ProtocolVersion",
    "RemoteProtocolError",
    "Reset",
    "ResetCode",
    "Response",
    "Role",
    "StreamKind",
    "StreamLimitError",
    "StreamStateError",
    "VersionMismatchError",
    "WebSocketClose",
    "WebSocketData",
    "WindowUpdate",
    "connection_id_from_url",
    "decode",
    "encode",
    "extract_client_token",
    "is_valid_connection_id",
    "negotiate_version",
    "protocol_json_schema",
    "public_url_for",
    "strip_hop_by_hop",
]
