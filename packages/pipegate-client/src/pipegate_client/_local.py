"""Calls to the local app: one aiohttp session, used as transparently as it allows.

aiohttp was chosen over httpx for speed (see the package README). Everything it would
add or change on its own is switched off: no decompression, no redirects, no cookie
jar, no default ``Accept``/``Accept-Encoding``/``User-Agent``/``Content-Type``, the
request target is sent as the caller wrote it (``yarl.URL(..., encoded=True)``), the
method keeps its case, and duplicate headers stay duplicates both ways.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import re
import ssl
import time
from collections.abc import AsyncIterator, Callable
from contextvars import ContextVar
from types import TracebackType
from urllib.parse import urlsplit, urlunsplit

import aiohttp
from aiohttp import hdrs, http_writer
from multidict import CIMultiDict
from pipegate_protocol import LocalProtocolError, ResetCode, strip_hop_by_hop
from yarl import URL

from ._settings import ClientSettings
from ._stream import StreamChannel, StreamGone

__all__ = ["LocalApp", "relay_http", "wire_str"]

logger = logging.getLogger("pipegate_client")

#: Request body bytes we read and drop after the response is complete before giving up
#: and resetting the stream, so that an early response (413, 502) reaches the caller.
_DISCARD_LIMIT = 4 * 1024 * 1024
_DISCARD_TIMEOUT = 5.0


class _Method(str):
    """A method that survives aiohttp unchanged: aiohttp upper-cases the method (twice,
    in the session and the request), but HTTP methods are case-sensitive."""

    __slots__ = ()

    def upper(self) -> str:
        return self


def wire_str(value: str) -> str:
    """Turn a protocol string (one char per byte) into a str that a UTF-8 encoder turns
    back into the same bytes, when those bytes are valid UTF-8 (the usual non-ASCII
    case). For libraries that encode heads as UTF-8 with no way around it."""
    if value.isascii():
        return value
    raw = value.encode("latin-1")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return value


#: Set (per task) while a relay writes a request head: heads are then encoded one
#: byte per character, so every byte the caller sent reaches the local app (HD-2).
_exact_head_bytes: ContextVar[bool] = ContextVar("pipegate_exact_head_bytes", default=False)


def _install_exact_head_encoding() -> bool:
    """Make aiohttp encode request heads as latin-1 inside our relays (not UTF-8).

    aiohttp offers no option for this, so its module-level serializer is wrapped; the
    wrapper changes nothing outside a relay task, and aiohttp's own checks (no CR, LF
    or NUL) still run. Returns False when this aiohttp has no such hook; relays then
    fall back to :func:`wire_str` (exact for UTF-8 bytes only).
    """
    original: Callable[[str, CIMultiDict[str]], bytes] | None = getattr(
        http_writer, "_serialize_headers", None
    )
    check: Callable[[str], str] | None = getattr(http_writer, "_safe_header", None)
    if original is None or check is None:
        return False
    if getattr(original, "_pipegate_exact", False):
        return True

    def serialize(status_line: str, headers: CIMultiDict[str]) -> bytes:
        if not _exact_head_bytes.get() or (
            status_line.isascii() and all(value.isascii() for value in headers.values())
        ):
            return original(status_line, headers)  # same bytes, faster (C)
        lines = [check(status_line)]
        lines.extend(check(name) + ": " + check(value) for name, value in headers.items())
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    serialize._pipegate_exact = True  # type: ignore[attr-defined]
    http_writer._serialize_headers = serialize
    return True


class LocalApp:
    """The local app behind the tunnel: URL building and the shared HTTP session."""

    def __init__(self, settings: ClientSettings) -> None:
        parts = urlsplit(settings.local_url)
        self.base_url = urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/"), "", ""))
        #: How the local app is named in logs and 502 reasons (scheme + authority).
        self.label = f"{parts.scheme}://{parts.netloc}"
        self.websocket_base = ("wss" if parts.scheme == "https" else "ws") + self.base_url[
            len(parts.scheme) :
        ]
        self._settings = settings
        self._session: aiohttp.ClientSession | None = None
        #: True when request heads reach the local app byte for byte (see above).
        self.exact_heads = _install_exact_head_encoding()
        # One context for every call: building one per request costs milliseconds.
        self._ssl_context = ssl.create_default_context() if parts.scheme == "https" else None

    async def __aenter__(self) -> LocalApp:
        connect = self._settings.local_connect_timeout
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(
                limit=self._settings.max_concurrency, limit_per_host=0, ttl_dns_cache=10
            ),
            cookie_jar=aiohttp.DummyCookieJar(),
            auto_decompress=False,
            skip_auto_headers=(
                hdrs.ACCEPT,
                hdrs.ACCEPT_ENCODING,
                hdrs.USER_AGENT,
                hdrs.CONTENT_TYPE,
            ),
            timeout=aiohttp.ClientTimeout(
                total=None, sock_connect=connect if connect > 0 else None
            ),
            requote_redirect_url=False,
            trust_env=False,
            read_bufsize=256 * 1024,
            max_line_size=64 * 1024,
            max_field_size=64 * 1024,
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def connect_timeout(self) -> float | None:
        """Seconds allowed to connect to the local app, ``None`` for no limit."""
        timeout = self._settings.local_connect_timeout
        return timeout if timeout > 0 else None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("LocalApp is not open; use 'async with'")
        return self._session

    def head_str(self, value: str) -> str:
        """A protocol string as this app's HTTP client must be given it."""
        return value if self.exact_heads else wire_str(value)

    def http_url(self, path: str, query: str) -> URL:
        """``<local_url><path>?<query>`` with the caller's bytes, not re-encoded."""
        target = self.base_url + path + ("?" + query if query else "")
        return URL(self.head_str(target), encoded=True)

    def websocket_url(self, path: str, query: str) -> str:
        return self.websocket_base + wire_str(path) + ("?" + wire_str(query) if query else "")

    def ssl_context(self) -> ssl.SSLContext | None:
        """TLS settings for an https:// local URL (system roots), else ``None``."""
        return self._ssl_context

    def unreachable_reason(self, exc: BaseException) -> str:
        """One line for a 502 body: why the call to the local app failed."""
        if isinstance(exc, aiohttp.ClientConnectorError | ConnectionError | TimeoutError):
            return f"local app at {self.label} unreachable: {_describe(exc)}"
        return f"local app at {self.label} failed: {_describe(exc)}"


def _describe(exc: BaseException) -> str:
    """A short lower-case reason for a failed local call, e.g. "connection refused"."""
    os_error: BaseException = exc
    if isinstance(exc, aiohttp.ClientConnectorError):
        os_error = exc.os_error
    code = getattr(os_error, "errno", None)
    if not isinstance(code, int):
        # "Multiple exceptions: [Errno 111] ..." when every address of a name failed.
        found = re.search(r"\[Errno (\d+)\]", str(os_error))
        code = int(found.group(1)) if found else None
    if code == errno.ECONNREFUSED:
        return "connection refused"
    if isinstance(exc, TimeoutError | aiohttp.ServerTimeoutError):
        return "timed out"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "it closed the connection without answering"
    strerror = getattr(os_error, "strerror", None)
    if isinstance(strerror, str) and strerror:
        return strerror.lower()
    if isinstance(code, int) and code > 0:
        return os.strerror(code).lower()
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text[:200]


def request_headers(channel: StreamChannel, app: LocalApp) -> list[tuple[str, str]]:
    """Headers for the local app: the caller's, minus hop-by-hop, ``Host`` (aiohttp
    sets it to the local URL's authority; the original is in X-Forwarded-Host) and
    ``Expect`` (the body is already on its way; waiting for a 100 from the local app
    could stall an app that never sends one)."""
    return [
        (name, app.head_str(value))
        for name, value in strip_hop_by_hop(channel.open.headers)
        if name.lower() not in ("host", "expect")
    ]


#: Failures of a local call. ValueError: aiohttp and yarl refuse a URL or header that
#: the protocol allows (the caller then gets a 502 saying so, not a reset).
_LOCAL_ERRORS = (aiohttp.ClientError, OSError, TimeoutError, ValueError)


async def relay_http(channel: StreamChannel, app: LocalApp, connection_id: str) -> None:
    """Relay one HTTP stream to the local app and its answer back, both bodies streamed.

    Errors before the response head become a 502 with a one-line reason; after it, the
    stream is reset (``upstream_failed``). :class:`StreamGone` and cancellation (the
    server reset the stream) propagate; aiohttp then drops the local connection.
    """
    message = channel.open
    started = time.monotonic()
    status: int | str = "-"
    body: AsyncIterator[bytes] | None = None if message.end_stream else channel.request_body()
    _exact_head_bytes.set(True)  # this task's context only: one task per stream
    try:
        async with app.session.request(
            _Method(message.method),
            app.http_url(message.path, message.query),
            headers=request_headers(channel, app),
            data=body,
            allow_redirects=False,
            ssl=app.ssl_context() or True,
        ) as response:
            status = response.status
            await _relay_response(channel, response, app)
    except _LOCAL_ERRORS as exc:
        if channel.response_started:
            status = f"{status} (local app failed mid-body: {_describe(exc)})"
            await channel.reset(ResetCode.UPSTREAM_FAILED, f"local app failed: {_describe(exc)}")
        else:
            status = 502
            await send_plain_error(channel, 502, app.unreachable_reason(exc))
    except asyncio.CancelledError:
        status = f"{status} (reset by server)"
        raise
    except StreamGone:
        status = f"{status} (stream gone)"
        raise
    finally:
        logger.info(
            "[%s] %s %s %s %.1fms in=%dB out=%dB",
            connection_id,
            message.method,
            message.path,
            status,
            (time.monotonic() - started) * 1000,
            channel.bytes_received,
            channel.bytes_sent,
        )
    if channel.is_open and not await channel.discard_request_body(
        limit=_DISCARD_LIMIT, seconds=_DISCARD_TIMEOUT
    ):
        await channel.reset(ResetCode.CANCELLED, "response complete; request body not read")


async def send_plain_error(channel: StreamChannel, status: int, reason: str) -> None:
    """Answer with ``status`` and ``reason`` as a one-line text/plain body."""
    body = (reason + "\n").encode("utf-8")
    headers = [
        ("content-type", "text/plain; charset=utf-8"),
        ("content-length", str(len(body))),
    ]
    await channel.send_response(status, headers)
    await channel.send_body(body, end_stream=True)


async def _relay_response(
    channel: StreamChannel, response: aiohttp.ClientResponse, app: LocalApp
) -> None:
    status = response.status
    headers = strip_hop_by_hop(
        [(name.decode("latin-1"), value.decode("latin-1")) for name, value in response.raw_headers]
    )
    no_body = channel.open.method == "HEAD" or status in (204, 304)
    if status < 200:
        await send_plain_error(
            channel, 502, f"local app at {app.label} answered status {status} to a plain request"
        )
        return
    try:
        # The head is only queued: when the body is already here (the usual small
        # response) head and first bytes leave together, in one write.
        channel.queue_response(status, headers, end_stream=no_body)
    except LocalProtocolError as exc:
        first = str(exc).splitlines()[0]
        await send_plain_error(
            channel, 502, f"local app at {app.label} sent an unusable response head: {first}"
        )
        return
    if no_body:
        await channel.link.flush()
        return
    content = response.content
    chunk = content.read_nowait(channel.immediate_capacity())
    if not chunk and not content.at_eof():
        await channel.link.flush()  # nothing yet (e.g. server-sent events): head now
    while True:
        if chunk or content.at_eof():
            end = content.at_eof()
            await channel.send_body(chunk, end_stream=end)
            if end:
                return
        size = await channel.send_capacity()
        chunk = await content.read(size)
        if not chunk:
            await channel.send_body(b"", end_stream=True)
            return
