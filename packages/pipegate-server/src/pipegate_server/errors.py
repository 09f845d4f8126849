"""Errors raised by :mod:`pipegate_server`.

The whole tree::

    ServerError                   anything this package raises on purpose
    ├── ConfigurationError        the settings cannot work (no token, bad limits)
    │   └── TokensFileError       the tokens file is missing, not TOML, or malformed
    └── RelayError                a public request could not be relayed; carries ``status``
        ├── TunnelNotFoundError   no tunnel is connected for the id              (404)
        ├── BodyTooLargeError     the request body exceeds --max-body-size       (413)
        ├── HeadersTooLargeError  the request head exceeds --max-header-size     (431)
        ├── TunnelBusyError       the tunnel is at its stream limit, queue full  (503)
        ├── TunnelClosedError     the tunnel dropped while the request was open  (502)
        ├── StreamResetError      the client reset the stream (local app failed) (502)
        ├── ResponseTimeoutError  no response head within --response-timeout     (504)
        └── CallerGoneError       the public caller disconnected; nothing is sent (499)

A :class:`RelayError` is never shown to a caller as a traceback: the relay answers
with ``status`` and the one-line ``str(error)`` as a ``text/plain`` body when the
response has not started yet, and aborts the connection otherwise. Errors of
:mod:`pipegate_protocol` that the tunnel peer causes end only that tunnel.
"""

from __future__ import annotations

__all__ = [
    "BodyTooLargeError",
    "CallerGoneError",
    "ConfigurationError",
    "HeadersTooLargeError",
    "RelayError",
    "ResponseTimeoutError",
    "ServerError",
    "StreamResetError",
    "TokensFileError",
    "TunnelBusyError",
    "TunnelClosedError",
    "TunnelNotFoundError",
]


class ServerError(Exception):
    """Base of every error this package raises on purpose."""


class ConfigurationError(ServerError):
    """The server cannot start with these settings; the message says how to fix them."""


class TokensFileError(ConfigurationError):
    """The tokens file cannot be read or does not have the documented shape."""


class RelayError(ServerError):
    """A public request could not be relayed; ``status`` is what the caller gets."""

    status: int = 502

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        if status is not None:
            self.status = status


class TunnelNotFoundError(RelayError):
    """No tunnel is connected for the id in the request path."""

    status = 404


class BodyTooLargeError(RelayError):
    """The request body is larger than the server accepts."""

    status = 413


class HeadersTooLargeError(RelayError):
    """The request head (headers) is larger than the server accepts."""

    status = 431


class TunnelBusyError(RelayError):
    """The tunnel cannot take another stream now; the caller may retry later."""

    status = 503
    retry_after = 1


class TunnelClosedError(RelayError):
    """The tunnel closed (or is going away) while the request was in flight."""

    status = 502


class StreamResetError(RelayError):
    """The tunnel client abandoned the stream, e.g. because the local app failed.

    ``reset_code`` is the protocol's reset code (``"upstream_failed"``, ...) when the
    client sent one.
    """

    status = 502
    reset_code = ""


class ResponseTimeoutError(RelayError):
    """The local app did not produce a response head in time."""

    status = 504


class CallerGoneError(RelayError):
    """The public caller went away; the stream is reset and nobody is answered."""

    status = 499
