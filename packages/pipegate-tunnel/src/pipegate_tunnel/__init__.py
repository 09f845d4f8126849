"""PipeGate's asyncio tunnel shell, shared by the server and the client.

One asyncio layer over the sans-I/O core of :mod:`pipegate_protocol`, as websockets
keeps ``asyncio/`` beside its sans-I/O protocol: :class:`TunnelShell` (reader
dispatch, ordered writer, heartbeat, hello timeout, go-away and close) with a
:class:`StreamChannel` per stream, driven through a :class:`MessageTransport`; a
:class:`StreamObserver` hook; and a sans-I/O WebSocket frame scanner and builder.
See ``docs/architecture.md``.
"""

from ._channel import StreamChannel
from ._logs import JsonFormatter, utc_timestamp
from ._observer import StreamObserver, StreamObservers
from ._process import GC_YOUNG_THRESHOLD, tune_gc
from ._shell import CLOSE_TIMEOUT, HIGH_WATER, LOW_WATER, Heartbeat, TunnelShell
from ._transport import MessageTransport
from ._wsframes import (
    NEED_MORE,
    NOT_PLAIN,
    OP_BINARY,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    MaskFunction,
    MaskSource,
    PartialFrame,
    apply_mask,
    client_frame,
    scan_client_frame,
    scan_server_frame,
    server_frame,
    unmask,
)

__all__: list[str] = [
    "CLOSE_TIMEOUT",
    "GC_YOUNG_THRESHOLD",
    "HIGH_WATER",
    "LOW_WATER",
    "NEED_MORE",
    "NOT_PLAIN",
    "OP_BINARY",
    "OP_PING",
    "OP_PONG",
    "OP_TEXT",
    "Heartbeat",
    "JsonFormatter",
    "MaskFunction",
    "MaskSource",
    "MessageTransport",
    "PartialFrame",
    "StreamChannel",
    "StreamObserver",
    "StreamObservers",
    "TunnelShell",
    "apply_mask",
    "client_frame",
    "scan_client_frame",
    "scan_server_frame",
    "server_frame",
    "tune_gc",
    "unmask",
    "utc_timestamp",
]
