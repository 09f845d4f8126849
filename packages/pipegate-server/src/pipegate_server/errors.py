"""Errors raised by :mod:`pipegate_server`.

The whole tree::

    ServerError                   anything this package raises on purpose
    ├── ConfigurationError        the settings cannot work (no token, bad limits)
    │   └── TokensFileError       the tokens file is missing, not TOML, or malformed
    ├── TooManyFailuresError      an address has too many failing tunnel handshakes
    │                             waiting out their delay; refused at once   (429)
    ├── DirectoryUnavailableError cluster mode: Redis cannot be reached      (503)
    └── RelayError                a public request could not be relayed; carries ``status``
        ├── TunnelNotFoundError   no tunnel is connected for the id              (404)
        │   └── TunnelOfflineError    its tunnel ended within --offline-grace    (503)
        ├── BodyTooLargeError     the request body exceeds --max-body-size       (413)
        ├── HeadersTooLargeError  the request head exceeds --max-header-size     (431)
        ├── BadRequestError       conflicting or unknown framing, bad length     (400)
        ├── MisdirectedHandshakeError  a tunnel handshake sent to /<id>/...      (400)
        ├── TunnelBusyError       the tunnel is at its stream limit, queue full  (503)
        ├── CallerLimitError      the caller has --max-streams-per-caller open   (429)
        ├── CallerStalledError    the caller read nothing for --stream-idle-timeout
        │                         (the stream is reset; the connection is cut)
        ├── TunnelClosedError     the tunnel dropped while the request was open  (502)
        ├── StreamResetError      the client reset the stream (local app failed) (502)
        ├── ResponseTimeoutError  no response head within --response-timeout     (504)
        └── CallerGoneError       the public caller disconnected; nothing is sent (499)

Each status is the one docs/protocol.md HD-10 gives its failure
(:func:`pipegate_protocol.status_for_failure`). Code that needs to know why a stream
was reset reads :attr:`StreamResetError.code`, a :class:`~pipegate_protocol.ResetCode`,
never the message text.

A :class:`RelayError` is never shown to a caller as a traceback: the relay answers
with ``status`` and the one-line ``str(error)`` as a ``text/plain`` body when the
response has not started yet, and aborts the connection otherwise. Errors of
:mod:`pipegate_protocol` that the tunnel peer causes end only that tunnel.
"""

from __future__ import annotations

from pipegate_protocol import RelayFailure, ResetCode, failure_for_reset, status_for_failure

__all__ = [
    "BadRequestError",
    "BodyTooLargeError",
    "CallerGoneError",
    "CallerLimitError",
    "CallerStalledError",
    "ConfigurationError",
    "HeadersTooLargeError",
    "MisdirectedHandshakeError",
    "RelayError",
    "ResponseTimeoutError",
    "ServerError",
    "StreamResetError",
    "TokensFileError",
    "TooManyFailuresError",
    "TunnelBusyError",
    "TunnelClosedError",
    "TunnelNotFoundError",
    "TunnelOfflineError",
    "error_for_reset",
]


class ServerError(Exception):
    """Base of every error this package raises on purpose."""


class ConfigurationError(ServerError):
    """The server cannot start with these settings; the message says how to fix them."""


class TokensFileError(ConfigurationError):
    """The tokens file cannot be read or does not have the documented shape."""


class TooManyFailuresError(ServerError):
    """An address already has as many failing tunnel handshakes waiting out their
    delay as allowed; this one is refused at once (429, ``Retry-After``)."""

    status = 429

    def __init__(self, message: str, *, retry_after: int = 1) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class DirectoryUnavailableError(ServerError):
    """Cluster mode: the Redis the nodes share cannot be reached (or did not answer
    in time); what needed it is refused with 503."""

    status = 503


class RelayError(ServerError):
    """A public request could not be relayed; ``status`` is what the caller gets."""

    status: int = 502

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        if status is not None:
            self.status = status


class TunnelNotFoundError(RelayError):
    """No tunnel is connected for the id in the request path."""

    status = status_for_failure(RelayFailure.NO_TUNNEL)


class TunnelOfflineError(TunnelNotFoundError):
    """The id's tunnel ended within ``--offline-grace`` (RT-6): its client is probably
    reconnecting, so the caller is told to retry (503 with ``Retry-After``) rather than
    that the tunnel does not exist."""

    status = 503
    #: Seconds the caller is asked to wait (``Retry-After``).
    retry_after = 5


class BodyTooLargeError(RelayError):
    """The request body is larger than the server accepts."""

    status = status_for_failure(RelayFailure.BODY_TOO_LARGE)


class HeadersTooLargeError(RelayError):
    """The request head (headers) is larger than the server accepts."""

    status = status_for_failure(RelayFailure.HEAD_TOO_LARGE)


class BadRequestError(RelayError):
    """The request's framing is invalid, conflicting or uses an unknown transfer
    coding; it is refused before a stream opens."""

    status = status_for_failure(RelayFailure.BAD_REQUEST)


class MisdirectedHandshakeError(RelayError):
    """A public WebSocket upgrade below ``/<id>/`` offers a ``pipegate.*``
    subprotocol or carries a tunnel token: a misconfigured tunnel client, whose token
    must never reach a local app."""

    status = 400


class CallerLimitError(RelayError):
    """The caller already has ``--max-streams-per-caller`` streams open on this
    tunnel; it may retry after :attr:`retry_after` seconds."""

    status = 429
    retry_after = 1


class CallerStalledError(RelayError):
    """The caller read nothing of its response for ``--stream-idle-timeout``
    seconds: its stream is reset and its slot freed."""

    status = 408


class TunnelBusyError(RelayError):
    """The tunnel cannot take another stream now; the caller may retry later."""

    status = status_for_failure(RelayFailure.BUSY)
    retry_after = 1


class TunnelClosedError(RelayError):
    """The tunnel closed (or is going away) while the request was in flight."""

    status = status_for_failure(RelayFailure.TUNNEL_CLOSED)


class StreamResetError(RelayError):
    """The tunnel client abandoned the stream, e.g. because the local app failed.

    :attr:`code` is the protocol's reset code the client sent (``None`` when the
    stream ended without one). :attr:`reset_code` is the same as a string (``""``
    for none), kept for code written before :attr:`code` existed; assigning either
    sets both.
    """

    status = status_for_failure(RelayFailure.UPSTREAM_FAILED)

    def __init__(
        self, message: str, *, status: int | None = None, code: ResetCode | None = None
    ) -> None:
        super().__init__(message, status=status)
        self.code: ResetCode | None = code

    @property
    def reset_code(self) -> str:
        """:attr:`code` as a string, ``""`` when there is none."""
        return "" if self.code is None else self.code.value

    @reset_code.setter
    def reset_code(self, value: str) -> None:
        self.code = ResetCode(value) if value else None


class ResponseTimeoutError(RelayError):
    """The local app did not produce a response head in time."""

    status = status_for_failure(RelayFailure.TIMEOUT)


class CallerGoneError(RelayError):
    """The public caller went away; the stream is reset and nobody is answered."""

    status = 499


_ERROR_FOR_FAILURE: dict[RelayFailure, type[RelayError]] = {
    RelayFailure.TIMEOUT: ResponseTimeoutError,
    RelayFailure.BODY_TOO_LARGE: BodyTooLargeError,
    RelayFailure.BUSY: TunnelBusyError,
}


def error_for_reset(code: ResetCode, message: str) -> RelayError:
    """The error a request fails with when the client resets its stream (HD-10):
    the error of :func:`pipegate_protocol.failure_for_reset`'s failure, with its
    status, or a :class:`StreamResetError` carrying ``code``."""
    error_type = _ERROR_FOR_FAILURE.get(failure_for_reset(code))
    if error_type is None:
        return StreamResetError(message, code=code)
    return error_type(message)
