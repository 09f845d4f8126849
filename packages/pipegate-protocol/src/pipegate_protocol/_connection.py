"""The sans-I/O tunnel connection, used by both the server and the client.

The rules, in brief (docs/protocol.md has them in full, each with its id):

* Each side's first message is its :class:`Hello`. Nothing else may be sent before it,
  nor received before the peer's (HS-4). A side may open streams only once it knows the
  peer's limits, that is after the peer's hello.
* Only the server opens streams, with :class:`Open`; stream ids start at 1 and strictly
  increase (ST-1). The client answers with one final :class:`Response`, optionally
  preceded by informational (1xx) ones (ST-3).
* Each direction of a stream is open until a frame with ``end_stream`` (ST-5); a stream
  whose two directions are closed is gone. :class:`Reset` ends both directions at once
  (ST-7); so does :class:`WebSocketClose` on an established WebSocket stream (WS-4).
* Frames for a stream that *was* open and is now gone are discarded without error,
  because the peer may have sent them before it learnt the stream was gone (ST-8).
  Frames for a stream that was never opened are a protocol error (ST-6).
* Payload bytes of binary frames are flow controlled per stream (FC-1..FC-6): a sender
  may have at most its window in flight; the receiver returns credit with
  :class:`WindowUpdate` as the application consumes data.

The whole API: :meth:`Connection.receive` for each WebSocket message that arrives,
the ``send_*``/``open_stream``/``reset_stream`` methods to act, and
:meth:`Connection.data_to_send` for the WebSocket messages to transmit.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from enum import Enum
from typing import Any, TypeVar

import pydantic

from ._frames import FRAME_HEADER_SIZE, Data, Message, WebSocketData, decode, encode
from ._models import (
    MAX_STREAM_ID,
    MAX_WINDOW,
    AccessPolicy,
    ControlMessage,
    GoAway,
    GoAwayReason,
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
from ._versions import ProtocolVersion
from .errors import (
    DecodeError,
    FlowControlError,
    FrameTooLargeError,
    LocalProtocolError,
    MessageTooLargeError,
    StreamLimitError,
    StreamStateError,
    VersionMismatchError,
)

__all__ = ["CAPABILITY_WEBSOCKET", "Connection", "ConnectionState"]

_M = TypeVar("_M", bound=pydantic.BaseModel)

#: Capability a client advertises when it can relay WebSocket streams (WS-1).
CAPABILITY_WEBSOCKET = "websocket"


class ConnectionState(Enum):
    """Lifecycle of a tunnel connection."""

    AWAITING_HELLO = "awaiting_hello"
    OPEN = "open"
    CLOSED = "closed"


class _Stream:
    __slots__ = (
        "credit",
        "kind",
        "local_head",
        "local_open",
        "recv_window",
        "remote_head",
        "remote_open",
        "send_window",
        "websocket",
        "ws_message_text",
        "ws_sending_text",
    )

    def __init__(self, kind: StreamKind, send_window: int, recv_window: int) -> None:
        self.kind = kind
        self.send_window = send_window
        self.recv_window = recv_window
        self.credit = 0  # consumed bytes not yet returned to the peer
        self.local_head = False  # we sent our head (open / final response)
        self.remote_head = False  # the peer sent its head
        self.local_open = True  # we may still send body data
        self.remote_open = True  # the peer may still send body data
        self.websocket = False  # a WebSocket stream the local app accepted (101)
        # The kind of the peer's unfinished WebSocket message (WS-6): None between messages.
        self.ws_message_text: bool | None = None
        self.ws_sending_text: bool | None = None  # the same for our own messages


class Connection:
    """One end of a tunnel: tracks streams and windows and enforces the limits.

    ``version`` is the version negotiated in the WebSocket handshake. ``limits`` are
    what *this* side is willing to receive; they go out in our hello. The hello is
    queued at construction, so the first :meth:`data_to_send` returns it.
    """

    def __init__(
        self,
        role: Role,
        *,
        version: ProtocolVersion = ProtocolVersion.V1,
        limits: Limits | None = None,
        capabilities: Sequence[str] = (),
        agent: str = "",
        connection_id: str | None = None,
        public_url: str | None = None,
        public_urls: Sequence[str] = (),
        hostnames: Sequence[str] = (),
        access: AccessPolicy | None = None,
    ) -> None:
        self.role = role
        self.version = version
        self.local_limits = limits if limits is not None else Limits()
        self.local_hello = Hello(
            version=version,
            role=role,
            limits=self.local_limits,
            capabilities=tuple(capabilities),
            agent=agent,
            connection_id=connection_id,
            public_url=public_url,
            public_urls=tuple(public_urls),
            hostnames=tuple(hostnames),
            access=access,
        )
        self.peer_hello: Hello | None = None
        self.state = ConnectionState.AWAITING_HELLO
        self.goaway_sent = False
        self.goaway_received: GoAway | None = None
        self._streams: dict[int, _Stream] = {}
        self._last_stream_id = 0  # highest stream id opened by the server
        self._goaway_last_stream_id = MAX_STREAM_ID
        self._outgoing: list[str | bytes] = []
        self._queue(self.local_hello)

    # ------------------------------------------------------------------ queries

    @property
    def peer_limits(self) -> Limits:
        """The peer's limits; only known once its hello has arrived."""
        if self.peer_hello is None:
            raise LocalProtocolError("the peer's hello has not arrived yet")
        return self.peer_hello.limits

    @property
    def max_data_size(self) -> int:
        """Largest payload one data frame we send may carry (the peer's max_frame_size)."""
        return self.peer_limits.max_frame_size

    @property
    def open_streams(self) -> int:
        """How many streams are open (in either direction)."""
        return len(self._streams)

    @property
    def can_open_stream(self) -> bool:
        """True when :meth:`open_stream` would succeed now (server side)."""
        return (
            self.role is Role.SERVER
            and self.state is ConnectionState.OPEN
            and not self.goaway_sent
            and self.goaway_received is None
            and self.peer_hello is not None
            and len(self._streams) < self.peer_hello.limits.max_concurrent_streams
            and self._last_stream_id < MAX_STREAM_ID
        )

    @property
    def peer_supports_websocket(self) -> bool:
        """True when the peer's hello lists the ``websocket`` capability (WS-1)."""
        return self.peer_hello is not None and CAPABILITY_WEBSOCKET in self.peer_hello.capabilities

    def is_open(self, stream_id: int) -> bool:
        """True while the stream exists (neither finished both ways nor reset)."""
        return stream_id in self._streams

    def send_window(self, stream_id: int) -> int:
        """Payload bytes we may still send on a stream now (0 for a gone stream)."""
        stream = self._streams.get(stream_id)
        return stream.send_window if stream is not None else 0

    def data_to_send(self) -> list[str | bytes]:
        """The WebSocket messages to transmit, in order; each call drains the queue."""
        out, self._outgoing = self._outgoing, []
        return out

    # ------------------------------------------------------------------ receiving

    def receive(self, payload: str | bytes) -> Message | None:
        """Process one WebSocket message from the peer.

        Returns the decoded message for the application, or ``None`` when the message
        needs no action (a frame for a stream that is already gone, ST-8). Raises a
        :class:`~pipegate_protocol.errors.RemoteProtocolError` when the peer broke the
        protocol; the caller then closes the tunnel with the error's ``close_code``.
        """
        if self.state is ConnectionState.CLOSED:
            raise LocalProtocolError("the connection is closed")
        try:
            self._check_size(payload)
            try:
                message = decode(payload)
            except DecodeError:
                if self.state is ConnectionState.AWAITING_HELLO:
                    self._check_hello_version(payload)
                raise
            return self._handle(message)
        except Exception:
            self.close()
            raise

    def close(self) -> None:
        """Mark the tunnel closed (the WebSocket is gone); every stream is forgotten."""
        self.state = ConnectionState.CLOSED
        self._streams.clear()

    def _check_hello_version(self, payload: str | bytes) -> None:
        """Raise VersionMismatchError for a hello naming a version we do not know (HS-6).

        Such a hello does not decode (the version is not a :class:`ProtocolVersion`), but
        it is a version mismatch, not a malformed message, and has its own close code.
        """
        if not isinstance(payload, str):
            return
        try:
            obj = json.loads(payload)
        except (ValueError, RecursionError):
            return
        if isinstance(obj, dict) and obj.get("type") == "hello":
            version = obj.get("version")
            if isinstance(version, str) and version != self.version.value:
                raise VersionMismatchError(
                    f"peer hello names {version[:64]!r}, negotiated {self.version.value}"
                )

    def _check_size(self, payload: str | bytes) -> None:
        limit = self.local_limits.max_frame_size
        if isinstance(payload, str):
            size = len(payload)
            if size * 4 > limit:
                size = len(payload.encode("utf-8", errors="surrogatepass"))
            if size > limit:
                raise FrameTooLargeError(
                    f"control message of {size} bytes exceeds max_frame_size {limit}"
                )
        elif len(payload) - FRAME_HEADER_SIZE > limit:
            raise FrameTooLargeError(
                f"data frame payload of {len(payload) - FRAME_HEADER_SIZE} bytes exceeds "
                f"max_frame_size {limit}"
            )

    def _handle(self, message: Message) -> Message | None:
        if self.state is ConnectionState.AWAITING_HELLO:
            if not isinstance(message, Hello):
                raise StreamStateError(f"expected hello, got {_kind(message)}")
            return self._on_hello(message)
        if isinstance(message, Data):
            return self._on_data(message)
        if isinstance(message, WebSocketData):
            return self._on_websocket_data(message)
        if isinstance(message, WindowUpdate):
            return self._on_window_update(message)
        if isinstance(message, Open):
            return self._on_open(message)
        if isinstance(message, Response):
            return self._on_response(message)
        if isinstance(message, Reset):
            return message if self._remove(message.stream_id) else None
        if isinstance(message, WebSocketClose):
            return self._on_websocket_close(message)
        if isinstance(message, Ping):
            self._queue(Pong(id=message.id))
            return message
        if isinstance(message, Pong):
            return message
        if isinstance(message, GoAway):
            self.goaway_received = message
            return message
        raise StreamStateError("a second hello on an open connection")

    def _on_hello(self, hello: Hello) -> Hello:
        if hello.role is self.role:
            raise StreamStateError(f"peer hello claims role {hello.role.value}, same as ours")
        if hello.version is not self.version:
            raise VersionMismatchError(
                f"peer hello names {hello.version.value}, negotiated {self.version.value}"
            )
        self.peer_hello = hello
        self.state = ConnectionState.OPEN
        return hello

    def _stream_for(self, stream_id: int, what: str) -> _Stream | None:
        """The live stream, ``None`` for one that is gone (ST-8), error if never opened."""
        stream = self._streams.get(stream_id)
        if stream is None and stream_id > self._last_stream_id:
            raise StreamStateError(f"{what} for stream {stream_id}, which was never opened")
        return stream

    def _on_open(self, message: Open) -> Open | None:
        if self.role is not Role.CLIENT:
            raise StreamStateError("only the server opens streams")
        if message.stream_id <= self._last_stream_id:
            raise StreamStateError(
                f"stream id {message.stream_id} is not above the last one, {self._last_stream_id}"
            )
        if self.goaway_received is not None:
            raise StreamStateError("the server opened a stream after its own go-away")
        self._last_stream_id = message.stream_id
        if message.stream_id > self._goaway_last_stream_id:
            self._queue(Reset(stream_id=message.stream_id, code=ResetCode.REFUSED))
            return None
        if len(self._streams) >= self.local_limits.max_concurrent_streams:
            raise StreamLimitError(
                f"stream {message.stream_id} exceeds max_concurrent_streams "
                f"{self.local_limits.max_concurrent_streams}"
            )
        if (
            message.kind is StreamKind.WEBSOCKET
            and CAPABILITY_WEBSOCKET not in self.local_hello.capabilities
        ):
            raise StreamStateError("websocket stream opened without the websocket capability")
        stream = _Stream(
            message.kind, self.peer_limits.initial_window, self.local_limits.initial_window
        )
        stream.remote_head = True
        stream.remote_open = not message.end_stream
        self._streams[message.stream_id] = stream
        return message

    def _on_response(self, message: Response) -> Response | None:
        if self.role is not Role.SERVER:
            raise StreamStateError("only the client sends responses")
        stream = self._stream_for(message.stream_id, "response")
        if stream is None:
            return None
        if stream.remote_head:
            raise StreamStateError(f"second final response on stream {message.stream_id}")
        if message.status == 101:
            if stream.kind is not StreamKind.WEBSOCKET:
                raise StreamStateError(f"status 101 on http stream {message.stream_id}")
            if message.end_stream:
                raise StreamStateError(f"status 101 with end_stream on stream {message.stream_id}")
            stream.websocket = True
        elif message.status < 200:
            if message.end_stream:
                raise StreamStateError("an informational response cannot end the stream")
            return message
        stream.remote_head = True
        if message.end_stream:
            stream.remote_open = False
            self._maybe_forget(message.stream_id, stream)
        return message

    def _on_data(self, message: Data) -> Data | None:
        stream = self._stream_for(message.stream_id, "data")
        if stream is None:
            return None
        if stream.websocket:
            raise StreamStateError(f"body data on websocket stream {message.stream_id}")
        if not stream.remote_head:
            raise StreamStateError(f"data before the response head on stream {message.stream_id}")
        if not stream.remote_open:
            raise StreamStateError(f"data after end of stream on stream {message.stream_id}")
        self._consume_window(message.stream_id, stream, len(message.data))
        if message.end_stream:
            stream.remote_open = False
            self._maybe_forget(message.stream_id, stream)
        return message

    def _on_websocket_data(self, message: WebSocketData) -> WebSocketData | None:
        stream = self._stream_for(message.stream_id, "websocket data")
        if stream is None:
            return None
        if not stream.websocket:
            raise StreamStateError(
                f"websocket data on stream {message.stream_id}, which is not an accepted websocket"
            )
        if stream.ws_message_text is not None and stream.ws_message_text != message.text:
            raise StreamStateError(
                f"websocket fragment of another kind inside a message on stream {message.stream_id}"
            )
        self._consume_window(message.stream_id, stream, len(message.data))
        stream.ws_message_text = None if message.fin else message.text
        return message

    def _consume_window(self, stream_id: int, stream: _Stream, size: int) -> None:
        if size > stream.recv_window:
            raise FlowControlError(
                f"{size} bytes on stream {stream_id} exceed its window of {stream.recv_window}"
            )
        stream.recv_window -= size
        if stream.recv_window == 0 and stream.credit:
            # The peer cannot send any more: return held-back credit now (FC-4), or a
            # receiver that waits for more data before consuming the rest would deadlock.
            self._return_credit(stream_id, stream)

    def _on_window_update(self, message: WindowUpdate) -> WindowUpdate | None:
        stream = self._stream_for(message.stream_id, "window update")
        if stream is None:
            return None
        stream.send_window += message.increment
        if stream.send_window > MAX_WINDOW:
            raise FlowControlError(f"window of stream {message.stream_id} overflows 2**31-1")
        return message

    def _on_websocket_close(self, message: WebSocketClose) -> WebSocketClose | None:
        stream = self._stream_for(message.stream_id, "websocket close")
        if stream is None:
            return None
        if not stream.websocket:
            raise StreamStateError(f"websocket close on non-websocket stream {message.stream_id}")
        self._remove(message.stream_id)
        return message

    # ------------------------------------------------------------------ sending

    def open_stream(
        self,
        *,
        method: str,
        path: str,
        query: str = "",
        headers: Sequence[tuple[str, str]] = (),
        kind: StreamKind = StreamKind.HTTP,
        scheme: str = "http",
        client_host: str | None = None,
        client_port: int | None = None,
        end_stream: bool = False,
    ) -> int:
        """Server: open a stream carrying a request head; returns its id (ST-1, ST-2).

        Raises :class:`LocalProtocolError` when :attr:`can_open_stream` is false, when
        the client lacks the websocket capability for a websocket stream, when a field
        is invalid, or when the encoded head exceeds the client's max_frame_size.

        A websocket stream never carries a request body, so its open always has
        ``end_stream`` set (WS-3): body data sent before the client's 101 could reach
        the client after it and break the stream.
        """
        if self.role is not Role.SERVER:
            raise LocalProtocolError("only the server opens streams")
        if not self.can_open_stream:
            raise LocalProtocolError("cannot open a stream now (no hello, go-away or at limit)")
        if kind is StreamKind.WEBSOCKET:
            if not self.peer_supports_websocket:
                raise LocalProtocolError("the client does not support websocket streams")
            end_stream = True
        stream_id = self._last_stream_id + 1
        message = _build(
            Open,
            {
                "stream_id": stream_id,
                "kind": kind,
                "method": method,
                "path": path,
                "query": query,
                "headers": headers,
                "scheme": scheme,
                "client_host": client_host,
                "client_port": client_port,
                "end_stream": end_stream,
            },
        )
        self._queue(message)
        self._last_stream_id = stream_id
        stream = _Stream(kind, self.peer_limits.initial_window, self.local_limits.initial_window)
        stream.local_head = True
        stream.local_open = not end_stream
        self._streams[stream_id] = stream
        return stream_id

    def send_response(
        self,
        stream_id: int,
        status: int,
        headers: Sequence[tuple[str, str]] = (),
        *,
        end_stream: bool = False,
    ) -> None:
        """Client: send the response head (or an informational one) on a stream (ST-3)."""
        if self.role is not Role.CLIENT:
            raise LocalProtocolError("only the client sends responses")
        stream = self._live(stream_id)
        if stream.local_head:
            raise LocalProtocolError(f"response already sent on stream {stream_id}")
        if status == 101 and stream.kind is not StreamKind.WEBSOCKET:
            raise LocalProtocolError("status 101 is only for websocket streams")
        if status == 101 and end_stream:
            raise LocalProtocolError("status 101 cannot end the stream (WS-3)")
        if 100 <= status < 200 and status != 101 and end_stream:
            raise LocalProtocolError("an informational response cannot end the stream")
        message = _build(
            Response,
            {
                "stream_id": stream_id,
                "status": status,
                "headers": headers,
                "end_stream": end_stream,
            },
        )
        self._queue(message)
        if 100 <= status < 200 and status != 101:
            return
        stream.local_head = True
        stream.websocket = status == 101
        if end_stream:
            stream.local_open = False
            self._maybe_forget(stream_id, stream)

    def send_data(self, stream_id: int, data: bytes, *, end_stream: bool = False) -> None:
        """Send body bytes; ``len(data)`` must fit the send window and max_data_size."""
        stream = self._live(stream_id)
        if stream.websocket:
            raise LocalProtocolError(f"body data on websocket stream {stream_id}")
        if not stream.local_head:
            raise LocalProtocolError(f"data before the head on stream {stream_id}")
        if not stream.local_open:
            raise LocalProtocolError(f"data after end of stream on stream {stream_id}")
        self._spend_window(stream_id, stream, len(data))
        self._outgoing.append(encode(Data(stream_id, data, end_stream)))
        if end_stream:
            stream.local_open = False
            self._maybe_forget(stream_id, stream)

    def send_websocket_data(
        self, stream_id: int, data: bytes, *, text: bool, fin: bool = True
    ) -> None:
        """Send one fragment of a relayed WebSocket message (WS-2); flow controlled."""
        stream = self._live(stream_id)
        if not stream.websocket:
            raise LocalProtocolError(f"stream {stream_id} is not an accepted websocket")
        if stream.ws_sending_text is not None and stream.ws_sending_text != text:
            raise LocalProtocolError(
                f"fragment of another kind inside a websocket message on stream {stream_id} (WS-6)"
            )
        self._spend_window(stream_id, stream, len(data))
        self._outgoing.append(encode(WebSocketData(stream_id, data, text=text, fin=fin)))
        stream.ws_sending_text = None if fin else text

    def send_websocket_close(self, stream_id: int, code: int = 1000, reason: str = "") -> None:
        """Relay a WebSocket close and end the stream (WS-4). No-op on a gone stream."""
        stream = self._streams.get(stream_id)
        if stream is None:
            return
        if not stream.websocket:
            raise LocalProtocolError(f"stream {stream_id} is not an accepted websocket")
        reason_bytes = reason.encode("utf-8")[:123]
        self._queue(
            _build(
                WebSocketClose,
                {
                    "stream_id": stream_id,
                    "code": code,
                    "reason": reason_bytes.decode("utf-8", errors="ignore"),
                },
            )
        )
        self._remove(stream_id)

    def reset_stream(self, stream_id: int, code: ResetCode, message: str = "") -> None:
        """Abandon a stream both ways (ST-7). A no-op for a stream that is already gone,
        so that shells need not guard against the races of concurrent tasks."""
        if stream_id not in self._streams:
            return
        self._queue(Reset(stream_id=stream_id, code=code, message=message[:1024]))
        self._remove(stream_id)

    def acknowledge(self, stream_id: int, size: int) -> None:
        """Tell the connection that the application consumed ``size`` received bytes.

        Credit is returned to the peer in batches, once at least half of the initial
        window has been consumed, or at once when the peer's window is exhausted (FC-4;
        :meth:`receive` also returns held-back credit when a frame exhausts the window).
        A no-op for a gone stream and for an HTTP stream whose peer has ended its
        direction. Acknowledging more bytes than were
        received and not yet acknowledged raises :class:`LocalProtocolError`.
        """
        stream = self._streams.get(stream_id)
        if stream is None or size <= 0 or (not stream.remote_open and not stream.websocket):
            return
        unacknowledged = self.local_limits.initial_window - stream.recv_window - stream.credit
        if size > unacknowledged:
            raise LocalProtocolError(
                f"acknowledging {size} bytes on stream {stream_id}, but only "
                f"{unacknowledged} were received and not yet acknowledged"
            )
        stream.credit += size
        if stream.credit >= self.local_limits.initial_window // 2 or stream.recv_window == 0:
            self._return_credit(stream_id, stream)

    def send_ping(self, ping_id: int) -> None:
        """Queue a ping; the peer answers with a pong carrying the same id (LV-1)."""
        self._queue(_build(Ping, {"id": ping_id}))

    def send_goaway(self, reason: GoAwayReason = GoAwayReason.SHUTDOWN, message: str = "") -> None:
        """Announce that no new streams will be accepted or opened (LV-4). Idempotent."""
        if self.goaway_sent:
            return
        self.goaway_sent = True
        if self.role is Role.CLIENT:
            self._goaway_last_stream_id = self._last_stream_id
        self._queue(
            GoAway(last_stream_id=self._last_stream_id, reason=reason, message=message[:1024])
        )

    # ------------------------------------------------------------------ internals

    def _live(self, stream_id: int) -> _Stream:
        stream = self._streams.get(stream_id)
        if stream is None:
            raise LocalProtocolError(f"stream {stream_id} is not open")
        return stream

    def _spend_window(self, stream_id: int, stream: _Stream, size: int) -> None:
        if size > self.peer_limits.max_frame_size:
            raise MessageTooLargeError(
                f"{size} bytes exceed the peer's max_frame_size {self.peer_limits.max_frame_size}"
            )
        if size > stream.send_window:
            raise LocalProtocolError(
                f"{size} bytes exceed the send window {stream.send_window} of stream {stream_id}"
            )
        stream.send_window -= size

    def _return_credit(self, stream_id: int, stream: _Stream) -> None:
        increment, stream.credit = stream.credit, 0
        stream.recv_window += increment
        self._queue(WindowUpdate(stream_id=stream_id, increment=increment))

    def _maybe_forget(self, stream_id: int, stream: _Stream) -> None:
        if (
            stream.local_head
            and stream.remote_head
            and not stream.local_open
            and not stream.remote_open
        ):
            del self._streams[stream_id]

    def _remove(self, stream_id: int) -> bool:
        """Forget a stream; True if it was live. Errors for never-opened ids (ST-6)."""
        if self._streams.pop(stream_id, None) is not None:
            return True
        if stream_id > self._last_stream_id:
            raise StreamStateError(f"frame for stream {stream_id}, which was never opened")
        return False

    def _queue(self, message: ControlMessage) -> None:
        if self.state is ConnectionState.CLOSED:
            raise LocalProtocolError("the connection is closed")
        encoded = encode(message)
        assert isinstance(encoded, str)
        if self.peer_hello is not None:
            limit = self.peer_limits.max_frame_size
            # The peer measures the UTF-8 encoding (FR-5): up to 4 bytes a character.
            size = len(encoded)
            if size * 4 > limit:
                size = len(encoded.encode("utf-8"))
            if size > limit:
                raise MessageTooLargeError(
                    f"{message.type} of {size} bytes exceeds the peer's max_frame_size {limit}"
                )
        self._outgoing.append(encoded)


def _build(model: type[_M], fields: Mapping[str, Any]) -> _M:
    """Validate a message we are about to send; invalid input is the caller's bug."""
    try:
        return model.model_validate(fields)
    except pydantic.ValidationError as exc:
        errors = exc.errors(include_url=False, include_input=False)
        where = ".".join(str(part) for part in errors[0]["loc"]) if errors else ""
        detail = f"{where}: {errors[0]['msg']}" if errors else str(exc)
        raise LocalProtocolError(f"invalid {model.__name__}: {detail}") from None


def _kind(message: Message) -> str:
    if isinstance(message, Data):
        return "data frame"
    if isinstance(message, WebSocketData):
        return "websocket data frame"
    return message.type
