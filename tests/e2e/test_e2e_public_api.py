"""Both sides on public library APIs only: a server and a client started with
``--no-fast-path`` (uvicorn's own protocols, websockets' public recv()/send()) relay a
GET, a streamed 8 MiB upload and download, and a WebSocket echo."""

from __future__ import annotations

import os
from collections.abc import Iterator

import httpx
import pytest
from e2e_support import MiB, TunnelFactory, expected_sha256, sha256_of, tracked_group
from pipegate_conformance.harness import Tunnel
from pipegate_conformance.origin import pattern_chunks
from websockets.sync.client import connect

SIZE = 8 * MiB


@pytest.fixture(scope="module")
def plain_tunnel(origin: str) -> Iterator[Tunnel]:
    with tracked_group() as group:
        yield TunnelFactory(group, origin).tunnel(
            "plain", server_args=["--no-fast-path"], client_args=["--no-fast-path"]
        )


def test_both_processes_run_without_the_fast_path(plain_tunnel: Tunnel) -> None:
    assert plain_tunnel.server is not None
    assert plain_tunnel.client is not None
    assert "--no-fast-path" in plain_tunnel.server.argv
    assert "--no-fast-path" in plain_tunnel.client.argv


@pytest.mark.parametrize("method", ["GET", "PROPFIND"])
def test_a_request_is_relayed(plain_tunnel: Tunnel, http: httpx.Client, method: str) -> None:
    response = http.request(method, f"{plain_tunnel.public_url}/echo/public?q=1")
    assert response.status_code == 200, response.text[:300]
    seen = response.json()
    assert seen["method"] == method
    assert seen["body_length"] == 0


def test_a_streamed_upload_arrives_intact(plain_tunnel: Tunnel, http: httpx.Client) -> None:
    response = http.post(
        f"{plain_tunnel.public_url}/upload",
        content=iter(pattern_chunks(SIZE)),
        headers={"content-type": "application/octet-stream"},
    )
    assert response.status_code == 200, response.text[:300]
    assert response.json() == {"length": SIZE, "sha256": expected_sha256(SIZE)}


def test_a_streamed_download_arrives_intact(plain_tunnel: Tunnel, http: httpx.Client) -> None:
    with http.stream("GET", f"{plain_tunnel.public_url}/bytes/{SIZE}?chunked=1") as response:
        assert response.status_code == 200
        assert sha256_of(response.iter_bytes()) == (SIZE, expected_sha256(SIZE))


def test_a_websocket_echoes(plain_tunnel: Tunnel) -> None:
    url = f"{plain_tunnel.server_ws_url}/ws/echo"
    with connect(url, open_timeout=10, close_timeout=5, max_size=None) as ws:
        for index in range(10):
            ws.send(f"hello {index}")
            assert ws.recv(timeout=10) == f"hello {index}"
        payload = os.urandom(300_000)  # more than one tunnel frame
        ws.send(payload)
        assert ws.recv(timeout=10) == payload
