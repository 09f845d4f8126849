"""Attacks on the server's relay and tunnel handshake (issue 11, rows 6 to 11), with real
processes on loopback.

Each test states what the attacker gets (status or close code), the bound where memory
or slots are at stake, and that another tunnel on the same server (a second connection
id, ``bystander``) keeps serving throughout. Every attack loop is bounded in count and
time. Callers that must count as a different address bind to another loopback
address (127.0.0.2, 127.0.0.3).
"""

from __future__ import annotations

import concurrent.futures
import json
import socket
import time
import uuid

import httpx
from e2e_support import MiB, TunnelFactory, wait_relaying, wait_until
from pipegate_conformance.harness import Tunnel
from pipegate_protocol import ProtocolVersion
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

SUBPROTOCOL = ProtocolVersion.V1.value


# ---------------------------------------------------------------------- helpers


def _rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


def _bystander(tunnels: TunnelFactory, tunnel: Tunnel) -> str:
    """A second tunnel (connection id ``bystander``) on the same server; its public URL."""
    ws_url = tunnel.server_ws_url.rsplit("/", 1)[0] + "/bystander"
    process = tunnels.client(ws_url, name="bystander")
    url = f"{tunnel.server_base}/bystander"
    wait_relaying(url, process=process)
    return url


def _serves(url: str, *, source: str = "127.0.0.1") -> None:
    transport = httpx.HTTPTransport(local_address=source)
    with httpx.Client(transport=transport, timeout=10) as http:
        response = http.get(f"{url}/echo/still-serving")
    assert response.status_code == 200, f"{url} stopped serving: {response.status_code}"


def _port(tunnel: Tunnel) -> int:
    return int(tunnel.server_base.rsplit(":", 1)[1])


def _raw(
    tunnel: Tunnel, request: bytes, *, source: str = "127.0.0.1", timeout: float = 5.0
) -> bytes:
    """Send ``request`` on a fresh connection and read until the server closes it."""
    with socket.create_connection(
        ("127.0.0.1", _port(tunnel)), timeout=timeout, source_address=(source, 0)
    ) as sock:
        sock.sendall(request)
        chunks: list[bytes] = []
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except TimeoutError:
            pass
    return b"".join(chunks)


def _origin_log(origin: str, tag: str) -> list[object]:
    events = httpx.get(f"{origin}/log", params={"tag": tag}, timeout=5).json()
    assert isinstance(events, list)
    return events


def _echo_headers(raw: bytes) -> list[tuple[str, str]]:
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head[:200]
    if b"transfer-encoding: chunked" in head.lower():
        decoded = bytearray()
        rest = body
        while rest:
            size_line, _, rest = rest.partition(b"\r\n")
            size = int(size_line.split(b";")[0], 16)
            if size == 0:
                break
            decoded += rest[:size]
            rest = rest[size + 2 :]
        body = bytes(decoded)
    report = json.loads(body)
    return [(str(n).lower(), str(v)) for n, v in report["headers"]]


# ---------------------------------------------------------------------- row 6


def test_row6_tunnel_handshake_below_an_id_is_refused_not_relayed(
    tunnels: TunnelFactory, origin: str
) -> None:
    """A misconfigured client (``--server-url ws://host/node/alice``) offers the pipegate
    subprotocol and its token on a public path: 400, and the local app never sees it."""
    tunnel = tunnels.tunnel("node6")
    bystander = _bystander(tunnels, tunnel)
    ws = tunnel.server_ws_url
    attempts = [
        ({"authorization": f"Bearer {tunnel.token}"}, [SUBPROTOCOL]),
        ({}, [SUBPROTOCOL]),
        ({"authorization": f"Bearer {tunnel.token}"}, []),
        ({"pipegate-client-token": tunnel.token}, []),
    ]
    statuses: list[int] = []
    tags: list[str] = []
    for headers, subprotocols in attempts:
        tag = uuid.uuid4().hex
        tags.append(tag)
        try:
            with connect(
                f"{ws}/alice/ws/echo?tag={tag}",
                additional_headers=headers,
                subprotocols=subprotocols or None,  # type: ignore[arg-type]
                open_timeout=10,
            ):
                statuses.append(101)
        except InvalidStatus as refused:
            statuses.append(refused.response.status_code)
    assert statuses == [400, 400, 400, 400]
    time.sleep(0.3)
    for tag in tags:
        assert _origin_log(origin, tag) == [], "a tunnel handshake reached the local app"
    # An ordinary public WebSocket is still relayed, and the other tunnel serves.
    with connect(f"{ws}/ws/echo", open_timeout=10) as plain:
        plain.send("hi")
        assert plain.recv(timeout=5) == "hi"
    _serves(bystander)
    assert tunnel.server is not None
    assert tunnel.token not in tunnel.server.output()


# ---------------------------------------------------------------------- row 7


def test_row7_callers_that_never_read_lose_their_streams_and_are_capped(
    tunnels: TunnelFactory,
) -> None:
    """12 callers from one address request 50 MiB each and never read: 8 (the
    per-caller cap) get their streams, 4 get 429 with Retry-After at once; another
    address is served meanwhile; after --stream-idle-timeout (2 s) the stalled
    streams are reset and the attacker's own address is served again. Server RSS
    grows less than 48 MiB (8 streams x 1 MiB window, plus buffers)."""
    tunnel = tunnels.tunnel(
        "node7",
        server_args=[
            "--stream-idle-timeout",
            "2",
            "--max-streams-per-caller",
            "8",
            "--max-streams-per-tunnel",
            "10",
            "--queue-timeout",
            "1",
        ],
    )
    assert tunnel.server is not None
    bystander = _bystander(tunnels, tunnel)
    before = _rss_mib(tunnel.server.pid)
    request = f"GET /node7/bytes/{50 * MiB} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
    sockets: list[socket.socket] = []
    heads: list[bytes] = []
    try:
        for _ in range(12):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.settimeout(5)
            sock.connect(("127.0.0.1", _port(tunnel)))
            sock.sendall(request)
            sockets.append(sock)
        for sock in sockets:
            heads.append(sock.recv(256))  # the status line, then never read again
        ok = [h for h in heads if h.startswith(b"HTTP/1.1 200")]
        limited = [h for h in heads if h.startswith(b"HTTP/1.1 429")]
        assert len(ok) == 8, [h[:12] for h in heads]
        assert len(limited) == 4, [h[:12] for h in heads]
        assert all(b"retry-after: 1" in h.lower() for h in limited)
        # Another address (and another tunnel) is served while the attack holds.
        _serves(tunnel.public_url, source="127.0.0.2")
        _serves(bystander)
        time.sleep(1.0)
        grown = _rss_mib(tunnel.server.pid) - before
        assert grown < 48, f"server RSS grew {grown:.0f} MiB"

        # The stalled streams are reset after the idle deadline: the attacker's
        # address has free slots again.
        def own_address_served() -> bool | None:
            with httpx.Client(timeout=5) as http:
                status = http.get(f"{tunnel.public_url}/echo/again").status_code
            return True if status == 200 else None

        wait_until(own_address_served, timeout=10, what="stalled streams reset")
        _serves(bystander)
    finally:
        for sock in sockets:
            sock.close()
    assert "the caller read nothing for 2 s" in tunnel.server.output()


# ---------------------------------------------------------------------- row 8


def test_row8_trailers_never_become_headers(tunnels: TunnelFactory) -> None:
    """Trailers ``authorization`` and ``x-forwarded-host`` of a chunked request are
    dropped: the local app sees neither as a header."""
    tunnel = tunnels.tunnel("node8")
    bystander = _bystander(tunnels, tunnel)
    request = (
        b"POST /node8/echo/trailers HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
        b"Connection: close\r\n\r\n"
        b"5\r\nhello\r\n0\r\n"
        b"Authorization: Bearer trailer-secret\r\nX-Forwarded-Host: evil.example\r\n\r\n"
    )
    headers = _echo_headers(_raw(tunnel, request))
    assert ("authorization", "Bearer trailer-secret") not in headers
    assert ("x-forwarded-host", "evil.example") not in headers
    assert not any(name == "authorization" for name, _ in headers)
    _serves(bystander)


# ---------------------------------------------------------------------- row 9


def test_row9_conflicting_or_unknown_framing_is_400_before_a_stream_opens(
    tunnels: TunnelFactory, origin: str
) -> None:
    """Content-Length plus chunked (on the h11 path, through an unknown method) and an
    unknown transfer coding get 400; the local app never sees the head."""
    tunnel = tunnels.tunnel("node9")
    bystander = _bystander(tunnels, tunnel)
    tags = [uuid.uuid4().hex for _ in range(3)]
    requests = [
        f"FOO /node9/stall?tag={tags[0]} HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
        "Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        f"POST /node9/stall?tag={tags[1]} HTTP/1.1\r\nHost: x\r\n"
        "Transfer-Encoding: xchunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        f"FOO /node9/stall?tag={tags[2]} HTTP/1.1\r\nHost: x\r\n"
        "Transfer-Encoding: xchunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    ]
    for request in requests:
        answer = _raw(tunnel, request.encode(), timeout=3)
        assert answer.startswith(b"HTTP/1.1 400"), answer[:200]
    time.sleep(0.5)
    for tag in tags:
        assert _origin_log(origin, tag) == [], "a badly framed head reached the local app"
    _serves(tunnel.public_url)
    _serves(bystander)


# ---------------------------------------------------------------------- row 10


def test_row10_proxy_headers_from_callers_are_dropped(tunnels: TunnelFactory) -> None:
    """With the default (no trusted proxy), Forwarded, X-Real-IP, X-Forwarded-* and
    X-Original-URL from a caller never reach the local app; X-Forwarded-For is the
    caller's own address."""
    tunnel = tunnels.tunnel("node10")
    bystander = _bystander(tunnels, tunnel)
    sent = {
        "Forwarded": "for=198.51.100.7;host=evil.example;proto=https",
        "X-Real-IP": "198.51.100.7",
        "X-Forwarded-For": "198.51.100.7",
        "X-Forwarded-Port": "8443",
        "X-Forwarded-Proto": "https",
        "X-Forwarded-Host": "evil.example",
        "X-Forwarded-Server": "evil.example",
        "X-Original-URL": "/admin",
    }
    with httpx.Client(timeout=10) as http:
        report = http.get(f"{tunnel.public_url}/echo/proxy", headers=sent).json()
    headers = [(str(n).lower(), str(v)) for n, v in report["headers"]]
    names = [n for n, _ in headers]
    for name in ("forwarded", "x-real-ip", "x-forwarded-port", "x-forwarded-server"):
        assert name not in names, f"{name} reached the local app"
    assert "x-original-url" not in names
    assert [v for n, v in headers if n == "x-forwarded-for"] == ["127.0.0.1"]
    assert [v for n, v in headers if n == "x-forwarded-proto"] == ["http"]
    assert "evil.example" not in json.dumps(headers)
    _serves(bystander)


# ---------------------------------------------------------------------- row 11


def _bad_handshake(tunnel: Tunnel, xff: str) -> tuple[int, float]:
    started = time.monotonic()
    try:
        with connect(
            tunnel.server_ws_url.rsplit("/", 1)[0] + "/intruder",
            additional_headers={"authorization": "Bearer wrong", "x-forwarded-for": xff},
            subprotocols=[SUBPROTOCOL],  # type: ignore[list-item]
            open_timeout=15,
        ):
            status = 101
    except InvalidStatus as refused:
        status = refused.response.status_code
    return status, time.monotonic() - started


def test_row11_bad_token_slowdown_holds_against_forged_addresses_and_parallel_tries(
    tunnels: TunnelFactory,
) -> None:
    """14 bad tokens in a row, each with a different X-Forwarded-For: the slow-down
    (budget 10) is keyed on the socket peer, so the last ones are delayed; then 16 in
    parallel: at most 4 wait out a delay, the rest get 429 at once."""
    tunnel = tunnels.tunnel("node11")
    bystander = _bystander(tunnels, tunnel)
    results = [_bad_handshake(tunnel, f"203.0.113.{i}") for i in range(14)]
    assert all(status == 403 for status, _ in results), results
    assert results[-1][1] >= 0.9, f"14th bad token took {results[-1][1]:.3f} s"
    _serves(bystander)
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        parallel = list(pool.map(lambda i: _bad_handshake(tunnel, f"198.51.100.{i}"), range(16)))
    refused_at_once = [t for status, t in parallel if status == 429]
    delayed = [t for status, t in parallel if status == 403]
    assert len(delayed) <= 4, parallel
    assert len(refused_at_once) >= 12, parallel
    assert max(refused_at_once) < 1.0
    _serves(bystander)
    _serves(tunnel.public_url)
