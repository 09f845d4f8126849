"""The settings of one server, with their documented defaults."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from pathlib import Path

from pipegate_protocol import Limits, normalize_hostnames

from .errors import ConfigurationError

__all__ = ["ServerSettings"]

KIB = 1024
MIB = 1024 * KIB
GIB = 1024 * MIB


@dataclass(frozen=True, slots=True)
class ServerSettings:
    """Everything :func:`~pipegate_server.create_app` needs; every limit has a default.

    At least one credential is required: ``client_token`` (may claim any connection
    id) or ``tokens_file`` (TOML; each token may claim only the ids it lists). A zero
    for ``max_body_size``, ``max_tunnels_per_token`` or ``max_header_size`` means
    "no limit".
    """

    #: The shared token; a client presenting it may claim any connection id.
    client_token: str | None = field(default=None, repr=False)
    #: Where ``client_token`` was read from, so that SIGHUP can re-read it.
    client_token_file: Path | None = None
    #: TOML file of per-person tokens and the ids each may claim (see ``_auth``).
    tokens_file: Path | None = None
    #: Base of the public URL announced in the hello (default: from the Host header).
    public_url: str | None = None
    #: Domains routed by hostname (RT-2): a request whose Host is ``<id>.<domain>``
    #: goes to tunnel ``<id>`` with its path unchanged. Stored in normal form.
    domains: tuple[str, ...] = ()
    #: Seconds an ended tunnel's id and hostnames answer 503 "offline" rather than
    #: 404 (RT-6); 0 turns it off.
    offline_grace: float = 300.0

    #: Largest request body relayed; larger ones get 413. Default 1 GiB.
    max_body_size: int = 1 * GIB
    #: Largest total size of the request headers; larger ones get 431. Default 64 KiB.
    max_header_size: int = 64 * KIB
    #: Seconds to wait for the response head once the request was sent (504 after).
    response_timeout: float = 30.0
    #: Streams open at once on one tunnel (the client may advertise fewer).
    max_streams_per_tunnel: int = 128
    #: Requests waiting for a stream slot on one tunnel; beyond that 503.
    max_queued_requests: int = 256
    #: Seconds a request waits for a stream slot before 503 with Retry-After.
    queue_timeout: float = 10.0
    #: Tunnels one token may have connected at once (429 beyond); 0 means no limit.
    max_tunnels_per_token: int = 64
    #: Largest data frame payload / control message the server accepts.
    max_frame_size: int = 256 * KIB
    #: Flow-control credit the client gets on every new stream.
    initial_window: int = 1 * MIB
    #: Largest public WebSocket message relayed (1009 beyond).
    max_websocket_message_size: int = 16 * MIB
    #: Seconds between pings on every tunnel.
    heartbeat_interval: float = 10.0
    #: A tunnel silent for this many seconds is closed with 4005 and its id freed.
    heartbeat_timeout: float = 20.0
    #: Seconds a client has to send its hello after the WebSocket was accepted.
    hello_timeout: float = 10.0
    #: Seconds a caller has to complete a request head (silent or slowloris callers).
    head_timeout: float = 10.0
    #: Seconds in-flight streams get to finish after SIGTERM before the server exits.
    shutdown_grace: float = 20.0
    #: Failed token attempts per address per minute before refusals are slowed down.
    bad_token_budget: int = 10
    #: Seconds a caller may read nothing of a streamed response before its stream is
    #: reset and its slot freed (a write to it that does not complete in time).
    stream_idle_timeout: float = 60.0
    #: Streams one caller address may have open at once on one tunnel (429 beyond);
    #: 0 means no limit. Half the default streams per tunnel: one address cannot take
    #: every slot, and a load test at concurrency 64 from one machine still fits.
    max_streams_per_caller: int = 64
    #: Proxies whose X-Forwarded-* and other proxy headers are trusted (comma-separated
    #: addresses or networks, ``*`` for all); ``None`` reads ``$FORWARDED_ALLOW_IPS``,
    #: and without it nobody is trusted.
    forwarded_allow_ips: str | None = None
    #: Failing tunnel handshakes (bad or missing token) one address may have waiting
    #: at once; beyond that they are refused at once with 429.
    max_failing_handshakes: int = 4
    #: Run on the fast path (``_internals``: uvicorn protocol subclasses, frames read
    #: past websockets' parser, the direct tunnel line); False runs uvicorn's own
    #: protocols through public APIs only (``--no-fast-path``).
    fast_path: bool = True
    #: The operator's token for ``/_pipegate/admin/`` and ``/_pipegate/metrics``
    #: (issue 16); without it neither exists. Compared in constant time.
    admin_token: str | None = field(default=None, repr=False)
    #: Where ``admin_token`` was read from (re-read on SIGHUP).
    admin_token_file: Path | None = None
    #: Label request counts and open streams by tunnel id too (bounded only by how
    #: many ids the tokens may claim: for servers with few, known ids).
    metrics_per_tunnel: bool = False
    #: One access line per public request on the ``pipegate.access`` logger.
    access_log: bool = False
    #: Seconds a tunnel kicked through the admin API must wait before its id can be
    #: claimed again (its reconnect is refused with 429 and Retry-After meanwhile).
    kick_hold: float = 30.0
    #: Cluster mode (issue 17): the Redis that several server nodes share ids,
    #: hostnames, per-token counts and offline markers through; None: one node, an
    #: in-process directory.
    redis_url: str | None = field(default=None, repr=False)
    #: This node's name in logs and the admin API (cluster mode; default: host name
    #: and process id).
    node_name: str = ""
    #: Prefix of every Redis key and channel, so that clusters can share one Redis.
    redis_prefix: str = "pipegate:"
    #: Where the other nodes reach this one (``http://10.0.0.11:8000``): they forward
    #: it requests for its tunnels. Without it a cluster node cannot forward, answers
    #: 503 instead, and offers no custom hostnames.
    node_url: str | None = None

    @property
    def clustered(self) -> bool:
        """Whether tunnels are shared with other nodes through Redis."""
        return self.redis_url is not None

    @property
    def custom_hostnames(self) -> bool:
        """Whether clients may ask for custom hostnames (RT-4): always on one node; in
        a cluster only with ``node_url``, since their requests reach a node by the
        hostname's hash and must be forwarded to the one that holds the tunnel."""
        return self.redis_url is None or bool(self.node_url)

    def __post_init__(self) -> None:
        if not self.client_token and self.tokens_file is None:
            raise ConfigurationError(
                "no client token configured: give one with --client-token-file PATH, "
                "the PIPEGATE_CLIENT_TOKEN environment variable, --client-token TOKEN "
                "(visible in ps), or a --tokens-file"
            )
        positive = {
            "response_timeout": self.response_timeout,
            "max_streams_per_tunnel": self.max_streams_per_tunnel,
            "queue_timeout": self.queue_timeout,
            "heartbeat_interval": self.heartbeat_interval,
            "heartbeat_timeout": self.heartbeat_timeout,
            "hello_timeout": self.hello_timeout,
            "head_timeout": self.head_timeout,
            "initial_window": self.initial_window,
            "max_websocket_message_size": self.max_websocket_message_size,
            "stream_idle_timeout": self.stream_idle_timeout,
            "max_failing_handshakes": self.max_failing_handshakes,
        }
        for name, value in positive.items():
            if value <= 0:
                raise ConfigurationError(f"{name} must be positive, got {value}")
        non_negative = {
            "max_body_size": self.max_body_size,
            "max_header_size": self.max_header_size,
            "max_queued_requests": self.max_queued_requests,
            "max_tunnels_per_token": self.max_tunnels_per_token,
            "shutdown_grace": self.shutdown_grace,
            "bad_token_budget": self.bad_token_budget,
            "max_streams_per_caller": self.max_streams_per_caller,
            "kick_hold": self.kick_hold,
        }
        for name, value in non_negative.items():
            if value < 0:
                raise ConfigurationError(f"{name} must not be negative, got {value}")
        if self.offline_grace < 0:
            raise ConfigurationError(
                f"offline_grace must not be negative, got {self.offline_grace}"
            )
        try:
            domains = normalize_hostnames(self.domains)
        except ValueError as exc:
            raise ConfigurationError(
                f"--domain {exc} (letters, digits, hyphens and dots)"
            ) from None
        object.__setattr__(self, "domains", tuple(domains))
        if self.node_url is not None and not self.node_url.startswith(("http://", "https://")):
            raise ConfigurationError(
                f"--node-url must be an http:// or https:// URL, got {self.node_url!r}"
            )
        if self.redis_url is not None and not self.node_name:
            object.__setattr__(self, "node_name", f"{socket.gethostname()}-{os.getpid()}")
        try:
            self.limits()
        except ValueError as exc:
            raise ConfigurationError(f"invalid protocol limits: {exc}") from None

    def limits(self) -> Limits:
        """The limits the server announces in its hello."""
        return Limits(
            max_frame_size=self.max_frame_size,
            initial_window=self.initial_window,
            max_concurrent_streams=min(self.max_streams_per_tunnel, 65535),
        )

    @property
    def ws_max_size(self) -> int:
        """The WebSocket message size uvicorn must accept (frames carry a 5-byte header)."""
        return max(self.max_frame_size + 64, self.max_websocket_message_size)
