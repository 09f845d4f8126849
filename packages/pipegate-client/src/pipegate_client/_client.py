"""The reconnect loop around tunnel sessions, and graceful shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import ssl
import sys
from collections.abc import AsyncIterator, Coroutine
from typing import Any, TextIO
from urllib.parse import urlsplit

from pipegate_protocol import (
    CAPABILITY_ACCESS,
    CAPABILITY_HOSTNAMES,
    FRAME_HEADER_SIZE,
    HOSTNAME_HEADER,
    CloseCode,
    Hello,
    ProtocolVersion,
    public_url_for,
)
from pipegate_tunnel import StreamObserver, StreamObservers
from websockets.exceptions import InvalidHandshake, InvalidStatus, InvalidURI, NegotiationError

from ._backoff import Backoff
from ._inspect import InspectedTunnel, Inspector
from ._internals import TunnelConnection, connect_no_redirect
from ._local import LocalApp
from ._logging import RequestLog
from ._metrics import ClientMetrics
from ._settings import ClientSettings, shown_url
from ._text import printable
from ._transport import GuardedClientConnection, PlainTunnelConnection
from ._tunnel import AGENT, TunnelSession
from .errors import (
    AccessUnsupportedError,
    ConfigurationError,
    HandshakeRefusedError,
    HostnamesUnsupportedError,
    NotATunnelEndpointError,
    TokenRefusedError,
    VersionRefusedError,
)

__all__ = ["TunnelClient"]

logger = logging.getLogger("pipegate_client")


class _RetryableConnectError(Exception):
    """A connection attempt failed in a way that a later attempt may not."""


#: Answers to the tunnel upgrade that a later attempt may not get (HS-7: 409, 5xx;
#: also a timeout, too early and too many requests). Any other status but 401/403/400
#: says the URL is not a tunnel endpoint: the client stops (exit 5).
_RETRYABLE_STATUSES = frozenset({408, 409, 425, 429})


class TunnelClient:
    """Keeps one tunnel to a PipeGate server up and relays its streams to the local app.

    :meth:`run` connects, serves, and reconnects with exponential backoff and jitter
    whenever the server goes away, restarts, refuses a duplicate id (409) or breaks the
    protocol. It returns after :meth:`stop` (a graceful shutdown) and raises
    :class:`~pipegate_client.errors.HandshakeRefusedError` when retrying cannot help
    (token refused: :class:`~pipegate_client.errors.TokenRefusedError`).

    Each time the tunnel is established the public URL is written, alone on a line, to
    ``output`` (stdout by default) and :attr:`connected` is set. Text from the server
    (the URL, close reasons, refusal bodies) is printed and logged with its control
    characters escaped (:func:`._text.printable`).

    It stops with :class:`~pipegate_client.errors.NotATunnelEndpointError` when the
    server URL is no tunnel endpoint: the upgrade is answered with a status other than
    101 that no retry can change (a 200, a redirect, which is never followed, a 404),
    or the hello names another connection id than the one claimed.

    ``inspector``: a request inspector shared with other clients of the process (the
    ``--config`` case, one page for every tunnel); the client registers its tunnel with
    it while :meth:`run` runs, and neither starts nor closes it. Without one, the
    client runs an inspector of its own when ``settings.inspect`` asks for one.
    """

    def __init__(
        self,
        settings: ClientSettings,
        *,
        output: TextIO | None = None,
        inspector: Inspector | None = None,
        metrics: ClientMetrics | None = None,
    ) -> None:
        self.settings = settings
        self._shared_inspector = inspector
        #: The process's metrics (``--metrics-addr``), or ``None``.
        self.metrics = metrics
        self.connection_id = settings.connection_id
        self._output = output
        #: Public URL of the tunnel (the v1 base, no trailing slash); known once the
        #: server's hello arrived.
        self.public_url: str | None = None
        #: Every public URL of the tunnel, as printed (RT-5): host URLs, then the path
        #: URL, each ending with ``/``.
        self.public_urls: list[str] = []
        #: Set while a tunnel is established; cleared when it drops.
        self.connected = asyncio.Event()
        #: How many times a tunnel was established (reconnects included).
        self.sessions_established = 0
        self._stopping = asyncio.Event()
        self._grace_period = settings.grace_period
        self._session: TunnelSession | None = None
        self._backoff = Backoff(settings.backoff_initial, settings.backoff_max)
        #: Set when the session showed the URL is no tunnel endpoint; run() raises it.
        self._fatal: HandshakeRefusedError | None = None
        self._warned_plain = False
        #: The request inspector, while :meth:`run` runs with one (``settings.inspect``,
        #: or the shared one given to the constructor).
        self.inspector: Inspector | None = None
        self._inspected: InspectedTunnel | None = None

    # ------------------------------------------------------------ control

    def stop(self, grace_period: float | None = None) -> None:
        """Ask :meth:`run` to finish: go-away, let in-flight streams end (up to the grace
        period), close the tunnel with 1000 and return. Safe to call from a signal
        handler installed with ``loop.add_signal_handler``; idempotent."""
        if grace_period is not None:
            self._grace_period = grace_period
        if not self._stopping.is_set():
            logger.info("[%s] shutting down", self.connection_id)
        self._stopping.set()
        if self._session is not None:
            self._session.shutdown(self._grace_period)

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    # ------------------------------------------------------------ running

    async def run(self) -> None:
        """Serve until :meth:`stop`; see the class docstring for what it raises."""
        async with LocalApp(self.settings) as local, self._inspecting(local):
            while not self._stopping.is_set():
                try:
                    websocket = await self._until_stopped(self._connect())
                except _RetryableConnectError as exc:
                    await self._wait_before_retry(str(exc))
                    continue
                if websocket is None:
                    break
                session = TunnelSession(
                    websocket,
                    self.settings,
                    local,
                    on_established=self._established,
                    observer=self._observer(),
                )
                self._session = session
                if self._stopping.is_set():
                    session.shutdown(self._grace_period)
                try:
                    outcome = await session.run()
                finally:
                    self._session = None
                    self.connected.clear()
                    if self.metrics is not None:
                        self.metrics.lost(self.connection_id)
                if self._fatal is not None:
                    raise self._fatal
                if outcome.close_code == CloseCode.TOKEN_REVOKED:
                    # LV-6: the token is gone; reconnecting would only be refused.
                    raise TokenRefusedError(
                        "the server revoked the client token (close 4401); check "
                        "--client-token or PIPEGATE_CLIENT_TOKEN"
                    )
                if outcome.stopped or self._stopping.is_set():
                    break
                if outcome.established and not outcome.protocol_error:
                    self._backoff.reset()
                await self._wait_before_retry(
                    f"tunnel closed ({outcome.close_code or 'no close code'}"
                    f"{': ' + printable(outcome.reason) if outcome.reason else ''})"
                )
        logger.info("[%s] stopped", self.connection_id)

    @contextlib.asynccontextmanager
    async def _inspecting(self, local: LocalApp) -> AsyncIterator[None]:
        """Record this tunnel meanwhile: in the shared inspector when one was given,
        else in one of its own when the settings ask for one."""
        settings = self.settings
        shared = self._shared_inspector
        if shared is not None:
            async with self._registered(shared, local):
                yield
            return
        if settings.inspect is None:
            yield
            return
        inspector = Inspector(
            settings.inspect,
            max_exchanges=settings.inspect_max_requests,
            body_cap=settings.inspect_body_cap,
            total_cap=settings.inspect_total_cap,
        )
        try:
            url = await inspector.start()
        except ConfigurationError as exc:
            if not settings.inspect_optional:
                raise
            logger.warning("[%s] no inspector: %s", self.connection_id, exc)
            yield
            return
        logger.info("[%s] inspector: %s", self.connection_id, url)
        try:
            async with self._registered(inspector, local):
                yield
        finally:
            await inspector.aclose()

    @contextlib.asynccontextmanager
    async def _registered(self, inspector: Inspector, local: LocalApp) -> AsyncIterator[None]:
        tunnel = inspector.add_tunnel(self.connection_id, local, self.settings.local_url)
        self.inspector = inspector
        self._inspected = tunnel
        try:
            yield
        finally:
            self.inspector = None
            self._inspected = None
            inspector.remove_tunnel(tunnel)

    def _observer(self) -> StreamObserver | None:
        """The sessions' stream observer: the request log, and the inspector's recorder
        when there is one (``None``: the session's default, the request log alone)."""
        observers: list[StreamObserver] = []
        if self._inspected is not None:
            observers.append(self._inspected.observer)
        if self.metrics is not None:
            observers.append(self.metrics.observer(self.connection_id))
        if not observers:
            return None
        return StreamObservers(RequestLog(self.connection_id, logger), *observers)

    async def _until_stopped(
        self, coro: Coroutine[Any, Any, TunnelConnection | PlainTunnelConnection]
    ) -> TunnelConnection | PlainTunnelConnection | None:
        """Run a connection attempt unless stop() comes first (then ``None``)."""
        attempt = asyncio.ensure_future(coro)
        stopper = asyncio.ensure_future(self._stopping.wait())
        try:
            await asyncio.wait({attempt, stopper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopper.cancel()
        if attempt.done():
            if self._stopping.is_set() and attempt.exception() is None:
                await attempt.result().close()
                return None
            return attempt.result()
        attempt.cancel()
        await asyncio.gather(attempt, return_exceptions=True)
        return None

    async def _wait_before_retry(self, why: str) -> None:
        if self._stopping.is_set():
            return
        delay = self._backoff.next_delay()
        logger.warning("[%s] %s; reconnecting in %.1fs", self.connection_id, why, delay)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), delay)

    async def _connect(self) -> TunnelConnection | PlainTunnelConnection:
        """Open the tunnel WebSocket: a :class:`TunnelConnection` on the fast path, a
        :class:`PlainTunnelConnection` (public API only) without it."""
        settings = self.settings
        self._warn_plain_token()
        headers = {"Authorization": f"Bearer {settings.client_token}"}
        if settings.hostnames:
            headers[HOSTNAME_HEADER] = ", ".join(settings.hostnames)
        try:
            # Redirects are never followed: they would carry the token elsewhere.
            websocket = await connect_no_redirect(
                settings.server_url,
                subprotocols=[ProtocolVersion.V1.value],  # type: ignore[list-item]
                additional_headers=headers,
                user_agent_header=AGENT,
                compression=None,
                open_timeout=settings.connect_timeout,
                ping_interval=None,
                ping_timeout=None,
                close_timeout=5,
                max_size=settings.max_frame_size + FRAME_HEADER_SIZE,
                write_limit=256 * 1024,
                ssl=settings.server_ssl_context(),
                create_connection=(
                    TunnelConnection if settings.fast_path else GuardedClientConnection
                ),
            )
        except InvalidStatus as exc:
            raise self._refusal(exc) from None
        except InvalidURI as exc:
            raise ConfigurationError(f"--server-url: {exc}") from None
        except NegotiationError as exc:
            # HS-3: websockets refused a subprotocol we did not offer (no extension is
            # offered, so nothing else is negotiated): retrying cannot help.
            raise VersionRefusedError(
                f"the server at {settings.server_url} selected a subprotocol this client did "
                f"not offer ({_describe(exc)}); it is not a compatible PipeGate server"
            ) from None
        except (OSError, TimeoutError, InvalidHandshake) as exc:
            raise _RetryableConnectError(
                f"cannot reach {settings.server_url}: {_describe(exc)}"
            ) from None
        if websocket.subprotocol != ProtocolVersion.V1.value:
            await websocket.close(int(CloseCode.PROTOCOL_ERROR), "no pipegate.v1 subprotocol")
            raise VersionRefusedError(
                f"the server at {settings.server_url} accepted the WebSocket without the "
                f"{ProtocolVersion.V1.value} subprotocol; it is not a compatible PipeGate server"
            )
        if isinstance(websocket, TunnelConnection):
            return websocket
        return PlainTunnelConnection(websocket)

    def _warn_plain_token(self) -> None:
        """One warning per client when the token goes over ``ws://`` to another host."""
        if self._warned_plain:
            return
        self._warned_plain = True
        parts = urlsplit(self.settings.server_url)
        if parts.scheme == "ws" and not _is_loopback(parts.hostname or ""):
            logger.warning(
                "[%s] the client token is sent unencrypted over ws:// to %s; anyone on "
                "the path can read it (and answer as the server): use wss://",
                self.connection_id,
                printable(parts.hostname or ""),
            )

    def _refusal(self, exc: InvalidStatus) -> Exception:
        status = exc.response.status_code
        reason = (exc.response.body or b"").decode("utf-8", errors="replace").strip()
        reason = printable(reason.splitlines()[0][:200]) if reason else ""
        detail = f"{status}{': ' + reason if reason else ''}"
        if status == 403 and self.settings.hostnames:
            return TokenRefusedError(
                f"the server refused the tunnel ({detail}); check the token and --hostname "
                "(the token must be granted each hostname in the server's tokens file)",
                status=status,
            )
        if status in (401, 403):
            return TokenRefusedError(
                f"the server refused the client token ({detail}); check --client-token "
                "or PIPEGATE_CLIENT_TOKEN",
                status=status,
            )
        if status == 400:
            return VersionRefusedError(
                f"the server refused the tunnel handshake ({detail})", status=status
            )
        if status == 409:
            return _RetryableConnectError(
                f"connection id {self.connection_id!r} is already connected from another "
                f"client ({detail})"
            )
        if status in _RETRYABLE_STATUSES or 500 <= status <= 599:
            return _RetryableConnectError(f"the server answered the tunnel upgrade with {detail}")
        location = exc.response.headers.get("Location")
        if 300 <= status <= 399 and location:
            detail += f" to {printable(location[:200])} (not followed)"
        return NotATunnelEndpointError(
            f"{self.settings.server_url} is not a PipeGate tunnel endpoint: the upgrade "
            f"was answered with {detail}. {_URL_HINT}",
            status=status,
        )

    def _stop_for_good(self, error: HandshakeRefusedError, close_reason: str) -> None:
        """The server's hello shows this tunnel must not run: close it with 1000 before
        anything is answered; :meth:`run` raises ``error`` (no retry)."""
        self._fatal = error
        self._stopping.set()
        if self._session is not None:
            self._session.close(1000, close_reason)

    def _established(self, hello: Hello) -> None:
        if hello.connection_id is not None and hello.connection_id != self.connection_id:
            # HS-12: the hello names the id this tunnel serves; another id means the
            # upgrade was routed elsewhere than the URL says (or the server lies).
            self._stop_for_good(
                NotATunnelEndpointError(
                    f"{self.settings.server_url} is not a tunnel endpoint for "
                    f"{self.connection_id!r}: the server's hello is for "
                    f"{printable(hello.connection_id[:80])!r}. {_URL_HINT}"
                ),
                "hello for another connection id",
            )
            return
        if self.settings.hostnames and CAPABILITY_HOSTNAMES not in hello.capabilities:
            # RT-4: a server without the extension ignored the request; never run under
            # a URL the user did not ask for.
            self._stop_for_good(
                HostnamesUnsupportedError(
                    f"the server at {self.settings.server_url} cannot serve custom hostnames "
                    f"(it predates them); refusing to expose {self.connection_id!r} without "
                    f"{', '.join(self.settings.hostnames)}"
                ),
                "custom hostnames not supported",
            )
            return
        if self.settings.access_policy is not None and CAPABILITY_ACCESS not in hello.capabilities:
            # AC-3: a server without the extension would serve everyone.
            self._stop_for_good(
                AccessUnsupportedError(
                    "this server cannot enforce access rules; refusing to expose "
                    f"{self.connection_id!r} without them"
                ),
                "access rules not supported",
            )
            return
        url = printable(hello.public_url or public_url_for(self.settings.server_url))
        self.public_url = url
        # A hostile server's list is bounded in count and length before it is shown.
        urls = [printable(u[:300]) for u in hello.public_urls[:16]] or [url.rstrip("/") + "/"]
        self.public_urls = urls
        self.sessions_established += 1
        inspector = self.inspector
        if self._inspected is not None:
            self._inspected.public_url = url
            self._inspected.public_urls = list(urls)
        logger.info(
            "[%s] tunnel established: %s -> %s%s",
            self.connection_id,
            " ".join(urls),
            shown_url(self.settings.local_url),
            f" (inspector {inspector.url})" if inspector is not None else "",
        )
        output = self._output if self._output is not None else sys.stdout
        for public in urls:
            print(public, file=output, flush=True)
        if self.metrics is not None:
            self.metrics.established(self.connection_id)
        self.connected.set()


#: What to check when the server URL turned out to be no tunnel endpoint.
_URL_HINT = (
    "A PipeGate server serves the tunnel of <id> at ws(s)://host/<id> exactly; a path "
    "below an id (wss://host/node/alice) is a public WebSocket into tunnel 'node', and "
    "a path prefix works only behind a reverse proxy that strips it. Check --server-url."
)


def _is_loopback(host: str) -> bool:
    """True for ``localhost`` (and ``*.localhost``) and loopback addresses."""
    host = host.rstrip(".").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _describe(exc: BaseException) -> str:
    """Why a connection attempt failed, told by the exception's type only.

    (asyncio reports several failed addresses as one plain :class:`OSError`, whose
    text lists each; it is shown as it is.)
    """
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"{exc.verify_message}; pass --ca-file if the server uses a private CA"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, TimeoutError):
        return "timed out"
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__
