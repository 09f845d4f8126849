"""Command line of ``pipegate-server``: settings from flags, uvicorn, signals.

The server never runs open: without a client token (``--client-token-file``, env
``PIPEGATE_CLIENT_TOKEN``, ``--client-token``) or a ``--tokens-file`` it exits with
status 2 and says how to give one. SIGTERM and SIGINT drain gracefully (go-away to
every tunnel, 503 to new requests, streams in flight get ``--shutdown-grace``
seconds) and the process exits 0; a second signal exits at once. SIGHUP re-reads the
token file, the tokens file, the admin token file and the TLS certificate.

The admin API and ``/_pipegate/metrics`` exist only with an admin token, read from
``--admin-token-file`` or env ``PIPEGATE_ADMIN_TOKEN`` (never from a flag's value).
Every log line, uvicorn's included, goes through one formatter (``--log-format``).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlsplit

from pipegate_tunnel import GC_YOUNG_THRESHOLD as GC_YOUNG_THRESHOLD
from pipegate_tunnel import tune_gc as tune_gc

from ._app import __version__
from ._factory import PipeGateServer, create_server, uvicorn_config
from ._logs import LOG_FORMATS, configure_logging
from ._settings import ServerSettings
from .errors import ConfigurationError

__all__ = [
    "build_parser",
    "main",
    "parse_addr",
    "parse_size",
    "server_from_args",
    "settings_from_args",
    "uvicorn_config",
]

TOKEN_ENV = "PIPEGATE_CLIENT_TOKEN"
ADMIN_TOKEN_ENV = "PIPEGATE_ADMIN_TOKEN"
REDIS_URL_ENV = "PIPEGATE_REDIS_URL"
_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}
_SIZE = re.compile(r"^\s*(\d+)\s*([kmgt]?)(?:i?b)?\s*$", re.IGNORECASE)
_DEFAULTS = ServerSettings(client_token="-")


def parse_size(text: str) -> int:
    """``"1GiB"``, ``"512M"``, ``"64k"`` or plain bytes; binary units."""
    match = _SIZE.match(text)
    if match is None:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (examples: 1048576, 64KiB, 1GiB)")
    return int(match.group(1)) * _UNITS[match.group(2).lower()]


class _RefuseSecretFlag(argparse.Action):
    """A flag that would put a secret on the command line: an error naming the
    alternatives, without echoing the value."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: object,
        option_string: str | None = None,
    ) -> None:
        parser.error(
            f"{option_string} is not accepted (a command line is visible in ps): use "
            f"--admin-token-file or the {ADMIN_TOKEN_ENV} environment variable"
        )


def parse_addr(text: str) -> tuple[str, int]:
    """``"127.0.0.1:9100"``, ``"[::1]:9100"`` or ``"9100"`` (host 127.0.0.1)."""
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = "127.0.0.1", text
    host = host.strip("[]") or "127.0.0.1"
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(
            f"not an address: {text!r} (examples: 9100, 127.0.0.1:9100)"
        )
    return host, int(port)


def _size_help(value: int) -> str:
    for unit, factor in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if value and value % factor == 0:
            return f"{value // factor} {unit}"
    return f"{value} bytes"


def build_parser() -> argparse.ArgumentParser:
    d = _DEFAULTS
    parser = argparse.ArgumentParser(
        prog="pipegate-server",
        description="Public end of PipeGate tunnels: clients connect over WebSocket at "
        "/<connection_id>; requests to /<connection_id>/<path> are relayed to them.",
    )
    auth = parser.add_argument_group("credentials (at least one is required)")
    auth.add_argument(
        "--client-token",
        help=f"shared token that may claim any connection id (also env {TOKEN_ENV}; "
        "visible in ps, prefer --client-token-file)",
    )
    auth.add_argument(
        "--client-token-file", type=Path, help="file holding the shared token (re-read on SIGHUP)"
    )
    auth.add_argument(
        "--tokens-file",
        type=Path,
        help="TOML file of tokens and the connection ids each may claim (re-read on SIGHUP)",
    )
    net = parser.add_argument_group("network")
    net.add_argument("--host", default="0.0.0.0", help="address to listen on (default 0.0.0.0)")
    net.add_argument("--port", type=int, default=8000, help="port to listen on (default 8000)")
    net.add_argument("--ssl-keyfile", help="TLS private key: serve https and wss")
    net.add_argument("--ssl-certfile", help="TLS certificate chain (e.g. Certbot's fullchain.pem)")
    net.add_argument(
        "--public-url",
        help="base URL announced to clients (default: scheme and Host of their upgrade request)",
    )
    net.add_argument(
        "--domain",
        dest="domains",
        action="append",
        default=[],
        metavar="DOMAIN",
        help="route by hostname: a request to <id>.DOMAIN reaches tunnel <id> with its path "
        "unchanged (repeatable; path URLs keep working; 'localhost' needs no DNS)",
    )
    net.add_argument(
        "--offline-grace",
        type=float,
        default=d.offline_grace,
        help="seconds a disconnected tunnel's id answers 503 'offline' with Retry-After "
        f"instead of 404; 0 = off (default {d.offline_grace:g})",
    )
    net.add_argument(
        "--forwarded-allow-ips",
        default=None,
        help="comma-separated proxies (addresses or networks, * for all) whose "
        "X-Forwarded-*/Forwarded headers are trusted; from anyone else they are dropped "
        "(default $FORWARDED_ALLOW_IPS, else nobody)",
    )
    lim = parser.add_argument_group("limits")
    lim.add_argument(
        "--stream-idle-timeout",
        type=float,
        default=d.stream_idle_timeout,
        help="reset a stream whose caller read nothing of its response for this many "
        f"seconds, freeing its slot (default {d.stream_idle_timeout:g})",
    )
    lim.add_argument(
        "--max-streams-per-caller",
        type=int,
        default=d.max_streams_per_caller,
        help="concurrent requests one caller address may have on one tunnel, 429 beyond; "
        f"0 = no limit (default {d.max_streams_per_caller})",
    )
    lim.add_argument(
        "--max-body-size",
        type=parse_size,
        default=d.max_body_size,
        help="largest request body, 413 beyond; 0 = no limit "
        f"(default {_size_help(d.max_body_size)})",
    )
    lim.add_argument(
        "--max-header-size",
        type=parse_size,
        default=d.max_header_size,
        help=f"largest request headers, 431 beyond (default {_size_help(d.max_header_size)})",
    )
    lim.add_argument(
        "--response-timeout",
        type=float,
        default=d.response_timeout,
        help=f"seconds to wait for a response head, 504 after (default {d.response_timeout:g})",
    )
    lim.add_argument(
        "--max-streams-per-tunnel",
        type=int,
        default=d.max_streams_per_tunnel,
        help=f"concurrent requests per tunnel (default {d.max_streams_per_tunnel})",
    )
    lim.add_argument(
        "--max-queued-requests",
        type=int,
        default=d.max_queued_requests,
        help="requests waiting for a busy tunnel, 503 with Retry-After beyond "
        f"(default {d.max_queued_requests})",
    )
    lim.add_argument(
        "--queue-timeout",
        type=float,
        default=d.queue_timeout,
        help=f"seconds a request waits for a busy tunnel (default {d.queue_timeout:g})",
    )
    lim.add_argument(
        "--max-tunnels-per-token",
        type=int,
        default=d.max_tunnels_per_token,
        help="tunnels one token may hold, 429 beyond; 0 = no limit "
        f"(default {d.max_tunnels_per_token})",
    )
    lim.add_argument(
        "--max-frame-size",
        type=parse_size,
        default=d.max_frame_size,
        help=f"largest tunnel frame accepted (default {_size_help(d.max_frame_size)})",
    )
    lim.add_argument(
        "--max-websocket-message-size",
        type=parse_size,
        default=d.max_websocket_message_size,
        help="largest relayed WebSocket message, close 1009 beyond "
        f"(default {_size_help(d.max_websocket_message_size)})",
    )
    live = parser.add_argument_group("liveness")
    live.add_argument(
        "--heartbeat-interval",
        type=float,
        default=d.heartbeat_interval,
        help=f"seconds between pings to each client (default {d.heartbeat_interval:g})",
    )
    live.add_argument(
        "--heartbeat-timeout",
        type=float,
        default=d.heartbeat_timeout,
        help=f"close a tunnel silent this long and free its id (default {d.heartbeat_timeout:g})",
    )
    live.add_argument(
        "--hello-timeout",
        type=float,
        default=d.hello_timeout,
        help="close an accepted tunnel whose client sent no hello within this many "
        f"seconds, with 4004 (default {d.hello_timeout:g})",
    )
    live.add_argument(
        "--head-timeout",
        type=float,
        default=d.head_timeout,
        help="close a caller connection whose request head is not complete after this "
        f"many seconds (default {d.head_timeout:g})",
    )
    live.add_argument(
        "--shutdown-grace",
        type=float,
        default=d.shutdown_grace,
        help=f"seconds in-flight requests get after SIGTERM (default {d.shutdown_grace:g})",
    )
    ops = parser.add_argument_group("operations")
    # A token's value on a command line is visible in ps: refused with a pointer (and
    # not taken, by abbreviation, as --admin-token-file's path).
    ops.add_argument("--admin-token", action=_RefuseSecretFlag, help=argparse.SUPPRESS)
    ops.add_argument(
        "--admin-token-file",
        type=Path,
        help=f"file holding the admin token (also env {ADMIN_TOKEN_ENV}); enables "
        "/_pipegate/admin/ (list and kick tunnels, reload) and /_pipegate/metrics",
    )
    ops.add_argument(
        "--metrics-addr",
        type=parse_addr,
        metavar="[HOST:]PORT",
        help="also serve the Prometheus metrics at http://HOST:PORT/metrics, without a "
        "token (default host 127.0.0.1; default: off)",
    )
    ops.add_argument(
        "--metrics-per-tunnel",
        action="store_true",
        help="label request counts and open streams by tunnel id too (only for few, known ids)",
    )
    ops.add_argument(
        "--kick-hold",
        type=float,
        default=d.kick_hold,
        help="seconds a tunnel kicked through the admin API must wait before its id can "
        f"be claimed again (default {d.kick_hold:g})",
    )
    cluster = parser.add_argument_group(
        "cluster (several nodes behind one balancer; docs/deploy.md)"
    )
    cluster.add_argument(
        "--redis-url",
        metavar="URL",
        help=f"share tunnels with other nodes through this Redis (also env {REDIS_URL_ENV}; "
        "redis://host:6379/0, rediss:// for TLS; a URL with a password only in the "
        "environment). Default: one node, no Redis",
    )
    cluster.add_argument(
        "--node-name",
        default="",
        help="this node's name in logs and the admin API (default: host name and pid)",
    )
    cluster.add_argument(
        "--node-url",
        metavar="URL",
        help="where the other nodes reach this one (http://10.0.0.11:8000): they forward "
        "it requests for its tunnels (custom hostnames, tunnels moving between nodes). "
        "Without it such requests get 503 and custom hostnames are not offered",
    )
    cluster.add_argument(
        "--redis-prefix",
        default=d.redis_prefix,
        help=f"prefix of this cluster's Redis keys (default {d.redis_prefix!r})",
    )
    ops.add_argument(
        "--log-level",
        default="info",
        choices=["critical", "error", "warning", "info", "debug"],
        help="log level (default info)",
    )
    ops.add_argument(
        "--log-format",
        default="text",
        choices=list(LOG_FORMATS),
        help="text, or json: one JSON object per line (uvicorn's lines too; default text)",
    )
    ops.add_argument(
        "--access-log",
        action="store_true",
        help="one line per public request: tunnel id, method, path, status, bytes both "
        "ways, duration, visitor address, request id",
    )
    parser.add_argument(
        "--http",
        choices=["auto", "httptools", "h11"],
        default="auto",
        help="HTTP parser: auto = httptools (fast) handing requests with methods it does "
        "not know to h11, so every method token is relayed (default auto)",
    )
    parser.add_argument(
        "--no-fast-path",
        dest="fast_path",
        action="store_false",
        help="run on uvicorn's own protocols (h11 for --http auto, websockets-sansio) "
        "and public APIs only: no subclassed protocols, no reads of library internals, "
        "no direct tunnel line; slower, for diagnosis and for library versions the "
        "fast path was not tested with",
    )
    parser.add_argument("--version", action="version", version=f"pipegate-server {__version__}")
    return parser


def settings_from_args(
    args: argparse.Namespace, environ: dict[str, str] | None = None
) -> ServerSettings:
    """Build settings from parsed flags; raises :class:`ConfigurationError`."""
    environ = dict(os.environ) if environ is None else environ
    token: str | None = args.client_token
    token_file: Path | None = args.client_token_file
    if token and token_file:
        raise ConfigurationError("give either --client-token or --client-token-file, not both")
    if token_file is not None:
        try:
            token = token_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigurationError(
                f"cannot read --client-token-file {str(token_file)!r}: {exc.strerror}"
            ) from None
        if not token:
            raise ConfigurationError(f"--client-token-file {str(token_file)!r} is empty")
    elif not token:
        token = environ.get(TOKEN_ENV, "").strip() or None
    admin_token = None
    if args.admin_token_file is None:
        # Never from the command line alone: a flag's value is visible in ps.
        admin_token = environ.get(ADMIN_TOKEN_ENV, "").strip() or None
    redis_url = args.redis_url
    if redis_url is not None and urlsplit(redis_url).password:
        raise ConfigurationError(
            f"--redis-url with a password would be visible in ps: set {REDIS_URL_ENV} instead"
        )
    if redis_url is None:
        redis_url = environ.get(REDIS_URL_ENV, "").strip() or None
    if redis_url is not None and urlsplit(redis_url).scheme not in ("redis", "rediss", "unix"):
        raise ConfigurationError("the Redis URL must start with redis://, rediss:// or unix://")
    return ServerSettings(
        redis_url=redis_url,
        node_name=args.node_name,
        node_url=args.node_url,
        redis_prefix=args.redis_prefix,
        client_token=token,
        client_token_file=token_file,
        tokens_file=args.tokens_file,
        public_url=args.public_url,
        domains=tuple(args.domains),
        offline_grace=args.offline_grace,
        max_body_size=args.max_body_size,
        max_header_size=args.max_header_size,
        response_timeout=args.response_timeout,
        max_streams_per_tunnel=args.max_streams_per_tunnel,
        max_queued_requests=args.max_queued_requests,
        queue_timeout=args.queue_timeout,
        max_tunnels_per_token=args.max_tunnels_per_token,
        max_frame_size=args.max_frame_size,
        max_websocket_message_size=args.max_websocket_message_size,
        heartbeat_interval=args.heartbeat_interval,
        heartbeat_timeout=args.heartbeat_timeout,
        shutdown_grace=args.shutdown_grace,
        head_timeout=args.head_timeout,
        hello_timeout=args.hello_timeout,
        fast_path=args.fast_path,
        stream_idle_timeout=args.stream_idle_timeout,
        max_streams_per_caller=args.max_streams_per_caller,
        forwarded_allow_ips=args.forwarded_allow_ips,
        admin_token=admin_token,
        admin_token_file=args.admin_token_file,
        metrics_per_tunnel=args.metrics_per_tunnel,
        access_log=args.access_log,
        kick_hold=args.kick_hold,
    )


def server_from_args(args: argparse.Namespace, settings: ServerSettings) -> PipeGateServer:
    """The server the command line runs: :func:`~pipegate_server.create_server` with
    the network and logging flags; raises :class:`ConfigurationError`."""
    return create_server(
        settings,
        host=args.host,
        port=args.port,
        ssl_keyfile=args.ssl_keyfile,
        ssl_certfile=args.ssl_certfile,
        log_level=args.log_level,
        access_log=args.access_log,
        http=args.http,
        metrics_addr=args.metrics_addr,
        # Logging is configured once by configure_logging (main), uvicorn included.
        log_config=None,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = settings_from_args(args)
        server = server_from_args(args, settings)
    except ConfigurationError as exc:
        print(f"pipegate-server: error: {exc}", file=sys.stderr)
        return 2
    configure_logging(args.log_format, args.log_level)
    tune_gc()
    server.run()
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
