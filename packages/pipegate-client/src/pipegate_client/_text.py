"""Text that came from the server, made safe to print on a terminal or in a log line.

A server (or anyone on a ``ws://`` path) chooses the public URL of its hello, close
reasons and refusal bodies; printed raw, ``\\x1b[2J`` clears the user's terminal and
other escape sequences rewrite what it shows (issue 11 row 12). :func:`printable`
escapes every character :meth:`str.isprintable` rejects (C0 and C1 controls, DEL,
line breaks, bidirectional overrides), so text from the server can never act on the
terminal or forge a log line.
"""

from __future__ import annotations

__all__ = ["printable"]


def printable(text: str) -> str:
    """``text`` with each non-printable character written as a Python escape
    (``\\x1b``, ``\\n``, ``\\u202e``); printable text is returned as it is."""
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in text)
