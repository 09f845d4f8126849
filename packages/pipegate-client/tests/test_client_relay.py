"""HTTP relay: hello exchange, transparency of the request and response, streaming
with flow control, and what the caller gets when the local app fails."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import hashlib
import json
import logging
import socket
from collections.abc import Iterator
from typing import Any

import pytest
from pipegate_protocol import (
    CAPABILITY_WEBSOCKET,
    Data,
    Limits,
    ProtocolVersion,
    Reset,
    ResetCode,
    Role,
)

WAIT = 10.0


def _json(body: bytes) -> Any:
    return json.loads(body.decode("utf-8"))


async def test_client_hello_and_public_url_printed(tunnel: Any) -> None:
    fake, client, output = tunnel
    hello = await fake.ready()
    assert hello.role is Role.CLIENT
    assert hello.version is ProtocolVersion.V1
    assert CAPABILITY_WEBSOCKET in hello.capabilities
    assert hello.limits.max_concurrent_streams == 128
    assert fake.ws.subprotocol == ProtocolVersion.V1.value
    assert client.public_url == "https://public.example/node"
    assert output.getvalue() == "https://public.example/node/\n"


async def test_client_public_url_falls_back_to_server_url(harness: Any) -> None:
    harness.server.public_url = None
    settings = harness.settings(max_concurrency=7)
    async with harness.run(settings) as (client, output, _task):
        fake = await harness.server.next_tunnel()
        await asyncio.wait_for(client.connected.wait(), WAIT)
        assert (await fake.ready()).limits.max_concurrent_streams == 7
        assert output.getvalue().strip() == f"http://127.0.0.1:{harness.server.port}/node/"


async def test_client_relays_raw_path_query_and_duplicate_headers(tunnel: Any) -> None:
    fake, _client, _output = tunnel
    head, body = await fake.request(
        "GET",
        "/echo/a%2Fb/%7Euser/caf%C3%A9",
        "x=1&x=2&y=%20+z&empty=",
        [
            ("Host", "public.example"),
            ("X-Dup", "1"),
            ("X-Dup", "2"),
            ("X-Forwarded-Host", "public.example"),
        ],
    )
    assert head.status == 200
    seen = _json(body)
    assert seen["raw_path"] == "/echo/a%2Fb/%7Euser/caf%C3%A9?x=1&x=2&y=%20+z&empty="
    names = [name.lower() for name, _ in seen["headers"]]
    assert [v for n, v in seen["headers"] if n.lower() == "x-dup"] == ["1", "2"]
    host = [v for n, v in seen["headers"] if n.lower() == "host"]
    assert host == [fake_authority(tunnel)]
    # Nothing the caller did not send is added.
    for added in ("user-agent", "accept", "accept-encoding", "content-type", "cookie"):
        assert added not in names


def fake_authority(tunnel: Any) -> str:
    _fake, client, _output = tunnel
    return str(client.settings.local_url).split("://", 1)[1]


async def test_client_passes_methods_through_unchanged(tunnel: Any) -> None:
    fake, _client, _output = tunnel
    for method in ("PROPFIND", "MKCOL", "PATCH", "DELETE", "OPTIONS"):
        head, body = await fake.request(method, "/echo", body=b"<xml/>")
        assert head.status == 200
        seen = _json(body)
        assert seen["method"] == method
        assert seen["body_sha256"] == hashlib.sha256(b"<xml/>").hexdigest()


async def test_client_keeps_duplicate_response_headers(tunnel: Any) -> None:
    fake, _client, _output = tunnel
    head, body = await fake.request("GET", "/cookies")
    assert head.status == 200
    cookies = [v for n, v in head.headers if n.lower() == "set-cookie"]
    assert cookies == ["a=1; Path=/", "b=2; Path=/"]
    assert [v for n, v in head.headers if n.lower() == "x-dup"] == ["one", "two"]
    assert body == b"two cookies"


async def test_client_no_decompression_no_redirects(tunnel: Any) -> None:
    fake, _client, _output = tunnel
    head, body = await fake.request("GET", "/gzip", headers=[("Accept-Encoding", "gzip")])
    assert ("Content-Encoding", "gzip") in head.headers
    assert gzip.decompress(body) == b"hello gzip"
    head, _ = await fake.request("GET", "/redirect")
    assert head.status == 302
    assert ("Location", "/echo") in head.headers


async def test_client_head_204_304_have_no_body(tunnel: Any) -> None:
    fake, _client, _output = tunnel
    stream = await fake.open("HEAD", "/cookies")
    head = await fake.response(stream)
    assert head.status == 200
    assert head.end_stream
    assert not fake.conn.is_open(stream)
    for code in (204, 304):
        stream = await fake.open("GET", f"/status/{code}")
        head = await fake.response(stream)
        assert head.status == code
        assert head.end_stream
        assert ("X-Status", str(code)) in head.headers


async def test_client_streams_upload_within_window(harness: Any) -> None:
    # A small receive window forces many window updates for a 3 MiB upload.
    settings = harness.settings(initial_window=64 * 1024, max_frame_size=16 * 1024)
    async with harness.run(settings) as (_client, _output, _task):
        fake = await harness.server.next_tunnel()
        assert fake.conn.peer_limits.initial_window == 64 * 1024
        payload = bytes(range(256)) * 4 * 1024 * 3  # 3 MiB
        stream = await fake.open(
            "POST", "/upload", headers=[("Content-Length", str(len(payload)))], end_stream=False
        )
        sender = asyncio.create_task(fake.send_body(stream, payload, end_stream=True))
        head = await fake.response(stream)
        body = await fake.read_body(stream)
        await sender
        assert head.status == 200
        assert _json(body) == {"len": len(payload), "sha256": hashlib.sha256(payload).hexdigest()}
        updates = [m for m in fake.received if type(m).__name__ == "WindowUpdate"]
        assert len(updates) >= 3 * 1024 // 64  # credit came back in many small steps
        # No frame ever exceeded our 16 KiB frame size (the core would have raised).
        assert fake.protocol_error is None


async def test_client_respects_send_window_on_download(harness: Any) -> None:
    harness.server.limits = Limits(initial_window=100_000, max_frame_size=16 * 1024)
    async with harness.run() as (_client, _output, _task):
        fake = await harness.server.next_tunnel()
        size = 2 * 1024 * 1024
        stream = await fake.open("GET", "/download", f"size={size}&length=1")
        head = await fake.response(stream)
        assert head.status == 200
        assert ("Content-Length", str(size)) in head.headers
        # Without acknowledging, the client must stop at exactly the window.
        received = 0
        while received < 100_000:
            item = await fake.next_item(stream)
            assert isinstance(item, Data)
            assert len(item.data) <= 16 * 1024
            received += len(item.data)
        assert received == 100_000
        await asyncio.sleep(0.2)
        assert fake.streams[stream].items.empty()
        assert fake.protocol_error is None
        # Granting credit resumes the stream; the rest arrives intact.
        fake.conn.acknowledge(stream, received)
        await fake.flush()
        rest = await fake.read_body(stream)
        assert received + len(rest) == size
        expected = (bytes(range(256)) * 256) * (size // 65536)
        assert hashlib.sha256(expected[received:]).digest() == hashlib.sha256(rest).digest()


async def test_client_streams_chunked_download_without_length(tunnel: Any) -> None:
    fake, _client, _output = tunnel
    head, body = await fake.request("GET", "/download", "size=300000")
    assert head.status == 200
    assert not any(n.lower() == "transfer-encoding" for n, _ in head.headers)
    assert len(body) == 300000


async def test_client_answers_502_when_local_app_is_down(
    harness: Any, unused_port: int, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="pipegate_client")
    local_url = f"http://127.0.0.1:{unused_port}"
    async with harness.run(harness.settings(local_url=local_url)) as (_client, _output, task):
        fake = await harness.server.next_tunnel()
        for _ in range(2):  # the client keeps running and answers each time
            head, body = await fake.request("POST", "/anything", body=b"x" * 100_000)
            assert head.status == 502
            assert ("content-type", "text/plain; charset=utf-8") in head.headers
            assert body == b"the local app is unreachable: connection refused\n"
            assert str(unused_port).encode() not in body
        assert not task.done()
    # The caller sees no address; the client's own log keeps it.
    assert f"local app at {local_url} unreachable: connection refused" in caplog.text


@pytest.fixture
def unanswered_port() -> Iterator[int]:
    """A loopback port whose listener never accepts and whose queue is full: the
    kernel drops new SYNs there, so a connect hangs until its timeout."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    for _ in range(4):
        filler = socket.socket()
        filler.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            filler.connect(("127.0.0.1", port))
        fillers.append(filler)
    try:
        yield port
    finally:
        for filler in fillers:
            filler.close()
        listener.close()


async def test_client_answers_502_when_the_local_connect_times_out(
    harness: Any, unanswered_port: int
) -> None:
    local_url = f"http://127.0.0.1:{unanswered_port}"
    settings = harness.settings(local_url=local_url, local_connect_timeout=0.3)
    async with harness.run(settings) as (_client, _output, task):
        fake = await harness.server.next_tunnel()
        head, body = await fake.request("GET", "/anything")
        assert head.status == 502
        assert body == b"the local app is unreachable: no connection within 0.3 s\n"
        assert not task.done()


async def test_client_reset_cancels_local_request(tunnel: Any, local_app: Any) -> None:
    fake, _client, _output = tunnel
    _url, state = local_app
    stream = await fake.open("GET", "/slow")
    await asyncio.wait_for(state.slow_started.wait(), WAIT)
    fake.conn.reset_stream(stream, ResetCode.CALLER_GONE, "caller went away")
    await fake.flush()
    await asyncio.wait_for(state.slow_cancelled.wait(), WAIT)
    # The tunnel is still fine: the next request works.
    head, _ = await fake.request("GET", "/cookies")
    assert head.status == 200


async def test_client_local_failure_mid_body_resets_stream(harness: Any) -> None:
    async def truncated(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + b"x" * 10)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(truncated, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        settings = harness.settings(local_url=f"http://127.0.0.1:{port}")
        async with harness.run(settings) as (_client, _output, _task):
            fake = await harness.server.next_tunnel()
            stream = await fake.open("GET", "/")
            head = await fake.response(stream)
            assert head.status == 200
            items = []
            while True:
                item = await fake.next_item(stream)
                items.append(item)
                if isinstance(item, Reset) or getattr(item, "end_stream", False):
                    break
            assert isinstance(items[-1], Reset)
            assert items[-1].code is ResetCode.UPSTREAM_FAILED
            assert b"".join(i.data for i in items[:-1] if isinstance(i, Data)) == b"x" * 10
    finally:
        server.close()
        await server.wait_closed()


async def test_client_sends_dot_segments_and_method_case_unchanged(tunnel: Any) -> None:
    fake, _client, _output = tunnel
    head, body = await fake.request("GET", "/echo/a/../b/./c", "q=%2e%2e")
    assert head.status == 200
    assert _json(body)["raw_path"] == "/echo/a/../b/./c?q=%2e%2e"


async def test_client_keeps_method_case(harness: Any) -> None:
    # aiohttp.web upper-cases what it parses, so look at the raw request line.
    lines: list[bytes] = []

    async def raw_app(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        lines.append(head.split(b"\r\n", 1)[0])
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(raw_app, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        settings = harness.settings(local_url=f"http://127.0.0.1:{port}")
        async with harness.run(settings) as (_client, _output, _task):
            fake = await harness.server.next_tunnel()
            head, body = await fake.request("purge", "/a%20b", "x")
            assert (head.status, body) == (200, b"ok")
    finally:
        server.close()
        await server.wait_closed()
    assert lines == [b"purge /a%20b?x HTTP/1.1"]


async def test_client_passes_header_bytes_exactly(tunnel: Any) -> None:
    # Each protocol character is one byte (HD-2): U+00E9 must arrive as byte 0xE9,
    # and UTF-8 sequences as themselves.
    fake, _client, _output = tunnel
    values = ["caf\xe9 \x80\xff", "naïve ☃".encode().decode("latin-1")]
    headers = [("X-Name", value) for value in values]
    head, body = await fake.request("GET", "/echo", headers=headers)
    assert head.status == 200
    assert [v for n, v in _json(body)["headers"] if n.lower() == "x-name"] == values


async def test_client_early_response_drains_rest_of_upload(tunnel: Any) -> None:
    fake, _client, _output = tunnel
    payload = b"z" * (2 * 1024 * 1024)
    stream = await fake.open(
        "POST", "/status/413", headers=[("Content-Length", str(len(payload)))], end_stream=False
    )
    sender = asyncio.create_task(fake.send_body(stream, payload, end_stream=True))
    head = await fake.response(stream)
    assert head.status == 413
    await fake.read_body(stream)
    await asyncio.wait_for(sender, WAIT)  # the whole upload was accepted (credit returned)
    assert not any(isinstance(m, Reset) and m.stream_id == stream for m in fake.received)
    for _ in range(100):
        if not fake.conn.is_open(stream):
            break
        await asyncio.sleep(0.01)
    assert not fake.conn.is_open(stream)
