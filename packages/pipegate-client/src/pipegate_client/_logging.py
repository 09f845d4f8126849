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
from typing import TextIO

__all__ = ["TurnBufferedHandler"]


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
