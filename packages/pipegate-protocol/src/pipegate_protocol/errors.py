"""Errors raised by :mod:`pipegate_protocol`.

The whole tree::

    ProtocolError                 the rules of docs/protocol.md were broken
    ├── LocalProtocolError        *we* misused the API (a bug in the caller's shell)
    │   └── MessageTooLargeError  a message we would send exceeds the peer's
    │                             max_frame_size (e.g. a request head: answer 431)
    └── RemoteProtocolError       the *peer* broke the protocol: close the tunnel
        ├── DecodeError           a WebSocket message is not a PipeGate message   (1002)
        ├── FrameTooLargeError    a message exceeds the advertised max_frame_size (1009)
        ├── StreamStateError      a message is not allowed in the stream's state   (1002)
        ├── FlowControlError      the peer sent past its window, or overflowed it  (4001)
        ├── StreamLimitError      more concurrent streams than advertised         (4002)
        └── VersionMismatchError  hello names another version than negotiated     (4003)

Every error carries ``close_code``: the WebSocket close code the I/O shell sends
when it ends the tunnel because of it. A :class:`RemoteProtocolError` ends only the
tunnel whose peer broke the rules; nothing else about the process is affected.
"""

from __future__ import annotations

from enum import IntEnum

__all__ = [
    "CloseCode",
    "DecodeError",
    "FlowControlError",
    "FrameTooLargeError",
    "LocalProtocolError",
    "MessageTooLargeError",
    "ProtocolError",
    "RemoteProtocolError",
    "StreamLimitError",
    "StreamStateError",
    "VersionMismatchError",
]


class CloseCode(IntEnum):
    """WebSocket close codes used on a tunnel (spec section "Close codes", rule ER-2)."""

    NORMAL = 1000
    GOING_AWAY = 1001
    PROTOCOL_ERROR = 1002
    POLICY_VIOLATION = 1008
    MESSAGE_TOO_BIG = 1009
    INTERNAL_ERROR = 1011
    FLOW_CONTROL_ERROR = 4001
    STREAM_LIMIT_EXCEEDED = 4002
    VERSION_MISMATCH = 4003
    HELLO_TIMEOUT = 4004
    HEARTBEAT_TIMEOUT = 4005
    TOKEN_REVOKED = 4401
    REPLACED = 4409


class ProtocolError(Exception):
    """Base of every error this package raises about the protocol."""

    close_code: CloseCode = CloseCode.PROTOCOL_ERROR

    def __init__(self, message: str, *, close_code: CloseCode | None = None) -> None:
        super().__init__(message)
        if close_code is not None:
            self.close_code = close_code

    @property
    def reason(self) -> str:
        """The message, cut to fit a WebSocket close reason (123 bytes of UTF-8)."""
        text = str(self)
        encoded = text.encode("utf-8")
        if len(encoded) <= 123:
            return text
        return encoded[:120].decode("utf-8", errors="ignore") + "..."


class LocalProtocolError(ProtocolError):
    """The caller asked for something the protocol forbids (a bug on our side)."""

    close_code = CloseCode.INTERNAL_ERROR


class MessageTooLargeError(LocalProtocolError):
    """A message we would send does not fit the peer's ``max_frame_size`` (FR-5).

    Nothing was queued. For a request head the server answers the caller 431.
    """


class RemoteProtocolError(ProtocolError):
    """The peer broke the protocol; the tunnel must be closed with ``close_code``."""


class DecodeError(RemoteProtocolError):
    """A WebSocket message is not a well-formed PipeGate message (rules FR-*)."""


class FrameTooLargeError(RemoteProtocolError):
    """A message is larger than the receiver's advertised ``max_frame_size`` (FR-5)."""

    close_code = CloseCode.MESSAGE_TOO_BIG


class StreamStateError(RemoteProtocolError):
    """A message names a stream in a state that does not allow it (rules ST-*)."""


class FlowControlError(RemoteProtocolError):
    """The peer sent more than its window allowed, or overflowed a window (FC-*)."""

    close_code = CloseCode.FLOW_CONTROL_ERROR


class StreamLimitError(RemoteProtocolError):
    """The peer opened more concurrent streams than advertised (ST-4)."""

    close_code = CloseCode.STREAM_LIMIT_EXCEEDED


class VersionMismatchError(RemoteProtocolError):
    """The peer's hello names a version other than the negotiated one (HS-6)."""

    close_code = CloseCode.VERSION_MISMATCH
