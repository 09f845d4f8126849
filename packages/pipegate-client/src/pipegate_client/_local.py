"""Calls to the local app: HTTP through our own keep-alive client (:mod:`._http1`).

The request reaches the local app as the caller wrote it: the method (any token, case
kept), the raw target (not re-encoded), headers in order with duplicates, each
character one byte. Nothing is added but ``Host`` (the local URL's authority) and the
body framing (``Transfer-Encoding: chunked`` when the caller gave no length,
``Content-Length: 0`` on a body-less POST-like request); nothing is done to the answer
(no decompression, redirects or cookies). WebSocket streams use the ``websockets``
library instead (:mod:`._websocket`); :func:`wire_str` is for its heads.

The path of ``--local-url`` is a boundary: a caller's path whose dot segments would
climb above it (``/../admin`` behind ``http://app/public``) is refused with 400, never
sent (:func:`climbs_above_root`). Dot segments are recognised as a local app might
decode them: ``.`` and ``%2e`` (any case), with ``/``, ``%2f`` and ``\\`` (raw or
``%5c``) as separators. A path that stays below the prefix is sent as it came (the
local app resolves ``/a/../b`` itself), and without a path in ``--local-url`` nothing
is checked: there is nothing above the local app's root to reach.

One thing is changed in an answer, the ``Location`` header, because the local app can
only name its own origin (it is sent ``Host: <local authority>``) while the caller is
somewhere else (:func:`tunnel_location`): an absolute URL of the local URL's origin
below its path, or an absolute path below its path, becomes the absolute path the
tunnel serves it at. The server then puts the public prefix in front in path routing
(its ``_rewrite`` module), so the two compose in both routing modes.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import AsyncIterator
from types import TracebackType
from urllib.parse import urlsplit, urlunsplit

from pipegate_protocol import LocalProtocolError, ResetCode, strip_hop_by_hop

from ._http1 import HTTP1Pool, HTTP1Response, Origin, describe_failure
from ._settings import ClientSettings
from ._stream import LocalStream, StreamGone
from .errors import LocalAppError, LocalCertificateError, LocalConnectError, LocalPathError

__all__ = [
    "LocalApp",
    "climbs_above_root",
    "relay_http",
    "send_plain_error",
    "tunnel_location",
    "wire_str",
]

logger = logging.getLogger("pipegate_client")

#: Request body bytes we read and drop after the response is complete before giving up
#: and resetting the stream, so that an early response (413, 502) reaches the caller.
_DISCARD_LIMIT = 4 * 1024 * 1024
_DISCARD_TIMEOUT = 5.0


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


#: Encoded forms that may decode to a dot or a separator in the local app, lower case.
_DECODED = (("%2e", "."), ("%2f", "/"), ("%5c", "/"), ("\\", "/"))


def climbs_above_root(path: str) -> bool:
    """True when resolving the dot segments of ``path`` (RFC 3986 5.2.4, also in their
    percent-encoded forms, see the module docstring) would go above its root.

    ``/a/../b`` stays (False); ``/../a``, ``/%2E%2e/a``, ``/a/..%2f..%2fb`` climb (True).
    """
    if "." not in path and "%" not in path:
        return False  # no dot segment can be spelled without either
    lowered = path.lower()
    for encoded, plain in _DECODED:
        lowered = lowered.replace(encoded, plain)
    depth = 0
    for segment in lowered.split("/"):
        if segment == "..":
            if depth == 0:
                return True
            depth -= 1
        elif segment and segment != ".":
            depth += 1
    return False


def _below_base(target: str, base_path: str) -> str | None:
    """``target`` (path, query, fragment) without ``base_path`` in front, as an absolute
    path; ``None`` when ``target`` is not ``base_path`` itself or below it."""
    if not base_path:
        return target
    if not target.startswith(base_path):
        return None
    rest = target[len(base_path) :]
    if not rest:
        return "/"
    if rest[0] == "/":
        return rest
    if rest[0] in "?#":
        return "/" + rest
    return None  # /apple is not below /app


def tunnel_location(value: str, origin: Origin, base_path: str) -> str:
    """A ``Location`` value of the local app as the tunnel should pass it on.

    * An absolute URL of the local app's own origin (``origin``: same scheme, host
      case-insensitively, port with the scheme's default filled in; no userinfo)
      whose path is ``base_path`` or below it becomes the absolute path after
      ``base_path`` (``http://127.0.0.1:5001/app/sub?q=1`` → ``/sub?q=1`` for a local
      URL ``http://127.0.0.1:5001/app``; the base path itself → ``/``).
    * With a non-empty ``base_path``, an absolute path below it loses it the same way
      (``/app/sub`` → ``/sub``).

    Everything else is returned as it is: other origins, relative and network-path
    references (``//host/x``: its scheme would be the caller's), and paths of the
    local origin outside ``base_path``, which the tunnel cannot reach. Never raises.
    """
    if value.startswith("/"):
        if not base_path or value.startswith("//"):
            return value
        below = _below_base(value, base_path)
        return value if below is None else below
    scheme, sep, rest = value.partition("://")
    if not sep or scheme.lower() != origin.scheme:
        return value
    end = len(rest)
    for delimiter in "/?#":
        found = rest.find(delimiter, 0, end)
        if found != -1:
            end = found
    authority, target = rest[:end], rest[end:]
    if "@" in authority:
        return value
    if authority.startswith("["):
        close = authority.find("]")
        host, port_text = authority[1:close], authority[close + 1 :]
        if close == -1 or (port_text and port_text[0] != ":"):
            return value
        port_text = port_text[1:]
    else:
        host, _, port_text = authority.partition(":")
    if host.lower() != origin.host:
        return value
    if port_text:
        if not (port_text.isascii() and port_text.isdigit()):
            return value
        port = int(port_text)
    else:
        port = 443 if origin.scheme == "https" else 80
    if port != origin.port:
        return value
    below = _below_base(target if target.startswith("/") else "/" + target, base_path)
    return value if below is None else below


class LocalApp:
    """The local app behind the tunnel: URL building and the shared connection pool."""

    def __init__(self, settings: ClientSettings) -> None:
        parts = urlsplit(settings.local_url)
        self.base_url = urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/"), "", ""))
        #: Send the caller's Host rather than the local authority (HD-6).
        self.preserve_host = settings.preserve_host
        #: Prefix of every request target (the local URL's path, without a final "/").
        self.base_path = parts.path.rstrip("/")
        #: How the local app is named in the client's logs (scheme + authority, never
        #: a user:password of the local URL; callers' 502 bodies never name it).
        self.label = f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}"
        self.websocket_base = ("wss" if parts.scheme == "https" else "ws") + self.base_url[
            len(parts.scheme) :
        ]
        self._settings = settings
        self._origin = Origin(settings.local_url)
        self._pool: HTTP1Pool | None = None
        # One context for every call: building one per request costs milliseconds.
        self._ssl_context = ssl.create_default_context() if parts.scheme == "https" else None

    async def __aenter__(self) -> LocalApp:
        self._pool = HTTP1Pool(
            self._origin,
            max_connections=self._settings.max_concurrency,
            connect_timeout=self.connect_timeout,
            ssl_context=self._ssl_context,
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._pool is not None:
            await self._pool.aclose()
            self._pool = None

    @property
    def connect_timeout(self) -> float | None:
        """Seconds allowed to connect to the local app, ``None`` for no limit."""
        timeout = self._settings.local_connect_timeout
        return timeout if timeout > 0 else None

    @property
    def pool(self) -> HTTP1Pool:
        if self._pool is None:
            raise RuntimeError("LocalApp is not open; use 'async with'")
        return self._pool

    def http_target(self, path: str, query: str) -> str:
        """The request target ``<local path><path>?<query>``, the caller's bytes as they
        are (not re-encoded). Raises :class:`LocalPathError` when ``path`` would climb
        above the local path (see the module docstring)."""
        if self.base_path and climbs_above_root(path):
            raise LocalPathError(f"the path climbs above {self.base_path} of the local URL")
        return self.base_path + path + ("?" + query if query else "")

    def websocket_url(self, path: str, query: str) -> str:
        """The local WebSocket URL for ``path`` and ``query``; raises
        :class:`LocalPathError` as :meth:`http_target` does."""
        if self.base_path and climbs_above_root(path):
            raise LocalPathError(f"the path climbs above {self.base_path} of the local URL")
        return self.websocket_base + wire_str(path) + ("?" + wire_str(query) if query else "")

    def tunnel_headers(self, headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
        """``headers`` of an answer with :func:`tunnel_location` applied to ``Location``;
        ``headers`` itself when nothing changed (it is never modified)."""
        out: list[tuple[str, str]] | None = None
        for index, (name, value) in enumerate(headers):
            if len(name) == 8 and name.lower() == "location":
                new = tunnel_location(value, self._origin, self.base_path)
                if new != value:
                    if out is None:
                        out = list(headers)
                    out[index] = (name, new)
        return headers if out is None else out

    def ssl_context(self) -> ssl.SSLContext | None:
        """TLS settings for an https:// local URL (system roots), else ``None``."""
        return self._ssl_context

    def unreachable_reason(self, exc: BaseException) -> str:
        """One line for a 502 body: why the call to the local app failed, told to the
        caller without the local app's address or anything else about this machine
        (issue 16). The detail, address included, goes to the client's log, one
        warning line per failure."""
        detail = describe_failure(exc)
        if isinstance(exc, LocalConnectError | ConnectionError | TimeoutError):
            logger.warning("local app at %s unreachable: %s", self.label, detail)
            return f"the local app is unreachable: {_public_reason(exc, detail)}"
        logger.warning("local app at %s failed: %s", self.label, detail)
        if isinstance(exc, LocalAppError):
            return f"the local app failed: {_public_reason(exc, detail)}"
        return "the local app failed"


def _public_reason(exc: BaseException, detail: str) -> str:
    """``detail`` (a phrase of ``_http1_errors``' table), but a certificate failure
    without its verify message, which may name the local host."""
    if isinstance(exc, LocalCertificateError):
        return "TLS certificate verification failed"
    return detail


def _caller_host(channel: LocalStream) -> str | None:
    """The Host the caller sent (``--host-header preserve``), if it sent one."""
    for name, value in channel.open.headers:
        if name.lower() == "host":
            return value
    return None


def request_headers(channel: LocalStream) -> list[tuple[str, str]]:
    """Headers for the local app: the caller's, minus hop-by-hop, ``Host`` (the local
    URL's authority is sent; the original is in X-Forwarded-Host) and ``Expect`` (the
    body is already on its way; waiting for a 100 from the local app could stall an
    app that never sends one)."""
    return [
        (name, value)
        for name, value in strip_hop_by_hop(channel.open.headers)
        if name.lower() not in ("host", "expect")
    ]


async def relay_http(channel: LocalStream, app: LocalApp, connection_id: str) -> None:
    """Relay one HTTP stream to the local app and its answer back, both bodies streamed.

    Errors before the response head become a 502 with a one-line reason; after it, the
    stream is reset (``upstream_failed``). :class:`StreamGone` and cancellation (the
    server reset the stream) propagate; the local connection is then closed.
    """
    message = channel.open
    body: AsyncIterator[bytes] | None = None if message.end_stream else channel.request_body()
    try:
        response = await app.pool.request(
            message.method,
            app.http_target(message.path, message.query),
            request_headers(channel),
            body,
            host=_caller_host(channel) if app.preserve_host else None,
        )
        try:
            await _relay_response(channel, response, app)
        finally:
            await response.aclose()
    except LocalPathError as exc:
        channel.outcome = "path refused"
        await send_plain_error(channel, 400, exc.reason)
    except LocalAppError as exc:
        if channel.response_started:
            channel.outcome = f"local app failed mid-body: {exc.reason}"
            channel.reset(ResetCode.UPSTREAM_FAILED, f"local app failed: {exc.reason}")
        else:
            await send_plain_error(channel, 502, app.unreachable_reason(exc))
    except asyncio.CancelledError:
        channel.outcome = "reset by server"
        raise
    except StreamGone:
        channel.outcome = "stream gone"
        raise
    if channel.is_open and not await channel.discard_request_body(
        limit=_DISCARD_LIMIT, seconds=_DISCARD_TIMEOUT
    ):
        channel.reset(ResetCode.CANCELLED, "response complete; request body not read")


async def send_plain_error(channel: LocalStream, status: int, reason: str) -> None:
    """Answer with ``status`` and ``reason`` as a one-line text/plain body."""
    body = (reason + "\n").encode("utf-8")
    headers = [
        ("content-type", "text/plain; charset=utf-8"),
        ("content-length", str(len(body))),
    ]
    await channel.send_response(status, headers)
    await channel.send_data(body, end_stream=True)


async def _relay_response(channel: LocalStream, response: HTTP1Response, app: LocalApp) -> None:
    status = response.status
    headers = app.tunnel_headers(
        strip_hop_by_hop(
            [(name.decode("latin-1"), value.decode("latin-1")) for name, value in response.headers]
        )
    )
    no_body = channel.open.method == "HEAD" or status in (204, 304)
    if status < 200:
        await send_plain_error(
            channel, 502, f"the local app answered status {status} to a plain request"
        )
        return
    try:
        # The head is only queued: when the body is already here (the usual small
        # response) head and first bytes leave together, in one write.
        channel.queue_response(status, headers, end_stream=no_body)
    except LocalProtocolError as exc:
        first = str(exc).splitlines()[0]
        await send_plain_error(
            channel, 502, f"the local app sent an unusable response head: {first}"
        )
        return
    if no_body:
        await channel.flush()
        return
    chunk = response.read_nowait(channel.immediate_capacity())
    if not chunk and not response.at_eof:
        await channel.flush()  # nothing yet (e.g. server-sent events): head now
    while True:
        if chunk or response.at_eof:
            end = response.at_eof
            await channel.send_data(chunk, end_stream=end)
            if end:
                return
        size = await channel.send_capacity()
        chunk = await response.read(size)
        if not chunk:
            await channel.send_data(b"", end_stream=True)
            return
