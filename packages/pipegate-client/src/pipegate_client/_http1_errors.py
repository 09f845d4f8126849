"""Foreign failures of a call to the local app, translated into typed errors.

The one boundary where exceptions of other code become ours (httpcore's
``map_exceptions`` is the model). They enter the HTTP/1.1 client at three places, and
each hands them here: opening a connection (:func:`connect_error`), losing it under an
exchange (:func:`lost_error`), and the parser refusing the response
(:func:`parse_error`). Inside, code branches on these types only, never on message
text. The table, first match wins (``reason`` is the error's one-line reason)::

    foreign exception              typed error               reason
    ssl.SSLCertVerificationError   LocalCertificateError     "TLS certificate verification
                                                             failed: <verify_message>"
    other ssl.SSLError             LocalTLSError             "TLS failed: <its OpenSSL
                                                             reason, lower case>"
    socket.gaierror (EAI_* code)   LocalNameError            the code's text, e.g. "name
                                                             or service not known"
    TimeoutError                   LocalConnectTimeoutError  "timed out"
    OSError, errno ECONNREFUSED    LocalRefusedError         "connection refused"
    other OSError with an errno    LocalConnectError         os.strerror(errno), lower case
    OSError without an errno       LocalConnectError         its first line, shown as is
    httptools.HttpParserError      the LocalAppError a callback raised in the parser,
                                   else LocalResponseError   "invalid HTTP/1.1 response:
                                                             <its first line>"

An :class:`OSError` without an errno is what asyncio raises when every address of a
name failed differently; :meth:`~._http1_connection.HTTP1Connection.connect` tries the
addresses itself so that its own failures keep their type.

Under an exchange (:func:`lost_error`) the reason is the same and the class is
:class:`LocalConnectionLostError`. A connect that ran out of the configured connect
timeout is a :class:`LocalConnectTimeoutError` saying how long it waited (see
:meth:`~._http1_connection.HTTP1Connection.connect`).

What callers may rely on: :func:`describe_failure` gives the same reason for a foreign
exception as the typed error it would become, and a :class:`LocalAppError`'s own reason
unchanged; it never raises.
"""

from __future__ import annotations

import errno
import os
import socket
import ssl
from typing import Final

import httptools

from .errors import (
    LocalAppError,
    LocalCertificateError,
    LocalConnectError,
    LocalConnectionLostError,
    LocalConnectTimeoutError,
    LocalNameError,
    LocalRefusedError,
    LocalResponseError,
    LocalTLSError,
)

__all__ = [
    "connect_error",
    "describe_failure",
    "lost_error",
    "parse_error",
]

#: Texts of the name resolution codes (``gai_strerror`` on Linux, lower case).
_EAI_REASONS: Final[dict[int, str]] = {
    socket.EAI_NONAME: "name or service not known",
    socket.EAI_AGAIN: "temporary failure in name resolution",
    socket.EAI_FAIL: "non-recoverable failure in name resolution",
    socket.EAI_FAMILY: "ai_family not supported",
    socket.EAI_SERVICE: "servname not supported for ai_socktype",
    socket.EAI_MEMORY: "memory allocation failure",
}
_EAI_NODATA: Final = getattr(socket, "EAI_NODATA", None)
if _EAI_NODATA is not None:
    _EAI_REASONS[_EAI_NODATA] = "no address associated with hostname"


def _translate(exc: OSError) -> tuple[type[LocalConnectError], str]:
    """The typed error class and the reason for a socket or TLS exception (the table
    in the module docstring)."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return LocalCertificateError, f"TLS certificate verification failed: {exc.verify_message}"
    if isinstance(exc, ssl.SSLError):
        mnemonic = getattr(exc, "reason", None)  # OpenSSL's, e.g. "WRONG_VERSION_NUMBER"
        if isinstance(mnemonic, str) and mnemonic:
            return LocalTLSError, "TLS failed: " + mnemonic.lower().replace("_", " ")
        return LocalTLSError, "TLS failed"
    code = exc.errno
    if isinstance(exc, socket.gaierror):
        if isinstance(code, int) and code in _EAI_REASONS:
            return LocalNameError, _EAI_REASONS[code]
        return LocalNameError, f"name resolution failed (code {code})"
    if isinstance(exc, TimeoutError):
        return LocalConnectTimeoutError, "timed out"
    if code == errno.ECONNREFUSED:
        return LocalRefusedError, "connection refused"
    if isinstance(code, int) and code > 0:
        return LocalConnectError, os.strerror(code).lower()
    return LocalConnectError, _shown(exc)


def _shown(exc: BaseException) -> str:
    """An exception as one line for a reason: displayed, never inspected."""
    text = str(exc)
    return text.splitlines()[0][:200] if text else type(exc).__name__


def connect_error(exc: OSError) -> LocalConnectError:
    """What a failure to open a connection (TCP, name, TLS) becomes; ``exc`` is kept
    as the cause."""
    kind, reason = _translate(exc)
    error = kind(reason)
    error.__cause__ = exc
    return error


def lost_error(exc: BaseException) -> LocalConnectionLostError:
    """What an exception that ended a connection under an exchange becomes (what
    ``connection_lost`` got: a reset, a TLS error); ``exc`` is kept as the cause."""
    error = LocalConnectionLostError(describe_failure(exc))
    error.__cause__ = exc
    return error


def parse_error(exc: httptools.HttpParserError) -> LocalAppError:
    """What a refusal of the response parser becomes: the :class:`LocalAppError` a
    callback raised inside it (the parser wraps those), else an invalid response."""
    cause = exc.__context__
    if isinstance(cause, LocalAppError):
        return cause
    reason = _shown(exc) if str(exc) else "unparsable"
    return LocalResponseError(f"invalid HTTP/1.1 response: {reason}")


def describe_failure(exc: BaseException) -> str:
    """A short reason for a failed call, e.g. ``"connection refused"``.

    A :class:`LocalAppError` carries its own; a socket or TLS exception gets the reason
    of the table above; anything else (e.g. a WebSocket library's error) its first line.
    """
    if isinstance(exc, LocalAppError):
        return exc.reason
    if isinstance(exc, OSError):
        return _translate(exc)[1]
    return _shown(exc)
