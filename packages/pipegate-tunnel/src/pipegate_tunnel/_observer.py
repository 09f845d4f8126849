"""A hook at each step of a stream, on both sides (httpcore's ``trace`` is the model).

Logging, an inspector and metrics are all users of one :class:`StreamObserver`: the
shell calls it when a stream opens, when its response head passes, for every body
piece and WebSocket message either way, and when the stream ends. The channel
passed in carries what the events add up to (status, byte counts, timings, how it
ended), so most observers only implement :meth:`StreamObserver.stream_ended`.

Cost: with no observer attached the shell pays one ``is None`` test per event; with
one, one method call. Observers run inside the tunnel's reader and senders: they must
not block and must not raise (an exception would end the stream that raised it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._channel import StreamChannel

__all__ = ["StreamObserver"]


class StreamObserver:
    """Subclass and override the events you need; every method here does nothing."""

    def stream_opened(self, channel: StreamChannel) -> None:
        """The stream exists: ``channel.open_message`` is the request head (the
        server's ``open``), ``channel.opened_at`` the loop time."""

    def response_head(self, channel: StreamChannel, status: int) -> None:
        """The response head passed (sent by the client, received by the server)."""

    def body(self, channel: StreamChannel, size: int, *, sent: bool) -> None:
        """``size`` body bytes were sent (``sent``) or received on the stream."""

    def websocket_message(self, channel: StreamChannel, size: int, *, sent: bool) -> None:
        """A WebSocket message piece of ``size`` bytes passed one way or the other."""

    def stream_ended(self, channel: StreamChannel) -> None:
        """The stream's user is done with it: ``channel.status``, ``channel.outcome``,
        ``channel.bytes_sent`` / ``bytes_received`` and ``channel.ended_at`` are final."""
