"""Command line of ``pipegate-client``.

Exit codes: 0 after SIGINT/SIGTERM (graceful stop), 1 unexpected error, 2 unusable
settings (including argparse usage errors), 3 token refused by the server (401/403),
4 handshake refused otherwise (no common protocol version), 5 the server URL is no
tunnel endpoint (the upgrade answered with 200, a redirect, 404...: see
:class:`~pipegate_client.errors.NotATunnelEndpointError`).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Coroutine, Sequence
from dataclasses import replace
from typing import Any

from pipegate_tunnel import GC_YOUNG_THRESHOLD as GC_YOUNG_THRESHOLD
from pipegate_tunnel import JsonFormatter
from pipegate_tunnel import tune_gc as tune_gc
from prometheus_client import start_http_server

from ._client import TunnelClient
from ._config import describe, load_config
from ._inspect import DEFAULT_INSPECT_ADDRESS, PORT_ATTEMPTS, Inspector, parse_address
from ._logging import LineFormatter, RequestLog, TurnBufferedHandler
from ._metrics import ClientMetrics
from ._settings import DEFAULT_LOCAL_URL, ClientSettings, hash_password, shown_url
from ._text import printable
from .errors import ClientError, ConfigurationError

__all__ = ["EXIT_ERROR", "EXIT_OK", "build_parser", "main", "settings_from_args"]

EXIT_OK = 0
EXIT_ERROR = 1

logger = logging.getLogger("pipegate_client")


class EscapingFormatter(LineFormatter):
    """:class:`LineFormatter` that escapes control characters (:func:`printable`) in
    any line that has them: whatever text from the server or a caller a log line
    carries, it cannot act on the terminal or forge another line. A line without
    them (every usual one) costs one :meth:`str.isprintable` more."""

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        if line.isprintable():
            return line
        if record.exc_info or record.exc_text or record.stack_info:
            return "\n".join(printable(part) for part in line.split("\n"))
        return printable(line)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pipegate-client",
        description=(
            "Open a PipeGate tunnel: requests to the public URL printed on stdout are "
            "relayed to the local app."
        ),
        epilog=(
            "Example: pipegate-client --server-url wss://example.com/node "
            "--local-url http://localhost:5001 --client-token-file token.txt  "
            "(https://example.com/node/articles reaches http://localhost:5001/articles). "
            "Exit codes: 0 stopped by SIGINT/SIGTERM, 1 error, 2 bad settings, "
            "3 token refused, 4 handshake refused, 5 the server URL is no tunnel endpoint."
        ),
    )
    parser.add_argument(
        "--config",
        default=os.environ.get("PIPEGATE_CONFIG"),
        metavar="FILE",
        help="a TOML config file with the server, the token's source and several "
        "[[tunnels]] (env PIPEGATE_CONFIG); instead of --server-url/--local-url",
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="validate the settings (or --config file), print what would be exposed, exit",
    )
    parser.add_argument(
        "--server-url",
        default=os.environ.get("PIPEGATE_SERVER_URL"),
        help="ws:// or wss:// URL of the server: ws(s)://host/<id>, the id to claim "
        "(a path prefix before it only behind a reverse proxy that strips it) "
        "(env PIPEGATE_SERVER_URL)",
    )
    parser.add_argument(
        "--local-url",
        default=os.environ.get("PIPEGATE_LOCAL_URL", DEFAULT_LOCAL_URL),
        help=f"base URL of the local app (env PIPEGATE_LOCAL_URL; default {DEFAULT_LOCAL_URL})",
    )
    token = parser.add_mutually_exclusive_group()
    token.add_argument(
        "--client-token",
        help="shared secret for the server (prefer PIPEGATE_CLIENT_TOKEN or "
        "--client-token-file: a command line is visible in ps)",
    )
    token.add_argument("--client-token-file", help="read the client token from this file")
    parser.add_argument("--ca-file", help="PEM file of a private CA that signed the server's cert")
    parser.add_argument(
        "--max-concurrency",
        type=int,
        default=128,
        help="streams the server may have open at once on this tunnel (default 128)",
    )
    parser.add_argument(
        "--grace-period",
        type=float,
        default=30.0,
        help="seconds in-flight requests get to finish on SIGINT/SIGTERM (default 30)",
    )
    parser.add_argument(
        "--ping-interval",
        type=float,
        default=15.0,
        help="seconds of server silence before the client pings (default 15)",
    )
    parser.add_argument(
        "--ping-timeout",
        type=float,
        default=15.0,
        help="seconds to wait for the server after a ping before reconnecting (default 15)",
    )
    parser.add_argument(
        "--no-fast-path",
        dest="fast_path",
        action="store_false",
        help="use websockets' public API only (one recv()/send() per message) instead of "
        "the batched connection that reads its internals; slower, for diagnosis and for "
        "websockets versions the fast path was not tested with",
    )
    parser.add_argument(
        "--hostname",
        dest="hostnames",
        action="append",
        default=[],
        metavar="NAME",
        help="ask the server for this hostname too (repeatable; the token must be granted "
        "it in the server's tokens file; the client stops if the server cannot serve it)",
    )
    access = parser.add_argument_group(
        "visitor access (enforced by the server before anything reaches the tunnel)"
    )
    access.add_argument(
        "--basic-auth",
        action="append",
        default=[],
        metavar="USER:PASSWORD",
        help="visitors must log in as USER (repeatable); the password is hashed with "
        "bcrypt here and never sent; visible in ps: prefer a --config file with ${VAR}",
    )
    access.add_argument(
        "--allow",
        action="append",
        default=[],
        metavar="CIDR",
        help="only visitors from these networks (repeatable; IPv4 or IPv6)",
    )
    access.add_argument(
        "--deny",
        action="append",
        default=[],
        metavar="CIDR",
        help="never visitors from these networks (repeatable)",
    )
    parser.add_argument(
        "--host-header",
        choices=["rewrite", "preserve"],
        default="rewrite",
        help="Host sent to the local app: 'rewrite' to the local URL's host (default) or "
        "'preserve' the public host the caller used (for apps that check Host or Origin; "
        "HTTP only)",
    )
    inspect = parser.add_mutually_exclusive_group()
    inspect.add_argument(
        "--inspect",
        metavar="ADDR",
        default=os.environ.get("PIPEGATE_INSPECT"),
        help="serve the request inspector (live requests, replay) on ADDR, host:port "
        f"(env PIPEGATE_INSPECT; default {DEFAULT_INSPECT_ADDRESS}, loopback only); a taken "
        f"port makes it try the next {PORT_ATTEMPTS - 1}; port 0 takes any free port",
    )
    inspect.add_argument(
        "--no-inspect",
        dest="no_inspect",
        action="store_true",
        help="no request inspector",
    )
    parser.add_argument(
        "--metrics-addr",
        default=os.environ.get("PIPEGATE_METRICS_ADDR"),
        metavar="HOST:PORT",
        help="serve the client's Prometheus metrics at http://HOST:PORT/metrics "
        "(env PIPEGATE_METRICS_ADDR; default off)",
    )
    parser.add_argument(
        "--log-format",
        default=os.environ.get("PIPEGATE_LOG_FORMAT", "text"),
        choices=["text", "json"],
        help="stderr log lines as text or one JSON object per line, with the request "
        "line's fields (tunnel, method, path, status, duration_ms, bytes) (env "
        "PIPEGATE_LOG_FORMAT; default text)",
    )
    parser.add_argument(
        "--log-level",
        default=os.environ.get("PIPEGATE_LOG_LEVEL", "info"),
        choices=["debug", "info", "warning", "error"],
        help="log verbosity on stderr (default info)",
    )
    return parser


def settings_from_args(args: argparse.Namespace) -> ClientSettings:
    """Build settings from parsed arguments; raises :class:`ConfigurationError`."""
    if not args.server_url:
        raise ConfigurationError("--server-url is required (e.g. wss://example.com/node)")
    token: str | None = args.client_token
    if args.client_token_file:
        try:
            with open(args.client_token_file, encoding="utf-8") as handle:
                token = handle.read().strip()
        except OSError as exc:
            raise ConfigurationError(
                f"--client-token-file {args.client_token_file!r}: {exc.strerror}"
            ) from None
    if not token:
        token = os.environ.get("PIPEGATE_CLIENT_TOKEN", "").strip() or None
    if not token:
        raise ConfigurationError(
            "no client token: pass --client-token-file, set PIPEGATE_CLIENT_TOKEN, "
            "or pass --client-token"
        )
    if args.max_concurrency < 1 or args.max_concurrency > 65535:
        raise ConfigurationError("--max-concurrency must be within 1..65535")
    return ClientSettings(
        server_url=args.server_url,
        client_token=token,
        local_url=args.local_url,
        ca_file=args.ca_file,
        max_concurrency=args.max_concurrency,
        grace_period=args.grace_period,
        ping_interval=args.ping_interval,
        ping_timeout=args.ping_timeout,
        fast_path=args.fast_path,
        hostnames=tuple(args.hostnames),
        access_users=_basic_auth_users(args.basic_auth),
        access_allow=tuple(args.allow),
        access_deny=tuple(args.deny),
        preserve_host=args.host_header == "preserve",
        inspect=None if args.no_inspect else (args.inspect or DEFAULT_INSPECT_ADDRESS),
        # Only the default address may be given up for (with a warning): the tunnel
        # matters more than the inspector, and many clients may run on one machine.
        inspect_optional=not args.inspect,
    )


def _basic_auth_users(values: Sequence[str]) -> tuple[tuple[str, str], ...]:
    users: list[tuple[str, str]] = []
    for value in values:
        name, colon, password = value.partition(":")
        if not colon or not name or not password:
            raise ConfigurationError("--basic-auth takes USER:PASSWORD (both non-empty)")
        users.append((name, hash_password(password)))
    return tuple(users)


def tunnels_from_args(args: argparse.Namespace) -> tuple[list[ClientSettings], str]:
    """The settings of every tunnel to run, from ``--config`` or from the flags, and
    what ``--check`` prints; raises :class:`ConfigurationError`."""
    if args.config:
        if args.server_url and args.server_url != os.environ.get("PIPEGATE_SERVER_URL"):
            raise ConfigurationError("give either --config or --server-url, not both")
        config = load_config(args.config, fast_path=args.fast_path)
        tunnels = list(config.tunnels)
        if args.no_inspect:
            tunnels = [replace(t, inspect=None) for t in tunnels]
        return tunnels, describe(config)
    settings = settings_from_args(args)
    summary = (
        f"1 tunnel\n- {settings.connection_id}: {settings.server_url} -> "
        f"{shown_url(settings.local_url)}"
    )
    return [settings], summary


async def _serve(clients: Sequence[TunnelClient]) -> None:
    """Run every client until all stop; the first that fails for good stops the others
    (gracefully) and its error is raised."""
    loop = asyncio.get_running_loop()
    main_task = asyncio.current_task()
    assert main_task is not None
    signals_seen = 0

    def on_signal() -> None:
        nonlocal signals_seen
        signals_seen += 1
        if signals_seen == 1:
            for client in clients:
                client.stop()
        else:
            logger.warning("second signal: stopping now")
            main_task.cancel()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)
    tasks = [asyncio.create_task(client.run()) for client in clients]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        failed = next((task for task in tasks if task.done() and task.exception()), None)
        if failed is not None:
            for client in clients:
                client.stop()
        await asyncio.gather(*tasks, return_exceptions=True)
        if failed is not None:
            error = failed.exception()
            assert error is not None
            raise error
    except asyncio.CancelledError:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if signals_seen < 2:
            raise
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


def _start_metrics(address: str | None) -> ClientMetrics | None:
    """The process's metrics, served in a thread by prometheus-client, or ``None``."""
    if not address:
        return None
    try:
        host, port = parse_address(address)
    except ConfigurationError:
        raise ConfigurationError(
            f"--metrics-addr {address!r}: expected host:port, e.g. 127.0.0.1:9101"
        ) from None
    metrics = ClientMetrics()
    try:
        start_http_server(port, host, registry=metrics.registry)
    except OSError as exc:
        raise ConfigurationError(
            f"--metrics-addr {address!r}: cannot listen: {exc.strerror}"
        ) from None
    logger.info("metrics: http://%s:%d/metrics", host, port)
    return metrics


async def _serve_config(
    tunnels: Sequence[ClientSettings], metrics: ClientMetrics | None = None
) -> None:
    """Run the tunnels of a config file with one inspector for all of them (their
    settings share its address and caps), listening before any tunnel connects; when
    no port is free the tunnels run without it, with a warning."""
    first = tunnels[0]
    inspector: Inspector | None = None
    if first.inspect is not None:
        inspector = Inspector(
            first.inspect,
            max_exchanges=first.inspect_max_requests,
            body_cap=first.inspect_body_cap,
            total_cap=first.inspect_total_cap,
        )
        ids = ", ".join(settings.connection_id for settings in tunnels)
        try:
            url = await inspector.start()
        except ConfigurationError as exc:
            if not first.inspect_optional:
                raise
            logger.warning("[%s] no inspector: %s", ids, exc)
            inspector = None
        else:
            logger.info("[%s] inspector: %s", ids, url)
    try:
        await _serve(
            [TunnelClient(settings, inspector=inspector, metrics=metrics) for settings in tunnels]
        )
    finally:
        if inspector is not None:
            await inspector.aclose()


def _run(main_coroutine: Coroutine[Any, Any, None]) -> None:
    """Run on uvloop when it is installed (markedly faster relaying), else asyncio."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency where it builds
        asyncio.run(main_coroutine)
        return
    uvloop.run(main_coroutine)


def _lean_log_records() -> None:
    """Skip the log record fields our format does not print (caller's frame, thread,
    process): the line logged per request is on the hot path, and this saves about
    3 us a line (the "Optimization" section of the logging HOWTO). Process-wide, so
    only done when the client is about to run."""
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler = TurnBufferedHandler(sys.stderr)
    if args.log_format == "json":
        # JSON escapes control characters itself: no line can be forged.
        handler.setFormatter(JsonFormatter())
        RequestLog.structured = True
    else:
        handler.setFormatter(EscapingFormatter())
    logging.basicConfig(level=args.log_level.upper(), handlers=[handler])
    if args.log_level != "debug":
        logging.getLogger("websockets").setLevel(logging.WARNING)
    try:
        tunnels, summary = tunnels_from_args(args)
        if args.check:
            print(summary)
            return EXIT_OK
        metrics = _start_metrics(args.metrics_addr)
        _lean_log_records()
        tune_gc()
        if args.config:  # one inspector for every tunnel of the file
            _run(_serve_config(tunnels, metrics))
        else:
            _run(_serve([TunnelClient(settings, metrics=metrics) for settings in tunnels]))
    except ClientError as exc:
        print(f"pipegate-client: {printable(str(exc))}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return EXIT_OK
    return EXIT_OK


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
