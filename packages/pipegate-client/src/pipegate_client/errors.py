"""Errors raised by :mod:`pipegate_client`.

The whole tree::

    ClientError                    something stops the client from doing its job
    ├── ConfigurationError         the settings are unusable (bad URL, no token...)    exit 2
    ├── HandshakeRefusedError      the server refused the tunnel for good (.status)
    │   ├── TokenRefusedError      401/403: the token is missing or wrong               exit 3
    │   ├── VersionRefusedError    400 or no subprotocol: no common protocol version    exit 4
    │   ├── HostnamesUnsupportedError  hostnames asked for, the server cannot serve them exit 4
    │   ├── AccessUnsupportedError     access rules declared, the server cannot enforce  exit 4
    │   └── NotATunnelEndpointError  another answer (200, 3xx, 404...) or a hello for   exit 5
    │                                another id: the URL is no tunnel endpoint
    └── LocalAppError              a call to the local app failed (.reason, one line)
        ├── LocalConnectError      no connection: refused, timed out, unknown name, TLS
        │   ├── LocalRefusedError          nothing listens there ("connection refused")
        │   ├── LocalConnectTimeoutError   no connection within the connect timeout
        │   ├── LocalNameError             the local host name does not resolve
        │   └── LocalTLSError              the TLS handshake failed
        │       └── LocalCertificateError  the local app's certificate failed verification
        ├── LocalRequestError      the request cannot be written as HTTP/1.1
        │   └── LocalPathError     the caller's path climbs above the local URL's path  (400)
        └── LocalResponseError     the local app closed the connection or broke HTTP/1.1
            └── LocalConnectionLostError   the socket failed mid-exchange (reset, TLS)

Socket and TLS exceptions (:class:`OSError` and its subclasses) become these classes in
one place, by type and errno, never by message text (``_http1_errors.py``).

Errors the client recovers from by itself (the server is down, restarts, sends a
broken frame, refuses a duplicate id with 409) never leave :meth:`TunnelClient.run`;
they are logged and followed by a reconnect with backoff. Failures of the local app
(:class:`LocalAppError`) never leave a stream: the caller gets a 502 with the reason
(before the response head) or a reset (after it) instead.
"""

from __future__ import annotations

__all__ = [
    "AccessUnsupportedError",
    "ClientError",
    "ConfigurationError",
    "HandshakeRefusedError",
    "HostnamesUnsupportedError",
    "LocalAppError",
    "LocalConnectError",
    "LocalRequestError",
    "LocalResponseError",
    "NotATunnelEndpointError",
    "TokenRefusedError",
    "VersionRefusedError",
]


class ClientError(Exception):
    """Base of every error this package raises."""

    #: Process exit code the command line uses for this error.
    exit_code: int = 1


class ConfigurationError(ClientError, ValueError):
    """The settings cannot work (invalid URL, missing token, unreadable CA file)."""

    exit_code = 2


class HandshakeRefusedError(ClientError):
    """The server answered the tunnel upgrade with a status that retrying cannot fix."""

    exit_code = 4

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        #: HTTP status of the refusal, ``None`` when the upgrade succeeded but was unusable.
        self.status = status


class TokenRefusedError(HandshakeRefusedError):
    """The server refused the client token (401 missing, 403 wrong or not allowed)."""

    exit_code = 3


class VersionRefusedError(HandshakeRefusedError):
    """The server speaks no protocol version this client speaks."""

    exit_code = 4


class HostnamesUnsupportedError(HandshakeRefusedError):
    """The client asked for hostnames (``--hostname``) and the server's hello lacks the
    ``hostnames`` capability (RT-4): it predates custom hostnames and would serve the
    tunnel without them, so the client closes it and stops rather than run under a URL
    its user did not ask for."""

    exit_code = 4


class AccessUnsupportedError(HandshakeRefusedError):
    """The client declared visitor access rules and the server's hello lacks the
    ``access`` capability (AC-3): it would serve the tunnel to anyone, so the client
    closes it and stops."""

    exit_code = 4


class NotATunnelEndpointError(HandshakeRefusedError):
    """The server URL does not lead to a PipeGate tunnel endpoint: the upgrade was
    answered with a status that no retry can change and that is not a refusal of the
    token or version (a 200, a redirect, a 404...), or the server's hello names another
    connection id. Typically ``--server-url`` has a path below the id
    (``wss://host/node/alice`` is a public WebSocket into tunnel ``node``). The
    client stops instead of sending its token there again; redirects are never
    followed."""

    exit_code = 5


class LocalAppError(ClientError):
    """A call to the local app failed; :attr:`reason` says why in a few lower-case
    words, for the 502 body and the log line (e.g. ``"connection refused"``)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class LocalConnectError(LocalAppError):
    """No connection to the local app: refused, timed out, unknown host, TLS failure.
    The local app is *unreachable*; nothing was sent."""


class LocalRequestError(LocalAppError):
    """The request cannot be written as HTTP/1.1: CR, LF or NUL in a field, a character
    above U+00FF, or a body that does not match its ``Content-Length``."""


class LocalResponseError(LocalAppError):
    """The local app closed the connection before the end of its response, or sent
    something that is not HTTP/1.1."""


# ---------------------------------------------------------------------- typed local failures
# What a socket or TLS exception from a call to the local app becomes; the reason
# strings are those of the parent classes before these existed.

__all__ += [
    "LocalCertificateError",
    "LocalConnectTimeoutError",
    "LocalConnectionLostError",
    "LocalNameError",
    "LocalPathError",
    "LocalRefusedError",
    "LocalTLSError",
]


class LocalRefusedError(LocalConnectError):
    """The local app's address refused the connection (nothing listens on the port)."""


class LocalConnectTimeoutError(LocalConnectError):
    """No connection within the connect timeout, or the system's own connect timed out."""


class LocalNameError(LocalConnectError):
    """The local app's host name did not resolve (:class:`socket.gaierror`)."""


class LocalTLSError(LocalConnectError):
    """The TLS handshake with an ``https://`` local app failed."""


class LocalCertificateError(LocalTLSError):
    """The local app's certificate failed verification (unknown CA, wrong name...)."""


class LocalPathError(LocalRequestError):
    """The caller's path would climb above the path of ``--local-url`` through dot
    segments (``/../admin``, ``/%2e%2e/admin``, ``/a/..%2f..%2fadmin``): the caller
    gets 400 and nothing reaches the local app."""


class LocalConnectionLostError(LocalResponseError):
    """The connection failed under an exchange with an error of the socket or TLS
    (reset, broken pipe), as opposed to a clean close by the local app."""
