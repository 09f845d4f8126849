"""The pool of keep-alive connections to the one local app.

:class:`HTTP1Pool` owns the choice of a connection and nothing on the wire: which idle
connection serves a request, when a new one is opened, who waits for room, and the one
retry of the keep-alive race. Connections (:mod:`._http1_connection`) report back to it
when they become idle (``_release``) and when they close (``_connection_closed``).

What callers may rely on:

* At most ``max_connections`` connections exist at once, idle ones and ones being
  opened included; a request that finds no room waits, first come first served.
* Idle connections are reused last-in first-out (the most recently used is the most
  likely to be still open, and the others can time out at the origin).
* A body-less request whose *reused* connection ended before any byte of an answer
  arrived (the origin closed an idle connection as we wrote to it) is sent again
  once, on a fresh connection. Nothing else is retried.
* After :meth:`HTTP1Pool.aclose` every connection is closed and every request, waiting
  or new, fails with :class:`~pipegate_client.errors.LocalConnectError`.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from collections.abc import AsyncIterator, Sequence

from ._http1_connection import HTTP1Connection, Origin
from ._http1_wire import HTTP1Response, encode_request_head
from .errors import LocalConnectError, LocalResponseError

__all__ = ["HTTP1Pool"]


class HTTP1Pool:
    """Keep-alive connections to one origin; see the module docstring.

    At most ``max_connections`` connections exist at once (idle ones included); a
    request that finds none free waits for one. ``connect_timeout`` bounds TCP and TLS
    setup (``None``: no limit).
    """

    def __init__(
        self,
        origin: Origin,
        *,
        max_connections: int,
        connect_timeout: float | None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        if max_connections < 1:
            raise ValueError("max_connections must be at least 1")
        self.origin = origin
        self.max_connections = max_connections
        self.connect_timeout = connect_timeout
        if origin.scheme == "https" and ssl_context is None:
            ssl_context = ssl.create_default_context()
        self.ssl_context = ssl_context
        #: Idle connections, most recently used last.
        self.idle: list[HTTP1Connection] = []
        #: Open connections, idle or not (those being opened are counted apart).
        self.connections: set[HTTP1Connection] = set()
        self._opening = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._closed = False

    async def request(
        self,
        method: str,
        target: str,
        headers: Sequence[tuple[str, str]],
        body: AsyncIterator[bytes] | None = None,
        host: str | None = None,
    ) -> HTTP1Response:
        """Send a request; return the response once its final head arrived.

        ``target`` is the raw request target (path and query, sent as given);
        ``headers`` must not include ``Host`` (the origin's is sent) nor framing
        headers other than the caller's ``Content-Length``. ``body`` ``None`` means no
        body. ``host`` replaces the origin's ``Host`` (``--host-header preserve``).
        Call :meth:`HTTP1Response.aclose` when done with the response.
        """
        origin = self.origin
        if origin.authorization is not None:
            headers = [
                *(pair for pair in headers if pair[0].lower() != "authorization"),
                ("Authorization", origin.authorization),
            ]
        head, declared = encode_request_head(
            method,
            target,
            origin.host_header if host is None else host,
            headers,
            has_body=body is not None,
        )
        head_request = method == "HEAD"
        connection = await self._acquire(fresh=False)
        try:
            return await connection.start(head, body, declared, head_request=head_request)
        except LocalResponseError:
            connection.close()
            # The keep-alive race: the origin closed this idle connection as we
            # reused it. Nothing arrived and nothing unrepeatable was sent: retry once.
            if body is not None or connection.exchanges == 0 or connection.received_any:
                raise
        except BaseException:
            connection.close()
            raise
        connection = await self._acquire(fresh=True)
        try:
            return await connection.start(head, None, declared, head_request=head_request)
        except BaseException:
            connection.close()
            raise

    async def aclose(self) -> None:
        """Close every connection; requests in flight fail."""
        self._closed = True
        connections = list(self.connections)
        for connection in connections:
            connection.close()
        await asyncio.gather(*(c.wait_closed() for c in connections), return_exceptions=True)
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)

    # ------------------------------------------------------------ connections

    async def _acquire(self, *, fresh: bool) -> HTTP1Connection:
        while True:
            if self._closed:
                raise LocalConnectError("the client is shutting down")
            idle = self.idle
            if idle and not fresh:
                return idle.pop()
            if len(self.connections) + self._opening < self.max_connections:
                return await self._connect()
            if idle:  # fresh wanted and no room: make room
                idle.pop(0).close()
                continue
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            except BaseException:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
                elif not waiter.cancelled():
                    self._wake_waiter()  # pass on a wake-up this task cannot use
                raise

    async def _connect(self) -> HTTP1Connection:
        connection = HTTP1Connection(self)
        self._opening += 1
        try:
            await connection.connect(self.origin, self.ssl_context, self.connect_timeout)
        except BaseException:
            self._opening -= 1
            self._wake_waiter()  # the room this attempt held is free again
            raise
        self._opening -= 1
        self.connections.add(connection)
        return connection

    def _release(self, connection: HTTP1Connection) -> None:
        if self._closed:
            connection.close()
            return
        self.idle.append(connection)
        self._wake_waiter()

    def _connection_closed(self, connection: HTTP1Connection, *, idle: bool) -> None:
        if idle and connection in self.idle:
            self.idle.remove(connection)
        if connection in self.connections:
            self.connections.discard(connection)
            self._wake_waiter()

    def _wake_waiter(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
