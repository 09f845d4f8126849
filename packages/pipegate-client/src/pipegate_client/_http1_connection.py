"""One connection to the local app: opening it (TCP, TLS) and its state.

:class:`HTTP1Connection` is an :class:`asyncio.Protocol` that runs one exchange at a
time; the bytes of an exchange are :mod:`._http1_wire`'s business (the connection is
its parser's callback object), the choice of a connection is :mod:`._http1_pool`'s.

States (:class:`ConnectionState`) and the only transitions between them::

    NEW ──connection_made──▶ IDLE ──start──▶ ACTIVE ──_exchange_done──▶ IDLE
     │                        │               │
     └────────────────────────┴───────────────┴──_connection_ended──▶ CLOSED

* ``NEW``: created, being opened; no transport yet.
* ``IDLE``: open, no exchange; in the pool's idle list (or just taken from it).
* ``ACTIVE``: a request was written; its response is awaited or being read.
* ``CLOSED``: for good. Only :meth:`HTTP1Connection._connection_ended` enters it, on
  EOF, on the transport's loss, or on our own :meth:`HTTP1Connection.close`.

``ACTIVE`` becomes ``IDLE`` again only once request and response are both complete and
the response allows keep-alive (HTTP/1.1, no ``Connection: close``, not a HEAD answer);
an exchange that cannot end that way (an error, cancellation, an abandoned body, bytes
outside an exchange) closes the connection.

What callers may rely on: :meth:`HTTP1Connection.connect` raises only a
:class:`~pipegate_client.errors.LocalConnectError` (socket and TLS exceptions are
translated by :mod:`._http1_errors`); :meth:`HTTP1Connection.start` raises a
:class:`~pipegate_client.errors.LocalResponseError` if the connection ends before the
final response head, or what the request body iterator raised.
"""

from __future__ import annotations

import asyncio
import base64
import enum
import ipaddress
import socket
import ssl
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Final, cast
from urllib.parse import unquote, urlsplit

import httptools

from ._http1_errors import connect_error, lost_error, parse_error
from ._http1_wire import HTTP1Response, ResponseParsing
from .errors import (
    LocalConnectError,
    LocalConnectTimeoutError,
    LocalNameError,
    LocalRequestError,
    LocalResponseError,
)

if TYPE_CHECKING:
    from ._http1_pool import HTTP1Pool

__all__ = ["ConnectionState", "HTTP1Connection", "Origin"]


# ---------------------------------------------------------------------- the origin


class Origin:
    """Where requests go: scheme, host, port and the ``Host`` header to send.

    Built from the local URL; a path in it is the caller's business (it prefixes the
    request target). Userinfo becomes ``Authorization: Basic``, in place of any the
    caller sent, as aiohttp did.
    """

    __slots__ = ("authorization", "host", "host_header", "is_address", "port", "scheme")

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http:// or https:// URL with a host: {url!r}")
        self.scheme = parts.scheme
        host = parts.hostname
        if not host.isascii():
            host = host.encode("idna").decode("ascii")
        self.host = host
        #: The host is an IP address (no name to resolve).
        self.is_address = _is_address(host)
        default_port = 443 if parts.scheme == "https" else 80
        self.port = parts.port or default_port
        shown = f"[{host}]" if ":" in host else host
        self.host_header = shown if self.port == default_port else f"{shown}:{self.port}"
        self.authorization: str | None = None
        if parts.username is not None or parts.password is not None:
            credentials = f"{unquote(parts.username or '')}:{unquote(parts.password or '')}"
            token = base64.b64encode(credentials.encode("latin-1")).decode("ascii")
            self.authorization = f"Basic {token}"


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


# ---------------------------------------------------------------------- connection


class ConnectionState(enum.Enum):
    """Where a connection is in its life; see the module docstring for transitions."""

    NEW = "new"
    IDLE = "idle"
    ACTIVE = "active"
    CLOSED = "closed"


# Module names for the members: the per-request checks read a global and compare
# identities, as cheap as the strings they replaced.
_NEW: Final = ConnectionState.NEW
_IDLE: Final = ConnectionState.IDLE
_ACTIVE: Final = ConnectionState.ACTIVE
_CLOSED: Final = ConnectionState.CLOSED


class HTTP1Connection(ResponseParsing, asyncio.Protocol):
    """One connection to the origin, running one exchange at a time.

    Its :attr:`state` is a :class:`ConnectionState`; see the module docstring for what
    each state means and which method moves it where.
    """

    def __init__(self, pool: HTTP1Pool) -> None:
        self._pool = pool
        self.state: ConnectionState = _NEW
        self.transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        #: Exchanges completed on this connection (0: it is fresh).
        self.exchanges = 0
        self._reading_paused = False
        self._writing_paused = False
        self._transport_lost = False
        self._drain_waiter: asyncio.Future[None] | None = None
        self._lost_waiter: asyncio.Future[None] | None = None
        self._new_exchange(head_request=False)

    def _new_exchange(self, *, head_request: bool) -> None:
        #: Resolved with the response once its final head arrived.
        self._head_waiter: asyncio.Future[HTTP1Response] | None = None
        self._response: HTTP1Response | None = None
        self._writer: asyncio.Task[None] | None = None
        self._head_request = head_request
        self._request_sent = False
        #: Any response byte arrived (no retry after that).
        self.received_any = False
        self._headers: list[tuple[bytes, bytes]] = []
        self._head_size = 0
        self._until_eof = False
        self._message_complete = False

    # ------------------------------------------------------------ asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport, but have its API.
        self.transport = cast(asyncio.Transport, transport)
        self.state = _IDLE

    def data_received(self, data: bytes) -> None:
        if self.state is not _ACTIVE or self._message_complete:
            # Nothing may arrive outside an exchange (e.g. an idle "408" before a
            # close): the connection is no longer in a known state.
            self.close()
            return
        self.received_any = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            pass  # after a 101, which ended the exchange (see on_headers_complete)
        except httptools.HttpParserError as exc:
            self._fail(parse_error(exc))

    def eof_received(self) -> bool | None:
        self._connection_ended(None)
        return None  # the transport closes itself

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport_lost = True
        self._connection_ended(exc)
        waiter = self._lost_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def pause_writing(self) -> None:
        self._writing_paused = True

    def resume_writing(self) -> None:
        self._writing_paused = False
        self._wake_drain()

    # ------------------------------------------------------------ opening

    async def connect(
        self, origin: Origin, ssl_context: ssl.SSLContext | None, connect_timeout: float | None
    ) -> None:
        """Open the connection (``NEW`` to ``IDLE``) within ``connect_timeout`` seconds
        (``None``: no limit).

        A host name is resolved here and its addresses are tried in order, so that a
        failure keeps its type and errno (asyncio folds the failures of several
        addresses into one untyped :class:`OSError`). TLS is not retried on another
        address. Raises a :class:`LocalConnectError` subclass, the foreign exception as
        its cause.
        """
        loop = asyncio.get_running_loop()
        server_hostname = origin.host if ssl_context is not None else None
        try:
            async with asyncio.timeout(connect_timeout):
                if origin.is_address:
                    await loop.create_connection(
                        lambda: self,
                        origin.host,
                        origin.port,
                        ssl=ssl_context,
                        server_hostname=server_hostname,
                    )
                else:
                    await self._connect_by_name(loop, origin, ssl_context, server_hostname)
        except TimeoutError as exc:
            if connect_timeout is not None:
                raise LocalConnectTimeoutError(
                    f"no connection within {connect_timeout:g} s"
                ) from exc
            raise connect_error(exc) from exc
        except OSError as exc:  # ssl.SSLError is an OSError
            raise connect_error(exc) from exc
        if self.state is _CLOSED:  # closed during the TLS handshake's aftermath
            raise LocalConnectError("it closed the connection without answering")

    async def _connect_by_name(
        self,
        loop: asyncio.AbstractEventLoop,
        origin: Origin,
        ssl_context: ssl.SSLContext | None,
        server_hostname: str | None,
    ) -> None:
        """Resolve the host, then try its addresses in order; raise the first one's
        failure when none connects."""
        infos = await loop.getaddrinfo(origin.host, origin.port, type=socket.SOCK_STREAM)
        failures: list[OSError] = []
        for family, _type, _proto, _name, address in infos:
            try:
                await loop.create_connection(
                    lambda: self,
                    str(address[0]),
                    origin.port,
                    ssl=ssl_context,
                    server_hostname=server_hostname,
                    family=family,
                )
            except ssl.SSLError:
                raise
            except OSError as exc:
                failures.append(exc)
            else:
                return
        if not failures:
            raise LocalNameError(f"no address for {origin.host}")
        raise failures[0]

    # ------------------------------------------------------------ exchange

    async def start(
        self,
        head: bytes,
        body: AsyncIterator[bytes] | None,
        declared: int | None,
        *,
        head_request: bool,
    ) -> HTTP1Response:
        """Write a request and return the response once its final head arrived.

        Raises :class:`LocalResponseError` if the connection ends first; the caller
        (the pool) closes the connection on any exception, cancellation included.
        """
        transport = self.transport
        assert self.state is _IDLE
        assert transport is not None
        self.state = _ACTIVE
        self._new_exchange(head_request=head_request)
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[HTTP1Response] = loop.create_future()
        self._head_waiter = waiter
        transport.write(head)
        if body is None:
            self._request_sent = True
        else:
            self._writer = loop.create_task(self._write_body(body, declared))
        return await waiter

    def _deliver(self, response: HTTP1Response) -> None:
        waiter = self._head_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(response)

    def _fail(self, error: BaseException) -> None:
        """End the exchange with ``error`` (for whoever waits on it) and close."""
        waiter = self._head_waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(error)
        response = self._response
        if response is not None and not response._complete:
            response._end(error)
        self._message_complete = True
        self.close()

    def _exchange_done(self) -> None:
        """Back to the pool if the exchange is over and the connection may carry
        another; closed if the exchange is over and it may not; else nothing yet."""
        response = self._response
        if not self._message_complete or self.state is not _ACTIVE or response is None:
            return
        if not self._request_sent:
            # The answer came before the whole request body: that request cannot be
            # finished on this connection any more.
            self.close()
            return
        if response.http_version != "1.1" or not self._parser.should_keep_alive():
            self.close()
            return
        response._connection = None  # its body is all buffered; it needs us no more
        self.exchanges += 1
        self.state = _IDLE
        self._new_exchange(head_request=False)
        if self._reading_paused:
            self._reading_paused = False
            assert self.transport is not None
            self.transport.resume_reading()
        self._pool._release(self)

    def _connection_ended(self, exc: BaseException | None) -> None:
        """The one way into ``CLOSED``: EOF, loss, or our own :meth:`close`."""
        if self.state is _CLOSED:
            return
        if self.state is _ACTIVE and not self._message_complete:
            response = self._response
            if self._until_eof and exc is None and response is not None:
                self._message_complete = True  # a close-delimited body ends here
                response._end()
            else:
                self._fail(_lost(exc, answered=response is not None))
                return  # _fail closed us, which came back here
        was_idle = self.state is _IDLE
        self.state = _CLOSED
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.close()
        writer = self._writer
        if writer is not None and not writer.done():
            writer.cancel()
        self._wake_drain()
        self._pool._connection_closed(self, idle=was_idle)

    async def finish(self, response: HTTP1Response) -> None:
        """The consumer is done with ``response`` (see :meth:`HTTP1Response.aclose`):
        close unless the exchange ended; let the request body writer wind down."""
        if self._response is not response:
            return
        if self.state is _ACTIVE:
            self.close()  # body not complete, or request body still being written
        writer = self._writer
        if writer is not None:
            await asyncio.gather(writer, return_exceptions=True)

    def consumer_caught_up(self) -> None:
        if self._reading_paused and self.state is _ACTIVE and self.transport is not None:
            self._reading_paused = False
            self.transport.resume_reading()

    def close(self) -> None:
        """Close for good (idempotent); whoever waits on the exchange is told why."""
        if self.state is _ACTIVE and not self._message_complete:
            self._fail(LocalResponseError("the exchange was abandoned"))
        else:
            self._connection_ended(None)

    async def wait_closed(self) -> None:
        """Wait (a second at most) until the transport reported its loss."""
        if self.transport is None or self._transport_lost:
            return
        if self._lost_waiter is None:
            self._lost_waiter = asyncio.get_running_loop().create_future()
        await asyncio.wait({self._lost_waiter}, timeout=1.0)

    # ------------------------------------------------------------ request body

    async def _write_body(self, body: AsyncIterator[bytes], declared: int | None) -> None:
        """Stream the request body: as is under a ``Content-Length`` (whose value it
        must match exactly), else chunked. Runs as its own task, so the response can
        arrive (and be read) while the body is still going out."""
        sent = 0
        transport = self.transport
        assert transport is not None
        try:
            async for chunk in body:
                if self.state is not _ACTIVE or self._message_complete or transport.is_closing():
                    return  # the exchange ended already (early answer, failure)
                if not chunk:
                    continue
                sent += len(chunk)
                if declared is None:
                    transport.writelines((b"%x\r\n" % len(chunk), chunk, b"\r\n"))
                elif sent > declared:
                    raise LocalRequestError(
                        f"the request body is longer than its Content-Length {declared}"
                    )
                else:
                    transport.write(chunk)
                if self._writing_paused:
                    await self._drain()
            if self.state is not _ACTIVE or transport.is_closing():
                return
            if declared is None:
                transport.write(b"0\r\n\r\n")
            elif sent != declared:
                raise LocalRequestError(
                    f"the request body ended after {sent} of its {declared} bytes"
                )
            self._request_sent = True
            self._exchange_done()
        except Exception as exc:
            # Our side failed (the body iterator, or a length mismatch): the waiter
            # gets the exception as it is; the connection cannot be reused.
            if self.state is _ACTIVE and not self._message_complete:
                self._fail(exc)
            else:
                self._connection_ended(None)
        finally:
            close = getattr(body, "aclose", None)
            if close is not None:
                await close()

    async def _drain(self) -> None:
        while self._writing_paused and self.state is _ACTIVE:
            self._drain_waiter = asyncio.get_running_loop().create_future()
            try:
                await self._drain_waiter
            finally:
                self._drain_waiter = None

    def _wake_drain(self) -> None:
        waiter = self._drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


def _lost(exc: BaseException | None, *, answered: bool) -> LocalResponseError:
    """Why an exchange ended with the connection: the transport's exception
    translated, or the local app's clean close before or during the body."""
    if exc is not None:
        return lost_error(exc)
    if answered:
        return LocalResponseError("it closed the connection before the end of the body")
    return LocalResponseError("it closed the connection without answering")
