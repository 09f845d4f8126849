"""Per-request cost of the operations observers (issue 16), by timeit: the metrics'
and the access log's ``stream_ended`` on a finished channel, and a new request id.

    uv run python benchmarks/ops_timeit.py

Prints microseconds per call, the best of 5 runs of 200 000 calls each.
"""

from __future__ import annotations

import io
import logging
import timeit
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

from pipegate_protocol import StreamKind
from pipegate_server._logs import JsonFormatter, TextFormatter
from pipegate_server._metrics import AccessLog, ServerMetrics
from pipegate_server._registry import TunnelRegistry
from pipegate_server._relay import _new_request_id
from pipegate_server._tunnel import RelayChannel

CALLS = 200_000


class _Loop:
    def time(self) -> float:
        return 1.0


def _channel() -> RelayChannel:
    shell: Any = SimpleNamespace(
        loop=_Loop(),
        observer=None,
        credential=SimpleNamespace(label="alice"),
        connection_id="node",
        requests=0,
        bytes_in=0,
        bytes_out=0,
        closed=False,
    )
    channel = RelayChannel(shell, 1, method="GET", path="/x", kind=StreamKind.HTTP)
    channel.status = 200
    channel.bytes_sent = 10
    channel.bytes_received = 500
    channel.ended_at = 1.002
    channel.visitor = "127.0.0.1"
    channel.request_id = "0123456789abcdef"
    return channel


def best(call: Callable[[], object]) -> float:
    """Microseconds per call."""
    return min(timeit.repeat(call, number=CALLS, repeat=5)) / CALLS * 1e6


def _logger(name: str, formatter: logging.Formatter | None) -> logging.Logger:
    logger = logging.getLogger(f"bench.{name}")
    logger.propagate = False
    if formatter is None:
        logger.setLevel(logging.WARNING)
        return logger
    handler = logging.StreamHandler(io.StringIO())
    handler.setFormatter(formatter)
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    return logger


def main() -> None:
    channel = _channel()
    metrics = ServerMetrics(TunnelRegistry())
    print(f"metrics stream_ended:          {best(lambda: metrics.stream_ended(channel)):6.2f} us")
    for name, formatter in (("json", JsonFormatter()), ("text", TextFormatter()), ("off", None)):
        access = AccessLog(_logger(name, formatter))
        cost = best(lambda access=access: access.stream_ended(channel))  # type: ignore[misc]
        print(f"access log ({name:4}) stream_ended: {cost:6.2f} us")
    print(f"new request id:                {best(_new_request_id):6.2f} us")


if __name__ == "__main__":
    main()
