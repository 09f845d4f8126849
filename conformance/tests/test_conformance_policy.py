"""Relay policy at the server under test, against the suite's own literal tables
(:mod:`pipegate_conformance.expected`): hop-by-hop headers in both directions (HD-4),
the status for each reset (HD-10), and the close codes of a relayed WebSocket when a
stream is reset (WS-4) or a code no close frame may carry turns up (WS-5).

Driven by the reference client, so only the server under test is involved.
"""

from __future__ import annotations

import asyncio
import secrets
from typing import Any

import httpx
import pytest
import websockets
from hypothesis import given
from hypothesis import strategies as st
from pipegate_conformance.expected import (
    CLOSE_CODE_AT_HOP,
    CLOSE_CODE_FOR_RESET,
    HOP_BY_HOP_HEADERS,
    RESET_STATUS,
    expected_after_hop_by_hop,
)
from pipegate_conformance.plugin import ServerUnderTest, conformance_settings
from pipegate_conformance.refpeer import ReferenceClient
from pipegate_conformance.support import connect_reference, new_connection_id, release_reference
from pipegate_protocol import Open, ResetCode, StreamKind, WebSocketClose
from websockets.asyncio.client import ClientConnection, connect

pytestmark = pytest.mark.usefixtures("reference_clients_closed")


def _call(url: str, **kw: Any) -> asyncio.Task[httpx.Response]:
    return asyncio.create_task(asyncio.to_thread(httpx.get, url, timeout=40.0, **kw))


async def _caller_websocket(
    server: ServerUnderTest, connection_id: str, peer: ReferenceClient
) -> tuple[ClientConnection, int]:
    """A caller's WebSocket through the server to ``peer``, accepted with 101."""
    url = server.public_url(connection_id).replace("http", "ws", 1) + "/ws"
    opening = connect(
        url,
        ssl=server.ssl_context() if url.startswith("wss") else None,
        open_timeout=15,
        close_timeout=10,
        ping_interval=None,
        proxy=None,
        compression=None,
    )

    async def open_caller() -> ClientConnection:
        return await opening

    caller = asyncio.create_task(open_caller())
    opened = await peer.next_of(Open)
    assert opened.kind is StreamKind.WEBSOCKET
    peer.conn.send_response(opened.stream_id, 101, [])
    await peer.flush()
    return await caller, opened.stream_id


async def _close_code_seen_by(caller: ClientConnection) -> int | None:
    with pytest.raises(websockets.ConnectionClosed) as closed:
        await asyncio.wait_for(caller.recv(), 10)
    return closed.value.rcvd.code if closed.value.rcvd is not None else None


# ---------------------------------------------------------------------- HD-4

_KEPT = ["x-pgc-a", "X-PGC-A", "x-pgc-b", "x-pgc-c"]
#: Hop-by-hop names a caller can send without changing the request's framing or
#: asking for a protocol switch (Transfer-Encoding and Upgrade are left out).
_HOP = ["keep-alive", "Keep-Alive", "te", "trailer", "proxy-authorization", "proxy-connection"]


@st.composite
def _hop_mixed_headers(draw: st.DrawFn) -> list[tuple[str, str]]:
    names = st.sampled_from(_KEPT + _HOP)
    value = st.from_regex(r"[a-z0-9=]{1,6}", fullmatch=True)
    headers = draw(st.lists(st.tuples(names, value), max_size=8))
    listed = draw(st.lists(st.sampled_from(["x-pgc-b", "X-PGC-C", "keep-alive"]), max_size=2))
    if listed:
        at = draw(st.integers(0, len(headers)))
        headers.insert(at, ("Connection", ", ".join(listed)))
    return headers


def _of_interest(headers: Any) -> list[tuple[str, str]]:
    names = {n.lower() for n in _KEPT} | HOP_BY_HOP_HEADERS - {"connection"}
    return [(n.lower(), v) for n, v in headers if n.lower() in names]


@pytest.mark.rule("HD-4", "HD-7")
@conformance_settings()
@given(headers=_hop_mixed_headers())
def test_server_drops_hop_by_hop_request_headers(
    server: ServerUnderTest, headers: list[tuple[str, str]]
) -> None:
    """HD-4: the open carries the caller's headers without the hop-by-hop ones and
    without those a Connection header names; the rest in order with duplicates."""

    async def scenario() -> list[tuple[str, str]]:
        connection_id = new_connection_id()
        peer = await connect_reference(server, connection_id)
        try:
            caller = _call(f"{server.public_url(connection_id)}/hd4", headers=headers)
            opened = await peer.next_of(Open)
            peer.conn.send_response(opened.stream_id, 204, [], end_stream=True)
            await peer.flush()
            assert (await caller).status_code == 204
            return _of_interest(opened.headers)
        finally:
            release_reference(peer)
            await peer.close()

    expected = _of_interest(expected_after_hop_by_hop([(n.lower(), v) for n, v in headers]))
    assert asyncio.run(scenario()) == expected


@pytest.mark.rule("HD-4", "HD-3")
async def test_server_drops_hop_by_hop_response_headers(server: ServerUnderTest) -> None:
    """HD-4: the caller does not get the hop-by-hop headers of the response head, nor
    those its Connection header names; the rest keeps its order."""
    sent = [
        ("x-pgc-keep", "1"),
        ("keep-alive", "timeout=5"),
        ("x-pgc-private", "hop"),
        ("connection", "x-pgc-private, x-pgc-other"),
        ("proxy-authenticate", "Basic"),
        ("trailer", "x-pgc-t"),
        ("x-pgc-other", "hop"),
        ("x-pgc-keep", "2"),
    ]
    connection_id = new_connection_id()
    peer = await connect_reference(server, connection_id)
    caller = _call(f"{server.public_url(connection_id)}/hd4")
    opened = await peer.next_of(Open)
    peer.conn.send_response(opened.stream_id, 200, sent, end_stream=True)
    await peer.flush()
    response = await caller
    assert response.status_code == 200
    # The server's own HTTP stack may add Connection and framing headers for its hop.
    got = [
        (n.decode("latin-1").lower(), v.decode("latin-1"))
        for n, v in response.headers.raw
        if n.lower() not in (b"connection", b"transfer-encoding")
        and (n.lower().startswith(b"x-pgc-") or n.decode("latin-1").lower() in HOP_BY_HOP_HEADERS)
    ]
    assert got == expected_after_hop_by_hop(sent), "HD-4: hop-by-hop response headers"


# ---------------------------------------------------------------------- HD-10


@pytest.mark.rule("HD-10", "ST-7")
@pytest.mark.parametrize(("code", "status"), sorted(RESET_STATUS.items()))
async def test_every_reset_before_head_maps_to_its_status(
    server: ServerUnderTest, code: str, status: int
) -> None:
    """HD-10: each reset code received before the response head gives its status."""
    connection_id = new_connection_id()
    peer = await connect_reference(server, connection_id)
    caller = _call(f"{server.public_url(connection_id)}/reset")
    opened = await peer.next_of(Open)
    peer.conn.reset_stream(opened.stream_id, ResetCode(code))
    await peer.flush()
    assert (await caller).status_code == status


# ---------------------------------------------------------------------- WS-4, WS-5


@pytest.mark.rule("WS-4")
@pytest.mark.parametrize(("code", "close_code"), sorted(CLOSE_CODE_FOR_RESET.items()))
async def test_reset_websocket_closes_caller_with_its_code(
    server: ServerUnderTest, code: str, close_code: int
) -> None:
    """WS-4: a reset of an accepted WebSocket stream closes the caller with 1011, or
    1001 for ``cancelled``."""
    connection_id = new_connection_id()
    peer = await connect_reference(server, connection_id)
    caller, stream_id = await _caller_websocket(server, connection_id, peer)
    async with caller:
        peer.conn.reset_stream(stream_id, ResetCode(code))
        await peer.flush()
        assert await _close_code_seen_by(caller) == close_code


@pytest.mark.rule("WS-4", "WS-5")
@pytest.mark.parametrize(("received", "closed_with"), sorted(CLOSE_CODE_AT_HOP.items()))
async def test_ws_close_code_at_the_callers_hop(
    server: ServerUnderTest, received: int, closed_with: int
) -> None:
    """WS-4: a sendable ws_close code reaches the caller unchanged; WS-5: 1005, 1006
    and 1015, which no close frame may carry, close the caller with 1011."""
    connection_id = new_connection_id()
    peer = await connect_reference(server, connection_id)
    caller, stream_id = await _caller_websocket(server, connection_id, peer)
    async with caller:
        peer.conn.send_websocket_close(stream_id, received, "")
        await peer.flush()
        assert await _close_code_seen_by(caller) == closed_with


@pytest.mark.rule("WS-5")
async def test_caller_close_without_status_is_relayed_as_1000(server: ServerUnderTest) -> None:
    """WS-5: a caller's close frame without a status code becomes ws_close 1000 (1005
    is never sent in ws_close)."""
    connection_id = new_connection_id()
    peer = await connect_reference(server, connection_id)
    caller, stream_id = await _caller_websocket(server, connection_id, peer)
    async with caller:
        assert caller.transport is not None
        caller.transport.write(b"\x88\x80" + secrets.token_bytes(4))  # masked, no payload
        close = await peer.next_of(WebSocketClose)
        caller.transport.abort()
    assert (close.stream_id, close.code) == (stream_id, 1000)


# ---------------------------------------------------------------------- WS-6, WS-7


@pytest.mark.rule("WS-6", "ER-2")
@pytest.mark.parametrize(
    "kinds", [(0x01, 0x02), (0x02, 0x01)], ids=["text-then-binary", "binary-then-text"]
)
async def test_mixed_fragment_kinds_close_the_tunnel(
    server: ServerUnderTest, kinds: tuple[int, int]
) -> None:
    """WS-6: a WebSocket data frame of the other kind while a message is unfinished
    (text fragment, then a binary one, or the reverse) closes the tunnel with 1002."""
    connection_id = new_connection_id()
    peer = await connect_reference(server, connection_id)
    caller, stream_id = await _caller_websocket(server, connection_id, peer)
    async with caller:
        sid = stream_id.to_bytes(4, "big")
        await peer.send_raw(bytes([kinds[0]]) + sid + b"first fragment")  # F not set
        await peer.send_raw(bytes([0x80 | kinds[1]]) + sid + b"other kind")
        assert await peer.wait_closed(within=30.0) == 1002


@pytest.mark.rule("WS-7")
@pytest.mark.parametrize("how", ["closed", "lost"])
async def test_tunnel_loss_closes_the_callers_websocket_with_1001(
    server: ServerUnderTest, how: str
) -> None:
    """WS-7: when the tunnel is closed (close handshake) or lost (connection dropped),
    the server closes each relayed WebSocket toward its caller with 1001."""
    connection_id = new_connection_id()
    peer = await connect_reference(server, connection_id)
    caller, _ = await _caller_websocket(server, connection_id, peer)
    async with caller:
        if how == "closed":
            await peer.ws.close(1000, "client stops")
        else:
            peer.ws.transport.abort()
        assert await _close_code_seen_by(caller) == 1001
