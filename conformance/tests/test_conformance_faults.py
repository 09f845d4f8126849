"""Faults, black box: the client dies, the local app is down, the server restarts.

Each check uses its own tunnel (its own client process and connection id), so the
session tunnel is never disturbed. "Promptly" is a hang guard, not a speed test: the
caller's timeout is generous and the check only requires an answer before it.
"""

from __future__ import annotations

import concurrent.futures
import secrets
import time

import httpx
import pytest
from pipegate_conformance.harness import (
    HarnessError,
    ManagedProcess,
    free_port,
    wait_for_tunnel,
)
from pipegate_conformance.plugin import Implementations, Origin, ServerUnderTest


def _own_tunnel(
    implementations: Implementations,
    server: ServerUnderTest,
    local_url: str,
    *,
    ready: bool = True,
) -> tuple[str, ManagedProcess]:
    connection_id = f"fault-{secrets.token_hex(4)}"
    process = implementations.start_client(local_url, server.ws_url(connection_id))
    public = server.public_url(connection_id)
    if ready:
        wait_for_tunnel(public, process=process, timeout=30.0)
    return public, process


@pytest.mark.rule("LV-3", "HD-10")
def test_client_killed_before_head_gives_502(
    implementations: Implementations, server: ServerUnderTest, origin: Origin
) -> None:
    """LV-3/HD-10: the tunnel drops while the caller waits for a head -> 502."""
    public, client = _own_tunnel(implementations, server, origin.url)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(httpx.get, f"{public}/stall", timeout=30.0)
        time.sleep(0.5)
        client.kill()
        response = waiting.result(timeout=40)
    assert response.status_code == 502


@pytest.mark.rule("LV-3", "HD-10")
def test_client_killed_mid_body_aborts_the_response(
    implementations: Implementations, server: ServerUnderTest, origin: Origin
) -> None:
    """HD-10: after the head the status cannot change; the caller must see an incomplete
    response (never a truncated body that looks complete)."""
    public, client = _own_tunnel(implementations, server, origin.url)
    size = 512 * 1024 * 1024
    received: list[int] = [0]

    def download_killing_the_client() -> None:
        with (
            httpx.Client(timeout=30.0) as http,
            http.stream("GET", f"{public}/bytes/{size}") as response,
        ):
            assert response.status_code == 200
            for chunk in response.iter_raw(65536):
                received[0] += len(chunk)
                if received[0] >= 1024 * 1024 and client.poll() is None:
                    client.kill()

    with pytest.raises(httpx.TransportError):
        download_killing_the_client()
    assert received[0] < size


@pytest.mark.rule("HD-12")
def test_local_app_down_gives_502(
    implementations: Implementations, server: ServerUnderTest
) -> None:
    """HD-12: the local app is unreachable -> the caller gets 502; the client keeps
    running and answers the next request too."""
    dead = f"http://127.0.0.1:{free_port()}"
    connection_id = f"fault-{secrets.token_hex(4)}"
    client = implementations.start_client(dead, server.ws_url(connection_id))
    public = server.public_url(connection_id)
    deadline = time.monotonic() + 30.0
    status = 0
    while time.monotonic() < deadline:
        status = httpx.get(f"{public}/x", timeout=20.0).status_code
        if status != 404:  # 404 until the tunnel is connected
            break
        time.sleep(0.1)
    assert status == 502
    assert httpx.get(f"{public}/y", timeout=20.0).status_code == 502
    assert client.poll() is None, "the client must keep running"


@pytest.mark.rule("LV-3", "LV-5")
@pytest.mark.side("both")
def test_client_reconnects_after_server_restart(
    implementations: Implementations, origin: Origin
) -> None:
    """LV-3: the server goes away and comes back on the same port; the client
    reconnects by itself and traffic flows again."""
    if not implementations.can_start_server:
        pytest.skip("needs a server the suite can start and restart (--server-cmd)")
    port = free_port()
    first = implementations.start_server(port)
    public, client = _own_tunnel(implementations, first, origin.url)
    assert httpx.get(f"{public}/echo/before", timeout=20.0).status_code == 200
    assert first.process is not None
    first.process.stop(timeout=10.0)
    second = implementations.start_server(port)
    try:
        wait_for_tunnel(public, process=client, timeout=40.0)
    except HarnessError as exc:
        pytest.fail(f"LV-3: the client did not reconnect: {exc}")
    response = httpx.get(f"{public}/echo/after", timeout=20.0)
    assert response.status_code == 200
    assert response.json()["raw_path"] == "/echo/after"
    assert second.process is not None
