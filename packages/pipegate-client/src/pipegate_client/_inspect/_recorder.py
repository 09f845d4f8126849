"""What the inspector remembers: the last exchanges, with the first bytes of each body.

:class:`Recorder` is a :class:`~pipegate_tunnel.StreamObserver` on the client's tunnel.
Bodies stream through untouched; the recorder copies only their first bytes.

Memory bound (what callers may rely on):

* at most ``max_exchanges`` exchanges (default 200) are kept, oldest evicted first;
* of each body (request, response, each WebSocket message) at most ``body_cap``
  bytes (default 64 KiB) are kept;
* all kept bytes together stay under ``total_cap`` (default 32 MiB): when a capture
  would pass it, the oldest finished exchanges are evicted first, and when none is
  left to evict the body is counted but not kept (shown as truncated);
* a WebSocket stream keeps its last :data:`MAX_MESSAGES` messages (older ones are
  dropped and counted).

One recorder serves every tunnel of a process (the ``--config`` case): each tunnel
observes through its own :class:`TunnelObserver`, which tags the exchanges it opens
with the tunnel's connection id (:attr:`Exchange.tunnel`). The bound above is the
recorder's, so it holds for the whole process, not per tunnel.

So the recorder holds at most ``total_cap`` body bytes plus a few hundred bytes of
bookkeeping per exchange and per kept message. Every event is a dict lookup and, while
there is room, a copy of the captured slice; nothing waits.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence

from pipegate_protocol import StreamKind
from pipegate_tunnel import StreamChannel, StreamObserver

from .._stream import LocalStream

__all__ = [
    "DEFAULT_BODY_CAP",
    "DEFAULT_MAX_EXCHANGES",
    "DEFAULT_TOTAL_CAP",
    "MAX_MESSAGES",
    "Capture",
    "Exchange",
    "Recorder",
    "TunnelObserver",
    "WebSocketMessage",
]

DEFAULT_MAX_EXCHANGES = 200
DEFAULT_BODY_CAP = 64 * 1024
DEFAULT_TOTAL_CAP = 32 * 1024 * 1024
#: WebSocket messages kept per stream (the most recent ones).
MAX_MESSAGES = 100


class Capture:
    """The first bytes of one body (or WebSocket message) and how long it was."""

    __slots__ = ("data", "size")

    def __init__(self) -> None:
        #: The bytes kept: the first piece as it came (bytes are immutable, so that is
        #: a copy), a bytearray once a second piece is added.
        self.data: bytes | bytearray = b""
        #: Bytes that passed, kept or not.
        self.size = 0

    @property
    def truncated(self) -> bool:
        return self.size > len(self.data)


class WebSocketMessage:
    """One WebSocket message: which way (``sent`` = from the local app to the caller),
    text or binary, when it started (seconds after the stream opened), its bytes."""

    __slots__ = ("at", "body", "complete", "sent", "text")

    def __init__(self, *, sent: bool, text: bool, at: float) -> None:
        self.sent = sent
        self.text = text
        self.at = at
        self.body = Capture()
        self.complete = False


#: The ``messages`` of every HTTP exchange: no WebSocket event ever reaches one.
_NO_MESSAGES: deque[WebSocketMessage] = deque(maxlen=0)


class Exchange:
    """One request and its response (or one WebSocket stream), as far as it got."""

    __slots__ = (
        "closes",
        "dropped_messages",
        "ended_at",
        "evicted",
        "first_byte_at",
        "id",
        "kind",
        "messages",
        "method",
        "open_messages",
        "opened_at",
        "outcome",
        "path",
        "query",
        "replay_of",
        "request_body",
        "request_headers",
        "response_at",
        "response_body",
        "response_headers",
        "started",
        "status",
        "stream_id",
        "tunnel",
        "version",
    )

    def __init__(
        self,
        id: int,
        *,
        kind: str,
        method: str,
        path: str,
        query: str,
        headers: Sequence[tuple[str, str]],
        opened_at: float,
        stream_id: int | None = None,
        replay_of: int | None = None,
        tunnel: str = "",
    ) -> None:
        self.id = id
        #: The connection id of the tunnel it came through (replays: of the original).
        self.tunnel = tunnel
        self.kind = kind
        self.method = method
        self.path = path
        self.query = query
        self.request_headers = headers if type(headers) is tuple else tuple(headers)
        self.stream_id = stream_id
        self.replay_of = replay_of
        #: Wall-clock time the request head arrived (seconds since the epoch).
        self.started = time.time()
        #: Loop times: the request head arrived, the response head passed, its first
        #: body byte passed, the exchange ended.
        self.opened_at = opened_at
        self.response_at: float | None = None
        self.first_byte_at: float | None = None
        self.ended_at: float | None = None
        self.status: int | None = None
        self.response_headers: tuple[tuple[str, str], ...] = ()
        self.request_body = Capture()
        self.response_body = Capture()
        websocket = kind == "websocket"
        #: WebSocket streams only (an HTTP exchange shares empty, never-filled ones).
        self.messages: deque[WebSocketMessage] = deque() if websocket else _NO_MESSAGES
        self.dropped_messages = 0
        #: The message still being received in each direction: [from the caller,
        #: from the local app].
        self.open_messages: list[WebSocketMessage | None] = [None, None] if websocket else []
        #: WebSocket closes as (sent, code, reason), in the order they passed.
        self.closes: tuple[tuple[bool, int, str], ...] = ()
        self.outcome = ""
        self.evicted = False
        #: The recorder's version when this exchange last changed.
        self.version = 0

    @property
    def finished(self) -> bool:
        return self.ended_at is not None

    def captured_bytes(self) -> int:
        kept = len(self.request_body.data) + len(self.response_body.data)
        if self.messages:
            kept += sum(len(message.body.data) for message in self.messages)
        return kept


class Recorder(StreamObserver):
    """Keeps the last exchanges of the tunnel; see the module docstring for the bound.

    ``clock`` is the loop's clock (``loop.time``) the channels' times use.
    """

    def __init__(
        self,
        *,
        max_exchanges: int = DEFAULT_MAX_EXCHANGES,
        body_cap: int = DEFAULT_BODY_CAP,
        total_cap: int = DEFAULT_TOTAL_CAP,
        clock: Callable[[], float] | None = None,
    ) -> None:
        if max_exchanges < 1 or body_cap < 0 or total_cap < 0:
            raise ValueError("max_exchanges must be positive, the caps not negative")
        self.max_exchanges = max_exchanges
        self.body_cap = body_cap
        self.total_cap = total_cap
        self._clock = clock
        self._exchanges: deque[Exchange] = deque()
        self._by_id: dict[int, Exchange] = {}
        self._live: dict[StreamChannel, Exchange] = {}
        self._ids = itertools.count(1)
        #: Body bytes kept right now, over every exchange.
        self.captured = 0
        #: Increases with every change a viewer may want to see.
        self.version = 0
        self._listeners: set[asyncio.Event] = set()

    # ------------------------------------------------------------ reading

    def __iter__(self) -> Iterator[Exchange]:
        """The exchanges kept, oldest first."""
        return iter(self._exchanges)

    def __len__(self) -> int:
        return len(self._exchanges)

    def get(self, id: int) -> Exchange | None:
        return self._by_id.get(id)

    def listen(self) -> asyncio.Event:
        """An event set at every change; pass it to :meth:`unlisten` when done."""
        event = asyncio.Event()
        self._listeners.add(event)
        return event

    def unlisten(self, event: asyncio.Event) -> None:
        self._listeners.discard(event)

    # ------------------------------------------------------------ recording

    def now(self) -> float:
        if self._clock is None:
            self._clock = asyncio.get_running_loop().time
        return self._clock()

    def new_exchange(
        self,
        *,
        kind: str,
        method: str,
        path: str,
        query: str,
        headers: Sequence[tuple[str, str]],
        opened_at: float | None = None,
        stream_id: int | None = None,
        replay_of: int | None = None,
        tunnel: str = "",
    ) -> Exchange:
        """Start recording an exchange (the newest); evicts the oldest past the count."""
        exchange = Exchange(
            next(self._ids),
            kind=kind,
            method=method,
            path=path,
            query=query,
            headers=headers,
            opened_at=self.now() if opened_at is None else opened_at,
            stream_id=stream_id,
            replay_of=replay_of,
            tunnel=tunnel,
        )
        self._exchanges.append(exchange)
        self._by_id[exchange.id] = exchange
        while len(self._exchanges) > self.max_exchanges:
            self._evict(self._exchanges.popleft())
        self.changed(exchange)
        return exchange

    def capture(self, exchange: Exchange, part: Capture, data: bytes) -> None:
        """Count ``data`` into ``part`` and keep what fits under both caps."""
        size = len(data)
        part.size += size
        if exchange.evicted:
            return
        room = self.body_cap - len(part.data)
        if room <= 0:
            return
        want = min(room, size)
        while self.captured + want > self.total_cap:
            oldest = self._exchanges[0] if self._exchanges else None
            if oldest is None or oldest is exchange or not oldest.finished:
                want = max(0, self.total_cap - self.captured)
                break
            self._evict(self._exchanges.popleft())
        if want <= 0:
            return
        piece = data[:want] if want < size or type(data) is not bytes else data
        kept = part.data
        if not kept:
            part.data = piece if type(piece) is bytes else bytes(piece)
        elif type(kept) is bytearray:
            kept += piece
        else:
            part.data = bytearray(kept) + piece
        self.captured += want

    def response(
        self, exchange: Exchange, status: int, headers: Sequence[tuple[str, str]], at: float
    ) -> None:
        exchange.status = status
        exchange.response_headers = tuple(headers)
        exchange.response_at = at
        self.changed(exchange)

    def finish(self, exchange: Exchange, *, at: float, outcome: str = "") -> None:
        exchange.ended_at = at
        exchange.outcome = outcome
        self.changed(exchange)

    def changed(self, exchange: Exchange | None = None) -> None:
        self.version = version = self.version + 1
        if exchange is not None:
            exchange.version = version
        if self._listeners:
            for event in self._listeners:
                event.set()

    def _evict(self, exchange: Exchange) -> None:
        exchange.evicted = True
        kept = len(exchange.request_body.data) + len(exchange.response_body.data)
        if exchange.messages:
            kept += sum(len(message.body.data) for message in exchange.messages)
        self.captured -= kept
        del self._by_id[exchange.id]
        if not exchange.finished:  # still referenced by the tunnel: let its bytes go now
            exchange.request_body.data = b""
            exchange.response_body.data = b""
            if exchange.kind == "websocket":
                exchange.messages.clear()
                exchange.open_messages[:] = [None, None]

    # ------------------------------------------------------------ the observer

    def stream_opened(self, channel: StreamChannel) -> None:
        self.open_stream(channel, tunnel="")

    def open_stream(self, channel: StreamChannel, *, tunnel: str) -> None:
        """Start recording ``channel``'s exchange as one of ``tunnel``."""
        if isinstance(channel, LocalStream):
            query, headers = channel.open.query, channel.open.headers
        else:
            query, headers = "", ()
        self._live[channel] = self.new_exchange(
            kind="websocket" if channel.kind is StreamKind.WEBSOCKET else "http",
            method=channel.method,
            path=channel.path,
            query=query,
            headers=headers,
            opened_at=channel.opened_at,
            stream_id=channel.stream_id,
            tunnel=tunnel,
        )

    def response_head(self, channel: StreamChannel, status: int) -> None:
        exchange = self._live.get(channel)
        if exchange is not None:
            at = channel.response_at if channel.response_at is not None else self.now()
            self.response(exchange, status, channel.response_headers, at)

    def body(self, channel: StreamChannel, data: bytes, *, sent: bool) -> None:
        exchange = self._live.get(channel)
        if exchange is None:
            return
        if sent:
            if exchange.first_byte_at is None and data:
                exchange.first_byte_at = self.now()
            self.capture(exchange, exchange.response_body, data)
        else:
            self.capture(exchange, exchange.request_body, data)

    def websocket_message(
        self, channel: StreamChannel, data: bytes, *, sent: bool, text: bool, fin: bool
    ) -> None:
        exchange = self._live.get(channel)
        if exchange is None:
            return
        current = exchange.open_messages[sent]
        if current is None:
            current = WebSocketMessage(sent=sent, text=text, at=self.now() - exchange.opened_at)
            messages = exchange.messages
            if len(messages) >= MAX_MESSAGES:
                dropped = messages.popleft()
                self.captured -= len(dropped.body.data)
                exchange.dropped_messages += 1
                if exchange.open_messages[not sent] is dropped:
                    exchange.open_messages[not sent] = None
            messages.append(current)
            exchange.open_messages[sent] = current
        self.capture(exchange, current.body, data)
        if fin:
            current.complete = True
            exchange.open_messages[sent] = None
            self.changed(exchange)

    def websocket_close(
        self, channel: StreamChannel, code: int, reason: str, *, sent: bool
    ) -> None:
        exchange = self._live.get(channel)
        if exchange is not None:
            exchange.closes = (*exchange.closes, (sent, code, reason))
            self.changed(exchange)

    def stream_ended(self, channel: StreamChannel) -> None:
        exchange = self._live.pop(channel, None)
        if exchange is not None:
            at = channel.ended_at if channel.ended_at is not None else self.now()
            self.finish(exchange, at=at, outcome=channel.outcome)


class TunnelObserver(StreamObserver):
    """The stream observer of one tunnel on a shared :class:`Recorder`: the exchanges it
    opens carry ``tunnel`` (its connection id); every other event goes to the recorder
    as it is (channels are distinct objects, so tunnels never mix)."""

    __slots__ = ("_recorder", "tunnel")

    def __init__(self, recorder: Recorder, tunnel: str) -> None:
        self._recorder = recorder
        self.tunnel = tunnel

    def stream_opened(self, channel: StreamChannel) -> None:
        self._recorder.open_stream(channel, tunnel=self.tunnel)

    def response_head(self, channel: StreamChannel, status: int) -> None:
        self._recorder.response_head(channel, status)

    def body(self, channel: StreamChannel, data: bytes, *, sent: bool) -> None:
        self._recorder.body(channel, data, sent=sent)

    def websocket_message(
        self, channel: StreamChannel, data: bytes, *, sent: bool, text: bool, fin: bool
    ) -> None:
        self._recorder.websocket_message(channel, data, sent=sent, text=text, fin=fin)

    def websocket_close(
        self, channel: StreamChannel, code: int, reason: str, *, sent: bool
    ) -> None:
        self._recorder.websocket_close(channel, code, reason, sent=sent)

    def stream_ended(self, channel: StreamChannel) -> None:
        self._recorder.stream_ended(channel)
