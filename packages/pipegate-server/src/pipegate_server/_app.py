"""The application: dispatch, the tunnel endpoint, health, shutdown and reloads.

Every request is dispatched on the :class:`~._routing.Route` its gateway's
:class:`~._routing.Router` gives it (by default :class:`~._routing.PathRouter`:
``/_pipegate/...`` for the server's own endpoints, a WebSocket upgrade at exactly
``/<id>`` for the tunnel endpoint, anything else at or below ``/<id>`` relayed
through the tunnel for ``<id>``). Tunnels are claimed, looked up and listed through
the gateway's :class:`~._registry.TunnelDirectory` (by default the in-process
:class:`~._registry.TunnelRegistry`).

The tunnel endpoint checks the id's syntax (404), the token (401 missing, 403 wrong
or not allowed for this id), the hostnames the client asks for (400 invalid, 403 not
granted; RT-4), whether the id can be a hostname label when the server routes by
hostname (400; RT-3), the protocol version (400), the per-token tunnel limit (429)
and whether the id or one of its hostnames is taken (409) — all before accepting,
answering with a real HTTP response and one log line that never contains the token.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Request, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pipegate_protocol import (
    KNOWN_VERSIONS,
    RESERVED_PREFIX,
    CloseCode,
    GoAwayReason,
    extract_client_token,
    is_dns_label,
    is_valid_connection_id,
    label_for,
    negotiate_version,
    requested_hostnames,
)
from pipegate_tunnel import StreamObserver, StreamObservers
from pydantic import BaseModel, Field

from ._access import AccessChecker, Verdict
from ._asgi import Receive, Scope, Send
from ._auth import Authenticator, FailureTracker, load_tokens_file
from ._direct import DIRECT_EXTENSION
from ._metrics import CONTENT_TYPE, AccessLog, ServerMetrics
from ._registry import Claim, ClusterRequest, Presence, TunnelDirectory, TunnelRegistry
from ._relay import Relay, deny_websocket, offline_headers, send_plain
from ._routing import HostRoute, HostRouter, PathRouter, Route, RouteKind, Router
from ._settings import ServerSettings
from ._tunnel import Tunnel
from .errors import (
    ConfigurationError,
    DirectoryUnavailableError,
    ServerError,
    TooManyFailuresError,
)

if TYPE_CHECKING:
    from ._factory import ServerApp
    from ._forward import Forwarder

__all__ = ["Gateway", "PipeGateApp", "create_app"]

logger = logging.getLogger("pipegate.server")

#: Seconds a tunnel handed off to another node may finish its streams (cluster mode).
_MOVE_GRACE = 10.0

try:
    __version__ = version("pipegate-server")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0"

_SERVER = RouteKind.SERVER
_TUNNEL = RouteKind.TUNNEL
_RELAY_HTTP = RouteKind.RELAY_HTTP
_RELAY_WEBSOCKET = RouteKind.RELAY_WEBSOCKET
_REDIRECT_SLASH = RouteKind.REDIRECT_SLASH


def _read_admin_token(settings: ServerSettings) -> str | None:
    """The admin token: ``settings.admin_token_file``'s content, else
    ``settings.admin_token``; raises :class:`ConfigurationError`."""
    path = settings.admin_token_file
    if path is None:
        return settings.admin_token or None
    try:
        token = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigurationError(
            f"cannot read admin token file {str(path)!r}: {exc.strerror}"
        ) from None
    if not token:
        raise ConfigurationError(f"admin token file {str(path)!r} is empty")
    return token


def _read_token_file(settings: ServerSettings) -> str | None:
    if settings.client_token_file is None:
        return settings.client_token
    try:
        token = settings.client_token_file.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigurationError(
            f"cannot read client token file {str(settings.client_token_file)!r}: {exc.strerror}"
        ) from None
    if not token:
        raise ConfigurationError(f"client token file {str(settings.client_token_file)!r} is empty")
    return token


def _directory_for(settings: ServerSettings) -> TunnelDirectory:
    """The in-process directory, or with ``settings.redis_url`` a cluster node's."""
    local = TunnelRegistry(
        FailureTracker(settings.bad_token_budget, max_concurrent=settings.max_failing_handshakes),
        offline_grace=settings.offline_grace,
    )
    if settings.redis_url is None:
        return local
    from ._cluster import ClusterDirectory  # only cluster nodes import redis

    return ClusterDirectory.from_url(
        settings.redis_url,
        local=local,
        name=settings.node_name,
        advertise=settings.public_url or "",
        node_url=settings.node_url or "",
        prefix=settings.redis_prefix,
        offline_grace=settings.offline_grace,
    )


class Gateway:
    """The running server's state: tunnels, credentials, shutdown and reload.

    ``create_app`` puts one on ``app.state.gateway``; the command line uses it to
    drain on SIGTERM (:meth:`drain`) and to re-read credentials on SIGHUP
    (:meth:`reload`). ``router`` decides where requests go and names tunnels'
    public URLs (default: :class:`HostRouter` for ``settings.domains`` in front of a
    :class:`PathRouter` with ``settings.public_url``);
    ``directory`` holds the tunnels, the per-token limits and the bad-token budget
    (default: an in-process :class:`TunnelRegistry` with
    ``settings.bad_token_budget``). ``registry`` is the directory under its old name.
    ``observer`` (:class:`~pipegate_tunnel.StreamObserver`) sees every relayed stream.
    """

    def __init__(
        self,
        settings: ServerSettings,
        router: Router | None = None,
        directory: TunnelDirectory | None = None,
        observer: StreamObserver | None = None,
    ) -> None:
        self.settings = settings
        if directory is None:
            directory = _directory_for(settings)
        self.router: Router = (
            router
            if router is not None
            else HostRouter(settings.domains, directory, PathRouter(settings.public_url))
        )
        self.directory: TunnelDirectory = directory
        self.registry: TunnelDirectory = directory
        #: The Prometheus metrics (always counted; served only when asked for).
        self.metrics = ServerMetrics(directory, per_tunnel=settings.metrics_per_tunnel)
        observers: list[StreamObserver] = [self.metrics]
        if settings.access_log:
            observers.append(AccessLog())
        if observer is not None:
            observers.append(observer)
        #: Sees every stream of tunnels connected from now on: the metrics, the access
        #: log when enabled, and ``observer``.
        self.observer: StreamObserver = (
            observers[0] if len(observers) == 1 else StreamObservers(*observers)
        )
        self.relay = Relay(settings, directory)
        self.relay.metrics = self.metrics
        #: The admin token (``/_pipegate/admin/``, ``/_pipegate/metrics``); None: off.
        self.admin_token = _read_admin_token(settings)
        #: Ids kicked through the admin API and until when (monotonic) they are held.
        self._held: dict[str, float] = {}
        #: Tunnels handed off to another node, closing once idle (cluster mode).
        self._moves: set[asyncio.Task[None]] = set()
        #: Forwards requests for tunnels other nodes hold (cluster mode, --node-url).
        self.forwarder: Forwarder | None = None
        if settings.clustered and settings.node_url:
            from ._forward import Forwarder  # only cluster nodes import aiohttp

            self.forwarder = Forwarder(settings)
        #: Called by :meth:`reload` after the credentials (the command line adds the
        #: TLS certificate's reload); each returns False when it kept the old state.
        self.reload_hooks: list[Callable[[], bool]] = []
        #: Checks visitors against tunnels' access rules (bounded bcrypt work).
        self.access = AccessChecker()
        token, credentials = self._load_credentials()
        self.authenticator = Authenticator(token, credentials)
        self.agent = f"pipegate-server/{__version__}"
        if not settings.custom_hostnames and any(c.hostnames for c in credentials):
            logger.warning(
                "cluster mode without --node-url: the tokens file grants custom "
                "hostnames, which this node does not offer (it cannot forward their "
                "requests to the node that holds them); clients that ask for one stop "
                "with an error"
            )

    @property
    def failures(self) -> TunnelDirectory:
        """The bad-token budget (it is kept by the directory)."""
        return self.directory

    def _load_credentials(self) -> tuple[str | None, list[Any]]:
        token = _read_token_file(self.settings)
        credentials = []
        if self.settings.tokens_file is not None:
            credentials = load_tokens_file(self.settings.tokens_file)
        return token, credentials

    @property
    def draining(self) -> bool:
        return self.relay.draining

    # ------------------------------------------------------------------ operations

    def reload(self) -> bool:
        """Re-read the token file, the tokens file and the admin token file; close
        tunnels whose token went; then run :attr:`reload_hooks`.

        Connected tunnels whose credential is still valid for their id are not
        touched. On a read error the old credentials stay and False is returned.
        """
        try:
            self.authenticator.replace(*self._load_credentials())
            if self.settings.admin_token_file is not None:
                self.admin_token = _read_admin_token(self.settings)
        except ServerError as exc:
            logger.error("credentials reload failed, keeping the old ones: %s", exc)
            return False
        revoked = 0
        for tunnel in self.directory.running():
            credential = self.authenticator.current(tunnel.credential.digest)
            if (
                credential is None
                or not credential.allows(tunnel.connection_id)
                or not all(credential.allows_hostname(name) for name in tunnel.custom_hostnames)
            ):
                revoked += 1
                tunnel.comes_back = False
                tunnel.goaway(GoAwayReason.TOKEN_REVOKED, "the token was revoked")
                tunnel.close(CloseCode.TOKEN_REVOKED, "token revoked")
        logger.info("credentials reloaded: %d tunnel(s) closed for revoked tokens", revoked)
        ok = True
        for hook in self.reload_hooks:
            ok = hook() and ok
        return ok

    def kick(self, connection_id: str, reason: str = "") -> bool:
        """Disconnect the tunnel holding ``connection_id``; False when none does.

        Its client gets a go-away saying why and a close (1008), and its id is held
        for ``settings.kick_hold`` seconds: a reconnect meanwhile is refused with 429
        and Retry-After, so the client backs off instead of coming straight back.
        """
        tunnel = self.directory.get(connection_id)
        if tunnel is None:
            return False
        text = "disconnected by the server's operator"
        if reason:
            text += f": {reason}"
        if self.settings.kick_hold > 0:
            now = time.monotonic()
            self._held = {i: t for i, t in self._held.items() if t > now}
            self._held[connection_id] = now + self.settings.kick_hold
        logger.info("tunnel kicked: id=%s reason=%s", connection_id, reason or "-")
        tunnel.goaway(GoAwayReason.SHUTDOWN, text[:200])
        tunnel.close(CloseCode.POLICY_VIOLATION, "disconnected by the operator")
        self.directory.release(tunnel)
        return True

    async def kick_anywhere(self, connection_id: str, reason: str = "") -> str:
        """Kick ``connection_id`` on this node, or ask the cluster node that holds it
        to; returns that node's name ('' for this one), raises LookupError when no
        node holds it."""
        if self.kick(connection_id, reason):
            return ""
        where = await self.directory.locate(connection_id=connection_id)
        if self.directory.ask(where, ClusterRequest.KICK, reason):
            return where.node
        raise LookupError(connection_id)

    def on_cluster_request(self, request: ClusterRequest, connection_id: str, reason: str) -> None:
        """Another node asks this one to move or kick a tunnel it holds."""
        if request is ClusterRequest.KICK:
            self.kick(connection_id, reason)
            return
        tunnel = self.directory.get(connection_id)
        if tunnel is None or tunnel.closed:
            return
        logger.info(
            "tunnel moving: id=%s reason=the balancer sends it to another node", connection_id
        )
        tunnel.goaway(GoAwayReason.SHUTDOWN, "moving to another server node")
        self.directory.hand_off(tunnel)
        self.metrics.tunnel_moved()
        task = asyncio.ensure_future(self._close_when_idle(tunnel, _MOVE_GRACE))
        self._moves.add(task)
        task.add_done_callback(self._moves.discard)

    async def _close_when_idle(self, tunnel: Tunnel, grace: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(tunnel.wait_idle(), grace)
        tunnel.close(CloseCode.GOING_AWAY, "moved to another server node")

    def held_for(self, connection_id: str) -> float:
        """Seconds ``connection_id`` stays held after a kick (0: free)."""
        until = self._held.get(connection_id)
        if until is None:
            return 0.0
        left = until - time.monotonic()
        if left <= 0:
            del self._held[connection_id]
            return 0.0
        return left

    def tunnels(self) -> list[dict[str, Any]]:
        """What the admin API lists about each tunnel of this process."""
        return [
            {
                "id": tunnel.connection_id,
                "hostnames": list(tunnel.hostnames),
                "token": tunnel.credential.label,
                "peer": tunnel.remote,
                "connected_since": tunnel.connected_since,
                "open_streams": tunnel.active_streams,
                "requests": tunnel.requests,
                "bytes_in": tunnel.bytes_in,
                "bytes_out": tunnel.bytes_out,
                "closed": tunnel.closed,
            }
            for tunnel in sorted(self.directory.running(), key=lambda t: t.connection_id)
        ]

    async def drain(self, grace: float | None = None) -> None:
        """Graceful shutdown: go-away to every tunnel, refuse new tunnels and requests
        (503), let streams in flight finish for ``grace`` seconds, then close tunnels."""
        grace = self.settings.shutdown_grace if grace is None else grace
        self.relay.draining = True
        tunnels = list(self.directory.running())
        logger.info("shutting down: go-away to %d tunnel(s), grace %.0f s", len(tunnels), grace)
        for tunnel in tunnels:
            tunnel.goaway(GoAwayReason.SHUTDOWN, "the server is shutting down")
            if self.settings.clustered:
                # Its client reconnects through the balancer to another node, which
                # may claim the id at once; the streams in flight finish here.
                self.directory.hand_off(tunnel)
        waits = [asyncio.ensure_future(tunnel.wait_idle()) for tunnel in tunnels]
        if waits:
            _, pending = await asyncio.wait(waits, timeout=grace)
            for task in pending:
                task.cancel()
            if pending:
                logger.warning("shutdown grace over: %d tunnel(s) still busy", len(pending))
        for tunnel in tunnels:
            tunnel.close(CloseCode.GOING_AWAY, "server shutting down")

    # ------------------------------------------------------------------ tunnel endpoint

    async def tunnel_endpoint(
        self, scope: Scope, receive: Receive, send: Send, connection_id: str
    ) -> None:
        event = await receive()
        if event["type"] != "websocket.connect":
            return
        client = scope.get("client")
        address = str(client[0]) if client else "-"

        async def refuse(
            status: int,
            reason: str,
            delay: float = 0.0,
            headers: list[tuple[bytes, bytes]] | None = None,
        ) -> None:
            if headers is None:
                headers = (
                    [(b"www-authenticate", b'Bearer realm="pipegate"')] if status == 401 else []
                )
            logger.info(
                "tunnel refused: id=%r addr=%s status=%d reason=%s",
                connection_id,
                address,
                status,
                reason,
            )
            self.metrics.handshake_refused(status)
            if delay:
                await asyncio.sleep(delay)
            await deny_websocket(scope, send, status, reason, headers)

        if not is_valid_connection_id(connection_id):
            await refuse(404, "invalid connection id: use 1-64 characters of A-Z a-z 0-9 _ -")
            return
        headers = [(n.decode("latin-1"), v.decode("latin-1")) for n, v in scope["headers"]]
        token = extract_client_token(headers)
        credential = None if token is None else self.authenticator.authenticate(token)
        if credential is None:
            try:
                delay = self.directory.record_failure(address)
            except TooManyFailuresError as exc:
                retry = [(b"retry-after", str(exc.retry_after).encode("ascii"))]
                await refuse(429, str(exc), headers=retry)
                return
            if token is None:
                await refuse(
                    401, "missing client token: send 'Authorization: Bearer <token>'", delay
                )
            else:
                await refuse(403, "invalid client token", delay)
            return
        if not credential.allows(connection_id):
            await refuse(403, f"this token may not claim connection id {connection_id!r}")
            return
        try:
            # A cluster node without --node-url cannot forward, so it does not offer
            # custom hostnames: it ignores them (VE-2) and its hello says so.
            custom = [] if not self.settings.custom_hostnames else requested_hostnames(headers)
        except ValueError as exc:
            await refuse(400, f"bad PipeGate-Hostname: {exc}")
            return
        domains = self.settings.domains
        for name in custom:
            _, _, parent = name.partition(".")
            if parent in domains:
                # <label>.<D> names belong to the ids (RT-4): a grant of *.<D> must not
                # let one tenant take another's id's name before it connects.
                await refuse(
                    403,
                    f"hostname {name!r} is the name of tunnel id {name.partition('.')[0]!r} "
                    f"on this server; connect with that id instead",
                )
                return
            if not credential.allows_hostname(name):
                await refuse(403, f"this token may not claim hostname {name!r}")
                return
        if domains and not is_dns_label(connection_id):
            await refuse(
                400,
                f"connection id {connection_id!r} cannot be a hostname label (this server "
                "routes by hostname): use 1-63 letters, digits and hyphens, not at either end",
            )
            return
        hostnames = list(custom)
        for domain in domains:
            name = f"{label_for(connection_id)}.{domain}"
            if name not in hostnames:
                hostnames.append(name)
        negotiated = negotiate_version(scope.get("subprotocols") or ())
        if negotiated is None:
            offered = ", ".join(v.value for v in KNOWN_VERSIONS)
            await refuse(400, f"no common protocol version: offer the subprotocol {offered}")
            return
        if self.draining:
            await refuse(503, "the server is shutting down")
            return
        held = self.held_for(connection_id)
        if held:
            wait = str(max(1, int(held + 0.999)))
            await refuse(
                429,
                f"connection id {connection_id!r} was disconnected by the operator; "
                f"retry in {wait} s",
                headers=[(b"retry-after", wait.encode("ascii"))],
            )
            return
        limit = (
            credential.max_tunnels
            if credential.max_tunnels is not None
            else self.settings.max_tunnels_per_token
        )
        tunnel = Tunnel(
            connection_id=connection_id,
            credential=credential,
            settings=self.settings,
            registry=self.directory,
            receive=receive,
            send=send,
            version=negotiated,
            public_url=self.router.public_url(scope, connection_id),
            remote=address,
            agent=self.agent,
            direct=(scope.get("extensions") or {}).get(DIRECT_EXTENSION),
            observer=self.observer,
            hostnames=hostnames,
            custom_hostnames=custom,
            public_urls=self.router.public_urls(scope, connection_id, hostnames),
            metrics=self.metrics,
        )
        claim = await self.directory.claim(tunnel, limit=limit)
        if claim is Claim.UNAVAILABLE:
            await refuse(
                503,
                "the tunnel directory cannot be reached now; retry",
                headers=[(b"retry-after", b"2")],
            )
            return
        if claim is Claim.LIMIT_REACHED:
            await refuse(429, f"this token already has {limit} tunnel(s) connected")
            return
        if claim is Claim.HOSTNAME_TAKEN:
            taken = next(
                (name for name in hostnames if self.directory.owner_of(name) is not None),
                "",
            )
            await refuse(
                409,
                f"hostname {taken!r} is held by another tunnel"
                if taken
                else "one of this tunnel's hostnames is held by another tunnel",
            )
            return
        if claim is not Claim.CLAIMED:
            await refuse(409, f"connection id {connection_id!r} is already connected")
            return
        try:
            await send({"type": "websocket.accept", "subprotocol": negotiated.value})
        except OSError:
            self.directory.forget(tunnel)
            return
        self.metrics.tunnel_connected()
        logger.info(
            "tunnel connected: id=%s addr=%s credential=%s hostnames=%s",
            connection_id,
            address,
            credential.label,
            ",".join(hostnames) or "-",
        )
        try:
            await tunnel.run()
        finally:
            self.directory.forget(tunnel)
            self.metrics.tunnel_ended(tunnel)
            logger.info("tunnel ended: id=%s code=%s", connection_id, tunnel.close_code)

    async def admitted(self, scope: Scope, receive: Receive, send: Send, route: Route) -> bool:
        """Whether the visitor may reach ``route``'s tunnel; if not, it has been answered
        401 (with ``WWW-Authenticate: Basic``), 403 or 429 and nothing crossed the
        tunnel. Costs one dict lookup for a tunnel without rules, and an attribute test
        for the client's hello, which may carry rules (AC-4): a request that comes
        before it waits for it (the hello timeout bounds the wait)."""
        tunnel = self.directory.get(route.connection_id)
        if tunnel is None:
            if self.settings.clustered and not self.relay.draining:
                return not await self._elsewhere(scope, receive, send, route)
            return True
        if tunnel.conn.peer_hello is None and not await tunnel.wait_hello():
            # AC-4: the client's rules come in its hello; nothing passes before it.
            if scope["type"] == "websocket":
                await receive()
                await deny_websocket(scope, send, 503, "the tunnel is not ready yet")
            else:
                await send_plain(
                    send, 503, "the tunnel is not ready yet", headers=offline_headers()
                )
            return False
        if not tunnel.access:
            return True
        authorization = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                authorization = value
                break
        client = scope.get("client")
        peer = str(client[0]) if client else None
        admission = await self.access.admit(tunnel.access, peer, authorization)
        if admission.verdict is Verdict.ADMIT:
            return True
        status = admission.verdict.value
        self.metrics.visitor_refused(status)
        logger.info(
            "visitor refused: id=%s addr=%s status=%d reason=%s",
            route.connection_id,
            peer or "-",
            status,
            admission.reason,
        )
        if scope["type"] == "websocket":
            await receive()
            await deny_websocket(scope, send, status, admission.reason, admission.headers)
        else:
            await send_plain(
                send,
                status,
                admission.reason,
                headers=[*admission.headers, (b"connection", b"close")],
            )
        return False

    async def _elsewhere(self, scope: Scope, receive: Receive, send: Send, route: Route) -> bool:
        """Cluster mode, for a tunnel this node does not hold. When another node holds
        it: forward the request there (``--node-url``), and when the balancer sent
        its id here (not a custom hostname, which hashes elsewhere by nature) ask
        that node to hand the tunnel off; without a node URL, or for a request another
        node forwarded already, answer 503. Also 503 when it is moving or offline, or
        when Redis cannot say. False when the directory knows nothing of it (the
        caller answers 404). Returns True when the request was answered."""
        hostname = route.hostname if isinstance(route, HostRoute) else ""
        where = await self.directory.locate(connection_id=route.connection_id, hostname=hostname)
        presence = where.presence
        name = hostname or route.connection_id
        if presence is Presence.NOWHERE or presence is Presence.HERE:
            return False
        if presence is Presence.ELSEWHERE:
            forwarder = self.forwarder
            # Only a node without --node-url gets no forwards: forwarder None.
            forwarded = forwarder is not None and forwarder.was_forwarded(scope)
            by_id = not hostname or hostname.partition(".")[2] in self.settings.domains
            if by_id and not forwarded:
                # The balancer sends this id here now: the tunnel should follow.
                self.directory.ask(where, ClusterRequest.MOVE)
            if forwarder is not None and where.url and not forwarded:
                if scope["type"] == "websocket":
                    await forwarder.websocket(scope, receive, send, where.url)
                else:
                    await forwarder.http(scope, receive, send, where.url)
                return True
            text = (
                f"tunnel {name} is moving to this server node; retry"
                if by_id and not forwarded
                else f"tunnel {name} is on another server node; retry"
            )
            retry = b"1"
        elif presence is Presence.MOVING:
            text, retry = f"tunnel {name} is moving to another server node; retry", b"1"
        elif presence is Presence.OFFLINE:
            text, retry = f"tunnel {name} is offline", offline_headers()[0][1]
        else:
            text, retry = f"cannot tell where tunnel {name} is now; retry", b"2"
        headers = [(b"retry-after", retry)]
        self.metrics.request_refused(503)
        client = scope.get("client")
        logger.info(
            "request refused: id=%s addr=%s status=503 reason=%s",
            where.connection_id or name,
            client[0] if client else "-",
            presence.value,
        )
        if scope["type"] == "websocket":
            await receive()
            await deny_websocket(scope, send, 503, text, headers)
        else:
            await send_plain(send, 503, text, headers=headers)
        return True

    async def not_found(self, scope: Scope, receive: Receive, send: Send, route: Route) -> None:
        """No tunnel serves ``route``: 503 while its id or hostname is offline (RT-6),
        404 otherwise, both with a one-line reason."""
        if self.settings.clustered and await self._elsewhere(scope, receive, send, route):
            return
        hostname = route.hostname if isinstance(route, HostRoute) else ""
        if hostname:
            age = self.directory.offline(hostname=hostname)
            name, text = hostname, f"no tunnel is connected at {hostname}"
        else:
            name = route.connection_id
            age = self.directory.offline(connection_id=name) if name else -1.0
            text = (
                f"no tunnel is connected for id {name!r}"
                if name
                else "no connection id in the path: use /<connection_id>/<path>"
            )
        status, headers = 404, []
        if age >= 0:
            status, headers = 503, offline_headers()
            text = f"tunnel {name} is offline"
        if scope["type"] == "websocket":
            await receive()
            await deny_websocket(scope, send, status, text, headers)
        else:
            await send_plain(send, status, text, headers=headers)


async def _redirect_slash(scope: Scope, send: Send) -> None:
    """308 from ``/<id>`` to ``/<id>/`` (RT-1), query kept."""
    location = (scope.get("raw_path") or scope["path"].encode("utf-8")) + b"/"
    if scope.get("query_string"):
        location += b"?" + scope["query_string"]
    await send_plain(
        send,
        308,
        "redirecting to the tunnel's root, with a trailing slash",
        headers=[(b"location", location)],
    )


class PipeGateApp(FastAPI):
    """FastAPI for the server's own endpoints, with tunnel and relay traffic routed
    *before* the framework.

    The relay is the hot path: handing it the raw ASGI scope directly skips the
    middleware stack and per-request framework work, and keeps the raw path, query
    and header bytes exactly as the caller sent them. Only lifespan events and
    ``/_pipegate/...`` requests reach FastAPI.
    """

    gateway: Gateway

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        gateway = self.gateway
        route = gateway.router.route(scope)
        kind = route.kind
        if kind is _RELAY_HTTP:
            if await gateway.admitted(scope, receive, send, route):
                await gateway.relay.http(scope, receive, send, route)
        elif kind is _SERVER:
            await super().__call__(scope, receive, send)
        elif kind is _RELAY_WEBSOCKET:
            if await gateway.admitted(scope, receive, send, route):
                await gateway.relay.websocket(scope, receive, send, route)
        elif kind is _TUNNEL:
            await gateway.tunnel_endpoint(scope, receive, send, route.connection_id)
        elif kind is _REDIRECT_SLASH:
            await _redirect_slash(scope, send)
        else:
            await gateway.not_found(scope, receive, send, route)


def create_app(
    settings: ServerSettings,
    *,
    router: Router | None = None,
    directory: TunnelDirectory | None = None,
) -> ServerApp:
    """Build the server application for ``settings``.

    Raises :class:`~pipegate_server.errors.ConfigurationError` when the credentials
    cannot be loaded. The returned app is the whole ASGI stack the command line serves
    (proxy headers around the :class:`PipeGateApp`, see ``_factory.ServerApp``) and
    carries its :class:`Gateway` as ``app.gateway`` and ``app.state.gateway``. Run it
    with :func:`~pipegate_server.create_server`, or under uvicorn with per-message
    compression off and ``ws_max_size >= settings.ws_max_size``.
    """
    from ._factory import ServerApp  # _factory imports this module

    gateway = Gateway(settings, router, directory)
    admin = gateway.admin_token is not None

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await gateway.directory.start(gateway.on_cluster_request)
        try:
            yield
        finally:
            gateway.relay.close()
            for tunnel in gateway.registry.running():
                tunnel.close(CloseCode.GOING_AWAY, "server stopped")
            await gateway.directory.aclose()
            if gateway.forwarder is not None:
                await gateway.forwarder.aclose()

    app = PipeGateApp(
        title="PipeGate server",
        version=__version__,
        # The admin API's documentation exists only with the admin API.
        docs_url=f"{_ADMIN}/docs" if admin else None,
        redoc_url=None,
        openapi_url=f"{_ADMIN}/openapi.json" if admin else None,
        lifespan=lifespan,
    )
    app.gateway = gateway
    app.state.gateway = gateway

    @app.get(f"/{RESERVED_PREFIX}/health")
    async def health() -> dict[str, Any]:
        """Liveness of the server and how many tunnels hold an id."""
        return {
            "status": "draining" if gateway.draining else "ok",
            **(
                {"node": getattr(gateway.directory, "name", "")}
                if gateway.settings.clustered
                else {}
            ),
            "tunnels": len(gateway.registry),
            "version": __version__,
            "protocol_versions": [v.value for v in KNOWN_VERSIONS],
        }

    if admin:
        _add_admin_routes(app, gateway)
    return ServerApp(app, settings.forwarded_allow_ips)


_ADMIN = f"/{RESERVED_PREFIX}/admin"
_bearer = HTTPBearer(auto_error=False, description="The admin token (--admin-token-file)")


class TunnelInfo(BaseModel):
    """One tunnel of this server process."""

    id: str
    hostnames: list[str]
    token: str = Field(description="The name of the tunnel's token in the tokens file")
    peer: str = Field(description="The client's address")
    connected_since: float = Field(description="Seconds since the epoch")
    open_streams: int
    requests: int = Field(description="Relayed requests that ended")
    bytes_in: int = Field(description="Body bytes from callers, relayed to the client")
    bytes_out: int = Field(description="Body bytes from the client, relayed to callers")
    closed: bool = Field(description="Closed and finishing its last streams")


class ClusterNode(BaseModel):
    """One live node of a cluster, as its heartbeat in Redis says."""

    name: str
    node: str = Field(description="The node's id for this run: its name and a random part")
    address: str = Field(description="The node's --public-url, if it has one")
    started: float = Field(description="Seconds since the epoch")
    tunnels: int


class ClusterTunnel(BaseModel):
    """One tunnel of any node of a cluster."""

    id: str
    node: str
    hostnames: list[str]
    token: str
    peer: str
    connected_since: float


class ClusterView(BaseModel):
    node: str = Field(description="The node that answered")
    nodes: list[ClusterNode]
    tunnels: list[ClusterTunnel]


class KickRequest(BaseModel):
    reason: str = Field(default="", max_length=200, description="Told to the client")


class ActionResult(BaseModel):
    ok: bool
    detail: str


def _add_admin_routes(app: FastAPI, gateway: Gateway) -> None:
    """``/_pipegate/admin/...`` and ``/_pipegate/metrics``, behind the admin token."""

    def require_admin(
        request: Request,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> None:
        expected = gateway.admin_token
        if expected is None:  # pragma: no cover - routes exist only with a token
            raise HTTPException(404)
        if credentials is None:
            raise HTTPException(
                401,
                "missing admin token: send 'Authorization: Bearer <admin token>'",
                headers={"WWW-Authenticate": 'Bearer realm="pipegate-admin"'},
            )
        if not hmac.compare_digest(
            credentials.credentials.encode("utf-8"), expected.encode("utf-8")
        ):
            peer = request.client.host if request.client else "-"
            logger.warning("admin request refused: wrong admin token from addr=%s", peer)
            raise HTTPException(403, "wrong admin token")

    guarded = [Depends(require_admin)]

    @app.get(
        f"{_ADMIN}/tunnels",
        dependencies=guarded,
        tags=["admin"],
        response_model=list[TunnelInfo],
    )
    async def list_tunnels() -> list[dict[str, Any]]:
        """The tunnels of this server process, by id."""
        return gateway.tunnels()

    @app.post(
        f"{_ADMIN}/tunnels/{{connection_id}}/kick",
        dependencies=guarded,
        tags=["admin"],
        responses={404: {"description": "No tunnel holds this id"}},
    )
    async def kick_tunnel(connection_id: str, body: KickRequest | None = None) -> ActionResult:
        """Disconnect a tunnel: its client gets a go-away with the reason, and its id
        is held for the kick hold (reconnects get 429 with Retry-After meanwhile). In
        cluster mode, a tunnel of another node is kicked by that node."""
        try:
            node = await gateway.kick_anywhere(connection_id, body.reason if body else "")
        except LookupError:
            raise HTTPException(404, f"no tunnel is connected for id {connection_id!r}") from None
        if node:
            return ActionResult(ok=True, detail=f"node {node} asked to disconnect {connection_id}")
        return ActionResult(ok=True, detail=f"tunnel {connection_id} disconnected")

    directory = gateway.directory
    if gateway.settings.clustered:
        from ._cluster import ClusterDirectory

        assert isinstance(directory, ClusterDirectory)

        @app.get(
            f"{_ADMIN}/cluster",
            dependencies=guarded,
            tags=["admin"],
            response_model=ClusterView,
            responses={503: {"description": "Redis cannot be reached"}},
        )
        async def cluster() -> dict[str, Any]:
            """Every live node of the cluster and every tunnel any node holds (at most
            10 000), from Redis."""
            try:
                nodes = await directory.nodes()
                tunnels = await directory.tunnels()
            except DirectoryUnavailableError as exc:
                raise HTTPException(exc.status, str(exc)) from None
            return {"node": directory.name, "nodes": nodes, "tunnels": tunnels}

    @app.post(f"{_ADMIN}/reload", dependencies=guarded, tags=["admin"])
    async def reload() -> ActionResult:
        """Re-read the token files, as SIGHUP does (and the TLS certificate when the
        server serves TLS)."""
        ok = gateway.reload()
        return ActionResult(
            ok=ok, detail="reloaded" if ok else "reload failed: the old configuration stays"
        )

    @app.get(
        f"/{RESERVED_PREFIX}/metrics",
        dependencies=guarded,
        tags=["admin"],
        response_class=Response,
    )
    async def metrics() -> Response:
        """The Prometheus metrics (text format)."""
        return Response(gateway.metrics.render(), media_type=CONTENT_TYPE)
