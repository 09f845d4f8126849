"""A small HTTP/1.1 client for the client's calls to its one local app.

The client needs little of an HTTP client: keep-alive HTTP/1.1 to a single origin,
requests written byte for byte as the caller sent them, and bodies streamed both ways
with backpressure. A general client (aiohttp) spent about as much CPU per small
request as the rest of the relay; this one writes a head with one ``transport.write``
and parses the answer with llhttp (``httptools``), calling back into Python only for
the head, the body pieces and the end of the message.

Layers, each with one job:

* :func:`encode_request_head` turns method, target and headers into exact bytes
  (each character one byte, latin-1) and refuses what HTTP/1.1 cannot carry;
* :class:`HTTP1Connection` is one TCP (or TLS) connection, an :class:`asyncio.Protocol`
  with an explicit state (``idle``, ``active``, ``closed``) that runs one exchange at
  a time: it writes the request, parses the response into an :class:`HTTP1Response`,
  and tells its pool when it may be reused;
* :class:`HTTP1Pool` keeps at most ``max_connections`` connections to the origin,
  reuses idle ones last-in first-out, and retries once, on a fresh connection, a
  body-less request whose reused connection died before any answer (the keep-alive
  race: the origin closed an idle connection while we were writing to it).

What the caller may rely on:

* A response is returned once its final head arrived (interim 1xx responses are
  skipped; 101 is returned, with no body, for the caller to refuse). Its body is then
  read with :meth:`HTTP1Response.read`; reading stops (``pause_reading``) while more
  than :data:`BUFFER_HIGH_WATER` bytes wait for the consumer.
* A connection goes back to the pool only after a complete exchange: the whole request
  written, the whole response parsed, keep-alive on both sides, HTTP/1.1, and not
  a HEAD (llhttp cannot be told that a HEAD response has no body). Anything else
  (cancellation, an error, an abandoned body) closes it.
* Every failure is a :class:`~pipegate_client.errors.LocalAppError` with a one-line
  :attr:`~pipegate_client.errors.LocalAppError.reason`; an exception raised by the
  request body iterator itself propagates unchanged.
"""

from __future__ import annotations

import asyncio
import base64
import errno
import os
import re
import ssl
from collections import deque
from collections.abc import AsyncIterator, Sequence
from typing import Final, cast
from urllib.parse import unquote, urlsplit

import httptools

from .errors import (
    LocalAppError,
    LocalConnectError,
    LocalRequestError,
    LocalResponseError,
)

__all__ = [
    "BUFFER_HIGH_WATER",
    "HTTP1Connection",
    "HTTP1Pool",
    "HTTP1Response",
    "Origin",
    "describe_failure",
    "encode_request_head",
]

#: Response body bytes buffered ahead of the consumer before reading pauses.
BUFFER_HIGH_WATER: Final = 256 * 1024
#: Reading resumes once the consumer brought the buffer down to this.
BUFFER_LOW_WATER: Final = 64 * 1024
#: Largest response head (status line and headers) accepted from the origin.
MAX_RESPONSE_HEAD: Final = 256 * 1024

#: Methods that get ``Content-Length: 0`` when they have no body and the caller sent no
#: length (what aiohttp did; a body-less POST is then unambiguous for every server).
_NO_LENGTH_METHODS: Final = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})

_TCHAR = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]"
#: A whole well-formed head, matched in one pass: token method, a target without
#: controls or spaces, token names, values of visible bytes, SP and HTAB (RFC 9112).
_HEAD = re.compile(
    rf"{_TCHAR}+ [^\x00-\x20\x7f]+ HTTP/1\.1\r\n"
    rf"(?:{_TCHAR}+: [\t\x20-\x7e\x80-\xff]*\r\n)*\r\n"
)
_TOKEN = re.compile(rf"{_TCHAR}+")
_TARGET = re.compile(r"[^\x00-\x20\x7f]+")
_VALUE = re.compile(r"[\t\x20-\x7e\x80-\xff]*")
_DIGITS = re.compile(r"[0-9]+")


# ---------------------------------------------------------------------- the origin


class Origin:
    """Where requests go: scheme, host, port and the ``Host`` header to send.

    Built from the local URL; a path in it is the caller's business (it prefixes the
    request target). Userinfo becomes ``Authorization: Basic``, in place of any the
    caller sent, as aiohttp did.
    """

    __slots__ = ("authorization", "host", "host_header", "port", "scheme")

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http:// or https:// URL with a host: {url!r}")
        self.scheme = parts.scheme
        host = parts.hostname
        if not host.isascii():
            host = host.encode("idna").decode("ascii")
        self.host = host
        default_port = 443 if parts.scheme == "https" else 80
        self.port = parts.port or default_port
        shown = f"[{host}]" if ":" in host else host
        self.host_header = shown if self.port == default_port else f"{shown}:{self.port}"
        self.authorization: str | None = None
        if parts.username is not None or parts.password is not None:
            credentials = f"{unquote(parts.username or '')}:{unquote(parts.password or '')}"
            token = base64.b64encode(credentials.encode("latin-1")).decode("ascii")
            self.authorization = f"Basic {token}"


# ---------------------------------------------------------------------- heads


def encode_request_head(
    method: str,
    target: str,
    host: str,
    headers: Sequence[tuple[str, str]],
    *,
    has_body: bool,
) -> tuple[bytes, int | None]:
    """The request head as bytes, and the body length it declares (``None``: chunked).

    ``Host`` comes first, then ``headers`` in order with duplicates, then the framing
    header this client adds: ``Transfer-Encoding: chunked`` for a body without a
    ``Content-Length``, ``Content-Length: 0`` for a body-less request whose method
    usually has one. Every character is written as one byte (latin-1). Raises
    :class:`LocalRequestError` for anything HTTP/1.1 cannot carry: CR, LF or NUL in a
    field, a method or name that is not a token, a character above U+00FF, an invalid
    or contradictory ``Content-Length``, or a length on a request without a body.
    """
    parts = [method, " ", target, " HTTP/1.1\r\nHost: ", host, "\r\n"]
    lengths: list[str] | None = None
    for name, value in headers:
        parts += (name, ": ", value, "\r\n")
        if len(name) == 14 and name.lower() == "content-length":
            lengths = [value] if lengths is None else [*lengths, value]
    # Request line, Host, the headers, the empty line: one line feed each.
    lines = len(headers) + 3
    declared: int | None = None
    if lengths is not None:
        declared = _declared_length(lengths)
        if not has_body and declared:
            raise LocalRequestError(
                f"the request declares Content-Length {declared} but has no body"
            )
    elif has_body:
        parts.append("Transfer-Encoding: chunked\r\n")
        lines += 1
    elif method not in _NO_LENGTH_METHODS:
        parts.append("Content-Length: 0\r\n")
        lines += 1
    parts.append("\r\n")
    head = "".join(parts)
    # The pattern checks the structure in one pass; the line count proves that no
    # field carried a line break of its own (a value "a\r\nX: y" fits the pattern).
    if _HEAD.fullmatch(head) is None or head.count("\n") != lines:
        _explain_bad_head(method, target, host, headers)
    try:
        return head.encode("latin-1"), declared
    except UnicodeEncodeError as exc:
        raise LocalRequestError(
            f"the request head has a character above U+00FF at offset {exc.start}"
        ) from None


def _declared_length(values: list[str]) -> int:
    stripped = {value.strip(" \t") for value in values}
    if len(stripped) != 1:
        raise LocalRequestError("the request has contradictory Content-Length headers")
    (value,) = stripped
    if _DIGITS.fullmatch(value) is None:
        raise LocalRequestError(f"the request has an invalid Content-Length: {value[:40]!r}")
    return int(value)


def _explain_bad_head(
    method: str, target: str, host: str, headers: Sequence[tuple[str, str]]
) -> None:
    """Raise the precise :class:`LocalRequestError` for a head that failed the check."""
    if _TOKEN.fullmatch(method) is None:
        raise LocalRequestError(f"the method {method[:40]!r} is not an HTTP token")
    if _TARGET.fullmatch(target) is None:
        raise LocalRequestError("the request target has a space or control character")
    for name, value in (("Host", host), *headers):
        if _TOKEN.fullmatch(name) is None:
            raise LocalRequestError(f"the header name {name[:40]!r} is not an HTTP token")
        if _VALUE.fullmatch(value) is None:
            raise LocalRequestError(
                f"the header {name[:40]!r} has a character not allowed in a field value "
                "(CR, LF, NUL or another control character, or one above U+00FF)"
            )
    raise LocalRequestError("the request head cannot be written as HTTP/1.1")  # unreachable


# ---------------------------------------------------------------------- failures


def describe_failure(exc: BaseException) -> str:
    """A short lower-case reason for a failed call, e.g. ``"connection refused"``.

    :class:`LocalAppError` carries its own; for anything else (an :class:`OSError`
    from a socket, a TLS error, a timeout) the reason is derived from errno and text.
    """
    if isinstance(exc, LocalAppError):
        return exc.reason
    code = getattr(exc, "errno", None)
    if not isinstance(code, int):
        # "Multiple exceptions: [Errno 111] ..." when every address of a name failed.
        found = re.search(r"\[Errno (\d+)\]", str(exc))
        code = int(found.group(1)) if found else None
    if code == errno.ECONNREFUSED:
        return "connection refused"
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS certificate verification failed: {exc.verify_message}"
    strerror = getattr(exc, "strerror", None)
    if isinstance(strerror, str) and strerror:
        return strerror.lower()
    if isinstance(code, int) and code > 0:
        return os.strerror(code).lower()
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text[:200]


def _lost(exc: BaseException | None, *, answered: bool) -> LocalResponseError:
    if exc is not None:
        error = LocalResponseError(describe_failure(exc))
        error.__cause__ = exc
        return error
    if answered:
        return LocalResponseError("it closed the connection before the end of the body")
    return LocalResponseError("it closed the connection without answering")


# ---------------------------------------------------------------------- response


class HTTP1Response:
    """A response whose final head arrived; its body is read as it comes.

    Body bytes wait in a small buffer; the connection stops reading while more than
    :data:`BUFFER_HIGH_WATER` of them wait, so a fast origin cannot fill memory
    ahead of a slow consumer. :meth:`aclose` must be called when done (an unfinished
    body closes the connection).
    """

    __slots__ = (
        "_chunks",
        "_complete",
        "_connection",
        "_error",
        "_offset",
        "_waiter",
        "buffered",
        "headers",
        "http_version",
        "status",
    )

    def __init__(
        self,
        connection: HTTP1Connection,
        status: int,
        headers: list[tuple[bytes, bytes]],
        http_version: str,
    ) -> None:
        self.status = status
        #: Raw ``(name, value)`` pairs in order, duplicates kept.
        self.headers = headers
        self.http_version = http_version
        #: Body bytes received and not yet read.
        self.buffered = 0
        self._connection: HTTP1Connection | None = connection
        self._chunks: deque[bytes] = deque()
        self._offset = 0  # into _chunks[0]
        self._complete = False
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None

    # ------------------------------------------------------------ for the consumer

    @property
    def at_eof(self) -> bool:
        """True once the whole body arrived and was read."""
        return self._complete and not self.buffered

    def read_nowait(self, size: int) -> bytes:
        """Up to ``size`` buffered bytes, ``b""`` when none wait; raises the failure
        that ended the body once the buffer is empty."""
        if self.buffered:
            return self._take(size)
        if self._error is not None:
            raise self._error
        return b""

    async def read(self, size: int) -> bytes:
        """Up to ``size`` body bytes, waiting for some; ``b""`` at the end of the body.

        Raises :class:`LocalResponseError` when the connection broke before the end.
        """
        while not self.buffered:
            if self._error is not None:
                raise self._error
            if self._complete:
                return b""
            loop = asyncio.get_running_loop()
            self._waiter = loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self._take(size)

    async def aclose(self) -> None:
        """Done with this response: a finished exchange leaves the connection to the
        pool, anything else (body not complete, caller gave up) closes it."""
        connection, self._connection = self._connection, None
        if connection is not None:
            await connection.finish(self)

    # ------------------------------------------------------------ for the connection

    def _feed(self, data: bytes) -> None:
        if not data:
            return  # an empty piece in the deque would read as the end of the body
        self._chunks.append(data)
        self.buffered += len(data)
        self._wake()

    def _end(self, error: BaseException | None = None) -> None:
        if error is not None and not self._complete:
            self._error = error
        self._complete = True
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _take(self, size: int) -> bytes:
        chunks = self._chunks
        first = chunks[0]
        offset = self._offset
        available = len(first) - offset
        if available > size:
            data = first[offset : offset + size]
            self._offset = offset + size
        elif offset:
            data = first[offset:]
            chunks.popleft()
            self._offset = 0
        elif available == size or len(chunks) == 1 or available + len(chunks[1]) > size:
            data = chunks.popleft()
        else:
            pieces = [chunks.popleft()]
            total = available
            while chunks and total + len(chunks[0]) <= size:
                piece = chunks.popleft()
                pieces.append(piece)
                total += len(piece)
            data = b"".join(pieces)
        self.buffered -= len(data)
        connection = self._connection
        if connection is not None and self.buffered <= BUFFER_LOW_WATER:
            connection.consumer_caught_up()
        return data


# ---------------------------------------------------------------------- connection

_IDLE: Final = "idle"
_ACTIVE: Final = "active"
_CLOSED: Final = "closed"


class HTTP1Connection(asyncio.Protocol):
    """One connection to the origin, running one exchange at a time.

    State: ``idle`` (in the pool, no request), ``active`` (a request was written; the
    response is awaited or being read), ``closed`` (for good; only
    :meth:`_connection_ended` enters it). ``active`` becomes ``idle`` again only in
    :meth:`_exchange_done`, once request and response are both complete and the
    response allows keep-alive; an exchange that cannot end that way closes the
    connection.
    """

    def __init__(self, pool: HTTP1Pool) -> None:
        self._pool = pool
        self.state: str = _IDLE
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

    def data_received(self, data: bytes) -> None:
        if self.state != _ACTIVE or self._message_complete:
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
            cause = exc.__context__
            if isinstance(cause, LocalAppError):
                self._fail(cause)
            else:
                reason = str(exc).splitlines()[0][:200] if str(exc) else "unparsable"
                self._fail(LocalResponseError(f"invalid HTTP/1.1 response: {reason}"))

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

    # ------------------------------------------------------------ httptools callbacks

    def on_message_begin(self) -> None:
        if self._message_complete or self.state != _ACTIVE:
            raise LocalResponseError("it sent more than one response to a request")
        self._headers = []
        self._head_size = 0

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_size += len(name) + len(value) + 4
        if self._head_size > MAX_RESPONSE_HEAD:
            raise LocalResponseError(f"its response head exceeds {MAX_RESPONSE_HEAD} bytes")
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        parser = self._parser
        status = parser.get_status_code()
        if status < 200 and status != 101:
            return  # interim (100 Continue, 103 Early Hints): wait for the final head
        response = HTTP1Response(self, status, self._headers, parser.get_http_version())
        self._response = response
        self._headers = []  # trailers of a chunked body, if any, are not kept
        if status == 101 or self._head_request:
            # No body follows: a HEAD answer (llhttp would wait for one), or a 101 on
            # a plain request, which the caller refuses. The connection is not reused.
            self._message_complete = True
            response._end()
            self._deliver(response)
            self.close()
            return
        chunked = False
        has_length = False
        for name, value in response.headers:
            if len(name) == 14 and name.lower() == b"content-length":
                has_length = True
            elif len(name) == 17 and name.lower() == b"transfer-encoding":
                chunked = value.rsplit(b",", 1)[-1].strip(b" \t").lower() == b"chunked"
        self._until_eof = not chunked and not has_length and status not in (204, 304)
        self._deliver(response)

    def on_body(self, body: bytes) -> None:
        response = self._response
        if response is None or self._message_complete:
            return  # no body for interim responses and after HEAD or 101
        response._feed(body)
        if response.buffered > BUFFER_HIGH_WATER and not self._reading_paused:
            self._reading_paused = True
            if self.transport is not None:
                self.transport.pause_reading()

    def on_message_complete(self) -> None:
        response = self._response
        if response is None or self._message_complete:
            return  # the end of an interim response; the final one follows
        self._message_complete = True
        response._end()
        self._exchange_done()

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
        assert self.state == _IDLE
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
        if not self._message_complete or self.state != _ACTIVE or response is None:
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
        """The one way into ``closed``: EOF, loss, or our own :meth:`close`."""
        if self.state == _CLOSED:
            return
        if self.state == _ACTIVE and not self._message_complete:
            response = self._response
            if self._until_eof and exc is None and response is not None:
                self._message_complete = True  # a close-delimited body ends here
                response._end()
            else:
                self._fail(_lost(exc, answered=response is not None))
                return  # _fail closed us, which came back here
        was_idle = self.state == _IDLE
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
        if self.state == _ACTIVE:
            self.close()  # body not complete, or request body still being written
        writer = self._writer
        if writer is not None:
            await asyncio.gather(writer, return_exceptions=True)

    def consumer_caught_up(self) -> None:
        if self._reading_paused and self.state == _ACTIVE and self.transport is not None:
            self._reading_paused = False
            self.transport.resume_reading()

    def close(self) -> None:
        """Close for good (idempotent); whoever waits on the exchange is told why."""
        if self.state == _ACTIVE and not self._message_complete:
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
                if self.state != _ACTIVE or self._message_complete or transport.is_closing():
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
            if self.state != _ACTIVE or transport.is_closing():
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
            if self.state == _ACTIVE and not self._message_complete:
                self._fail(exc)
            else:
                self._connection_ended(None)
        finally:
            close = getattr(body, "aclose", None)
            if close is not None:
                await close()

    async def _drain(self) -> None:
        while self._writing_paused and self.state == _ACTIVE:
            self._drain_waiter = asyncio.get_running_loop().create_future()
            try:
                await self._drain_waiter
            finally:
                self._drain_waiter = None

    def _wake_drain(self) -> None:
        waiter = self._drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


# ---------------------------------------------------------------------- pool


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
        #: Connections open or being opened.
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
    ) -> HTTP1Response:
        """Send a request; return the response once its final head arrived.

        ``target`` is the raw request target (path and query, sent as given);
        ``headers`` must not include ``Host`` (the origin's is sent) nor framing
        headers other than the caller's ``Content-Length``. ``body`` ``None`` means no
        body. Call :meth:`HTTP1Response.aclose` when done with the response.
        """
        origin = self.origin
        if origin.authorization is not None:
            headers = [
                *(pair for pair in headers if pair[0].lower() != "authorization"),
                ("Authorization", origin.authorization),
            ]
        head, declared = encode_request_head(
            method, target, origin.host_header, headers, has_body=body is not None
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
        origin = self.origin
        loop = asyncio.get_running_loop()
        connection = HTTP1Connection(self)
        self._opening += 1
        try:
            async with asyncio.timeout(self.connect_timeout):
                await loop.create_connection(
                    lambda: connection,
                    origin.host,
                    origin.port,
                    ssl=self.ssl_context,
                    server_hostname=origin.host if self.ssl_context is not None else None,
                )
        except BaseException as exc:
            self._opening -= 1
            self._wake_waiter()  # the room this attempt held is free again
            if isinstance(exc, TimeoutError) and self.connect_timeout is not None:
                raise LocalConnectError(f"no connection within {self.connect_timeout:g} s") from exc
            if isinstance(exc, OSError | TimeoutError):  # ssl.SSLError is an OSError
                raise LocalConnectError(describe_failure(exc)) from exc
            raise
        self._opening -= 1
        if connection.state == _CLOSED:  # closed during the TLS handshake's aftermath
            raise LocalConnectError("it closed the connection without answering")
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
