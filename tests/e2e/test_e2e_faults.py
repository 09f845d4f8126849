"""Faults with real processes: a dead local app, a killed client, a restarted server.

Each test builds its own tunnel (``tunnels``) because it disturbs the processes. What
is asserted is what a caller sees: a prompt answer or error, never a hang (every wait
is bounded, far below the pytest timeout).
"""

from __future__ import annotations

import concurrent.futures
import signal
import time

import httpx
from e2e_support import (
    MiB,
    TunnelFactory,
    download_across,
    expected_sha256,
    sha256_of,
    wait_relaying,
)
from pipegate_conformance.harness import free_port

PROMPT = 10.0  # seconds a caller may wait for an error after its tunnel broke


def test_local_app_down_gives_502_and_client_keeps_running(tunnels: TunnelFactory) -> None:
    _, port = tunnels.server()
    dead = f"http://127.0.0.1:{free_port()}"
    client = tunnels.client(f"ws://127.0.0.1:{port}/deadapp", local_url=dead)
    public = f"http://127.0.0.1:{port}/deadapp"
    wait_relaying(public, process=client, ok=(502,))
    for _ in range(3):
        started = time.monotonic()
        response = httpx.get(f"{public}/echo/x", timeout=PROMPT)
        assert response.status_code == 502
        assert time.monotonic() - started < PROMPT
        assert response.headers["content-type"].startswith("text/plain")
        assert response.text.strip()
        assert "Traceback" not in response.text
    assert client.poll() is None, client.output()[-2000:]


def test_client_killed_mid_download_fails_the_caller_promptly(tunnels: TunnelFactory) -> None:
    tunnel = tunnels.tunnel("victim")
    assert tunnel.client is not None
    size = 512 * MiB
    received = 0
    started: float | None = None
    error: Exception | None = None
    with (
        httpx.Client(timeout=httpx.Timeout(PROMPT + 5)) as http,
        http.stream("GET", f"{tunnel.public_url}/bytes/{size}") as response,
    ):
        assert response.status_code == 200
        try:
            for chunk in response.iter_bytes():
                received += len(chunk)
                if started is None and received >= MiB:
                    tunnel.client.kill()
                    started = time.monotonic()
        except httpx.HTTPError as exc:
            error = exc
    assert started is not None
    elapsed = time.monotonic() - started
    assert received < size, "the whole body arrived although the client was killed"
    assert error is not None, "the download ended without an error: silent truncation"
    assert not isinstance(error, httpx.TimeoutException), f"caller hung: {error!r}"
    assert elapsed < PROMPT
    # The id is free again: the next caller gets 404 (or 502), not a hang.
    status = httpx.get(f"{tunnel.public_url}/echo/x", timeout=PROMPT).status_code
    assert status in (404, 502, 503)


def test_client_killed_before_response_head_gives_502(tunnels: TunnelFactory) -> None:
    tunnel = tunnels.tunnel("victim2")
    assert tunnel.client is not None
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pending = pool.submit(httpx.get, f"{tunnel.public_url}/stall", timeout=PROMPT + 5)
        time.sleep(0.5)
        killed_at = time.monotonic()
        tunnel.client.kill()
        response = pending.result(timeout=PROMPT + 10)
    assert response.status_code == 502
    assert time.monotonic() - killed_at < PROMPT


def test_server_restart_client_reconnects(tunnels: TunnelFactory) -> None:
    server, port = tunnels.server()
    client = tunnels.client(f"ws://127.0.0.1:{port}/phoenix")
    public = f"http://127.0.0.1:{port}/phoenix"
    wait_relaying(public, process=client)
    server.kill()
    tunnels.server(port=port)
    wait_relaying(public, process=client, timeout=45.0)
    response = httpx.get(f"{public}/bytes/{MiB}", timeout=30)
    assert response.status_code == 200
    assert sha256_of([response.content]) == (MiB, expected_sha256(MiB))


def test_server_graceful_restart_client_reconnects(tunnels: TunnelFactory) -> None:
    server, port = tunnels.server()
    client = tunnels.client(f"ws://127.0.0.1:{port}/phoenix2")
    public = f"http://127.0.0.1:{port}/phoenix2"
    wait_relaying(public, process=client)
    assert server.stop(timeout=20) == 0, server.output()[-3000:]
    assert client.poll() is None, client.output()[-3000:]
    tunnels.server(port=port)
    wait_relaying(public, process=client, timeout=45.0)


def test_client_sigterm_finishes_in_flight_download_and_exits_0(tunnels: TunnelFactory) -> None:
    tunnel = tunnels.tunnel("leaving")
    assert tunnel.client is not None
    size = 64 * MiB
    client = tunnel.client

    def leave() -> None:
        client.signal(signal.SIGTERM)
        time.sleep(0.5)

    status, length, digest = download_across(f"{tunnel.public_url}/bytes/{size}", leave)
    assert status == 200
    assert (length, digest) == (size, expected_sha256(size))
    assert tunnel.client.wait(timeout=30) == 0, tunnel.client.output()[-3000:]
