"""The per-request log lines of one loop turn leave in one write."""

from __future__ import annotations

import asyncio
import io
import logging
import sys

from pipegate_client._logging import LOG_FORMAT, LineFormatter, TurnBufferedHandler


class CountingStream(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.writes: list[str] = []

    def write(self, text: str) -> int:
        self.writes.append(text)
        return super().write(text)


def _logger(stream: CountingStream) -> logging.Logger:
    logger = logging.getLogger(f"pipegate_client.test.{id(stream)}")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    handler = TurnBufferedHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    logger.addHandler(handler)
    return logger


async def test_lines_of_one_turn_are_written_together_at_its_end() -> None:
    stream = CountingStream()
    logger = _logger(stream)
    logger.info("first %d", 1)
    logger.warning("second")
    assert stream.writes == []  # nothing yet: the turn is not over
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert stream.writes == ["INFO first 1\nWARNING second\n"]
    logger.info("third")
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert stream.writes[1:] == ["INFO third\n"]


def test_without_a_running_loop_each_line_is_written_at_once() -> None:
    stream = CountingStream()
    logger = _logger(stream)
    logger.info("alone")
    assert stream.getvalue() == "INFO alone\n"


async def test_flush_writes_what_is_buffered() -> None:
    stream = CountingStream()
    logger = _logger(stream)
    logger.info("pending")
    for handler in logger.handlers:
        handler.flush()  # what logging.shutdown() does at exit
    assert stream.getvalue() == "INFO pending\n"


async def test_a_closed_stream_loses_lines_quietly() -> None:
    stream = CountingStream()
    logger = _logger(stream)
    stream.close()
    logger.info("into the void")
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert stream.writes == ["INFO into the void\n"]  # attempted once, error swallowed


def _record(message: str, *args: object, created: float) -> logging.LogRecord:
    record = logging.LogRecord("pipegate_client", logging.INFO, __file__, 1, message, args, None)
    record.created = created
    record.msecs = (created - int(created)) * 1000
    return record


def test_line_formatter_writes_what_the_generic_formatter_writes() -> None:
    generic = logging.Formatter(LOG_FORMAT)
    fast = LineFormatter()
    for created in (1_700_000_000.0, 1_700_000_000.5, 1_700_000_000.999, 1_700_000_001.002):
        record = _record("[%s] %s %s %d", "node", "GET", "/a", 200, created=created)
        assert fast.format(record) == generic.format(record)


def test_line_formatter_keeps_tracebacks() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.LogRecord(
            "pipegate_client", logging.ERROR, __file__, 1, "failed", (), sys.exc_info()
        )
    text = LineFormatter().format(record)
    assert text.splitlines()[0].endswith("ERROR pipegate_client: failed")
    assert "ValueError: boom" in text


def test_request_log_writes_status_outcome_timing_and_bytes() -> None:
    """The per-request line is a stream observer: written once, at the stream's end."""
    from types import SimpleNamespace
    from typing import Any

    from pipegate_client._logging import RequestLog
    from pipegate_tunnel import StreamChannel

    stream = CountingStream()
    logger = _logger(stream)
    loop = asyncio.new_event_loop()
    try:
        shell: Any = SimpleNamespace(loop=loop, observer=None)
        log = RequestLog("node", logger)
        complete = StreamChannel(shell, 1, method="GET", path="/a")
        complete.status, complete.bytes_received, complete.bytes_sent = 200, 3, 5
        complete.ended_at = complete.opened_at + 0.0123
        log.stream_ended(complete)
        reset = StreamChannel(shell, 3, method="POST", path="/b")
        reset.outcome = "reset by server"
        reset.ended_at = reset.opened_at
        log.stream_ended(reset)
    finally:
        loop.close()
    assert stream.getvalue().splitlines() == [
        "INFO [node] GET /a 200 12.3ms in=3B out=5B",
        "INFO [node] POST /b - (reset by server) 0.0ms in=0B out=0B",
    ]
