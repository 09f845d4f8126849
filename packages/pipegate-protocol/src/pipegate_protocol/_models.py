"""The control messages of the protocol, as frozen pydantic models.

Control messages travel as JSON in WebSocket *text* messages; the ``type`` field
selects the model (one discriminated union, :data:`ControlMessage`). Body bytes never
appear here: they travel in binary data frames (see :mod:`pipegate_protocol._frames`).

Bytes that HTTP allows in paths, queries and header values are carried as JSON strings
in which each character is one byte (ISO-8859-1, code points U+0000-U+00FF), so every
byte a caller sent survives the trip unchanged (rule HD-2).
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, TypeAdapter

from ._versions import ProtocolVersion

__all__ = [
    "MAX_CLOSE_REASON_BYTES",
    "MAX_SAFE_PING_ID",
    "MAX_STREAM_ID",
    "MAX_WINDOW",
    "AccessPolicy",
    "ControlMessage",
    "GoAway",
    "GoAwayReason",
    "Header",
    "Hello",
    "Limits",
    "Open",
    "Ping",
    "Pong",
    "Reset",
    "ResetCode",
    "Response",
    "Role",
    "StreamKind",
    "WebSocketClose",
    "WindowUpdate",
]

#: Stream ids and window sizes are unsigned 31-bit integers (ST-1, FC-5).
MAX_STREAM_ID = 2**31 - 1
MAX_WINDOW = 2**31 - 1

_TOKEN = r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$"
_FIELD_VALUE = r"^[\t\x20-\x7e\x80-\xff]*$"
_PATH = r"^/[\x21-\x7e\x80-\xff]*$"
_QUERY = r"^[\x21-\x7e\x80-\xff]*$"

StreamId = Annotated[int, Field(ge=1, le=MAX_STREAM_ID)]
HeaderName = Annotated[str, Field(pattern=_TOKEN, min_length=1)]
HeaderValue = Annotated[str, Field(pattern=_FIELD_VALUE)]
#: One header field as a ``[name, value]`` pair; a list of them keeps order and duplicates.
Header = tuple[HeaderName, HeaderValue]

#: Ping ids above this are exact in JSON only for parsers that keep big integers (FR-8).
MAX_SAFE_PING_ID = 2**53 - 1
#: A WebSocket close reason fits a close frame: 123 bytes of UTF-8 (WS-4, ER-3).
MAX_CLOSE_REASON_BYTES = 123


def _close_reason_fits(reason: str) -> str:
    if len(reason.encode("utf-8", errors="surrogatepass")) > MAX_CLOSE_REASON_BYTES:
        raise ValueError(f"a close reason is at most {MAX_CLOSE_REASON_BYTES} bytes of UTF-8")
    return reason


_INTEGER_NOTE = " An integer without fraction or exponent (FR-8): 1.0 and 1e2 are invalid."


class _Message(BaseModel):
    # Unknown fields are ignored so that a later minor revision may add optional
    # fields without breaking v1 peers (rule VE-2).
    model_config = ConfigDict(frozen=True, extra="ignore")


class Role(StrEnum):
    """Which end of a tunnel a connection is."""

    SERVER = "server"
    CLIENT = "client"


class StreamKind(StrEnum):
    """What a stream carries: an HTTP exchange or a relayed WebSocket (ST-2)."""

    HTTP = "http"
    WEBSOCKET = "websocket"


class ResetCode(StrEnum):
    """Why a stream was abandoned (rule ST-7)."""

    CALLER_GONE = "caller_gone"
    UPSTREAM_FAILED = "upstream_failed"
    TIMEOUT = "timeout"
    TOO_LARGE = "too_large"
    REFUSED = "refused"
    CANCELLED = "cancelled"
    INTERNAL_ERROR = "internal_error"


class GoAwayReason(StrEnum):
    """Why a peer sends go-away (rule LV-4)."""

    SHUTDOWN = "shutdown"
    TOKEN_REVOKED = "token_revoked"
    PROTOCOL_ERROR = "protocol_error"


class Limits(BaseModel):
    """What the sender of a hello is willing to *receive* (HS-5).

    ``max_frame_size`` bounds the payload of one binary frame and the length of one
    encoded control message. ``initial_window`` is the credit, in payload bytes, that
    the peer has on every new stream before the first window update.
    ``max_concurrent_streams`` bounds the streams open at once on the tunnel.
    """

    model_config = ConfigDict(frozen=True, extra="ignore")

    max_frame_size: int = Field(default=256 * 1024, ge=16 * 1024, le=16 * 1024 * 1024)
    initial_window: int = Field(default=1024 * 1024, ge=1, le=MAX_WINDOW)
    max_concurrent_streams: int = Field(default=128, ge=1, le=65535)


#: A bcrypt hash as bcrypt writes it, cost 4 to 14 (AC-2): never a password.
_BCRYPT_HASH = r"^\$2[aby]\$(0[4-9]|1[0-4])\$[./A-Za-z0-9]{53}$"
#: A user name of basic auth: no ``:`` (it separates name and password) and no controls.
_USER_NAME = r"^[^:\x00-\x1f\x7f]{1,64}$"
#: An IPv4 or IPv6 address or CIDR network, as text (checked as a network by the server).
_NETWORK = r"^[0-9A-Fa-f:.]{2,45}(/[0-9]{1,3})?$"


class AccessPolicy(BaseModel):
    """Visitor rules a client declares for its tunnel in its hello (AC-1, AC-2): the
    server admits a visitor only if it passes them, before any byte crosses the tunnel.

    ``users`` maps basic-auth user names to bcrypt hashes of their passwords (the
    password itself never leaves the client); ``allow`` (when not empty) and ``deny``
    are IPv4/IPv6 networks in CIDR notation.
    """

    model_config = ConfigDict(frozen=True, extra="ignore")

    users: Annotated[
        dict[
            Annotated[str, Field(pattern=_USER_NAME)], Annotated[str, Field(pattern=_BCRYPT_HASH)]
        ],
        Field(max_length=64),
    ] = {}
    allow: Annotated[
        tuple[Annotated[str, Field(pattern=_NETWORK)], ...], Field(max_length=256)
    ] = ()
    deny: Annotated[tuple[Annotated[str, Field(pattern=_NETWORK)], ...], Field(max_length=256)] = ()


class Hello(_Message):
    """First message each side sends after the WebSocket is accepted (HS-4, HS-5)."""

    type: Literal["hello"] = "hello"
    version: Annotated[
        ProtocolVersion,
        Field(
            description=(
                "The negotiated version (HS-3). A hello naming any other string is a "
                "version mismatch (close 4003, HS-6), not a decode error, although "
                "this schema lists only the versions it describes."
            )
        ),
    ]
    role: Role
    limits: Limits = Limits()
    capabilities: tuple[str, ...] = ()
    agent: str = ""
    #: Server only: the connection id this tunnel serves.
    connection_id: str | None = None
    #: Server only: the public base URL callers use to reach this tunnel.
    public_url: str | None = None
    #: Server only (RT-5): every public URL of the tunnel, as a user should open it
    #: (path URLs end with ``/``). Empty from a server that predates RT-5.
    public_urls: tuple[str, ...] = ()
    #: Server only (RT-4): every hostname the tunnel is reached at, in normal form.
    hostnames: tuple[str, ...] = ()
    #: Client only (AC-1): the visitor rules the server must enforce for this tunnel;
    #: ``null`` for none. A server without the ``access`` capability ignores it.
    access: AccessPolicy | None = None


class Open(_Message):
    """Server to client: a new stream carrying a caller's request head (ST-2, HD-1)."""

    type: Literal["open"] = "open"
    stream_id: StreamId
    kind: StreamKind = StreamKind.HTTP
    method: Annotated[str, Field(pattern=_TOKEN, max_length=64)]
    #: The raw path below ``/<connection_id>`` exactly as the caller sent it; always
    #: starts with ``/``.
    path: Annotated[str, Field(pattern=_PATH)]
    #: The raw query string without the ``?``, exactly as sent (may be empty).
    query: Annotated[str, Field(pattern=_QUERY)] = ""
    headers: tuple[Header, ...] = ()
    scheme: Literal["http", "https"] = "http"
    client_host: str | None = None
    client_port: Annotated[int, Field(ge=0, le=65535)] | None = None
    #: True when the request has no body: no data frame follows from the server.
    end_stream: bool = False


class Response(_Message):
    """Client to server: the response head on a stream (ST-3, HD-3).

    On a ``websocket`` stream, status 101 means the local app accepted the
    WebSocket; any other status is a refusal whose body may follow in data frames.
    """

    type: Literal["response"] = "response"
    stream_id: StreamId
    status: Annotated[int, Field(ge=100, le=599)]
    headers: tuple[Header, ...] = ()
    #: True when the response has no body.
    end_stream: bool = False


class WindowUpdate(_Message):
    """Grants the peer ``increment`` more payload bytes on a stream (FC-3)."""

    type: Literal["window_update"] = "window_update"
    stream_id: StreamId
    increment: Annotated[int, Field(ge=1, le=MAX_WINDOW)]


class Reset(_Message):
    """Abandons a stream in both directions (ST-7)."""

    type: Literal["reset"] = "reset"
    stream_id: StreamId
    code: ResetCode
    message: Annotated[str, Field(max_length=1024)] = ""


class WebSocketClose(_Message):
    """Relays a WebSocket close with its code and reason, and ends the stream (WS-4)."""

    type: Literal["ws_close"] = "ws_close"
    stream_id: StreamId
    code: Annotated[int, Field(ge=1000, le=4999)] = 1000
    #: At most 123 bytes of UTF-8 (WS-4); JSON Schema can only bound characters.
    reason: Annotated[
        str,
        Field(
            max_length=MAX_CLOSE_REASON_BYTES,
            description="At most 123 bytes of UTF-8 (WS-4, ER-3), not only 123 characters.",
        ),
        AfterValidator(_close_reason_fits),
    ] = ""


class Ping(_Message):
    """Liveness probe; the receiver answers with a :class:`Pong` of the same id (LV-1)."""

    type: Literal["ping"] = "ping"
    id: Annotated[
        int,
        Field(
            ge=0,
            le=2**63 - 1,
            description=(
                "Chosen by the pinger, SHOULD be at most 2^53-1; the pong echoes it exactly, "
                "so a receiver must parse it without rounding (FR-8, LV-1)." + _INTEGER_NOTE
            ),
        ),
    ]


class Pong(_Message):
    """Answer to a :class:`Ping` (LV-1)."""

    type: Literal["pong"] = "pong"
    id: Annotated[
        int,
        Field(
            ge=0,
            le=2**63 - 1,
            description="The id of the ping it answers, exactly (LV-1, FR-8)." + _INTEGER_NOTE,
        ),
    ]


class GoAway(_Message):
    """No new streams after ``last_stream_id``; streams in flight finish (LV-4)."""

    type: Literal["goaway"] = "goaway"
    last_stream_id: Annotated[int, Field(ge=0, le=MAX_STREAM_ID)]
    reason: GoAwayReason = GoAwayReason.SHUTDOWN
    message: Annotated[str, Field(max_length=1024)] = ""


#: Every control message, discriminated by its ``type`` field.
ControlMessage = Annotated[
    Hello | Open | Response | WindowUpdate | Reset | WebSocketClose | Ping | Pong | GoAway,
    Field(discriminator="type"),
]

CONTROL_MESSAGE_ADAPTER: TypeAdapter[ControlMessage] = TypeAdapter(ControlMessage)
