"""WebSocket passthrough: a caller's WebSocket to ``/<id>/<path>`` reaches the local app."""

from __future__ import annotations

import contextlib
import os

import pytest
from pipegate_conformance.harness import Tunnel
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect


def _ws_url(tunnel: Tunnel, path: str) -> str:
    return f"{tunnel.server_ws_url}{path}"


def test_text_and_binary_echo(tunnel: Tunnel) -> None:
    with connect(_ws_url(tunnel, "/ws/echo"), open_timeout=10, close_timeout=5) as ws:
        for index in range(20):
            ws.send(f"hello {index} ünïcode")
            assert ws.recv(timeout=10) == f"hello {index} ünïcode"
        payload = os.urandom(4096)
        ws.send(payload)
        assert ws.recv(timeout=10) == payload
        ws.send(b"")
        assert ws.recv(timeout=10) == b""


def test_large_message_is_reassembled(tunnel: Tunnel) -> None:
    """A 3 MiB message is bigger than any tunnel frame, so it travels in fragments."""
    payload = os.urandom(3 * 1024 * 1024)
    with connect(_ws_url(tunnel, "/ws/echo"), max_size=None, open_timeout=10) as ws:
        ws.send(payload)
        assert ws.recv(timeout=30) == payload


def test_subprotocol_is_negotiated_with_the_local_app(tunnel: Tunnel) -> None:
    with connect(_ws_url(tunnel, "/ws/echo"), subprotocols=["chat.v2", "chat.v1"]) as ws:  # type: ignore[list-item]
        assert ws.subprotocol == "chat.v2"
        ws.send("ping")
        assert ws.recv(timeout=10) == "ping"


@pytest.mark.parametrize("code", [1000, 4321])
def test_close_code_from_the_local_app_reaches_the_caller(tunnel: Tunnel, code: int) -> None:
    with (
        connect(_ws_url(tunnel, f"/ws/close/{code}"), open_timeout=10) as ws,
        pytest.raises(ConnectionClosed) as closed,
    ):
        ws.recv(timeout=10)
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == code


def test_close_asked_by_caller_message(tunnel: Tunnel) -> None:
    with connect(_ws_url(tunnel, "/ws/echo"), open_timeout=10) as ws:
        ws.send("close:4400")
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=10)
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 4400


def test_websocket_refused_by_local_app_reaches_caller_as_its_status(tunnel: Tunnel) -> None:
    """The origin refuses WebSockets outside /ws/echo (uvicorn answers 403): the caller
    gets that refusal as an HTTP status, not an accepted socket that does nothing."""
    origin_ws = tunnel.origin_url.replace("http://", "ws://", 1)
    with pytest.raises(InvalidStatus) as direct:
        connect(f"{origin_ws}/ws/nothing-here", open_timeout=10)
    with pytest.raises(InvalidStatus) as relayed:
        connect(_ws_url(tunnel, "/ws/nothing-here"), open_timeout=10)
    assert relayed.value.response.status_code == direct.value.response.status_code == 403


def test_websocket_to_unknown_id_is_404(tunnel: Tunnel) -> None:
    url = tunnel.server_ws_url.rsplit("/", 1)[0] + "/nobody-here/ws/echo"
    with pytest.raises(InvalidStatus) as refused:
        connect(url, open_timeout=10)
    assert refused.value.response.status_code == 404


def test_many_websockets_at_once(tunnel: Tunnel) -> None:
    with contextlib.ExitStack() as stack:
        sockets = [
            stack.enter_context(connect(_ws_url(tunnel, "/ws/echo"), open_timeout=10))
            for _ in range(10)
        ]
        for index, ws in enumerate(sockets):
            ws.send(f"socket {index}")
        for index, ws in enumerate(sockets):
            assert ws.recv(timeout=10) == f"socket {index}"
