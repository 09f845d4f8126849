"""A hook at each step of a stream, on both sides (httpcore's ``trace`` is the model).

Logging, an inspector and metrics are all users of one :class:`StreamObserver`: the
shell calls it when a stream opens, when its response head passes, for every body
piece and WebSocket message either way, for a WebSocket close either way, and when the
stream ends. The channel passed in carries what the events add up to (status, response
headers, byte counts, timings, how it ended), so most observers only implement
:meth:`StreamObserver.stream_ended`. :class:`StreamObservers` hands each event to
several observers in turn (the client's request log and its inspector).

Body and WebSocket events pass the bytes object that is being sent or was received,
not a copy: an observer that keeps some of it must copy what it keeps (``bytes(...)``
of a slice), and must not hold on to the object itself beyond the call, because that
would keep a whole frame alive.

Cost: with no observer attached the shell pays one ``is None`` test per event; with
one, one method call. Observers run inside the tunnel's reader and senders: they must
not block and must not raise (an exception would end the stream that raised it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._channel import StreamChannel

__all__ = ["StreamObserver", "StreamObservers"]


class StreamObserver:
    """Subclass and override the events you need; every method here does nothing."""

    def stream_opened(self, channel: StreamChannel) -> None:
        """The stream exists: ``channel.method`` / ``channel.path`` / ``channel.kind``
        are set (the client's channel also carries the server's ``open`` message),
        ``channel.opened_at`` is the loop time."""

    def response_head(self, channel: StreamChannel, status: int) -> None:
        """The response head passed (sent by the client, received by the server);
        ``channel.response_headers`` holds its headers in wire order."""

    def body(self, channel: StreamChannel, data: bytes, *, sent: bool) -> None:
        """``data``, a piece of the body, was sent (``sent``) or received on the stream.
        It is the object on its way, not a copy: copy what you keep."""

    def websocket_message(
        self, channel: StreamChannel, data: bytes, *, sent: bool, text: bool, fin: bool
    ) -> None:
        """A WebSocket message piece passed one way or the other: ``text`` says whether
        its message is text, ``fin`` that this piece ends it. Not a copy, as for
        :meth:`body`."""

    def websocket_close(
        self, channel: StreamChannel, code: int, reason: str, *, sent: bool
    ) -> None:
        """A WebSocket close with ``code`` and ``reason`` passed one way or the other."""

    def stream_ended(self, channel: StreamChannel) -> None:
        """The stream's user is done with it: ``channel.status``, ``channel.outcome``,
        ``channel.bytes_sent`` / ``bytes_received`` and ``channel.ended_at`` are final."""


class StreamObservers(StreamObserver):
    """Several observers as one: each event goes to each of them, in the given order.

    An observer is only called for the events it overrides (the request log, which
    implements :meth:`~StreamObserver.stream_ended` alone, costs nothing on the
    others). Cost: one method call per interested observer per event, plus the loop.
    """

    __slots__ = (
        "_body",
        "_ended",
        "_head",
        "_opened",
        "_websocket_close",
        "_websocket_message",
        "observers",
    )

    def __init__(self, *observers: StreamObserver) -> None:
        self.observers = observers
        self._opened = _overriding(observers, "stream_opened")
        self._head = _overriding(observers, "response_head")
        self._body = _overriding(observers, "body")
        self._websocket_message = _overriding(observers, "websocket_message")
        self._websocket_close = _overriding(observers, "websocket_close")
        self._ended = _overriding(observers, "stream_ended")

    def stream_opened(self, channel: StreamChannel) -> None:
        for observer in self._opened:
            observer.stream_opened(channel)

    def response_head(self, channel: StreamChannel, status: int) -> None:
        for observer in self._head:
            observer.response_head(channel, status)

    def body(self, channel: StreamChannel, data: bytes, *, sent: bool) -> None:
        for observer in self._body:
            observer.body(channel, data, sent=sent)

    def websocket_message(
        self, channel: StreamChannel, data: bytes, *, sent: bool, text: bool, fin: bool
    ) -> None:
        for observer in self._websocket_message:
            observer.websocket_message(channel, data, sent=sent, text=text, fin=fin)

    def websocket_close(
        self, channel: StreamChannel, code: int, reason: str, *, sent: bool
    ) -> None:
        for observer in self._websocket_close:
            observer.websocket_close(channel, code, reason, sent=sent)

    def stream_ended(self, channel: StreamChannel) -> None:
        for observer in self._ended:
            observer.stream_ended(channel)


def _overriding(observers: tuple[StreamObserver, ...], event: str) -> tuple[StreamObserver, ...]:
    """The observers whose class implements ``event`` (not :class:`StreamObserver`'s
    no-op), in order."""
    default = getattr(StreamObserver, event)
    return tuple(o for o in observers if getattr(type(o), event) is not default)
