"""The client's own Prometheus metrics (``--metrics-addr``, off by default): a stream
observer, like the server's, and the tunnel's state.

Metrics, all prefixed ``pipegate_client_`` and labelled only with bounded values (the
tunnel id — one per configured tunnel —, a status class, a reset outcome):

* ``tunnel_up{tunnel}`` — 1 while the tunnel is established;
* ``tunnel_sessions_total{tunnel}`` — tunnels established (reconnects included);
* ``requests_total{tunnel,status_class}`` — streams answered, by ``2xx`` ... ``5xx``
  (``none`` when no response head was sent);
* ``request_duration_seconds{tunnel}`` — open to end, a histogram;
* ``request_bytes_total{tunnel}`` / ``response_bytes_total{tunnel}`` — body bytes
  received from the server and sent back;
* ``open_streams{tunnel}`` — streams in progress;
* ``streams_not_completed_total{tunnel,outcome}`` — streams that ended otherwise than
  complete (``reset``, ``path refused``, ...: the request log's short outcome words).

No path, query, address or header ever becomes a label. Cost: one observer call per
stream event it overrides (open and end), three counter increments and one histogram
observation per stream, each behind prometheus-client's lock (the server measured
3.7-4.4 us for the same work, ``benchmarks/ops_timeit.py``).
"""

from __future__ import annotations

from pipegate_tunnel import StreamChannel, StreamObserver
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["ClientMetrics", "outcome_label"]

_CLASSES = ("0xx", "1xx", "2xx", "3xx", "4xx", "5xx")


def _status_class(status: int | None) -> str:
    if status is None or not 100 <= status <= 599:
        return "none"
    return _CLASSES[status // 100]


class ClientMetrics:
    """The registry of one client process; :meth:`observer` gives each tunnel its
    stream observer."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.up = Gauge(
            "pipegate_client_tunnel_up", "1 while the tunnel is established", ["tunnel"], registry=r
        )
        self.sessions = Counter(
            "pipegate_client_tunnel_sessions", "Tunnels established", ["tunnel"], registry=r
        )
        self.requests = Counter(
            "pipegate_client_requests", "Streams answered", ["tunnel", "status_class"], registry=r
        )
        self.duration = Histogram(
            "pipegate_client_request_duration_seconds",
            "Open to end of a stream",
            ["tunnel"],
            registry=r,
        )
        self.bytes_in = Counter(
            "pipegate_client_request_bytes",
            "Body bytes received from the server",
            ["tunnel"],
            registry=r,
        )
        self.bytes_out = Counter(
            "pipegate_client_response_bytes", "Body bytes sent back", ["tunnel"], registry=r
        )
        self.open = Gauge(
            "pipegate_client_open_streams", "Streams in progress", ["tunnel"], registry=r
        )
        self.not_completed = Counter(
            "pipegate_client_streams_not_completed",
            "Streams that ended otherwise than complete",
            ["tunnel", "outcome"],
            registry=r,
        )

    def observer(self, connection_id: str) -> StreamObserver:
        return _TunnelMetrics(self, connection_id)

    def established(self, connection_id: str) -> None:
        self.up.labels(connection_id).set(1)
        self.sessions.labels(connection_id).inc()

    def lost(self, connection_id: str) -> None:
        self.up.labels(connection_id).set(0)


class _TunnelMetrics(StreamObserver):
    def __init__(self, metrics: ClientMetrics, connection_id: str) -> None:
        self._open = metrics.open.labels(connection_id)
        self._duration = metrics.duration.labels(connection_id)
        self._bytes_in = metrics.bytes_in.labels(connection_id)
        self._bytes_out = metrics.bytes_out.labels(connection_id)
        self._metrics = metrics
        self._tunnel = connection_id

    def stream_opened(self, channel: StreamChannel) -> None:
        self._open.inc()

    def stream_ended(self, channel: StreamChannel) -> None:
        self._open.dec()
        metrics = self._metrics
        metrics.requests.labels(self._tunnel, _status_class(channel.status)).inc()
        ended = channel.ended_at if channel.ended_at is not None else channel.opened_at
        self._duration.observe(max(0.0, ended - channel.opened_at))
        self._bytes_in.inc(channel.bytes_received)
        self._bytes_out.inc(channel.bytes_sent)
        if channel.outcome:
            metrics.not_completed.labels(self._tunnel, outcome_label(channel.outcome)).inc()


def outcome_label(outcome: str) -> str:
    """The bounded part of a stream's outcome note: the words before any ``:`` detail,
    numbers dropped ("websocket closed 1001" and "local app failed mid-body: reset"
    become "websocket closed" and "local app failed mid-body")."""
    words = outcome.split(":", 1)[0].split()
    return " ".join(word for word in words if not word.isdigit())[:40] or "other"
