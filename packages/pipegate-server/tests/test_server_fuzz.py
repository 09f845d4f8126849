"""Random and mutated frames over real WebSockets: the server never crashes, never
leaks a traceback, closes only the offending tunnel, and other tunnels keep serving."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
from typing import Any

import httpx
import pytest
from pipegate_protocol import Connection, Data, Response, Role, WindowUpdate, encode
from websockets.asyncio.client import connect

CASES = 40


def _valid_messages() -> list[str | bytes]:
    return [
        encode(Response(stream_id=1, status=200, headers=(("a", "b"),))),
        encode(WindowUpdate(stream_id=1, increment=10)),
        encode(Data(1, b"hello", end_stream=True)),
        json.dumps({"type": "ping", "id": 1}),
    ]


def _mutate(rng: random.Random, message: str | bytes) -> str | bytes:
    raw = bytearray(message.encode() if isinstance(message, str) else message)
    for _ in range(rng.randint(1, 4)):
        choice = rng.random()
        if choice < 0.4 and raw:
            raw[rng.randrange(len(raw))] = rng.randrange(256)
        elif choice < 0.7:
            raw.insert(rng.randrange(len(raw) + 1), rng.randrange(256))
        elif raw:
            del raw[rng.randrange(len(raw))]
    if isinstance(message, str):
        return raw.decode("utf-8", errors="replace")
    return bytes(raw)


def _case(rng: random.Random) -> list[str | bytes]:
    kind = rng.random()
    if kind < 0.3:
        return [rng.randbytes(rng.randint(0, 64))]
    if kind < 0.5:
        return ["".join(chr(rng.randint(32, 0x2FF)) for _ in range(rng.randint(0, 40)))]
    return [_mutate(rng, rng.choice(_valid_messages())) for _ in range(rng.randint(1, 3))]


async def test_fuzzed_frames_close_only_their_tunnel(
    server: Any, pg: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    rng = random.Random(20261125)
    closes: list[int | None] = []
    async with pg.fake_client(server, "steady", pg.echo_handler), httpx.AsyncClient() as http:
        for index in range(CASES):
            async with connect(
                server.ws_url(f"fuzz-{index}"),
                subprotocols=["pipegate.v1"],  # type: ignore[list-item]
                additional_headers={"Authorization": f"Bearer {pg.token}"},
            ) as ws:
                await ws.recv()  # the server's hello
                for item in Connection(Role.CLIENT).data_to_send():
                    await ws.send(item)
                for message in _case(rng):
                    try:
                        await ws.send(message)
                    except Exception:
                        break
                await ws.send(encode(WindowUpdate(stream_id=99, increment=1)))  # never opened
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(ws.wait_closed(), 5)
                closes.append(ws.close_code)
            if index % 10 == 0:
                response = await http.get(f"{server.base}/steady/ok")
                assert response.status_code == 200
        health = (await http.get(f"{server.base}/_pipegate/health")).json()
    assert health["tunnels"] == 1
    assert all(code in (1002, 1009, 4001, 4002, 4003) for code in closes), closes
    assert "Traceback" not in caplog.text
    assert "Exception in ASGI application" not in caplog.text
