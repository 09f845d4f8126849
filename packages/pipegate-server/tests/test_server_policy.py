"""The relay applies the protocol's policy functions on every path: HD-4 on response
heads too (including the names a ``Connection`` header lists), WS-5 when a caller
drops its WebSocket, HD-10 statuses and the typed reset code of StreamResetError."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import httpx
import pytest
from pipegate_protocol import ResetCode, WebSocketClose
from pipegate_server.errors import (
    BodyTooLargeError,
    ResponseTimeoutError,
    StreamResetError,
    TunnelBusyError,
    error_for_reset,
)
from websockets.asyncio.client import connect


async def test_HD_4_response_headers_named_by_connection_are_not_relayed(
    server: Any, pg: Any
) -> None:
    async def handler(client: Any, stream: Any) -> None:
        await stream.respond(
            200,
            [
                ("x-keep", "1"),
                ("connection", "x-private"),
                ("x-private", "hop only"),
                ("keep-alive", "timeout=5"),
                ("x-keep", "2"),
            ],
            b"ok",
        )

    async with pg.fake_client(server, "node", handler), httpx.AsyncClient() as http:
        response = await http.get(f"{server.base}/node/h")
    assert response.status_code == 200
    assert response.headers.get_list("x-keep") == ["1", "2"]
    assert "x-private" not in response.headers
    assert "keep-alive" not in response.headers


def _ws_handler(closes: list[int], accepted: asyncio.Event) -> Any:
    async def handler(client: Any, stream: Any) -> None:
        client.conn.send_response(stream.id, 101, [])
        await client.flush()
        accepted.set()
        while True:
            item = await stream.next_item()
            if isinstance(item, WebSocketClose):
                closes.append(item.code)
                return

    return handler


async def _wait_for(closes: list[int]) -> None:
    for _ in range(100):
        if closes:
            return
        await asyncio.sleep(0.05)


async def test_WS_5_caller_close_without_status_is_relayed_as_1000(server: Any, pg: Any) -> None:
    closes: list[int] = []
    accepted = asyncio.Event()
    async with pg.fake_client(server, "node", _ws_handler(closes, accepted)) as client:
        ws = await connect(f"ws://127.0.0.1:{server.port}/node/chat")
        await asyncio.wait_for(accepted.wait(), 5)
        ws.transport.write(b"\x88\x80\x00\x00\x00\x00")  # masked close frame, no status
        await _wait_for(closes)
        ws.transport.abort()
        assert not client.errors
    assert closes == [1000]


async def test_WS_5_caller_dropping_its_socket_is_never_relayed_as_1005_or_1006(
    server: Any, pg: Any
) -> None:
    closes: list[int] = []
    accepted = asyncio.Event()
    async with pg.fake_client(server, "node", _ws_handler(closes, accepted)) as client:
        ws = await connect(f"ws://127.0.0.1:{server.port}/node/chat")
        await asyncio.wait_for(accepted.wait(), 5)
        transport = ws.transport
        sock = transport.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        transport.abort()  # no close frame: the TCP connection just ends
        await _wait_for(closes)
        assert not client.errors
    # uvicorn reports a lost connection as 1005 (its sansio protocol) or 1006: relayed
    # as 1000 or 1001, never as a code a close frame cannot carry.
    assert len(closes) == 1
    assert closes[0] in (1000, 1001)


@pytest.mark.parametrize(
    ("code", "error_type", "status"),
    [
        (ResetCode.TIMEOUT, ResponseTimeoutError, 504),
        (ResetCode.TOO_LARGE, BodyTooLargeError, 413),
        (ResetCode.REFUSED, TunnelBusyError, 503),
        (ResetCode.UPSTREAM_FAILED, StreamResetError, 502),
        (ResetCode.INTERNAL_ERROR, StreamResetError, 502),
        (ResetCode.CANCELLED, StreamResetError, 502),
    ],
)
def test_HD_10_error_for_reset(code: ResetCode, error_type: type, status: int) -> None:
    error = error_for_reset(code, "reset")
    assert type(error) is error_type
    assert error.status == status
    if isinstance(error, StreamResetError):
        assert error.code is code


def _code_of(error: StreamResetError) -> ResetCode | None:
    return error.code


def test_stream_reset_error_code_is_typed_and_reset_code_stays_compatible() -> None:
    error = StreamResetError("x")
    assert _code_of(error) is None
    assert error.reset_code == ""
    error.reset_code = "cancelled"
    assert _code_of(error) is ResetCode.CANCELLED
    error.reset_code = ResetCode.UPSTREAM_FAILED
    assert _code_of(error) is ResetCode.UPSTREAM_FAILED
    assert error.reset_code == "upstream_failed"
    assert StreamResetError("y", code=ResetCode.CANCELLED).reset_code == "cancelled"
