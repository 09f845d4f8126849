"""The inspector: a recorder on the tunnel and a small web server on a local address.

:class:`Inspector` owns both. :meth:`Inspector.start` listens on the address asked for
(``127.0.0.1:4040`` from the command line); when that port is taken it tries the next
:data:`PORT_ATTEMPTS` - 1 ports and reports the URL it got. Port 0 lets the system
choose. What it listens on is loopback unless the user named another address.

One inspector serves a whole client process: every tunnel registers with
:meth:`Inspector.add_tunnel` and records through its own observer into the one
recorder, so the page lists them all and the memory bound is the process's.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import logging
from urllib.parse import urlsplit, urlunsplit

from .._local import LocalApp
from ..errors import ConfigurationError
from ._api import Api, HostGuard
from ._http import HttpServerProtocol
from ._recorder import (
    DEFAULT_BODY_CAP,
    DEFAULT_MAX_EXCHANGES,
    DEFAULT_TOTAL_CAP,
    Recorder,
    TunnelObserver,
)

__all__ = [
    "DEFAULT_INSPECT_ADDRESS",
    "PORT_ATTEMPTS",
    "InspectedTunnel",
    "Inspector",
    "parse_address",
]

logger = logging.getLogger("pipegate_client")

#: Where the command line's inspector listens unless told otherwise.
DEFAULT_INSPECT_ADDRESS = "127.0.0.1:4040"
#: Ports tried, the one asked for included, before giving up.
PORT_ATTEMPTS = 10


def parse_address(address: str) -> tuple[str, int]:
    """``host:port``, ``[v6]:port`` or ``:port`` (loopback) as (host, port); raises
    :class:`ConfigurationError` for anything else."""
    host, sep, port = address.strip().rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ConfigurationError(f"--inspect {address!r}: expected host:port, e.g. 127.0.0.1:4040")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ConfigurationError(f"--inspect {address!r}: put an IPv6 address in brackets")
    return host or "127.0.0.1", int(port)


def _url_host(host: str) -> str:
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


class InspectedTunnel:
    """One tunnel as the inspector knows it: what the page shows of it (never the token,
    never a ``user:password`` of its local URL), the local app its replays go to, and
    :attr:`observer`, the stream observer to attach to its sessions."""

    def __init__(
        self, connection_id: str, local: LocalApp, local_url: str, recorder: Recorder
    ) -> None:
        self.connection_id = connection_id
        self.local = local
        parts = urlsplit(local_url)
        # The local URL as shown: without any user:password it may carry.
        self.local_url = urlunsplit(
            (parts.scheme, _netloc(parts.hostname or "", parts.port), parts.path, "", "")
        )
        self.observer = TunnelObserver(recorder, connection_id)
        #: The tunnel's public URL (the v1 base) and all its URLs, once established.
        self.public_url: str | None = None
        self.public_urls: list[str] = []

    def view(self) -> dict[str, object]:
        return {
            "connection_id": self.connection_id,
            "public_url": self.public_url,
            "public_urls": list(self.public_urls),
            "local_url": self.local_url,
        }


class Inspector:
    """The inspector of one client process; see the module docstring and :mod:`._api`.

    One inspector records every tunnel registered with :meth:`add_tunnel` (the
    ``--config`` case: all tunnels of the file, one page). The memory bound
    (``max_exchanges``, ``body_cap``, ``total_cap``) is that of its one
    :attr:`recorder`, so it holds for the whole process however many tunnels there are.
    A replay goes only to the local app of the tunnel its original came through.
    Nothing here ever sees a client token.
    """

    def __init__(
        self,
        address: str,
        *,
        max_exchanges: int = DEFAULT_MAX_EXCHANGES,
        body_cap: int = DEFAULT_BODY_CAP,
        total_cap: int = DEFAULT_TOTAL_CAP,
    ) -> None:
        self.host, self.port = parse_address(address)
        self.recorder = Recorder(
            max_exchanges=max_exchanges, body_cap=body_cap, total_cap=total_cap
        )
        #: The tunnels recorded, by connection id, in the order they were added.
        self.tunnels: dict[str, InspectedTunnel] = {}
        #: Where the inspector is reachable, once started.
        self.url: str | None = None
        self._server: asyncio.Server | None = None
        self._connections: set[HttpServerProtocol] = set()

    def add_tunnel(self, connection_id: str, local: LocalApp, local_url: str) -> InspectedTunnel:
        """Record the tunnel ``connection_id`` (whose local app is ``local``); attach
        the returned tunnel's :attr:`~InspectedTunnel.observer` to its sessions. Raises
        :class:`ValueError` when that id is already recorded."""
        if connection_id in self.tunnels:
            raise ValueError(f"the inspector already records a tunnel {connection_id!r}")
        tunnel = InspectedTunnel(connection_id, local, local_url, self.recorder)
        self.tunnels[connection_id] = tunnel
        self.recorder.changed()
        return tunnel

    def remove_tunnel(self, tunnel: InspectedTunnel) -> None:
        """Forget ``tunnel`` (its client stopped): its exchanges stay listed, but can no
        longer be replayed (its local app is closed)."""
        if self.tunnels.get(tunnel.connection_id) is tunnel:
            del self.tunnels[tunnel.connection_id]
            self.recorder.changed()

    async def start(self) -> str:
        """Listen; returns the URL. Raises :class:`ConfigurationError` when no port of
        the range is free or the address cannot be used."""
        loop = asyncio.get_running_loop()
        ports = [0] if self.port == 0 else range(self.port, min(self.port + PORT_ATTEMPTS, 65536))
        last: OSError | None = None
        for port in ports:
            guard = HostGuard(self.host, port)
            api = Api(self.recorder, guard, tunnels=self.tunnels)
            try:
                self._server = await loop.create_server(
                    functools.partial(HttpServerProtocol, api, self._connections),
                    self.host,
                    port,
                )
            except OSError as exc:
                last = exc
                if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                    continue
                break
            # uvloop's Server.sockets was once seen holding None right after the
            # bind (a CI run): fall back to the port asked for, or try again for 0.
            sockets = self._server.sockets or ()
            listening = sockets[0] if sockets else None
            if listening is None and port == 0:
                self._server.close()
                last = OSError(errno.EADDRNOTAVAIL, "the listening socket vanished")
                continue
            bound = listening.getsockname()[1] if listening is not None else port
            if port == 0:  # the guard must know the port the system chose
                guard.port = bound
            self.port = bound
            self.url = f"http://{_url_host(self.host)}:{bound}"
            return self.url
        reason = last.strerror if last is not None and last.strerror else "unavailable"
        tried = f"{self.port}" if len(ports) == 1 else f"{ports[0]}..{ports[-1]}"
        raise ConfigurationError(f"--inspect: cannot listen on {self.host} port {tried}: {reason}")

    async def aclose(self) -> None:
        if self._server is not None:
            self._server.close()
            for connection in list(self._connections):
                connection.abort()
            await self._server.wait_closed()
            self._server = None


def _netloc(host: str, port: int | None) -> str:
    shown = f"[{host}]" if ":" in host else host
    return shown if port is None else f"{shown}:{port}"
