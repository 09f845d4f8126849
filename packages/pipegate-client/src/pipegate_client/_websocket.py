"""WebSocket passthrough: relay a ``websocket`` stream to the local app's WebSocket.

The local handshake happens first; its outcome becomes the stream's response (101 with
the subprotocol the local app chose, or the local app's refusal with its status,
headers and body; a redirect is such a refusal too: it is never followed). Then
messages flow both ways as fragments of at most the peer's frame size, each direction
flow controlled, and a close on either side ends the stream with the same code and
reason on the other; a code no close frame may carry is translated (WS-5:
:func:`pipegate_protocol.close_code_for_relay` and ``close_code_for_hop``).
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator, Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from pipegate_protocol import (
    ResetCode,
    WebSocketClose,
    WebSocketData,
    close_code_for_hop,
    close_code_for_relay,
    strip_hop_by_hop,
)
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI
from websockets.typing import Subprotocol

from ._internals import connect_no_redirect
from ._local import LocalApp, send_plain_error, wire_str
from ._stream import LocalStream
from .errors import LocalPathError

__all__ = ["relay_websocket"]

logger = logging.getLogger("pipegate_client")

#: Request headers that belong to the caller's own handshake with the server.
_HANDSHAKE_REQUEST_HEADERS = frozenset(
    {
        "host",
        "content-length",
        "sec-websocket-key",
        "sec-websocket-version",
        "sec-websocket-extensions",
        "sec-websocket-accept",
        "sec-websocket-protocol",
    }
)
#: Response headers that belong to the local handshake only.
_HANDSHAKE_RESPONSE_HEADERS = frozenset(
    {"sec-websocket-accept", "sec-websocket-extensions", "content-length"}
)
#: Largest single frame we accept from the local app (websockets delivers a frame
#: whole); messages of many frames may be any size, they are relayed as they arrive.
_MAX_LOCAL_FRAME = 64 * 1024 * 1024


def _subprotocols(headers: tuple[tuple[str, str], ...]) -> list[Subprotocol]:
    return [
        Subprotocol(item.strip())
        for name, value in headers
        if name.lower() == "sec-websocket-protocol"
        for item in value.split(",")
        if item.strip()
    ]


async def relay_websocket(channel: LocalStream, app: LocalApp, connection_id: str) -> None:
    """Relay one ``websocket`` stream; see the module docstring."""
    message = channel.open
    try:
        url = app.websocket_url(message.path, message.query)
    except LocalPathError as exc:
        channel.outcome = "websocket path refused"
        await send_plain_error(channel, 400, exc.reason)
        return
    destination: dict[str, Any] = {}
    if app.preserve_host:
        # --host-header preserve: websockets builds Host from the URI, so the URI
        # carries the caller's Host while the TCP (and TLS) connection goes to the
        # local app.
        url, destination = _preserving_host(url, message.headers)
    try:
        try:
            # Never follow a redirect of the local app: its 3xx is the caller's answer
            # (following it would send the caller's headers to any local address).
            local = await connect_no_redirect(
                url,
                subprotocols=_subprotocols(message.headers) or None,
                additional_headers=[
                    (name, wire_str(value))
                    for name, value in strip_hop_by_hop(message.headers)
                    if name.lower() not in _HANDSHAKE_REQUEST_HEADERS
                ],
                user_agent_header=None,
                compression=None,
                proxy=None,
                ping_interval=None,
                max_size=(None, _MAX_LOCAL_FRAME),
                max_queue=4,
                open_timeout=app.connect_timeout,
                close_timeout=5,
                ssl=app.ssl_context(),
                **destination,
            )
        except InvalidStatus as exc:
            refusal = exc.response
            body = bytes(refusal.body or b"")
            channel.outcome = "websocket refused"
            # A redirect is a refusal too: its Location is made the tunnel's, as for HTTP.
            headers = app.tunnel_headers(
                [
                    (name, value)
                    for name, value in strip_hop_by_hop(list(refusal.headers.raw_items()))
                    if name.lower() not in _HANDSHAKE_RESPONSE_HEADERS
                ]
            )
            headers.append(("content-length", str(len(body))))
            await channel.send_response(refusal.status_code, headers, end_stream=not body)
            if body:
                await channel.send_data(body, end_stream=True)
            return
        except (OSError, TimeoutError, InvalidHandshake, InvalidURI) as exc:
            channel.outcome = "websocket"
            await send_plain_error(channel, 502, app.unreachable_reason(exc))
            return
        try:
            assert local.response is not None
            headers = [
                (name, value)
                for name, value in strip_hop_by_hop(list(local.response.headers.raw_items()))
                if name.lower() not in _HANDSHAKE_RESPONSE_HEADERS
            ]
            await channel.send_response(101, headers)
            channel.outcome = "websocket"
            close = await _relay_messages(channel, local)
            channel.outcome = f"websocket closed {close}"
        finally:
            await local.close(1001, "tunnel stream ended")
    except asyncio.CancelledError:
        channel.outcome = f"{channel.outcome} reset by server".lstrip()
        raise


#: A Host this client passes on in a WebSocket handshake: a name or an IP literal
#: and a port, nothing else.
_AUTHORITY = re.compile(r"[A-Za-z0-9._-]+(:[0-9]{1,5})?|\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?")


def _preserving_host(url: str, headers: Sequence[tuple[str, str]]) -> tuple[str, dict[str, Any]]:
    """``url`` with the caller's Host as its authority, and where to connect instead
    (the local app's host and port, and its name for TLS); ``url`` unchanged without a
    usable Host (none, or not a plain ``host[:port]``)."""
    caller = next((value for name, value in headers if name.lower() == "host"), "")
    local = urlsplit(url)
    if not _AUTHORITY.fullmatch(caller) or local.hostname is None:
        return url, {}
    try:
        urlsplit(f"//{caller}").port  # noqa: B018 - raises ValueError for a bad port
    except ValueError:
        return url, {}
    secure = local.scheme == "wss"
    destination: dict[str, Any] = {
        "host": local.hostname,
        "port": local.port or (443 if secure else 80),
    }
    if secure:
        destination["server_hostname"] = local.hostname
    return urlunsplit(local._replace(netloc=caller)), destination


async def _relay_messages(channel: LocalStream, local: ClientConnection) -> str:
    """Pump both directions until one side closes; returns a description of the close."""
    outcome: list[str] = []
    to_tunnel = asyncio.create_task(_local_to_tunnel(channel, local, outcome))
    to_local = asyncio.create_task(_tunnel_to_local(channel, local, outcome))
    try:
        done, _ = await asyncio.wait({to_tunnel, to_local}, return_when=asyncio.FIRST_COMPLETED)
        if to_local in done and to_local.exception() is None:
            # We closed the local side; let the other pump see that close and stop.
            await asyncio.wait({to_tunnel}, timeout=6)
    finally:
        for task in (to_tunnel, to_local):
            task.cancel()
        results = await asyncio.gather(to_tunnel, to_local, return_exceptions=True)
    for result in results:
        if isinstance(result, Exception):
            raise result
    if channel.is_open:
        channel.reset(ResetCode.CANCELLED, "websocket relay ended")
    return outcome[0] if outcome else "?"


async def _local_to_tunnel(
    channel: LocalStream, local: ClientConnection, outcome: list[str]
) -> None:
    try:
        while True:
            pending: bytes | None = None
            text = False
            async for fragment in local.recv_streaming():
                if pending is not None:
                    await channel.send_websocket(pending, text=text, fin=False)
                text = isinstance(fragment, str)
                pending = fragment.encode("utf-8") if isinstance(fragment, str) else fragment
            await channel.send_websocket(pending or b"", text=text, fin=True)
    except ConnectionClosed as exc:
        if exc.rcvd is not None:
            code, reason = close_code_for_relay(exc.rcvd.code), exc.rcvd.reason
        elif exc.sent is not None and exc.sent.code != 1000:
            # We failed the local connection (e.g. 1009, a frame over our limit).
            code, reason = close_code_for_relay(exc.sent.code), exc.sent.reason
        else:
            code, reason = 1011, "local app connection lost"
        outcome.append(f"by local app ({code})")
        channel.send_websocket_close(code, reason)


async def _tunnel_to_local(
    channel: LocalStream, local: ClientConnection, outcome: list[str]
) -> None:
    while True:
        item = await channel.next()
        if isinstance(item, WebSocketClose):
            outcome.append(f"by caller ({item.code})")
            await local.close(close_code_for_hop(item.code), item.reason)
            return
        if not isinstance(item, WebSocketData):
            continue
        if item.fin:
            await local.send(item.data, text=item.text)
            channel.acknowledge(len(item.data))
            continue
        close_seen: list[WebSocketClose] = []
        await local.send(_fragments(channel, item, close_seen), text=item.text)
        if close_seen:
            outcome.append(f"by caller ({close_seen[0].code})")
            await local.close(close_code_for_hop(close_seen[0].code), close_seen[0].reason)
            return


async def _fragments(
    channel: LocalStream, first: WebSocketData, close_seen: list[WebSocketClose]
) -> AsyncIterator[bytes]:
    """Fragments of one message as they arrive from the tunnel (acknowledged once sent)."""
    item: WebSocketData = first
    while True:
        yield item.data
        channel.acknowledge(len(item.data))
        if item.fin:
            return
        while True:
            next_item = await channel.next()
            if isinstance(next_item, WebSocketClose):
                close_seen.append(next_item)
                return
            if isinstance(next_item, WebSocketData):
                item = next_item
                break
