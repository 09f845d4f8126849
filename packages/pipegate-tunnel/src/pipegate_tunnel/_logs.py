"""One JSON log line format for both roles (``--log-format json`` of the server and of
the client), from the standard library only.

A line always has ``time`` (UTC, ISO 8601 with milliseconds), ``level``, ``logger``
and ``message``; ``exception`` when one is attached; and every field the log call
passed in ``extra`` (the server's access log: ``tunnel``, ``method``, ``path``,
``status``, ...; the client's request log the same names). JSON escapes control
characters itself, so text from a peer cannot forge another line. No secret is ever
passed to a log call.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

__all__ = ["JsonFormatter", "utc_timestamp"]

#: The attributes every LogRecord has; anything else on a record came from ``extra``.
_STANDARD = frozenset(
    logging.LogRecord("", 0, "", 0, "", None, None).__dict__.keys()
    | {"message", "asctime", "color_message", "taskName"}
)


def utc_timestamp(record: logging.LogRecord) -> str:
    """``2026-12-01T03:22:00.123Z``: the record's time in UTC."""
    seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
    return f"{seconds}.{int(record.msecs):03d}Z"


class JsonFormatter(logging.Formatter):
    """One JSON object per line (see the module docstring for its keys)."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": utc_timestamp(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str, ensure_ascii=False)
