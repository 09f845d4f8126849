"""One log format for everything the server prints, uvicorn's lines included.

:func:`configure_logging` puts one handler on the root logger, with
:class:`TextFormatter` (``time level logger: message``) or :class:`JsonFormatter`
(one JSON object per line), and makes uvicorn's loggers propagate to it instead of
printing with their own format (uvicorn is then run with ``log_config=None``).

A JSON line always has ``time`` (UTC, ISO 8601 with milliseconds), ``level``,
``logger`` and ``message``; ``exception`` when one is attached; and every field a
caller passed in ``extra`` (the access log's ``tunnel``, ``method``, ``path``,
``status``, ``bytes_in``, ``bytes_out``, ``duration_ms``, ``visitor``,
``request_id``; the banner's ``version``, ``listen``, ...). No secret is ever passed
to a log call: tokens are never formatted into messages or fields.
"""

from __future__ import annotations

import logging
import sys
from typing import TextIO

# The JSON line format is shared with the client (pipegate_tunnel._logs).
from pipegate_tunnel import JsonFormatter, utc_timestamp

__all__ = ["LOG_FORMATS", "JsonFormatter", "TextFormatter", "configure_logging"]

LOG_FORMATS = ("text", "json")


class TextFormatter(logging.Formatter):
    """``2026-12-01T03:22:00.123Z INFO pipegate.server: message``, in UTC."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return utc_timestamp(record)


def configure_logging(
    log_format: str = "text", level: str = "info", stream: TextIO | None = None
) -> logging.Handler:
    """Send every log line (PipeGate's and uvicorn's) through one handler on
    ``stream`` (default stderr) in ``log_format``; returns the handler.

    Raises :class:`ValueError` for an unknown format or level.
    """
    if log_format not in LOG_FORMATS:
        raise ValueError(f"unknown log format {log_format!r}: use one of {', '.join(LOG_FORMATS)}")
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        raise ValueError(f"unknown log level {level!r}")
    handler = logging.StreamHandler(sys.stderr if stream is None else stream)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(numeric)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.asgi"):
        uvicorn_logger = logging.getLogger(name)
        uvicorn_logger.handlers = []
        uvicorn_logger.propagate = True
        uvicorn_logger.setLevel(logging.NOTSET)  # the root's level rules
    # uvicorn's access lines lack the tunnel, bytes and ids: the server's own access
    # log (``--access-log``) replaces them.
    access = logging.getLogger("uvicorn.access")
    access.handlers = []
    access.propagate = False
    return handler
