"""Exceptions of the tunnel shell.

The whole tree::

    TunnelError                   anything the shell raises on its own account
    ├── TransportClosed           the WebSocket under the tunnel is gone (raised by a
    │                             MessageTransport; carries the close code seen, if any)
    └── StreamGone                the stream ended under its user: reset by the peer,
                                  finished, or the tunnel closed

Protocol violations are not here: they are :mod:`pipegate_protocol.errors`
(``RemoteProtocolError`` closes the tunnel with its ``close_code``). A role may fail a
stream with an exception of its own (the server fails relays with its ``RelayError``
subclasses, which carry the HTTP status); :class:`StreamGone` is what the shell raises
when the role did not say more.
"""

from __future__ import annotations

__all__ = ["StreamGone", "TransportClosed", "TunnelError"]


class TunnelError(Exception):
    """Base of the shell's exceptions."""


class TransportClosed(TunnelError):
    """The WebSocket is gone; ``code`` is the close code observed (1006 when none was)."""

    def __init__(self, message: str = "the tunnel WebSocket is closed", *, code: int = 1006):
        super().__init__(message)
        self.code = code


class StreamGone(TunnelError):
    """The stream ended under us: reset by the peer, finished, or the tunnel closed.

    Stream handlers let it propagate; the shell treats it as a quiet end of the stream.
    """
