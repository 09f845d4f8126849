"""WebSocket passthrough, black box: a caller's WebSocket to ``ws://server/<id>/ws/echo``
goes through the server and client under test to the origin and back (WS-1..WS-5)."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator

import pytest
import websockets
from hypothesis import given
from hypothesis import strategies as st
from pipegate_conformance.harness import Tunnel
from pipegate_conformance.plugin import conformance_settings
from pipegate_conformance.support import wait_for_origin_event
from websockets.asyncio.client import ClientConnection, connect


def _ws_url(tunnel: Tunnel, path: str) -> str:
    scheme = "wss" if tunnel.server_base.startswith("https") else "ws"
    return f"{scheme}://{tunnel.server_base.split('://', 1)[1]}/{tunnel.connection_id}{path}"


def _connect(tunnel: Tunnel, path: str, **kw: object) -> connect:
    return connect(
        _ws_url(tunnel, path),
        max_size=None,
        open_timeout=15,
        close_timeout=10,
        ping_interval=None,
        proxy=None,
        compression=None,
        **kw,  # type: ignore[arg-type]
    )


async def _fragments(data: bytes | str, count: int) -> AsyncIterator[bytes | str]:
    step = max(1, -(-len(data) // count))
    for index in range(0, max(len(data), 1), step):
        yield data[index : index + step]


@pytest.mark.rule("WS-2", "WS-3")
async def test_text_and_binary_messages_echo(tunnel: Tunnel) -> None:
    """WS-2: text stays text, binary stays binary, content intact, in order; WS-3: the
    local app's chosen subprotocol reaches the caller."""
    async with _connect(tunnel, "/ws/echo", subprotocols=["chat", "superchat"]) as ws:
        assert ws.subprotocol == "chat"
        messages: list[str | bytes] = ["hello", b"\x00\xff" * 10, "", b"", "caf\u00e9 \u2603"]
        for message in messages:
            await ws.send(message)
        for message in messages:
            assert await asyncio.wait_for(ws.recv(), 10) == message


@pytest.mark.rule("WS-2")
async def test_fragmented_messages_are_reassembled(tunnel: Tunnel) -> None:
    """WS-2: a message the caller sends in fragments arrives as one message (text split
    inside a multi-byte character included)."""
    async with _connect(tunnel, "/ws/echo") as ws:
        text = "\u2603" * 1000
        await ws.send(_fragments(text, 7))
        assert await asyncio.wait_for(ws.recv(), 10) == text
        data = secrets.token_bytes(100_000)
        await ws.send(_fragments(data, 5))
        assert await asyncio.wait_for(ws.recv(), 10) == data


@pytest.mark.rule("WS-2")
@pytest.mark.parametrize("size", [300_000, 3 * 1024 * 1024])
async def test_large_messages_cross_windows(tunnel: Tunnel, size: int) -> None:
    """WS-2/FC-1: messages larger than max_frame_size and than the initial window are
    split, flow controlled and reassembled intact, both ways."""
    async with _connect(tunnel, "/ws/echo") as ws:
        data = secrets.token_bytes(size)
        await ws.send(data)
        assert await asyncio.wait_for(ws.recv(), 30) == data
        text = "x\u00e9" * (size // 3)
        await ws.send(text)
        assert await asyncio.wait_for(ws.recv(), 30) == text


@pytest.mark.rule("WS-2")
@conformance_settings(max_examples=0.5)
@given(
    messages=st.lists(
        st.one_of(st.binary(max_size=5000), st.text(max_size=2000)), min_size=1, max_size=8
    )
)
def test_message_sequences_echo(tunnel: Tunnel, messages: list[bytes | str]) -> None:
    """WS-2: any sequence of text/binary messages comes back identical and in order."""

    async def scenario() -> list[bytes | str]:
        async with _connect(tunnel, "/ws/echo") as ws:
            for message in messages:
                await ws.send(message)
            return [await asyncio.wait_for(ws.recv(), 10) for _ in messages]

    assert asyncio.run(scenario()) == messages


@pytest.mark.rule("WS-4")
@pytest.mark.parametrize("code", [1000, 1001, 3000, 4321])
async def test_caller_close_code_reaches_local_app(tunnel: Tunnel, code: int) -> None:
    """WS-4: the caller's close code and reason reach the local app."""
    tag = secrets.token_hex(6)
    async with _connect(tunnel, f"/ws/echo?tag={tag}") as ws:
        await ws.send("ping")
        await asyncio.wait_for(ws.recv(), 10)
        await ws.close(code, "caller says bye")
    event = await asyncio.to_thread(
        wait_for_origin_event, tunnel.origin_url, tag, "ws_closed", 10.0
    )
    assert event is not None, "the close never reached the local app"
    assert event["code"] == code
    assert event["reason"] == "caller says bye"


@pytest.mark.rule("WS-4")
@pytest.mark.parametrize("code", [1000, 1008, 3001, 4123])
async def test_local_app_close_code_reaches_caller(tunnel: Tunnel, code: int) -> None:
    """WS-4: the local app's close code reaches the caller."""
    async with _connect(tunnel, f"/ws/close/{code}") as ws:
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), 10)
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == code


@pytest.mark.rule("WS-3")
async def test_refused_upgrade_keeps_the_local_status(tunnel: Tunnel) -> None:
    """WS-3: when the local app refuses the upgrade, the caller is refused too (a real
    HTTP status, not an accepted-then-closed socket)."""
    with pytest.raises(websockets.InvalidStatus) as refused:
        async with _connect(tunnel, "/ws/nowhere"):
            pass
    assert refused.value.response.status_code == 403


@pytest.mark.rule("WS-2", "ST-4", "ER-4")
async def test_concurrent_websockets_are_independent(tunnel: Tunnel) -> None:
    """Several relayed WebSockets at once do not mix their messages; closing one does
    not disturb the others (ER-4)."""
    sockets: list[ClientConnection] = [
        await _connect(tunnel, "/ws/echo").__aenter__() for _ in range(6)
    ]
    try:
        for index, ws in enumerate(sockets):
            await ws.send(f"socket {index}")
        await sockets[0].close(1000)
        for index, ws in enumerate(sockets[1:], start=1):
            assert await asyncio.wait_for(ws.recv(), 10) == f"socket {index}"
            await ws.send(b"again")
            assert await asyncio.wait_for(ws.recv(), 10) == b"again"
    finally:
        for ws in sockets:
            await ws.close()
