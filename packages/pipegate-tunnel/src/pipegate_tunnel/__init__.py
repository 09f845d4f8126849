"""PipeGate's asyncio tunnel shell, shared by the server and the client."""

from ._wsframes import (
    NEED_MORE,
    NOT_PLAIN,
    OP_BINARY,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    MaskFunction,
    MaskSource,
    apply_mask,
    client_frame,
    scan_client_frame,
    scan_server_frame,
    server_frame,
    unmask,
)

__all__: list[str] = [
    # WebSocket frames, sans-I/O (_wsframes)
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
