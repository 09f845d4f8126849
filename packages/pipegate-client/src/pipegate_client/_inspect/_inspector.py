"""The inspector: a recorder on the tunnel and a small web server on a local address.

:class:`Inspector` owns both. :meth:`Inspector.start` listens on the address asked for
(``127.0.0.1:4040`` from the command line); when that port is taken it tries the next
:data:`PORT_ATTEMPTS` - 1 ports and reports the URL it got. Port 0 lets the system
choose. What it listens on is loopback unless the user named another address.
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
from ._recorder import DEFAULT_BODY_CAP, DEFAULT_MAX_EXCHANGES, DEFAULT_TOTAL_CAP, Recorder

__all__ = ["DEFAULT_INSPECT_ADDRESS", "PORT_ATTEMPTS", "Inspector", "parse_address"]

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


class Inspector:
    """The inspector of one client; see the module docstring and :mod:`._api`.

    ``local`` is the local app replays go to. :attr:`recorder` is the stream observer
    to attach to the tunnel. Nothing here ever sees the client token.
    """

    def __init__(
        self,
        address: str,
        local: LocalApp,
        *,
        connection_id: str,
        local_url: str,
        max_exchanges: int = DEFAULT_MAX_EXCHANGES,
        body_cap: int = DEFAULT_BODY_CAP,
        total_cap: int = DEFAULT_TOTAL_CAP,
    ) -> None:
        self.host, self.port = parse_address(address)
        self.local = local
        self.connection_id = connection_id
        parts = urlsplit(local_url)
        # The local URL as shown: without any user:password it may carry.
        self.local_url = urlunsplit(
            (parts.scheme, _netloc(parts.hostname or "", parts.port), parts.path, "", "")
        )
        self.recorder = Recorder(
            max_exchanges=max_exchanges, body_cap=body_cap, total_cap=total_cap
        )
        #: The tunnel's public URL once it is established.
        self.public_url: str | None = None
        #: Where the inspector is reachable, once started.
        self.url: str | None = None
        self._server: asyncio.Server | None = None
        self._connections: set[HttpServerProtocol] = set()

    async def start(self) -> str:
        """Listen; returns the URL. Raises :class:`ConfigurationError` when no port of
        the range is free or the address cannot be used."""
        loop = asyncio.get_running_loop()
        ports = [0] if self.port == 0 else range(self.port, min(self.port + PORT_ATTEMPTS, 65536))
        last: OSError | None = None
        for port in ports:
            guard = HostGuard(self.host, port)
            api = Api(
                self.recorder,
                guard,
                replay_to=self.local,
                tunnel=self._tunnel,
                connection_id=self.connection_id,
            )
            try:
                self._server = await loop.create_server(
                    functools.partial(
                        HttpServerProtocol, api, self._connections, connection_id=self.connection_id
                    ),
                    self.host,
                    port,
                )
            except OSError as exc:
                last = exc
                if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                    continue
                break
            bound = self._server.sockets[0].getsockname()[1]
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

    def _tunnel(self) -> dict[str, object]:
        return {
            "connection_id": self.connection_id,
            "public_url": self.public_url,
            "local_url": self.local_url,
        }


def _netloc(host: str, port: int | None) -> str:
    shown = f"[{host}]" if ":" in host else host
    return shown if port is None else f"{shown}:{port}"
