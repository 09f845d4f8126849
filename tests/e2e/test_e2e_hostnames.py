"""Host routing end to end (RT-1 to RT-6): real server and client processes, reached
with explicit Host headers on 127.0.0.1 (the browser test uses real ``*.localhost``
names). HTTP, SSE, WebSocket and large bodies in host mode; custom hostnames granted,
refused and duplicated; case-insensitive ids; offline 503, recovery, then 404."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import httpx
import pytest
from e2e_support import MiB, TunnelFactory, sha256_of, wait_until, ws_base
from pipegate_conformance.origin import pattern_chunks, pattern_sha256
from websockets.sync.client import connect

ALICE = "alice-e2e-token-0123456789"
BOB = "bob-e2e-token-0123456789"


def _tokens(folder: Path) -> Path:
    path = folder / "tokens.toml"
    path.write_text(
        f'[[tokens]]\nname = "alice"\ntoken = "{ALICE}"\nids = ["*"]\n'
        'hostnames = ["api.example.test"]\n'
        f'[[tokens]]\nname = "bob"\ntoken = "{BOB}"\nids = ["*"]\n'
    )
    return path


def _get(port: int, host: str, path: str, **kwargs: object) -> httpx.Response:
    return httpx.get(f"http://127.0.0.1:{port}{path}", headers={"Host": host}, timeout=20, **kwargs)  # type: ignore[arg-type]


def _wait_status(port: int, host: str, path: str, status: int, timeout: float = 20) -> None:
    def probe() -> bool | None:
        try:
            return True if _get(port, host, path).status_code == status else None
        except httpx.HTTPError:
            return None

    wait_until(probe, timeout=timeout, what=f"{status} from {host}{path}")


@pytest.fixture
def hosted(tunnels: TunnelFactory, tmp_path: Path) -> tuple[TunnelFactory, int]:
    """A server routing *.localhost by host, with alice's and bob's tokens, and the
    client of tunnel ``Node`` (alice, also asking for api.example.test)."""
    _server, port = tunnels.server(
        "--domain", "localhost", "--tokens-file", str(_tokens(tmp_path)), "--offline-grace", "4"
    )
    client = tunnels.client(
        f"{ws_base(port)}/Node", "--hostname", "api.example.test", token=ALICE, name="node"
    )
    client.wait_for_output("http://node.localhost:", timeout=20)
    _wait_status(port, "node.localhost", "/echo/ready", 200)
    return tunnels, port


def test_every_url_is_printed_and_serves_the_same_app(hosted: tuple[TunnelFactory, int]) -> None:
    tunnels, port = hosted
    (client,) = [p for p in tunnels.group.processes if p.name == "node"]
    printed = client.output()
    for url in (
        f"http://api.example.test:{port}/",
        f"http://node.localhost:{port}/",
        f"http://127.0.0.1:{port}/Node/",
    ):
        assert url in printed
    for host in (f"node.localhost:{port}", "NODE.LocalHost", "api.example.test"):
        report = _get(port, host, "/echo/a%2Fb?x=1&x=2").json()
        assert (report["raw_path"], report["query"]) == ("/echo/a%2Fb", "x=1&x=2"), host
        headers = dict(report["headers"])
        assert headers["x-forwarded-host"] == host
        assert "x-forwarded-prefix" not in headers
    # Path routing keeps working on the bare address, prefix and all.
    report = httpx.get(f"http://127.0.0.1:{port}/Node/echo/p", timeout=20).json()
    assert report["raw_path"] == "/echo/p"
    assert ["x-forwarded-prefix", "/Node"] in report["headers"]
    # The server's own endpoints are not served on a tunnel's host: the app gets them.
    assert _get(port, "node.localhost", "/_pipegate/health").text.startswith("origin:")
    assert httpx.get(f"http://127.0.0.1:{port}/_pipegate/health", timeout=5).status_code == 200


def test_large_bodies_both_ways_in_host_mode(hosted: tuple[TunnelFactory, int]) -> None:
    _tunnels, port = hosted
    size = 64 * MiB
    with httpx.stream(
        "GET",
        f"http://127.0.0.1:{port}/bytes/{size}",
        headers={"Host": "node.localhost"},
        timeout=60,
    ) as response:
        assert response.status_code == 200
        assert sha256_of(response.iter_bytes()) == (size, pattern_sha256(size))
    uploaded = httpx.post(
        f"http://127.0.0.1:{port}/upload",
        headers={"Host": "node.localhost"},
        content=pattern_chunks(size),
        timeout=60,
    ).json()
    assert uploaded == {"length": size, "sha256": pattern_sha256(size)}


def test_server_sent_events_in_host_mode(hosted: tuple[TunnelFactory, int]) -> None:
    _tunnels, port = hosted
    events = []
    with httpx.stream(
        "GET",
        f"http://127.0.0.1:{port}/sse?n=3&interval=0.05",
        headers={"Host": "node.localhost"},
        timeout=20,
    ) as response:
        assert response.headers["content-type"] == "text/event-stream"
        for line in response.iter_lines():
            if line.startswith("data: "):
                events.append(json.loads(line[6:])["n"])
    assert events == [0, 1, 2]


def test_websocket_at_the_root_of_a_tunnel_host(hosted: tuple[TunnelFactory, int]) -> None:
    _tunnels, port = hosted
    # The URI names the tunnel's host; the socket goes to 127.0.0.1 (no DNS needed).
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    with connect(f"ws://node.localhost:{port}/ws/echo", sock=sock, open_timeout=10) as ws:
        ws.send("hello over host routing")
        assert ws.recv(timeout=10) == "hello over host routing"
        ws.send(b"\x00\xff" * 1000)
        assert ws.recv(timeout=10) == b"\x00\xff" * 1000


def test_hostnames_refused_duplicated_and_case_insensitive_ids(
    hosted: tuple[TunnelFactory, int],
) -> None:
    tunnels, port = hosted
    # Bob's token holds no hostnames: 403, and the client stops (exit 3).
    bob = tunnels.client(
        f"{ws_base(port)}/bob", "--hostname", "api.example.test", token=BOB, name="bob"
    )
    assert bob.wait(20) == 3
    assert "may not claim hostname 'api.example.test'" in bob.output()
    # The same hostname through another id of alice: 409, retried, never served.
    dup = tunnels.client(
        f"{ws_base(port)}/other", "--hostname", "API.example.test", token=ALICE, name="dup"
    )
    dup.wait_for_output("409", timeout=20)
    # The same id in another case is the same hostname label: 409 too.
    upper = tunnels.client(f"{ws_base(port)}/NODE", token=ALICE, name="upper")
    upper.wait_for_output("409", timeout=20)
    assert dup.poll() is None
    assert upper.poll() is None
    # The first tunnel still holds both names.
    assert _get(port, "api.example.test", "/echo/x").json()["raw_path"] == "/echo/x"
    assert _get(port, "node.localhost", "/echo/y").json()["raw_path"] == "/echo/y"
    # An id that cannot be a DNS label is refused on a server with domains (exit 4).
    bad = tunnels.client(f"{ws_base(port)}/my_app", token=ALICE, name="bad")
    assert bad.wait(20) == 4
    assert "cannot be a hostname label" in bad.output()


def test_offline_then_back_then_unknown(hosted: tuple[TunnelFactory, int]) -> None:
    tunnels, port = hosted
    (client,) = [p for p in tunnels.group.processes if p.name == "node"]
    client.kill()
    _wait_status(port, "node.localhost", "/echo/x", 503)
    for host, path in (("node.localhost", "/echo/x"), (f"127.0.0.1:{port}", "/Node/echo/x")):
        response = _get(port, host, path)
        assert response.status_code == 503
        assert response.headers["retry-after"].isdigit()
        assert response.text.strip() == (
            "tunnel node.localhost is offline"
            if host == "node.localhost"
            else "tunnel Node is offline"
        )
    # An id never seen is unknown, not offline.
    assert _get(port, "ghost.localhost", "/echo/x").status_code == 404
    assert httpx.get(f"http://127.0.0.1:{port}/ghost/x", timeout=5).status_code == 404
    # The client comes back: served again.
    again = tunnels.client(
        f"{ws_base(port)}/Node", "--hostname", "api.example.test", token=ALICE, name="again"
    )
    _wait_status(port, "node.localhost", "/echo/ready", 200)
    assert _get(port, "api.example.test", "/echo/z").status_code == 200
    # Gone for longer than --offline-grace (4 s): unknown again.
    again.kill()
    _wait_status(port, "node.localhost", "/echo/x", 503)
    _wait_status(port, "node.localhost", "/echo/x", 404, timeout=15)
    assert httpx.get(f"http://127.0.0.1:{port}/Node/echo/x", timeout=5).status_code == 404
