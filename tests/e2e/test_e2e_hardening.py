"""Hardening with real processes (issue 5): graceful shutdown, heartbeats that find a
frozen client, per-token connection ids and their reload on SIGHUP, and the limits a
caller runs into, each with the status it must see."""

from __future__ import annotations

import concurrent.futures
import itertools
import signal
import socket
import time
from pathlib import Path

import httpx
from e2e_support import (
    MiB,
    TunnelFactory,
    download_across,
    expected_sha256,
    probe_status,
    sha256_of,
    wait_relaying,
    wait_until,
)
from pipegate_protocol import ProtocolVersion
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect

SUBPROTOCOL = ProtocolVersion.V1.value


def _upgrade_status(url: str, token: str) -> int:
    """101 if a raw tunnel upgrade with ``token`` is accepted (then closed), else the status."""
    try:
        with connect(
            url,
            additional_headers={"authorization": f"Bearer {token}"},
            subprotocols=[SUBPROTOCOL],  # type: ignore[list-item]
            open_timeout=10,
        ):
            return 101
    except InvalidStatus as refused:
        return refused.response.status_code


def test_server_sigterm_completes_in_flight_50mib_download(tunnels: TunnelFactory) -> None:
    tunnel = tunnels.tunnel("drain", server_args=["--shutdown-grace", "20"])
    assert tunnel.server is not None
    assert tunnel.client is not None
    size = 50 * MiB
    server = tunnel.server
    late: list[int] = []

    def drain() -> None:
        server.signal(signal.SIGTERM)
        time.sleep(0.5)
        late.append(probe_status(f"{tunnel.public_url}/echo/late", timeout=5))

    status, length, digest = download_across(f"{tunnel.public_url}/bytes/{size}", drain)
    assert status == 200
    # New work is refused while draining (or the listener is already closed).
    assert late[0] in (-1, 503)
    assert (length, digest) == (size, expected_sha256(size))
    code = tunnel.server.wait(timeout=25)
    assert code is not None, "server still running after its grace period"
    assert code == 0, tunnel.server.output()[-3000:]
    assert tunnel.client.poll() is None, "the client must wait for the server to come back"


def test_frozen_client_is_detected_and_id_freed(tunnels: TunnelFactory) -> None:
    """SIGSTOP makes the tunnel half-open (no FIN, no answers); heartbeats must find it,
    fail the request in flight and free the id; after SIGCONT the client gets it back."""
    tunnel = tunnels.tunnel(
        "frozen", server_args=["--heartbeat-interval", "1", "--heartbeat-timeout", "3"]
    )
    assert tunnel.client is not None
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        tunnel.client.signal(signal.SIGSTOP)
        frozen_at = time.monotonic()
        pending = pool.submit(httpx.get, f"{tunnel.public_url}/echo/in-flight", timeout=30)
        wait_until(
            # Freed: its id answers "offline" (RT-6) until the client comes back.
            lambda: True if probe_status(f"{tunnel.public_url}/echo/x", timeout=2) == 503 else None,
            timeout=15,
            what="the server to notice the frozen client and free its id",
        )
        detected_after = time.monotonic() - frozen_at
        in_flight = pending.result(timeout=30)
    assert in_flight.status_code in (502, 504), in_flight.text
    assert detected_after < 15
    tunnel.client.signal(signal.SIGCONT)
    wait_relaying(tunnel.public_url, process=tunnel.client, timeout=30)


def _write_tokens(path: Path, entries: dict[str, tuple[str, list[str]]]) -> None:
    lines = []
    for name, (token, ids) in entries.items():
        quoted = ", ".join(f'"{item}"' for item in ids)
        lines += ["[[tokens]]", f'name = "{name}"', f'token = "{token}"', f"ids = [{quoted}]", ""]
    path.write_text("\n".join(lines))


def test_token_for_dev_pattern_cannot_claim_prod(tunnels: TunnelFactory, tmp_path: Path) -> None:
    tokens = tmp_path / "tokens.toml"
    _write_tokens(tokens, {"alice": ("alice-secret-token-1", ["dev-*"])})
    _, port = tunnels.server("--tokens-file", str(tokens))
    base = f"ws://127.0.0.1:{port}"
    assert _upgrade_status(f"{base}/prod", "alice-secret-token-1") == 403
    assert _upgrade_status(f"{base}/dev-1", "alice-secret-token-1") == 101
    client = tunnels.client(f"{base}/prod", token="alice-secret-token-1")
    code = client.wait(timeout=20)
    assert code is not None, client.output()[-2000:]
    assert code != 0
    allowed = tunnels.client(f"{base}/dev-alice", token="alice-secret-token-1")
    wait_relaying(f"http://127.0.0.1:{port}/dev-alice", process=allowed)


def test_sighup_reloads_tokens_without_dropping_others(
    tunnels: TunnelFactory, tmp_path: Path
) -> None:
    tokens = tmp_path / "tokens.toml"
    alice, bob, carol = "alice-secret-token-1", "bob-secret-token-22", "carol-secret-token-333"
    _write_tokens(tokens, {"alice": (alice, ["alice-*"]), "bob": (bob, ["bob-*"])})
    server, port = tunnels.server("--tokens-file", str(tokens))
    base = f"127.0.0.1:{port}"
    alice_client = tunnels.client(f"ws://{base}/alice-1", token=alice, name="alice")
    bob_client = tunnels.client(f"ws://{base}/bob-1", token=bob, name="bob")
    wait_relaying(f"http://{base}/alice-1", process=alice_client)
    wait_relaying(f"http://{base}/bob-1", process=bob_client)
    assert _upgrade_status(f"ws://{base}/carol-1", carol) == 403

    _write_tokens(tokens, {"alice": (alice, ["alice-*"]), "carol": (carol, ["carol-*"])})
    server.signal(signal.SIGHUP)

    # bob's token is gone: his tunnel is closed and his client gives up (token refused).
    wait_until(
        lambda: True if probe_status(f"http://{base}/bob-1/echo/x") == 404 else None,
        timeout=15,
        what="bob's tunnel to be closed after his token was removed",
    )
    assert bob_client.wait(timeout=30) not in (None, 0), bob_client.output()[-2000:]
    # carol's new token works; alice kept her tunnel all along.
    assert _upgrade_status(f"ws://{base}/carol-1", carol) == 101
    assert httpx.get(f"http://{base}/alice-1/echo/kept", timeout=10).status_code == 200
    assert alice_client.output().count("tunnel established") == 1, alice_client.output()
    assert server.poll() is None
    for secret in (alice, bob, carol):
        assert secret not in server.output()


def test_repeated_bad_tokens_do_not_lock_out_good_clients(tunnels: TunnelFactory) -> None:
    _, port = tunnels.server()
    base = f"ws://127.0.0.1:{port}"
    statuses = [_upgrade_status(f"{base}/guess", f"guess-{index}") for index in range(8)]
    assert set(statuses) <= {403, 429}, statuses
    assert _upgrade_status(f"{base}/good", tunnels.token) == 101


def test_max_tunnels_per_token(tunnels: TunnelFactory) -> None:
    _, port = tunnels.server("--max-tunnels-per-token", "1")
    first = tunnels.client(f"ws://127.0.0.1:{port}/one")
    wait_relaying(f"http://127.0.0.1:{port}/one", process=first)
    assert _upgrade_status(f"ws://127.0.0.1:{port}/two", tunnels.token) == 429
    assert httpx.get(f"http://127.0.0.1:{port}/one/echo/x", timeout=10).status_code == 200


def test_body_over_limit_is_413(tunnels: TunnelFactory) -> None:
    tunnel = tunnels.tunnel("small", server_args=["--max-body-size", "1024"])
    with httpx.Client(timeout=10) as http:
        fits = http.post(f"{tunnel.public_url}/upload", content=b"x" * 1024)
        assert fits.status_code == 200
        assert fits.json()["length"] == 1024
        declared = http.post(f"{tunnel.public_url}/upload", content=b"x" * 4096)
        assert declared.status_code == 413
        assert declared.headers["content-type"].startswith("text/plain")
    with httpx.Client(timeout=10) as http:
        chunked = http.post(
            f"{tunnel.public_url}/upload", content=iter([b"x" * 1000] * 5)
        )  # no Content-Length: the limit is found while streaming
        assert chunked.status_code == 413


def test_headers_over_limit_are_431(tunnels: TunnelFactory) -> None:
    tunnel = tunnels.tunnel("headers", server_args=["--max-header-size", "4096"])
    response = httpx.get(f"{tunnel.public_url}/echo/x", headers={"x-big": "y" * 8000}, timeout=10)
    assert response.status_code == 431
    assert httpx.get(f"{tunnel.public_url}/echo/x", timeout=10).status_code == 200


def test_no_response_head_in_time_is_504(tunnels: TunnelFactory) -> None:
    tunnel = tunnels.tunnel("slow", server_args=["--response-timeout", "1"])
    started = time.monotonic()
    response = httpx.get(f"{tunnel.public_url}/stall", timeout=20)
    assert response.status_code == 504
    assert response.headers["content-type"].startswith("text/plain")
    assert time.monotonic() - started < 10
    assert httpx.get(f"{tunnel.public_url}/echo/after", timeout=10).status_code == 200


def test_busy_tunnel_gives_503_with_retry_after(tunnels: TunnelFactory) -> None:
    tunnel = tunnels.tunnel(
        "busy",
        server_args=[
            "--max-streams-per-tunnel", "1",
            "--max-queued-requests", "1",
            "--queue-timeout", "1",
            "--response-timeout", "6",
        ],
    )  # fmt: skip
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        holder = pool.submit(httpx.get, f"{tunnel.public_url}/stall", timeout=20)
        time.sleep(0.5)
        queued = pool.submit(httpx.get, f"{tunnel.public_url}/echo/queued", timeout=20)
        time.sleep(0.2)
        overflow = httpx.get(f"{tunnel.public_url}/echo/overflow", timeout=20)
        assert overflow.status_code == 503
        assert "retry-after" in overflow.headers
        queued_response = queued.result(timeout=20)
        assert queued_response.status_code == 503
        assert "retry-after" in queued_response.headers
        assert holder.result(timeout=20).status_code == 504
    assert httpx.get(f"{tunnel.public_url}/echo/free", timeout=10).status_code == 200


def _closed_within(sock: socket.socket, seconds: float) -> bool:
    sock.settimeout(seconds)
    try:
        while sock.recv(4096):
            pass
    except TimeoutError:
        return False
    except OSError:
        return True
    return True


def test_idle_callers_are_disconnected(tunnels: TunnelFactory) -> None:
    """A caller that connects and sends nothing, and one that sends half a request
    head, are both dropped (checked side by side, bounded at 20 s). The default head
    timeout is 10 s; the test shortens it to 2 s."""
    _, port = tunnels.server("--head-timeout", "2")
    payloads = {"silent caller": b"", "unfinished head": b"GET /x/echo/y HTTP/1.1\r\nHost: a\r\n"}
    sockets = {name: socket.create_connection(("127.0.0.1", port), timeout=5) for name in payloads}
    try:
        for name, payload in payloads.items():
            sockets[name].sendall(payload)
        with concurrent.futures.ThreadPoolExecutor(len(sockets)) as pool:
            closed = dict(
                zip(
                    sockets,
                    pool.map(lambda s: _closed_within(s, 20.0), sockets.values()),
                    strict=True,
                )
            )
    finally:
        for sock in sockets.values():
            sock.close()
    assert closed == dict.fromkeys(payloads, True), f"still open after 20 s: {closed}"


def test_tunnel_without_hello_is_closed(tunnels: TunnelFactory) -> None:
    """An accepted tunnel upgrade whose client never says hello is closed (4004)."""
    _, port = tunnels.server("--hello-timeout", "1")
    with connect(
        f"ws://127.0.0.1:{port}/mute",
        additional_headers={"authorization": f"Bearer {tunnels.token}"},
        subprotocols=[SUBPROTOCOL],  # type: ignore[list-item]
        open_timeout=10,
    ) as ws:
        ws.recv(timeout=10)  # the server's hello; ours never comes
        started = time.monotonic()
        assert _close_code_within(ws, 30.0) == 4004
        assert time.monotonic() - started < 10, "closed, but not after --hello-timeout"


def _close_code_within(ws: ClientConnection, seconds: float) -> int | None:
    """Read (and ignore) messages until the peer closes; bounded by ``seconds``."""
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            ws.recv(timeout=max(0.1, deadline - time.monotonic()))
    except ConnectionClosed as closed:
        return closed.rcvd.code if closed.rcvd else None
    except TimeoutError:
        pass
    raise AssertionError(f"the tunnel was still open after {seconds} s")


def _rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


def test_slow_caller_does_not_make_server_or_client_buffer(tunnels: TunnelFactory) -> None:
    """A caller that stops reading a 128 MiB download holds the transfer back through
    flow control: neither process grows by more than a few windows meanwhile."""
    tunnel = tunnels.tunnel("slowreader")
    assert tunnel.server is not None
    assert tunnel.client is not None
    size = 128 * MiB
    before = {"server": _rss_mib(tunnel.server.pid), "client": _rss_mib(tunnel.client.pid)}
    with (
        httpx.Client(timeout=30) as http,
        http.stream("GET", f"{tunnel.public_url}/bytes/{size}") as response,
    ):
        assert response.status_code == 200
        chunks = response.iter_bytes()
        first = next(chunks)
        time.sleep(2)  # the caller reads nothing; the origin could send it all meanwhile
        during = {"server": _rss_mib(tunnel.server.pid), "client": _rss_mib(tunnel.client.pid)}
        length, digest = sha256_of(itertools.chain([first], chunks))
    assert (length, digest) == (size, expected_sha256(size))
    for name in before:
        assert during[name] - before[name] < 48, f"{name} grew {before[name]} -> {during[name]} MiB"
