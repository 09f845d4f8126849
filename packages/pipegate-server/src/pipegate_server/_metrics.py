"""Prometheus metrics of one server, and the access log: both are stream observers.

:class:`ServerMetrics` is the :class:`~pipegate_tunnel.StreamObserver` every gateway
installs. It counts each relayed stream when it ends (status class, token name,
duration, bytes both ways) and keeps the per-tunnel totals the admin API lists
(:attr:`~._tunnel.Tunnel.requests` and friends). The gateway and the tunnels call its
few other methods for events that are not streams: a tunnel connecting or ending, a
handshake refused, a visitor refused by access rules, a request the server answered
without reaching a tunnel, a stream reset.

Label values are bounded: a status *class* (``2xx``), a token's name from the
operator's tokens file (or ``shared token``), a close code's name, a reset code or an
HTTP status the server itself answers with. No path, no visitor address, no request
id ever becomes a label. Per-tunnel-id labels exist only with ``per_tunnel=True``
(``--metrics-per-tunnel``), for servers whose operator knows the ids are few.

Tunnels connected and streams open are read from the directory when scraped, so they
cost nothing between scrapes.

Cost on the hot path, per relayed request (``uv run python benchmarks/ops_timeit.py``:
best of 5 x 200k calls of ``stream_ended`` on a finished channel, on this shared
2-core machine): metrics 0.65-0.84 us. It was 2.5-2.7 us in the same run (3.7-4.4 us
in earlier ones) while every request went through prometheus-client's counters and
histogram: four values behind four locks, about 20 Python calls, half of the calls a
relayed request gained since 089dac5 in a cProfile of the server. The four metrics
every relayed request moves (requests, bytes both ways, duration) are now plain
numbers in :class:`_RequestTotals`, made into metric families only when scraped, with
prometheus-client's public ``CounterMetricFamily`` and ``HistogramMetricFamily``: the
same names, labels, buckets and ``_created`` samples as the ``Counter`` and
``Histogram`` they replace. Only the event loop writes them; a scrape from the
``--metrics-addr`` thread reads copies made in one C call each. The access log: off
0.1 us, on 16-21 us as a text line and 29-30 us as a JSON line written to a
``StringIO`` handler; a new request id 0.5 us. The access log is off by default.
"""

from __future__ import annotations

import logging
import time
from bisect import bisect_left
from collections.abc import Iterator
from typing import TYPE_CHECKING, cast

from pipegate_protocol import CloseCode
from pipegate_tunnel import StreamChannel, StreamObserver
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from ._registry import TunnelDirectory
    from ._tunnel import RelayChannel, Tunnel

__all__ = ["CONTENT_TYPE", "AccessLog", "ServerMetrics", "status_class"]

#: The content type of :meth:`ServerMetrics.render` (Prometheus text format 0.0.4).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_CLASSES = ("0xx", "1xx", "2xx", "3xx", "4xx", "5xx")
_CLOSE_NAMES = {int(code): code.name.lower() for code in CloseCode}


def status_class(status: int | None) -> str:
    """``"2xx"`` for 200..299 and so on; ``"none"`` when the caller got no status
    (the connection was cut)."""
    if status is None or not 100 <= status <= 599:
        return "none"
    return _CLASSES[status // 100]


def close_reason(code: int | None) -> str:
    """A bounded label for a tunnel's close code: its name when the protocol names it,
    ``"lost"`` without a close, ``"other"`` for any other code a peer may send."""
    if code is None or code == 1006:
        return "lost"
    return _CLOSE_NAMES.get(code, "other")


class _DirectoryCollector(Collector):
    """Gauges read from the directory at scrape time."""

    def __init__(self, directory: TunnelDirectory, per_tunnel: bool) -> None:
        self.directory = directory
        self.per_tunnel = per_tunnel

    def collect(self) -> Iterator[Metric]:
        tunnels = list(self.directory.running())
        connected = GaugeMetricFamily(
            "pipegate_tunnels_connected", "Tunnels holding an id on this server"
        )
        connected.add_metric([], len(self.directory))
        yield connected
        labels = ["tunnel"] if self.per_tunnel else []
        streams = GaugeMetricFamily(
            "pipegate_open_streams", "Streams open through tunnels now", labels=labels
        )
        if self.per_tunnel:
            for tunnel in tunnels:
                streams.add_metric([tunnel.connection_id], tunnel.active_streams)
        else:
            streams.add_metric([], sum(tunnel.active_streams for tunnel in tunnels))
        yield streams


#: The duration histogram's upper bounds (prometheus-client's defaults, ``+Inf`` last).
_BOUNDS = tuple(float(bound) for bound in Histogram.DEFAULT_BUCKETS)
#: Their ``le`` label values, as prometheus-client writes them (``0.005``, ``1.0``, ``+Inf``).
_BOUND_NAMES = tuple("+Inf" if bound == float("inf") else repr(bound) for bound in _BOUNDS)


class _RequestTotals(Collector):
    """What every relayed request adds to the metrics, as plain numbers, exposed as the
    ``pipegate_requests`` counter (by status class, token and, per tunnel, tunnel id),
    the two byte counters and the duration histogram when scraped.

    The event loop is the only writer; :meth:`collect` may run in the metrics server's
    thread and reads ``list(...)`` copies, each made under the GIL in one call, so a
    scrape never sees a dict changing size.
    """

    def __init__(self, request_labels: list[str]) -> None:
        self.request_labels = request_labels
        #: Requests by label values, and when each label set was first seen.
        self.requests: dict[tuple[str, ...], int] = {}
        self.created: dict[tuple[str, ...], float] = {}
        self.bytes_in = 0
        self.bytes_out = 0
        #: Observations per bucket (not cumulative), in :data:`_BOUNDS` order.
        self.buckets = [0] * len(_BOUNDS)
        self.duration_sum = 0.0
        self.started = time.time()

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            "pipegate_requests",
            "Public requests relayed through a tunnel, by the status class the caller got "
            "and the tunnel's token name",
            labels=self.request_labels,
        )
        created = self.created
        for key, count in list(self.requests.items()):
            requests.add_metric(key, count, created=created.get(key, self.started))
        yield requests
        duration = HistogramMetricFamily(
            "pipegate_request_duration_seconds",
            "Time from a relayed request's stream opening to its end",
        )
        buckets, total = list(self.buckets), self.duration_sum
        cumulative = 0
        points: list[tuple[str, float]] = []
        for name, count in zip(_BOUND_NAMES, buckets, strict=True):
            cumulative += count
            points.append((name, cumulative))
        duration.add_metric([], points, total)
        duration.add_sample("pipegate_request_duration_seconds_created", {}, self.started)
        yield duration
        for name, doc, value in (
            (
                "pipegate_request_bytes",
                "Request body and WebSocket bytes from callers, relayed into tunnels",
                self.bytes_in,
            ),
            (
                "pipegate_response_bytes",
                "Response body and WebSocket bytes from tunnels, relayed to callers",
                self.bytes_out,
            ),
        ):
            family = CounterMetricFamily(name, doc)
            family.add_metric([], value, created=self.started)
            yield family


class ServerMetrics(StreamObserver):
    """The server's Prometheus metrics in their own registry (see the module docstring).

    Each gateway has its own :attr:`registry`, so several servers in one process (the
    tests) never share counters. :meth:`render` is what the metrics endpoints serve.
    """

    def __init__(self, directory: TunnelDirectory, *, per_tunnel: bool = False) -> None:
        self.per_tunnel = per_tunnel
        registry = self.registry = CollectorRegistry(auto_describe=False)
        registry.register(_DirectoryCollector(directory, per_tunnel))
        self.connects = Counter("pipegate_tunnel_connects", "Tunnels accepted", registry=registry)
        self.disconnects = Counter(
            "pipegate_tunnel_disconnects",
            "Tunnels ended, by close reason",
            ["reason"],
            registry=registry,
        )
        self.handshakes_refused = Counter(
            "pipegate_handshakes_refused",
            "Tunnel handshakes refused, by HTTP status",
            ["status"],
            registry=registry,
        )
        request_labels = ["status_class", "token", *(["tunnel"] if per_tunnel else [])]
        self._totals = _RequestTotals(request_labels)
        registry.register(self._totals)
        self.requests_refused = Counter(
            "pipegate_requests_refused",
            "Public requests the server answered itself before reaching a tunnel "
            "(no tunnel, offline, busy, too large, bad request), by status",
            ["status"],
            registry=registry,
        )
        self.resets = Counter(
            "pipegate_stream_resets",
            "Streams reset, by reset code and the side that reset them",
            ["reason", "side"],
            registry=registry,
        )
        self.moves = Counter(
            "pipegate_tunnel_moves",
            "Tunnels handed off to another cluster node that the balancer sends them to",
            registry=registry,
        )
        self.visitors_refused = Counter(
            "pipegate_visitors_refused",
            "Visitors refused by a tunnel's access rules, by HTTP status",
            ["status"],
            registry=registry,
        )

    def render(self) -> bytes:
        """The metrics in the Prometheus text format (:data:`CONTENT_TYPE`)."""
        return generate_latest(self.registry)

    # ------------------------------------------------------------ events

    def stream_ended(self, channel: StreamChannel) -> None:
        tunnel = cast("Tunnel", channel.shell)
        status = channel.status
        if status is None:
            status = cast("RelayChannel", channel).answered
        key: tuple[str, ...] = (status_class(status), tunnel.credential.label)
        if self.per_tunnel:
            key += (tunnel.connection_id,)
        totals = self._totals
        requests = totals.requests
        count = requests.get(key)
        if count is None:
            totals.created[key] = time.time()
            count = 0
        requests[key] = count + 1
        sent, received = channel.bytes_sent, channel.bytes_received
        totals.bytes_in += sent
        totals.bytes_out += received
        if channel.ended_at is not None:
            duration = channel.ended_at - channel.opened_at
            totals.buckets[bisect_left(_BOUNDS, duration)] += 1
            totals.duration_sum += duration
        tunnel.requests += 1
        tunnel.bytes_in += sent
        tunnel.bytes_out += received

    def tunnel_connected(self) -> None:
        self.connects.inc()

    def tunnel_moved(self) -> None:
        self.moves.inc()

    def tunnel_ended(self, tunnel: Tunnel) -> None:
        self.disconnects.labels(close_reason(tunnel.close_code)).inc()
        if self.per_tunnel:
            totals, prefix = self._totals, tunnel.connection_id
            for key in [k for k in totals.requests if k[-1] == prefix]:
                del totals.requests[key]
                totals.created.pop(key, None)

    def handshake_refused(self, status: int) -> None:
        self.handshakes_refused.labels(str(status)).inc()

    def request_refused(self, status: int) -> None:
        self.requests_refused.labels(str(status)).inc()

    def stream_reset(self, reason: str, side: str) -> None:
        self.resets.labels(reason, side).inc()

    def visitor_refused(self, status: int) -> None:
        self.visitors_refused.labels(str(status)).inc()


class AccessLog(StreamObserver):
    """One ``access`` line per relayed request on ``logger`` (default
    ``pipegate.access``), with the fields as record attributes, so that the JSON
    format carries them as keys: ``tunnel``, ``method``, ``path``, ``status``,
    ``bytes_in``, ``bytes_out``, ``duration_ms``, ``visitor``, ``request_id``.

    The path is the one the local app saw (without the query: it may carry secrets).
    """

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self.logger = logger if logger is not None else logging.getLogger("pipegate.access")

    def stream_ended(self, channel: StreamChannel) -> None:
        logger = self.logger
        if not logger.isEnabledFor(logging.INFO):
            return
        relay = cast("RelayChannel", channel)
        tunnel = cast("Tunnel", channel.shell)
        status = channel.status if channel.status is not None else relay.answered
        ended = channel.ended_at if channel.ended_at is not None else channel.opened_at
        fields = {
            "tunnel": tunnel.connection_id,
            "method": channel.method,
            "path": channel.path,
            "status": status,
            "bytes_in": channel.bytes_sent,
            "bytes_out": channel.bytes_received,
            "duration_ms": round((ended - channel.opened_at) * 1000, 3),
            "visitor": relay.visitor,
            "request_id": relay.request_id,
        }
        logger.info(
            "%s %s %s %s in=%d out=%d %.1fms visitor=%s rid=%s",
            tunnel.connection_id,
            channel.method,
            channel.path,
            "-" if status is None else status,
            channel.bytes_sent,
            channel.bytes_received,
            fields["duration_ms"],
            relay.visitor or "-",
            relay.request_id or "-",
            extra=fields,
        )
