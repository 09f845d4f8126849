"""Connecting, refusals, reconnects, heartbeats and graceful shutdown."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from typing import Any

import pytest
from pipegate_client import TokenRefusedError, TunnelClient
from pipegate_protocol import CloseCode, Data, GoAway, Reset, ResetCode

WAIT = 10.0


async def test_client_wrong_token_is_not_retried(harness: Any) -> None:
    client = TunnelClient(harness.settings(client_token="wrong"))
    with pytest.raises(TokenRefusedError) as info:
        await asyncio.wait_for(client.run(), WAIT)
    assert info.value.status == 403
    assert info.value.exit_code == 3
    assert "wrong" not in str(info.value).replace("wrong client token", "")
    assert harness.server.attempts == 1


async def test_client_missing_token_401_is_not_retried(harness: Any) -> None:
    harness.server.refusals = [401]
    client = TunnelClient(harness.settings())
    with pytest.raises(TokenRefusedError) as info:
        await asyncio.wait_for(client.run(), WAIT)
    assert info.value.status == 401
    assert harness.server.attempts == 1


async def test_client_retries_after_409_and_5xx(harness: Any, caplog: Any) -> None:
    harness.server.refusals = [409, 503]
    with caplog.at_level(logging.WARNING, logger="pipegate_client"):
        async with harness.run() as (client, _output, _task):
            await harness.server.next_tunnel()
            await asyncio.wait_for(client.connected.wait(), WAIT)
    assert harness.server.attempts == 3
    assert "'node' is already connected from another client" in caplog.text


async def test_client_reconnects_after_server_drops_tunnel(harness: Any) -> None:
    async with harness.run() as (client, output, _task):
        first = await harness.server.next_tunnel()
        await first.ws.close(1011, "server trouble")
        second = await harness.server.next_tunnel()
        head, _ = await second.request("GET", "/cookies")
        assert head.status == 200
        assert client.sessions_established == 2
        assert output.getvalue().splitlines() == ["https://public.example/node/"] * 2


async def test_client_reconnects_after_server_restart(harness: Any) -> None:
    async with harness.run() as (client, _output, _task):
        await harness.server.next_tunnel()
        port = harness.server.port
        await harness.server.stop()
        await asyncio.sleep(0.3)  # a few refused attempts with backoff
        assert not client.connected.is_set()
        await harness.server.start(port)
        tunnel = await harness.server.next_tunnel()
        head, _ = await tunnel.request("GET", "/cookies")
        assert head.status == 200


async def test_client_closes_with_protocol_error_code_and_reconnects(harness: Any) -> None:
    async with harness.run() as (client, _output, _task):
        hostile = await harness.server.next_tunnel()
        await hostile.ws.send('{"type": "open", "stream_id": "nope"}')
        await asyncio.wait_for(hostile.closed.wait(), WAIT)
        assert hostile.ws.close_code == CloseCode.PROTOCOL_ERROR
        await harness.server.next_tunnel()
        await asyncio.wait_for(client.connected.wait(), WAIT)
        assert client.sessions_established == 2


async def test_client_flow_control_violation_closes_with_4001(harness: Any) -> None:
    settings = harness.settings(initial_window=20_000, max_frame_size=16 * 1024)
    async with harness.run(settings) as (_client, _output, _task):
        hostile = await harness.server.next_tunnel()
        stream = await hostile.open("POST", "/upload", end_stream=False)
        # Bypass the fake's core: 32 KiB of data on a 20 000 byte window.
        frame = Data(stream, b"x" * 16 * 1024)
        from pipegate_protocol import encode

        await hostile.ws.send(encode(frame))
        await hostile.ws.send(encode(frame))
        await asyncio.wait_for(hostile.closed.wait(), WAIT)
        assert hostile.ws.close_code == CloseCode.FLOW_CONTROL_ERROR
        await harness.server.next_tunnel()


async def test_client_heartbeat_detects_silent_server(harness: Any) -> None:
    settings = harness.settings(ping_interval=0.2, ping_timeout=0.3)
    async with harness.run(settings) as (client, _output, _task):
        silent = await harness.server.next_tunnel()
        silent.mute = True  # never answers the client's pings
        await asyncio.wait_for(silent.closed.wait(), WAIT)
        assert silent.ws.close_code == CloseCode.HEARTBEAT_TIMEOUT
        assert any(type(m).__name__ == "Ping" for m in silent.received)
        lively = await harness.server.next_tunnel()
        await asyncio.sleep(1.0)  # pings answered: the tunnel stays up
        assert not lively.closed.is_set()
        assert client.sessions_established == 2


async def test_client_graceful_stop_finishes_in_flight_stream(harness: Any) -> None:
    harness.server.limits = harness.server.limits.model_copy(update={"initial_window": 65536})
    client = TunnelClient(harness.settings(grace_period=5.0))
    task = asyncio.create_task(client.run())
    tunnel = await harness.server.next_tunnel()
    size = 1024 * 1024
    stream = await tunnel.open("GET", "/download", f"size={size}")
    assert (await tunnel.response(stream)).status == 200
    client.stop()  # the download is held back by the window; it must still finish
    body = await tunnel.read_body(stream)
    assert len(body) == size
    await asyncio.wait_for(task, WAIT)
    assert any(isinstance(m, GoAway) for m in tunnel.received)
    await asyncio.wait_for(tunnel.closed.wait(), WAIT)
    assert tunnel.ws.close_code == 1000


async def test_client_graceful_stop_resets_streams_after_grace(harness: Any) -> None:
    client = TunnelClient(harness.settings(grace_period=0.3))
    task = asyncio.create_task(client.run())
    tunnel = await harness.server.next_tunnel()
    stream = await tunnel.open("GET", "/slow")
    await asyncio.wait_for(harness.local.slow_started.wait(), WAIT)
    client.stop()
    await asyncio.wait_for(task, WAIT)
    item = await tunnel.next_item(stream)
    assert isinstance(item, Reset)
    assert item.code is ResetCode.CANCELLED
    await asyncio.wait_for(harness.local.slow_cancelled.wait(), WAIT)
    assert tunnel.ws.close_code == 1000


async def test_client_refuses_new_streams_after_goaway(harness: Any) -> None:
    client = TunnelClient(harness.settings(grace_period=5.0))
    task = asyncio.create_task(client.run())
    tunnel = await harness.server.next_tunnel()
    slow = await tunnel.open("GET", "/slow")
    await asyncio.wait_for(harness.local.slow_started.wait(), WAIT)
    client.stop()
    # The server opens a stream before it learns of the go-away (a real race).
    late = await tunnel.open("GET", "/cookies")
    item = await tunnel.next_item(late)
    assert isinstance(item, Reset)
    assert item.code is ResetCode.REFUSED
    tunnel.conn.reset_stream(slow, ResetCode.CALLER_GONE)
    await tunnel.flush()
    await asyncio.wait_for(task, WAIT)


async def test_client_logs_one_line_per_request(tunnel: Any, caplog: Any) -> None:
    fake, _client, _output = tunnel
    with caplog.at_level(logging.INFO, logger="pipegate_client"):
        await fake.request("POST", "/echo/x", "secret=1", body=b"12345")
        await asyncio.sleep(0.05)
    lines = [r.getMessage() for r in caplog.records if "/echo/x" in r.getMessage()]
    assert len(lines) == 1
    line = lines[0]
    assert line.startswith("[node] POST /echo/x 200 ")
    assert "ms in=5B out=" in line
    assert "secret" not in line


# ---------------------------------------------------------------- real processes


async def _spawn(*args: str, env: dict[str, str] | None = None) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "pipegate_client.cli",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **(env or {})},
    )


async def test_client_cli_exits_3_on_refused_token(harness: Any) -> None:
    process = await _spawn(
        "--server-url",
        harness.server.url(),
        "--local-url",
        harness.local_url,
        env={"PIPEGATE_CLIENT_TOKEN": "not-the-token"},
    )
    try:
        _out, err = await asyncio.wait_for(process.communicate(), WAIT * 2)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == 3
    assert b"refused the client token (403" in err
    assert b"not-the-token" not in err
    assert harness.server.attempts == 1


async def test_client_cli_sigterm_is_graceful(harness: Any, tmp_path: Any) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("test-token\n")
    process = await _spawn(
        "--server-url",
        harness.server.url(),
        "--local-url",
        harness.local_url,
        "--client-token-file",
        str(token_file),
    )
    try:
        assert process.stdout is not None
        line = await asyncio.wait_for(process.stdout.readline(), WAIT * 2)
        assert line == b"https://public.example/node/\n"
        tunnel = await harness.server.next_tunnel()
        head, _ = await tunnel.request("GET", "/cookies")
        assert head.status == 200
        process.send_signal(signal.SIGTERM)
        _out, err = await asyncio.wait_for(process.communicate(), WAIT * 2)
        assert process.returncode == 0, err
        await asyncio.wait_for(tunnel.closed.wait(), WAIT)
        assert tunnel.ws.close_code == 1000
        assert any(isinstance(m, GoAway) for m in tunnel.received)
        assert b"test-token" not in err
        assert b"[node] GET /cookies 200" in err
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def test_client_drops_tunnel_without_server_hello(harness: Any) -> None:
    async def mute_first(tunnel: Any) -> None:
        tunnel.mute = harness.server.attempts == 1  # only the first tunnel stays silent
        await tunnel.serve()

    harness.server.handler = mute_first
    async with harness.run(harness.settings(connect_timeout=0.3)) as (client, _output, _task):
        silent = await asyncio.wait_for(harness.server.tunnels.get(), WAIT)
        await asyncio.wait_for(silent.closed.wait(), WAIT)
        assert silent.ws.close_code == CloseCode.HELLO_TIMEOUT
        await harness.server.next_tunnel()
        await asyncio.wait_for(client.connected.wait(), WAIT)
        assert client.sessions_established == 1
