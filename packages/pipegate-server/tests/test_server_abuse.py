"""Public-internet hardening of the relay and the handshake (issue 11, rows 6-11), in
process: framing refused before a stream opens, proxy headers from untrusted callers,
tunnel handshakes below an id, the per-caller stream cap, the send deadline and the
cap on waiting bad-token refusals."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest
from pipegate_server._auth import FailureTracker
from pipegate_server.errors import TooManyFailuresError
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus


async def _raw(port: int, request: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    try:
        return await asyncio.wait_for(reader.read(4096), 5)
    finally:
        writer.close()


@pytest.mark.parametrize(
    "framing",
    [
        b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",
        b"Transfer-Encoding: xchunked\r\n",
        b"Transfer-Encoding: gzip, chunked\r\n",
        b"Content-Length: 5\r\nContent-Length: 6\r\n",
    ],
)
async def test_conflicting_or_unknown_framing_is_400_before_a_stream_opens(
    server: Any, pg: Any, framing: bytes
) -> None:
    opened: list[Any] = []

    async def handler(client: Any, stream: Any) -> None:
        opened.append(stream)
        await pg.echo_handler(client, stream)

    async with pg.fake_client(server, "node", handler):
        for method in (b"POST", b"FOO"):  # httptools, and h11 after the hand-over
            answer = await _raw(
                server.port,
                method
                + b" /node/x HTTP/1.1\r\nHost: t\r\n"
                + framing
                + b"\r\n5\r\nhello\r\n0\r\n\r\n",
            )
            assert answer.startswith(b"HTTP/1.1 400"), answer[:100]
    assert opened == []


async def test_proxy_headers_of_an_untrusted_caller_are_dropped(server: Any, pg: Any) -> None:
    sent = [
        ("Forwarded", "for=198.51.100.7"),
        ("X-Real-IP", "198.51.100.7"),
        ("X-Forwarded-For", "198.51.100.7"),
        ("X-Forwarded-Port", "8443"),
        ("X-Original-URL", "/admin"),
        ("X-Keep", "1"),
    ]
    async with pg.fake_client(server, "node", pg.echo_handler), httpx.AsyncClient() as http:
        response = await http.get(f"{server.base}/node/p", headers=sent)
    headers = [tuple(h) for h in json.loads(response.headers["x-echo"])["headers"]]
    names = [n for n, _ in headers]
    for name in ("forwarded", "x-real-ip", "x-forwarded-port", "x-original-url"):
        assert name not in names
    assert [v for n, v in headers if n == "x-forwarded-for"] == ["127.0.0.1"]
    assert ("x-keep", "1") in headers


async def test_a_trusted_proxy_s_proxy_headers_are_kept(pg: Any) -> None:
    async with (
        pg.start_server(forwarded_allow_ips="127.0.0.1") as server,
        pg.fake_client(server, "node", pg.echo_handler),
        httpx.AsyncClient() as http,
    ):
        response = await http.get(f"{server.base}/node/p", headers=[("X-Real-IP", "203.0.113.9")])
    headers = [tuple(h) for h in json.loads(response.headers["x-echo"])["headers"]]
    assert ("x-real-ip", "203.0.113.9") in headers


@pytest.mark.parametrize(
    ("headers", "subprotocols"),
    [
        ({}, ["pipegate.v1"]),
        ({"Authorization": "Bearer some-token"}, []),
        ({"PipeGate-Client-Token": "some-token"}, []),
    ],
)
async def test_a_tunnel_handshake_below_an_id_is_refused(
    server: Any, pg: Any, headers: dict[str, str], subprotocols: list[str]
) -> None:
    opened: list[Any] = []

    async def handler(client: Any, stream: Any) -> None:
        opened.append(stream)

    async with pg.fake_client(server, "node", handler):
        with pytest.raises(InvalidStatus) as refused:
            async with connect(
                f"{server.ws_url('node')}/alice",
                additional_headers=headers,
                subprotocols=subprotocols or None,  # type: ignore[arg-type]
            ):
                pass
    assert refused.value.response.status_code == 400
    assert b"not relayed" in refused.value.response.body
    assert opened == []


async def test_streams_per_caller_are_capped_with_429_and_retry_after(pg: Any) -> None:
    release = asyncio.Event()

    async def slow(client: Any, stream: Any) -> None:
        await release.wait()
        await stream.respond(200, [], b"done")

    async with (
        pg.start_server(max_streams_per_caller=2) as server,
        pg.fake_client(server, "node", slow),
        httpx.AsyncClient() as http,
    ):
        held = [asyncio.create_task(http.get(f"{server.base}/node/{i}")) for i in range(2)]
        await asyncio.sleep(0.2)
        third = await http.get(f"{server.base}/node/3")
        assert third.status_code == 429
        assert third.headers["retry-after"] == "1"
        release.set()
        assert [(await task).status_code for task in held] == [200, 200]
        again = await http.get(f"{server.base}/node/4")
        assert again.status_code == 200
        assert not any(server.gateway.relay._callers.values())


async def test_a_caller_that_reads_nothing_loses_its_stream(pg: Any) -> None:
    async def big(client: Any, stream: Any) -> None:
        await stream.respond(200, [("content-length", str(64 * 1024 * 1024))], None)
        chunk = b"x" * 65536
        for _ in range(1024):
            await stream.send(chunk)

    async with (
        pg.start_server(stream_idle_timeout=0.5) as server,
        pg.fake_client(server, "node", big),
    ):
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port, limit=1024)
        writer.write(b"GET /node/big HTTP/1.1\r\nHost: t\r\n\r\n")
        await reader.read(100)  # the head, then nothing more
        await asyncio.sleep(0.2)
        assert server.gateway.relay._writing  # the body is being written
        for _ in range(200):
            if not server.gateway.relay._writing and server.gateway.relay._watchdog is None:
                break
            await asyncio.sleep(0.05)
        assert server.gateway.relay._writing == {}
        writer.close()


def test_waiting_bad_token_refusals_are_capped_per_address() -> None:
    tracker = FailureTracker(1, max_concurrent=2)
    assert tracker.record_failure("a") == 0.0
    assert tracker.record_failure("a") > 0
    assert tracker.record_failure("a") > 0
    with pytest.raises(TooManyFailuresError) as capped:
        tracker.record_failure("a")
    assert capped.value.retry_after >= 1
    assert tracker.record_failure("b") == 0.0  # another address is not affected
