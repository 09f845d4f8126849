"""A small HTTP/1.1 server for the inspector: httptools parses, one handler answers.

It serves one person's browser on a loopback address, so it is simple rather than
fast: requests on a connection are answered in order, one at a time; a request head
may be at most :data:`MAX_HEAD` bytes (431 past it) and a body at most
:data:`MAX_BODY` bytes (413 past it), at most :data:`MAX_PIPELINED` requests may wait
on a connection (503 past it); a malformed request gets 400; after any of these the
connection is closed. A response is either whole (``body``) or a stream (``stream``, for
Server-Sent Events: sent as it is produced, then the connection closes).

The handler must not raise: an exception is logged (one line, no traceback for the
browser) and answered with a 500 JSON error.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from http import HTTPStatus

import httptools

__all__ = [
    "MAX_BODY",
    "MAX_HEAD",
    "HttpRequest",
    "HttpResponse",
    "HttpServerProtocol",
    "json_error",
]

logger = logging.getLogger("pipegate_client")

#: Largest request head (request line and headers) accepted, in bytes.
MAX_HEAD = 64 * 1024
#: Largest request body accepted (an edited replay body), in bytes.
MAX_BODY = 8 * 1024 * 1024
#: Requests a connection may have waiting for their answer (pipelined); past it, 503.
MAX_PIPELINED = 16


@dataclass
class HttpRequest:
    method: str
    #: The raw request target (path and query).
    target: str
    #: Header names lower-cased, values as sent (latin-1), in order.
    headers: list[tuple[str, str]]
    body: bytes = b""

    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (lower case), or ``None``."""
        for key, value in self.headers:
            if key == name:
                return value
        return None


@dataclass
class HttpResponse:
    status: int
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    #: When set, the body is this stream (sent as it comes; the connection then closes).
    stream: AsyncIterator[bytes] | None = None
    #: Close the connection after this answer.
    close: bool = False


def json_response(
    status: int, value: object, headers: list[tuple[str, str]] | None = None
) -> HttpResponse:
    body = json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    return HttpResponse(
        status, [("content-type", "application/json; charset=utf-8"), *(headers or [])], body
    )


def json_error(status: int, message: str) -> HttpResponse:
    """The API's error answer: ``{"error": message, "status": status}``."""
    return json_response(status, {"error": message, "status": status})


#: Headers on every answer: nothing is cached, sniffed, framed or referred.
_COMMON_HEADERS = (
    ("cache-control", "no-store"),
    ("x-content-type-options", "nosniff"),
    ("x-frame-options", "DENY"),
    ("referrer-policy", "no-referrer"),
    ("cross-origin-resource-policy", "same-origin"),
)

Handler = Callable[[HttpRequest], Awaitable[HttpResponse]]


class _RequestTooLarge(Exception):
    def __init__(self, status: int) -> None:
        self.status = status


class HttpServerProtocol(asyncio.Protocol):
    """One browser connection; see the module docstring."""

    def __init__(self, handler: Handler, registry: set[HttpServerProtocol]) -> None:
        self._handler = handler
        self._registry = registry
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._pending: deque[tuple[HttpRequest, bool]] = deque()
        self._task: asyncio.Task[None] | None = None
        self._url = bytearray()
        self._headers: list[tuple[str, str]] = []
        self._body = bytearray()
        self._head_size = 0
        self._closing = False
        self._too_large = 0

    # ------------------------------------------------------------ asyncio

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        self._registry.add(self)

    def data_received(self, data: bytes) -> None:
        if self._closing:
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._refuse(400, "upgrades are not served here")
        except (httptools.HttpParserError, _RequestTooLarge):
            # httptools wraps what a callback raises in its own error type.
            if self._too_large:
                self._refuse(self._too_large, "request too large")
            else:
                self._refuse(400, "malformed HTTP request")

    def connection_lost(self, exc: Exception | None) -> None:
        self._closing = True
        self._registry.discard(self)
        if self._task is not None:
            self._task.cancel()

    def abort(self) -> None:
        """Drop the connection now (the inspector is closing)."""
        self._closing = True
        if self._transport is not None:
            self._transport.abort()

    # ------------------------------------------------------------ httptools callbacks

    def on_message_begin(self) -> None:
        self._url = bytearray()
        self._headers = []
        self._body = bytearray()
        self._head_size = 0

    def on_url(self, url: bytes) -> None:
        self._grow_head(len(url))
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._grow_head(len(name) + len(value) + 4)
        self._headers.append((name.decode("latin-1").lower(), value.decode("latin-1")))

    def on_body(self, body: bytes) -> None:
        if len(self._body) + len(body) > MAX_BODY:
            self._too_large = 413
            raise _RequestTooLarge(413)
        self._body += body

    def on_message_complete(self) -> None:
        request = HttpRequest(
            self._parser.get_method().decode("latin-1"),
            self._url.decode("latin-1"),
            self._headers,
            bytes(self._body),
        )
        if len(self._pending) >= MAX_PIPELINED:
            self._too_large = 503
            raise _RequestTooLarge(503)
        self._pending.append((request, self._parser.should_keep_alive()))
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._serve())

    def _grow_head(self, size: int) -> None:
        self._head_size += size
        if self._head_size > MAX_HEAD:
            self._too_large = 431
            raise _RequestTooLarge(431)

    # ------------------------------------------------------------ answering

    async def _serve(self) -> None:
        transport = self._transport
        assert transport is not None
        try:
            while self._pending and not self._closing:
                request, keep_alive = self._pending.popleft()
                try:
                    response = await self._handler(request)
                except Exception as exc:
                    logger.error(
                        "inspector: %s %s failed: %s",
                        request.method,
                        request.target.split("?", 1)[0],
                        type(exc).__name__,
                    )
                    response = json_error(500, "internal error of the inspector")
                if response.stream is not None:
                    await self._send_stream(transport, response)
                    return
                keep = keep_alive and not response.close and not self._closing
                body = b"" if request.method == "HEAD" else response.body
                transport.write(_head(response, len(response.body), keep) + body)
                if not keep:
                    self._close()
                    return
        finally:
            self._task = None
        if self._pending and not self._closing:  # arrived while the last one finished
            self._task = asyncio.get_running_loop().create_task(self._serve())

    async def _send_stream(self, transport: asyncio.Transport, response: HttpResponse) -> None:
        assert response.stream is not None
        transport.write(_head(response, None, False))
        try:
            async for chunk in response.stream:
                if self._closing:
                    break
                transport.write(chunk)
        finally:
            self._close()

    def _refuse(self, status: int, message: str) -> None:
        if self._transport is not None and not self._closing:
            response = json_error(status, message)
            self._transport.write(_head(response, len(response.body), False) + response.body)
        self._close()

    def _close(self) -> None:
        self._closing = True
        if self._transport is not None:
            self._transport.close()


def _head(response: HttpResponse, length: int | None, keep_alive: bool) -> bytes:
    try:
        reason = HTTPStatus(response.status).phrase
    except ValueError:
        reason = ""
    lines = [f"HTTP/1.1 {response.status} {reason}"]
    lines += [f"{name}: {value}" for name, value in (*_COMMON_HEADERS, *response.headers)]
    if length is not None:
        lines.append(f"content-length: {length}")
    lines.append("connection: keep-alive" if keep_alive else "connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
