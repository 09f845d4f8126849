"""One way to build the server: the ASGI stack and the uvicorn server around it.

The command line and programmatic users get the same stack from here:

* :class:`ServerApp` — what :func:`~pipegate_server.create_app` returns: uvicorn's
  proxy-header handling (keeping the peer address, ``_internals.PeerKeepingProxyHeaders``)
  around the :class:`~pipegate_server._app.PipeGateApp`. Mounted under any ASGI
  server, it behaves as under the command line.
* :func:`uvicorn_config` — the uvicorn options the server needs, with the fast-path
  protocols of :mod:`._internals` (or uvicorn's own with ``fast_path=False``).
* :func:`create_server` — both, as a :class:`PipeGateServer` ready to ``run()``; the
  command line calls it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import signal
import socket
import ssl
from collections.abc import Sequence
from types import FrameType
from typing import TYPE_CHECKING, Any

import uvicorn
from pipegate_protocol import RESERVED_PREFIX
from prometheus_client import start_http_server

from ._asgi import Receive, Scope, Send
from ._internals import (
    PeerKeepingProxyHeaders,
    head_limit,
    http_protocol_class,
    ws_protocol_class,
)
from ._relay import TRUSTED_PROXY
from ._settings import ServerSettings

if TYPE_CHECKING:
    from ._app import Gateway, PipeGateApp

__all__ = ["PipeGateServer", "ServerApp", "create_server", "uvicorn_config"]

logger = logging.getLogger("pipegate.server")

#: Environment variable naming the proxies whose X-Forwarded-* headers are trusted,
#: as uvicorn reads it; nobody when unset (an explicit opt-in, like the flag).
FORWARDED_ALLOW_IPS = "FORWARDED_ALLOW_IPS"

#: uvicorn's WebSocket protocol modules, whose INFO lines are per-connection access lines.
_UVICORN_WEBSOCKET_MODULES = frozenset(
    {"websockets_sansio_impl", "websockets_impl", "wsproto_impl"}
)


def trusted_proxies(forwarded_allow_ips: str | None) -> list[str]:
    """The proxies whose headers are trusted: ``forwarded_allow_ips`` (from
    ``--forwarded-allow-ips``), else ``$FORWARDED_ALLOW_IPS``, else nobody."""
    value = forwarded_allow_ips
    if value is None:
        value = os.environ.get(FORWARDED_ALLOW_IPS, "")
    return [item.strip() for item in value.split(",") if item.strip()]


class ServerApp(PeerKeepingProxyHeaders):
    """The server's whole ASGI stack: proxy headers, then the :class:`PipeGateApp`.

    Proxy headers are trusted from ``forwarded_allow_ips`` (default
    ``$FORWARDED_ALLOW_IPS``; without either, nobody is trusted). A request from a
    trusted proxy is marked (``scope[TRUSTED_PROXY]``) so that the relay keeps its
    proxy headers; from anyone else they are dropped (HD-5).
    """

    def __init__(self, app: PipeGateApp, forwarded_allow_ips: str | None = None) -> None:
        trusted = trusted_proxies(forwarded_allow_ips)
        super().__init__(app, trusted_hosts=trusted)  # type: ignore[arg-type]
        self.pipegate_app = app
        self._trusts_anyone = bool(trusted)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:  # type: ignore[override]
        if self._trusts_anyone and scope["type"] != "lifespan":
            client = scope.get("client")
            scope[TRUSTED_PROXY] = client is not None and client[0] in self.trusted_hosts
        await super().__call__(scope, receive, send)

    @property
    def state(self) -> Any:
        """The FastAPI app's ``state`` (``state.gateway`` is the :class:`Gateway`)."""
        return self.pipegate_app.state

    @property
    def gateway(self) -> Gateway:
        return self.pipegate_app.gateway


def uvicorn_config(
    app: object,
    settings: ServerSettings,
    *,
    host: str = "0.0.0.0",
    port: int = 8000,
    ssl_keyfile: str | None = None,
    ssl_certfile: str | None = None,
    log_level: str = "info",
    access_log: bool = False,
    http: str = "auto",
    **overrides: Any,
) -> uvicorn.Config:
    """The uvicorn configuration the server needs, for ``app`` (a :class:`ServerApp`
    from :func:`~pipegate_server.create_app`; any other app is wrapped in the same
    proxy-header handling).

    uvloop and httptools are used when installed; with ``http="auto"`` a request whose
    method httptools does not know is handed to h11 (see ``_internals``). Per-message
    compression is off (tunnel frames are mostly already-compressed bodies, and it
    costs CPU on every message); uvicorn's own WebSocket pings are off because the
    protocol's heartbeat covers tunnels; ``ws_max_size`` fits the largest frame. The
    Server and Date headers are off so relayed responses carry only the local app's.
    h11 buffers at most ``_internals.head_limit(max_header_size)`` bytes of a head.
    ``settings.fast_path=False`` selects uvicorn's own protocols (public API only).
    uvicorn's access log is always off and ``access_log`` is accepted for
    compatibility: the server's own access log is ``settings.access_log``.
    """
    # uvicorn's own access lines are always off: the server's access log
    # (``settings.access_log``, ``_metrics.AccessLog``) has the tunnel, bytes and ids.
    del access_log
    _install_websocket_log_filter(False)
    if not isinstance(app, PeerKeepingProxyHeaders):
        trusted = os.environ.get(FORWARDED_ALLOW_IPS, "127.0.0.1")
        app = PeerKeepingProxyHeaders(app, trusted_hosts=trusted)  # type: ignore[arg-type]
    return uvicorn.Config(
        app,
        proxy_headers=False,  # done by the app's own middleware
        host=host,
        port=port,
        ssl_keyfile=ssl_keyfile,
        ssl_certfile=ssl_certfile,
        log_level=log_level,
        access_log=False,
        ws_max_size=settings.ws_max_size,
        ws_per_message_deflate=False,
        ws_ping_interval=None,
        ws_ping_timeout=None,
        server_header=False,
        date_header=False,
        lifespan="on",
        http=http_protocol_class(
            http,
            settings.head_timeout,
            fast_path=settings.fast_path,
            max_header_size=settings.max_header_size,
        ),
        # h11 (the hand-over path, and uvicorn's own h11 without the fast path) stops
        # buffering a head at the same bound; uvicorn answers that with 400.
        h11_max_incomplete_event_size=head_limit(settings.max_header_size),
        **{"ws": ws_protocol_class(fast_path=settings.fast_path), **overrides},
    )


class PipeGateServer(uvicorn.Server):
    """uvicorn, but the first SIGTERM/SIGINT drains the gateway before stopping, SIGHUP
    reloads its credentials and its TLS certificate, the startup line is PipeGate's
    banner, and the metrics may be served on their own address.

    Certificate reload: the new certificate and key are loaded into a fresh context
    first (so a broken pair keeps the old one), then into the live ``SSLContext``
    uvicorn's listener uses: new handshakes get the new certificate, established
    connections (tunnels) keep theirs and stay up.

    Reaches under uvicorn (pinned in pyproject.toml): ``config.ssl``, the listener's
    context after ``config.load()``, and ``_log_started_message``, replaced by the
    banner.
    """

    def __init__(
        self,
        config: uvicorn.Config,
        gateway: Gateway,
        *,
        metrics_addr: tuple[str, int] | None = None,
    ) -> None:
        super().__init__(config)
        self.gateway = gateway
        self.metrics_addr = metrics_addr
        #: The separate metrics listener's bound address, once serving.
        self.metrics_bound: tuple[str, int] | None = None
        self._metrics_httpd: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._draining = False
        self._drain_task: asyncio.Task[None] | None = None
        if config.ssl_certfile:
            gateway.reload_hooks.append(self.reload_certificate)

    async def serve(self, sockets: list[object] | None = None) -> None:  # type: ignore[override]
        self._loop = asyncio.get_running_loop()
        if hasattr(signal, "SIGHUP"):
            self._loop.add_signal_handler(signal.SIGHUP, self.gateway.reload)
        if self.metrics_addr is not None:
            self._start_metrics(*self.metrics_addr)
        try:
            await super().serve(sockets)  # type: ignore[arg-type]
        finally:
            if self._metrics_httpd is not None:
                self._metrics_httpd.shutdown()
                self._metrics_httpd.server_close()
                self._metrics_httpd = None

    def _start_metrics(self, host: str, port: int) -> None:
        """The metrics on their own address (prometheus-client's threaded server);
        no token there: bind it to loopback or a private network."""
        httpd, _ = start_http_server(port, host, registry=self.gateway.metrics.registry)
        self._metrics_httpd = httpd
        bound = httpd.server_address
        self.metrics_bound = (str(bound[0]), int(bound[1]))

    def reload_certificate(self) -> bool:
        """Load the certificate files again (see the class docstring); False when
        they cannot be loaded, and the old certificate stays."""
        config = self.config
        live = getattr(config, "ssl", None)
        certfile, keyfile = config.ssl_certfile, config.ssl_keyfile
        if live is None or not certfile:
            return True
        try:
            probe = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            probe.load_cert_chain(certfile, keyfile, config.ssl_keyfile_password)
            live.load_cert_chain(certfile, keyfile, config.ssl_keyfile_password)
        except (OSError, ssl.SSLError) as exc:
            logger.error("certificate reload failed, keeping the old one: %s", exc)
            return False
        logger.info("certificate reloaded: %s", certfile)
        return True

    def _log_started_message(self, listeners: Sequence[socket.SocketType]) -> None:
        """The banner: PipeGate, its version, listen URLs, domains, health and metrics."""
        from ._app import __version__

        scheme = "https" if self.config.ssl_certfile else "http"
        urls = []
        for listener in listeners:
            address = listener.getsockname()
            if isinstance(address, tuple):
                host = address[0]
                urls.append(f"{scheme}://{f'[{host}]' if ':' in host else host}:{address[1]}")
            else:
                urls.append(f"unix:{address}")
        base = urls[0] if urls else ""
        gateway = self.gateway
        settings = gateway.settings
        metrics = []
        if self.metrics_bound is not None:
            metrics.append(f"http://{self.metrics_bound[0]}:{self.metrics_bound[1]}/metrics")
        if gateway.admin_token is not None:
            metrics.append(f"{base}/{RESERVED_PREFIX}/metrics (admin token)")
        health = f"{base}/{RESERVED_PREFIX}/health"
        logger.info(
            "PipeGate server %s listening on %s; domains: %s; health: %s; metrics: %s; "
            "admin API: %s (Press CTRL+C to quit)",
            __version__,
            ", ".join(urls) or "-",
            ", ".join(settings.domains) or "-",
            health,
            ", ".join(metrics) or "off",
            f"{base}/{RESERVED_PREFIX}/admin/" if gateway.admin_token is not None else "off",
            extra={
                "version": __version__,
                "listen": urls,
                "domains": list(settings.domains),
                "health": health,
                "metrics": metrics,
            },
        )

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._draining or self._loop is None:
            self.force_exit = self._draining
            self.should_exit = True
            return
        self._draining = True
        self._loop.call_soon_threadsafe(self._start_drain)

    def _start_drain(self) -> None:
        self._drain_task = asyncio.ensure_future(self._drain())

    async def _drain(self) -> None:
        try:
            await self.gateway.drain()
        finally:
            self.should_exit = True


def create_server(
    settings: ServerSettings,
    *,
    host: str = "0.0.0.0",
    port: int = 8000,
    ssl_keyfile: str | None = None,
    ssl_certfile: str | None = None,
    log_level: str = "info",
    access_log: bool = False,
    http: str = "auto",
    metrics_addr: tuple[str, int] | None = None,
    **overrides: Any,
) -> PipeGateServer:
    """The server for ``settings``, as the command line runs it: ``create_server(...).run()``.

    Raises :class:`~pipegate_server.errors.ConfigurationError` when the credentials
    cannot be loaded. The app is ``server.config.app`` (a :class:`ServerApp`).
    """
    from ._app import create_app  # _app builds on this module's ServerApp

    if access_log and not settings.access_log:
        settings = dataclasses.replace(settings, access_log=True)
    app = create_app(settings)
    config = uvicorn_config(
        app,
        settings,
        host=host,
        port=port,
        ssl_keyfile=ssl_keyfile,
        ssl_certfile=ssl_certfile,
        log_level=log_level,
        access_log=access_log,
        http=http,
        **overrides,
    )
    return PipeGateServer(config, app.gateway, metrics_addr=metrics_addr)


class WebSocketAccessLogFilter(logging.Filter):
    """Keeps uvicorn's per-connection WebSocket lines out of the log unless
    ``--access-log``: the server logs one line per tunnel event itself.

    Decided on the record's attributes only (its level and the uvicorn module that
    logged it), never on its text.
    """

    def __init__(self, access_log: bool) -> None:
        super().__init__()
        self.access_log = access_log

    def filter(self, record: logging.LogRecord) -> bool:
        if self.access_log or record.levelno > logging.INFO:
            return True
        return record.module not in _UVICORN_WEBSOCKET_MODULES


def _install_websocket_log_filter(access_log: bool) -> None:
    uvicorn_logger = logging.getLogger("uvicorn.error")
    for old in [f for f in uvicorn_logger.filters if isinstance(f, WebSocketAccessLogFilter)]:
        uvicorn_logger.removeFilter(old)
    uvicorn_logger.addFilter(WebSocketAccessLogFilter(access_log))
