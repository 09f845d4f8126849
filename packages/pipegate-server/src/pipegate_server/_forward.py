"""Cluster mode: a request for a tunnel another node holds, forwarded to that node.

The balancer hashes on the connection id, so most requests reach the node that holds
their tunnel. Two kinds do not: requests for a custom hostname (the balancer cannot
know which id it belongs to) and requests for an id whose tunnel has not moved yet
after a membership change. :class:`Forwarder` sends them on to the holder's
``--node-url``, as a reverse proxy would:

* HTTP through aiohttp (a pooled client per node process): the method, the raw path
  and query, the headers in order (hop-by-hop ones removed, HD-4, and the ``Host``
  kept, so the holder routes the request as the balancer's node would have), the body
  streamed both ways, the response's bytes as the holder sent them (no decoding).
* WebSockets through websockets' client: the handshake with the caller's
  subprotocols and headers (the TCP connection goes to the holder, the ``Host`` stays
  the caller's), then messages both ways and the close code.

The caller's address goes in ``X-Forwarded-For`` (and the scheme in
``X-Forwarded-Proto``); every other proxy header the caller sent is dropped, so the
holder must trust the nodes (``--forwarded-allow-ips``) to see the caller rather than
this node. Each forwarded request carries ``Via: 1.1 pipegate`` (RFC 9110 7.6.3);
a node never forwards a request that already has it, so two nodes that disagree for
a moment about who holds a tunnel answer 503 instead of passing a request back and
forth.

Memory: the request body is read one ASGI message at a time and handed to aiohttp, the
response one chunk as aiohttp reads it (aiohttp stops reading from the holder while
128 KiB wait in its buffer: twice its 64 KiB ``read_bufsize``), and a forwarded
WebSocket holds at most ``max_queue`` (4) messages of ``max_websocket_message_size``
each way in websockets' buffers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
from pipegate_protocol import PROXY_HEADER_PREFIX, PROXY_HEADERS, raw_hop_by_hop_names
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus
from yarl import URL

from ._asgi import Receive, Scope, Send
from ._relay import deny_websocket, send_plain
from ._settings import ServerSettings

__all__ = ["VIA", "Forwarder"]

logger = logging.getLogger("pipegate.server")

#: The ``Via`` value each forwarded request carries (and the loop guard looks for).
VIA = b"1.1 pipegate"
#: Connections to other nodes one node keeps at most.
_MAX_CONNECTIONS = 128
#: Headers a WebSocket handshake sets itself.
_WS_OWN = frozenset(
    {
        b"host",
        b"upgrade",
        b"connection",
        b"sec-websocket-key",
        b"sec-websocket-version",
        b"sec-websocket-protocol",
        b"sec-websocket-extensions",
    }
)


def _caller_headers(scope: Scope, drop: frozenset[bytes]) -> list[tuple[bytes, bytes]]:
    """The caller's headers to pass on: hop-by-hop (HD-4), proxy headers and ``drop``
    removed; the caller as ``X-Forwarded-For``, the scheme, and ``Via`` added."""
    headers = scope["headers"]
    hop = raw_hop_by_hop_names(headers)
    kept: list[tuple[bytes, bytes]] = []
    for name, value in headers:
        lowered = name.lower()
        if lowered in hop or lowered in drop:
            continue
        text = lowered.decode("latin-1")
        if text in PROXY_HEADERS or text.startswith(PROXY_HEADER_PREFIX):
            continue
        kept.append((lowered, value))
    client = scope.get("client")
    if client:
        kept.append((b"x-forwarded-for", str(client[0]).encode("latin-1")))
    scheme = scope.get("scheme", "http")
    kept.append((b"x-forwarded-proto", b"https" if scheme in ("https", "wss") else b"http"))
    kept.append((b"via", VIA))
    return kept


def _raw_target(scope: Scope) -> bytes:
    raw: bytes = scope.get("raw_path") or scope["path"].encode("utf-8")
    query: bytes = scope.get("query_string") or b""
    return raw + (b"?" + query if query else b"")


class Forwarder:
    """Forwards requests to the node that holds their tunnel (see the module)."""

    def __init__(self, settings: ServerSettings) -> None:
        self.settings = settings
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        # Made on first use, inside the running loop (aiohttp wants one).
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(
                    limit=_MAX_CONNECTIONS, ttl_dns_cache=300, enable_cleanup_closed=True
                ),
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=2.0, connect=5.0),
                auto_decompress=False,
                skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
                cookie_jar=aiohttp.DummyCookieJar(),
                trust_env=False,
            )
        return self._session

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()

    @staticmethod
    def was_forwarded(scope: Scope) -> bool:
        """Whether another node already forwarded this request (its ``Via`` says so)."""
        for name, value in scope["headers"]:
            if name == b"via" and b"pipegate" in value.lower():
                return True
        return False

    async def http(self, scope: Scope, receive: Receive, send: Send, node_url: str) -> None:
        """Forward one HTTP request to the node at ``node_url`` and stream its answer."""
        headers = [
            (name.decode("latin-1"), value.decode("latin-1"))
            for name, value in _caller_headers(scope, frozenset())
        ]
        # A request without a body is sent without one (an empty stream would go as
        # a chunked upload); one with a Content-Length keeps it.
        has_body = any(
            (name == b"content-length" and value.strip() != b"0") or name == b"transfer-encoding"
            for name, value in scope["headers"]
        )

        async def body() -> AsyncIterator[bytes]:
            while True:
                event = await receive()
                if event["type"] == "http.disconnect":
                    return
                chunk = event.get("body", b"")
                if chunk:
                    yield chunk
                if not event.get("more_body", False):
                    return

        url = URL(node_url.rstrip("/") + _raw_target(scope).decode("latin-1"), encoded=True)
        try:
            response = await self._client().request(
                scope["method"],
                url,
                headers=headers,
                data=body() if has_body else None,
                allow_redirects=False,
            )
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            logger.warning("forward failed: node=%s error=%s", node_url, type(exc).__name__)
            await send_plain(
                send,
                503,
                "the server node holding this tunnel cannot be reached; retry",
                headers=[(b"retry-after", b"1")],
            )
            return
        try:
            raw = response.raw_headers
            drop = raw_hop_by_hop_names(raw)
            await send(
                {
                    "type": "http.response.start",
                    "status": response.status,
                    "headers": [
                        (name.lower(), value) for name, value in raw if name.lower() not in drop
                    ],
                }
            )
            idle = self.settings.stream_idle_timeout
            async for chunk in response.content.iter_any():
                # A caller that reads nothing for --stream-idle-timeout is dropped, as
                # the relay drops it, instead of holding this task and a connection.
                async with asyncio.timeout(idle):
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except TimeoutError:  # before OSError, its base class
            logger.info("forward ended: node=%s reason=the caller read nothing", node_url)
        except (aiohttp.ClientError, OSError):
            # The holder or the caller went away mid-response: nothing more to send.
            pass
        finally:
            response.release()

    async def websocket(self, scope: Scope, receive: Receive, send: Send, node_url: str) -> None:
        """Forward one WebSocket session to the node at ``node_url``."""
        event = await receive()
        if event["type"] != "websocket.connect":
            return
        host = b""
        for name, value in scope["headers"]:
            if name == b"host":
                host = value
                break
        target = URL(node_url)
        uri = f"{'wss' if target.scheme == 'https' else 'ws'}://{host.decode('latin-1')}"
        uri += _raw_target(scope).decode("latin-1")
        headers = [
            (n.decode("latin-1"), v.decode("latin-1")) for n, v in _caller_headers(scope, _WS_OWN)
        ]
        subprotocols = list(scope.get("subprotocols") or ())
        tls: dict[str, Any] = {}
        if target.scheme == "https":
            # TLS to the holder, checked against its --node-url name.
            tls["server_hostname"] = target.host
        try:
            upstream = await connect(
                uri,
                # The TCP connection goes to the holder; the Host stays the caller's.
                host=target.host,
                port=target.port or (443 if target.scheme == "https" else 80),
                additional_headers=headers,
                subprotocols=subprotocols or None,
                compression=None,
                max_size=self.settings.max_websocket_message_size,
                max_queue=4,
                ping_interval=None,
                open_timeout=10,
                user_agent_header=None,
                **tls,
            )
        except InvalidStatus as exc:
            response = exc.response
            text = response.body.decode("utf-8", "replace").strip() if response.body else ""
            await deny_websocket(scope, send, response.status_code, text or response.reason_phrase)
            return
        except (InvalidHandshake, OSError, TimeoutError) as exc:
            logger.warning("forward failed: node=%s error=%s", node_url, type(exc).__name__)
            await deny_websocket(
                scope,
                send,
                503,
                "the server node holding this tunnel cannot be reached; retry",
                [(b"retry-after", b"1")],
            )
            return
        async with upstream:
            await send({"type": "websocket.accept", "subprotocol": upstream.subprotocol})
            try:
                await _pump(receive, send, upstream, self.settings.stream_idle_timeout)
            except TimeoutError:
                logger.info("forward ended: node=%s reason=the caller read nothing", node_url)


async def _pump(receive: Receive, send: Send, upstream: ClientConnection, idle: float) -> None:
    """Messages both ways until either side closes; the close code goes across."""

    async def caller_to_node() -> None:
        with contextlib.suppress(ConnectionClosed):
            while True:
                event = await receive()
                if event["type"] == "websocket.receive":
                    text = event.get("text")
                    await upstream.send(text if text is not None else event.get("bytes") or b"")
                elif event["type"] == "websocket.disconnect":
                    code = int(event.get("code", 1000))
                    await upstream.close(code if code in (1000, 1001) or code >= 3000 else 1000)
                    return

    pump = asyncio.ensure_future(caller_to_node())
    try:
        with contextlib.suppress(ConnectionClosed):
            async for message in upstream:
                async with asyncio.timeout(idle):  # a caller that reads nothing
                    if isinstance(message, str):
                        await send({"type": "websocket.send", "text": message})
                    else:
                        await send({"type": "websocket.send", "bytes": message})
        code = upstream.close_code or 1000
        if code in (1005, 1006, 1015):  # not sendable: no code, abnormal, TLS
            code = 1000 if code == 1005 else 1011
        reason = upstream.close_reason or ""
        with contextlib.suppress(OSError, RuntimeError):
            await send({"type": "websocket.close", "code": code, "reason": reason[:120]})
    finally:
        pump.cancel()
        await asyncio.gather(pump, return_exceptions=True)
