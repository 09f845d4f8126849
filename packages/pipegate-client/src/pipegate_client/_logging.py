"""Log output that costs one write per event-loop turn, not one per line.

The client logs a line per relayed request. Written one by one, each line is a
``write`` system call on stderr (which Python line-buffers), and at a few thousand
requests a second that is a noticeable share of the client's CPU. The
:class:`TurnBufferedHandler` formats each record at once but writes the lines of one
loop turn together, from a callback at the end of that turn: a line appears at most
one turn late. Outside a running loop (start-up, shutdown, other threads) it writes
immediately, and ``logging.shutdown`` flushes what is left.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TextIO

from pipegate_tunnel import StreamChannel, StreamObserver

__all__ = ["LOG_FORMAT", "LineFormatter", "RequestLog", "TurnBufferedHandler"]

#: The client's log line: time, level, logger name, message.
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class LineFormatter(logging.Formatter):
    """Formats :data:`LOG_FORMAT` exactly as :class:`logging.Formatter` does, for less.

    The generic formatter looks every field up by name and formats the time anew for
    each line; at a line per request that was a few percent of the client's CPU.
    This one builds the line directly and reuses the time text within a second.
    Records with exception or stack information take the generic path.
    """

    def __init__(self) -> None:
        super().__init__(LOG_FORMAT)
        self._second = -1
        self._stamp = ""

    def format(self, record: logging.LogRecord) -> str:
        if record.exc_info or record.exc_text or record.stack_info:
            return super().format(record)
        second = int(record.created)
        if second != self._second:
            self._stamp = time.strftime(self.default_time_format, self.converter(second))
            self._second = second
        record.message = record.getMessage()
        return (
            f"{self._stamp},{int(record.msecs):03d} {record.levelname} "
            f"{record.name}: {record.message}"
        )


class TurnBufferedHandler(logging.StreamHandler[TextIO]):
    """A :class:`logging.StreamHandler` that batches the lines of a loop turn."""

    def __init__(self, stream: TextIO) -> None:
        super().__init__(stream)
        self._lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record) + self.terminator
        except Exception:
            self.handleError(record)
            return
        self._lines.append(line)
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._write()
            return
        if len(self._lines) == 1:
            loop.call_soon(self.flush)

    def flush(self) -> None:
        self.acquire()
        try:
            self._write()
        finally:
            self.release()

    def _write(self) -> None:
        if not self._lines:
            return
        text = "".join(self._lines)
        self._lines.clear()
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):  # stderr closed or gone: nothing left to tell
            pass


class RequestLog(StreamObserver):
    """The per-request log line, written when a stream ends (a stream observer).

    ``[id] METHOD /path STATUS (how it ended) 1.2ms in=…B out=…B``: the status the
    client answered (``-`` when none), a note when the stream did not simply
    complete, the time from the open to the end, and the body (or WebSocket) bytes
    received from the server and sent back. The query string is never logged: it
    may carry secrets.
    """

    #: Attach the line's fields to the record (``extra``) for ``--log-format json``;
    #: off for text, where they would cost a dict per request for nothing.
    structured = False

    def __init__(self, connection_id: str, logger: logging.Logger) -> None:
        self._connection_id = connection_id
        self._logger = logger

    def stream_ended(self, channel: StreamChannel) -> None:
        if not self._logger.isEnabledFor(logging.INFO):
            return
        status = "-" if channel.status is None else str(channel.status)
        if channel.outcome:
            status = f"{status} ({channel.outcome})"
        ended = channel.ended_at if channel.ended_at is not None else channel.opened_at
        extra = None
        if self.structured:
            extra = {
                "tunnel": self._connection_id,
                "method": channel.method,
                "path": channel.path,
                "status": channel.status,
                "outcome": channel.outcome or None,
                "duration_ms": round((ended - channel.opened_at) * 1000, 3),
                "bytes_in": channel.bytes_received,
                "bytes_out": channel.bytes_sent,
            }
        self._logger.info(
            "[%s] %s %s %s %.1fms in=%dB out=%dB",
            self._connection_id,
            channel.method,
            channel.path,
            status,
            (ended - channel.opened_at) * 1000,
            channel.bytes_received,
            channel.bytes_sent,
            extra=extra,
        )
