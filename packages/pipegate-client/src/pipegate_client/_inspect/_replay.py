"""Replay: send a recorded request (as it was, or edited) to the local app again.

A replay goes only to the local app of ``--local-url`` (with several tunnels: of the
tunnel the original came through, never another's), through the client's own
connection pool: nothing in a replay request can name another host or URL. An edited
path that is an absolute URL keeps only its path and query; a ``Host`` header is
dropped (the local URL's authority is sent, as for every relayed request); a path that
would climb above the local URL's path is refused (:func:`.._local.climbs_above_root`).
Framing is the replay's own: ``Content-Length`` and ``Transfer-Encoding`` of the
original are dropped and the length of the body sent is declared.

The result is recorded as a new exchange (``replay_of`` names the original), with the
same capture caps as relayed traffic; the response body is read to its end (or for at
most :data:`READ_SECONDS`) and only its first bytes kept.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from pipegate_protocol import strip_hop_by_hop

from .._http1 import HTTP1Response, describe_failure
from .._local import LocalApp
from ..errors import LocalAppError, LocalPathError, LocalRequestError
from ._recorder import Exchange, Recorder

__all__ = ["HEAD_SECONDS", "READ_SECONDS", "ReplayError", "ReplayRequest", "replay"]

#: Seconds the local app has to answer a replay with a response head.
HEAD_SECONDS = 30.0
#: Seconds a replay reads the response body before it stops (an endless stream).
READ_SECONDS = 30.0

_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,64}\Z")
#: Headers a replay never sends as they were: the host and the framing are its own.
_DROPPED = frozenset({"host", "expect", "content-length", "transfer-encoding"})


class ReplayError(Exception):
    """A replay that cannot be made; ``status`` is the API's answer (4xx, 502, 504)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class ReplayRequest:
    """What to send: method, path, query, headers in order, body (``None``: none)."""

    method: str
    path: str
    query: str
    headers: tuple[tuple[str, str], ...]
    body: bytes | None

    @classmethod
    def of(cls, exchange: Exchange) -> ReplayRequest:
        """The recorded request as it was; refuses what cannot be sent again."""
        if exchange.kind != "http":
            raise ReplayError(409, "a WebSocket stream cannot be replayed")
        body = exchange.request_body
        if body.truncated:
            raise ReplayError(
                409,
                f"the request body was {body.size} bytes and only {len(body.data)} were "
                "kept; replay it with an edited body",
            )
        return cls(
            exchange.method,
            exchange.path,
            exchange.query,
            exchange.request_headers,
            bytes(body.data) if body.size else None,
        )

    def edited(
        self,
        *,
        method: str | None = None,
        target: str | None = None,
        headers: Sequence[tuple[str, str]] | None = None,
        body: bytes | None = None,
    ) -> ReplayRequest:
        """This request with the given parts replaced; see the module docstring for what
        an edited target may be. Raises :class:`ReplayError` (400) for a bad part."""
        path, query = self.path, self.query
        if target is not None:
            path, query = split_target(target)
        if method is not None and not _TOKEN.match(method):
            raise ReplayError(400, "method: not an HTTP method token")
        return ReplayRequest(
            method if method is not None else self.method,
            path,
            query,
            tuple(headers) if headers is not None else self.headers,
            body if body is not None else self.body,
        )

    def headers_to_send(self) -> list[tuple[str, str]]:
        """The headers for the local app (see the module docstring)."""
        sent = [
            (name, value)
            for name, value in strip_hop_by_hop(self.headers)
            if name.lower() not in _DROPPED
        ]
        if self.body is not None:
            sent.append(("content-length", str(len(self.body))))
        return sent


def split_target(target: str) -> tuple[str, str]:
    """``/path?query`` as (path, query); an absolute URL keeps only its path and query.
    Raises :class:`ReplayError` (400) for a target no request line can carry."""
    if not target or any(ord(ch) <= 0x20 or ord(ch) >= 0x7F for ch in target):
        raise ReplayError(400, "path: must be visible ASCII, no spaces (percent-encode)")
    if not target.startswith("/") or target.startswith("//"):
        parts = urlsplit(target)
        if not parts.scheme and not target.startswith("//"):
            raise ReplayError(400, "path: must start with /")
        target = (parts.path or "/") + ("?" + parts.query if parts.query else "")
        if not target.startswith("/"):
            raise ReplayError(400, "path: must start with /")
    path, _, query = target.split("#", 1)[0].partition("?")
    return path, query


async def replay(
    app: LocalApp, recorder: Recorder, request: ReplayRequest, *, replay_of: int, tunnel: str = ""
) -> Exchange:
    """Send ``request`` to the local app and record the answer as a new exchange.

    Raises :class:`ReplayError`: 400 for a path above the local URL's path or a head
    HTTP/1.1 cannot carry, 502 when the local app cannot be reached or fails before
    its response head, 504 when it sends no head within :data:`HEAD_SECONDS`.
    """
    try:
        target = app.http_target(request.path, request.query)
    except LocalPathError as exc:
        raise ReplayError(400, f"path: {exc.reason}") from None
    headers = request.headers_to_send()
    # An empty body is declared (Content-Length: 0) rather than sent.
    body: AsyncIterator[bytes] | None = _once(request.body) if request.body else None
    started = recorder.now()
    try:
        response = await asyncio.wait_for(
            app.pool.request(request.method, target, headers, body), HEAD_SECONDS
        )
    except LocalRequestError as exc:
        raise ReplayError(400, f"the request cannot be sent: {exc.reason}") from None
    except LocalAppError as exc:
        raise ReplayError(502, f"local app failed: {describe_failure(exc)}") from None
    except TimeoutError:
        raise ReplayError(504, f"no answer from the local app within {HEAD_SECONDS:.0f}s") from None
    exchange = recorder.new_exchange(
        kind="http",
        method=request.method,
        path=request.path,
        query=request.query,
        headers=headers,
        opened_at=started,
        replay_of=replay_of,
        tunnel=tunnel,
    )
    if request.body is not None:
        recorder.capture(exchange, exchange.request_body, request.body)
    outcome = ""
    try:
        recorder.response(
            exchange,
            response.status,
            [(n.decode("latin-1"), v.decode("latin-1")) for n, v in response.headers],
            recorder.now(),
        )
        outcome = await _read_body(recorder, exchange, response)
    finally:
        await response.aclose()
        recorder.finish(exchange, at=recorder.now(), outcome=outcome)
    return exchange


async def _read_body(recorder: Recorder, exchange: Exchange, response: HTTP1Response) -> str:
    """Read the body into the capture; the outcome note ("" when it ended)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + READ_SECONDS
    try:
        while True:
            left = deadline - loop.time()
            if left <= 0:
                return f"replay stopped reading after {READ_SECONDS:.0f}s"
            try:
                chunk = await asyncio.wait_for(response.read(64 * 1024), left)
            except TimeoutError:
                return f"replay stopped reading after {READ_SECONDS:.0f}s"
            if not chunk:
                return ""
            if exchange.first_byte_at is None:
                exchange.first_byte_at = recorder.now()
            recorder.capture(exchange, exchange.response_body, chunk)
    except LocalAppError as exc:
        return f"local app failed mid-body: {describe_failure(exc)}"


async def _once(body: bytes) -> AsyncIterator[bytes]:
    yield body
