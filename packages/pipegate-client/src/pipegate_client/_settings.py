"""The client's settings, validated once so the rest of the code can trust them."""

from __future__ import annotations

import ipaddress
import re
import ssl
from dataclasses import dataclass, field
from urllib.parse import urlsplit, urlunsplit

import bcrypt
from pipegate_protocol import (
    MAX_REQUESTED_HOSTNAMES,
    AccessPolicy,
    Limits,
    connection_id_from_url,
    normalize_hostnames,
)
from pydantic import ValidationError

from .errors import ConfigurationError

#: The bcrypt cost the client hashes visitor passwords with (~0.25 s a hash here).
BCRYPT_COST = 12


def shown_url(url: str) -> str:
    """``url`` as logs and ``--check`` show it: without any ``user:password@``."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


def hash_password(password: str) -> str:
    """A bcrypt hash of a visitor password (AC-2): what goes in the hello instead."""
    return bcrypt.hashpw(password.encode("utf-8"), bcrypt.gensalt(BCRYPT_COST)).decode("ascii")


__all__ = ["DEFAULT_LOCAL_URL", "ClientSettings"]

#: Where the local app is expected when ``--local-url`` is not given.
DEFAULT_LOCAL_URL = "http://localhost:5001"


#: A path-prefix segment of the server URL: RFC 3986 ``pchar`` without ``%`` escapes.
_PREFIX_SEGMENT = re.compile(r"[A-Za-z0-9._~!$&'()*+,;=:@-]+\Z")


def _check_prefix(path: str) -> None:
    """Refuse a server URL path whose route is not what it reads as: an empty segment,
    a dot segment, or an escape before the id (a proxy or server that resolves or
    decodes them would route the upgrade, and the token, to another path)."""
    for segment in path.split("/")[1:-1]:
        if not _PREFIX_SEGMENT.match(segment) or segment in (".", ".."):
            raise ConfigurationError(
                f"--server-url: the path {path!r} has the segment {segment!r} before the "
                "connection id; the tunnel endpoint is ws(s)://host/<id> (a path prefix "
                "only behind a reverse proxy that strips it, made of plain segments: no "
                "empty, '.', '..' or %-escaped ones)"
            )


@dataclass(frozen=True)
class ClientSettings:
    """Everything a :class:`~pipegate_client.TunnelClient` needs.

    Construction validates the values and raises :class:`ConfigurationError` with a
    message meant for the person who typed them. ``client_token`` never appears in
    ``repr()`` so that settings can be logged.
    """

    #: ``ws://`` or ``wss://`` URL of the tunnel endpoint, ``ws(s)://host/<id>``: its
    #: last path segment is the connection id to claim. Segments before it are a path
    #: prefix, which only a reverse proxy that strips it can serve (a PipeGate server
    #: takes ``/node/alice`` as a public WebSocket into tunnel ``node``); the client
    #: stops when the server's answer shows the URL is no tunnel endpoint
    #: (:class:`~pipegate_client.errors.NotATunnelEndpointError`).
    server_url: str
    #: The shared secret presented as ``Authorization: Bearer <token>``.
    client_token: str = field(repr=False)
    #: Base URL of the local app; a request for ``/<id>/a?b`` goes to ``<local_url>/a?b``.
    local_url: str = DEFAULT_LOCAL_URL
    #: PEM file of a private CA to trust for a ``wss://`` server URL.
    ca_file: str | None = None
    #: Streams the server may have open at once on this tunnel (advertised in hello).
    max_concurrency: int = 128
    #: Seconds that in-flight streams get to finish after SIGINT/SIGTERM.
    grace_period: float = 30.0
    #: Seconds of silence from the server before the client sends a ping.
    ping_interval: float = 15.0
    #: Seconds to wait for any message after a ping before declaring the server dead.
    ping_timeout: float = 15.0
    #: Seconds allowed for TCP + TLS + WebSocket handshake with the server.
    connect_timeout: float = 10.0
    #: Seconds allowed to connect to the local app (0 or less: no limit).
    local_connect_timeout: float = 10.0
    #: First reconnect delay and the cap of the exponential backoff, in seconds.
    backoff_initial: float = 0.5
    backoff_max: float = 30.0
    #: Largest data-frame payload we accept; advertised as Limits.max_frame_size.
    max_frame_size: int = 256 * 1024
    #: Per-stream receive window; bounds the request body buffered per stream.
    initial_window: int = 1024 * 1024
    #: Hostnames to ask the server for (``PipeGate-Hostname``, RT-4), in normal form;
    #: the token must be granted each. Empty: the server's own names only.
    hostnames: tuple[str, ...] = ()
    #: Send the local app the caller's ``Host`` (``--host-header preserve``) instead of
    #: the local URL's authority (HD-6), for apps that build URLs from Host or compare
    #: ``Origin`` with it. HTTP requests only: a WebSocket handshake to the local app
    #: carries the local authority either way.
    preserve_host: bool = False
    #: Visitor rules declared in the hello (AC-1), enforced by the server: basic-auth
    #: users as ``(name, bcrypt hash)`` (see :func:`hash_password`; never a password),
    #: and networks (CIDR) to allow only / to deny. Empty: no rules.
    access_users: tuple[tuple[str, str], ...] = ()
    access_allow: tuple[str, ...] = ()
    access_deny: tuple[str, ...] = ()
    #: Run the tunnel WebSocket on the fast path (``_internals.TunnelConnection``,
    #: which reads websockets' internals); False uses its public API only
    #: (``--no-fast-path``).
    fast_path: bool = True
    #: Where the request inspector listens (``host:port``; port 0: any free port);
    #: ``None``: no inspector. The command line defaults to ``127.0.0.1:4040``; a
    #: client built in code has none unless asked. A taken port makes it try the next
    #: few; with ``inspect_optional`` the client runs without it when none is free.
    inspect: str | None = None
    inspect_optional: bool = False
    #: The inspector's memory bound: exchanges kept, body bytes kept per body and in
    #: total (see ``pipegate_client._inspect._recorder``).
    inspect_max_requests: int = 200
    inspect_body_cap: int = 64 * 1024
    inspect_total_cap: int = 32 * 1024 * 1024

    def __post_init__(self) -> None:
        # HS-1: the tunnel endpoint is exactly /<id>; "wss://h/node/" would otherwise
        # be taken by the server as a caller's WebSocket to path "/" of tunnel "node".
        parts = urlsplit(self.server_url)
        if parts.path.endswith("/"):
            normalized = urlunsplit(parts._replace(path=parts.path.rstrip("/")))
            object.__setattr__(self, "server_url", normalized)
        try:
            connection_id_from_url(self.server_url)
        except ValueError as exc:
            raise ConfigurationError(f"--server-url: {exc}") from None
        _check_prefix(urlsplit(self.server_url).path)
        if not self.client_token or any(ch.isspace() for ch in self.client_token):
            raise ConfigurationError(
                "a client token is required and must not contain whitespace: pass "
                "--client-token, --client-token-file or set PIPEGATE_CLIENT_TOKEN"
            )
        local = urlsplit(self.local_url)
        if local.scheme not in ("http", "https") or not local.hostname:
            raise ConfigurationError(
                f"--local-url must be an http:// or https:// URL with a host, "
                f"got {self.local_url!r}"
            )
        if local.query or local.fragment:
            raise ConfigurationError("--local-url must not have a query or fragment")
        if self.ca_file is not None:
            try:
                ssl.create_default_context(cafile=self.ca_file)
            except (OSError, ssl.SSLError) as exc:
                raise ConfigurationError(f"--ca-file {self.ca_file!r}: {exc}") from None
        for name in ("grace_period", "backoff_initial", "backoff_max"):
            if getattr(self, name) < 0:
                raise ConfigurationError(f"{name} must not be negative")
        for name in ("ping_interval", "ping_timeout", "connect_timeout"):
            if getattr(self, name) <= 0:
                raise ConfigurationError(f"{name} must be positive")
        if self.backoff_initial <= 0 or self.backoff_max < self.backoff_initial:
            raise ConfigurationError("backoff needs 0 < backoff_initial <= backoff_max")
        try:
            _ = self.limits
        except ValueError as exc:
            raise ConfigurationError(f"invalid limits: {exc}") from None
        for network in (*self.access_allow, *self.access_deny):
            try:
                ipaddress.ip_network(network.strip(), strict=False)
            except ValueError:
                raise ConfigurationError(
                    f"--allow/--deny {network!r} is not an IPv4/IPv6 address or CIDR network"
                ) from None
        try:
            _ = self.access_policy
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in error['loc'])}: {error['msg']}"
                for error in exc.errors()
            )
            raise ConfigurationError(f"access rules: {problems}") from None
        try:
            names = normalize_hostnames(self.hostnames)
        except ValueError as exc:
            raise ConfigurationError(f"--hostname {exc} (letters, digits, hyphens, dots)") from None
        if len(names) > MAX_REQUESTED_HOSTNAMES:
            raise ConfigurationError(f"at most {MAX_REQUESTED_HOSTNAMES} --hostname values")
        object.__setattr__(self, "hostnames", tuple(names))
        if self.inspect is not None:
            from ._inspect import parse_address  # raises ConfigurationError

            parse_address(self.inspect)
        if self.inspect_max_requests < 1:
            raise ConfigurationError("inspect_max_requests must be at least 1")
        if self.inspect_body_cap < 0 or self.inspect_total_cap < 0:
            raise ConfigurationError("the inspector's caps must not be negative")

    @property
    def access_policy(self) -> AccessPolicy | None:
        """The rules for the hello (AC-1), ``None`` when there are none."""
        if not (self.access_users or self.access_allow or self.access_deny):
            return None
        return AccessPolicy(
            users=dict(self.access_users), allow=self.access_allow, deny=self.access_deny
        )

    @property
    def connection_id(self) -> str:
        """The connection id this client claims (last path segment of server_url)."""
        return connection_id_from_url(self.server_url)

    @property
    def limits(self) -> Limits:
        """What this client is willing to receive, as advertised in its hello."""
        return Limits(
            max_frame_size=self.max_frame_size,
            initial_window=self.initial_window,
            max_concurrent_streams=self.max_concurrency,
        )

    def server_ssl_context(self) -> ssl.SSLContext | None:
        """TLS context for a ``wss://`` server: system roots, or only ``ca_file``."""
        if urlsplit(self.server_url).scheme != "wss":
            return None
        return ssl.create_default_context(cafile=self.ca_file)
