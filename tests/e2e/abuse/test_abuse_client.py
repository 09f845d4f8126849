"""Abuse of the client (issue 11, rows 5, 6, 12, 13): a malicious local app, a
misrouted or impostor server, a caller path that climbs above the local URL's path.

Real ``pipegate-server`` and ``pipegate-client`` processes on loopback; the hostile
peers (a local app answering every request the same way, a server flooding pings) run
in the test process. Each attack is bounded in count and time; each test also shows
that normal traffic still works.
"""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import socketserver
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pytest
from e2e_support import NO_FAST_PATH, TunnelFactory, server_base, wait_relaying, ws_base
from pipegate_conformance.harness import Tunnel
from pipegate_conformance.rawhttp import raw_request
from pipegate_conformance.refpeer import ReferenceServer
from pipegate_conformance.support import rss_mib
from pipegate_protocol import Pong

MiB = 1024 * 1024


# ---------------------------------------------------------------- hostile local apps


class FixedAnswerApp:
    """A local app that answers every request with the same bytes, then closes; it
    records each request head it got (lower-cased)."""

    def __init__(self, answer: bytes) -> None:
        self.answer = answer
        self.heads: list[bytes] = []
        outer = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                sock: socket.socket = self.request
                sock.settimeout(5)
                head = b""
                while b"\r\n\r\n" not in head and len(head) < 65536:
                    data = sock.recv(65536)
                    if not data:
                        return
                    head += data
                outer.heads.append(head.lower())
                sock.sendall(outer.answer)

        self._server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@contextmanager
def fixed_answer_app(answer: bytes) -> Iterator[FixedAnswerApp]:
    app = FixedAnswerApp(answer)
    try:
        yield app
    finally:
        app.close()


def websocket_upgrade(
    port: int, target: str, headers: dict[str, str]
) -> tuple[int, dict[str, str], bytes]:
    """A caller's WebSocket upgrade written by hand (websockets' client would follow a
    redirect itself); returns status, headers (lower-cased names) and body."""
    key = base64.b64encode(os.urandom(16)).decode()
    lines = [
        f"GET {target} HTTP/1.1",
        f"Host: 127.0.0.1:{port}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        "Sec-WebSocket-Version: 13",
        *(f"{name}: {value}" for name, value in headers.items()),
    ]
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        answer = {
            name.strip().lower(): value.strip()
            for name, _, value in (line.partition(":") for line in header_lines)
        }
        length = int(answer.get("content-length", "0"))
        while len(body) < length:
            chunk = sock.recv(65536)
            if not chunk:
                break
            body += chunk
    return int(status_line.split()[1]), answer, body


def _normal_traffic_works(tunnel: Tunnel) -> None:
    response = httpx.get(f"{tunnel.public_url}/echo/still-here", timeout=10)
    assert response.status_code == 200
    assert response.json()["raw_path"] == "/echo/still-here"


# ---------------------------------------------------------------- row 5


def test_local_websocket_redirect_is_answered_never_followed(
    tunnels: TunnelFactory, tunnel: Tunnel
) -> None:
    """Row 5: the local app answers a caller's WebSocket upgrade with
    ``302 Location: //127.0.0.1:<admin>/admin``. The caller gets that 302 (status,
    Location, body as the local app sent them); the other local service never hears
    of it, so neither the caller's headers reach it nor its body the caller."""
    admin_answer = b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\nConnection: close\r\n\r\nadmin-panel"
    with fixed_answer_app(admin_answer) as admin:
        redirect = (
            f"HTTP/1.1 302 Found\r\nLocation: //127.0.0.1:{admin.port}/admin\r\n"
            "Content-Length: 5\r\nConnection: close\r\n\r\nmoved"
        ).encode()
        with fixed_answer_app(redirect) as local:
            _server, port = tunnels.server()
            client = tunnels.client(f"{ws_base(port)}/redir", local_url=local.url)
            wait_relaying(f"{server_base(port)}/redir", process=client, ok=(302,))
            for _ in range(3):
                status, headers, body = websocket_upgrade(
                    port, "/redir/ws", {"X-Caller-Secret": "caller-secret"}
                )
                assert status == 302
                assert headers["location"] == f"//127.0.0.1:{admin.port}/admin"
                assert body == b"moved"
            assert admin.heads == [], "the client followed the redirect to another service"
            assert any(b"x-caller-secret: caller-secret" in head for head in local.heads)
    _normal_traffic_works(tunnel)


# ---------------------------------------------------------------- row 6


def test_client_stops_on_a_server_url_that_is_no_tunnel_endpoint(
    tunnels: TunnelFactory, tunnel: Tunnel
) -> None:
    """Row 6 (client half): ``--server-url ws://host/node/alice`` reaches a real server
    as a public WebSocket into tunnel ``node``, whose local app answers 200. The
    misrouted client stops within seconds with a handshake exit code (3, 4 or 5; 5 is
    "no tunnel endpoint") instead of retrying, so node's local app sees its token at
    most once; URLs whose route is ambiguous (empty or dot segments before the id)
    are refused at start (exit 2) without a connection. Tunnel ``node`` keeps serving."""
    with fixed_answer_app(
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
    ) as app:
        _server, port = tunnels.server()
        node = tunnels.client(f"{ws_base(port)}/node", local_url=app.url, name="node")
        wait_relaying(f"{server_base(port)}/node", process=node)
        misrouted = tunnels.client(f"{ws_base(port)}/node/alice", name="misrouted")
        code = misrouted.wait(15.0)
        assert code in (3, 4, 5), f"exit {code}:\n{misrouted.output()[-2000:]}"
        token = f"bearer {tunnels.token}".encode()
        hits = [head for head in app.heads if token in head]
        assert len(hits) <= 1, f"node's local app got the token {len(hits)} times"
        for bad in (f"{ws_base(port)}//node", f"{ws_base(port)}/x/../node"):
            refused = tunnels.client(bad, name="bad-url")
            assert refused.wait(10.0) == 2, refused.output()[-2000:]
        assert httpx.get(f"{server_base(port)}/node/x", timeout=10).text == "ok"
    _normal_traffic_works(tunnel)


async def test_client_stops_when_the_hello_names_another_id(tunnels: TunnelFactory) -> None:
    """Row 6, the last line of defence: a server that accepts the upgrade of
    ``/x/alice`` and says in its hello that it serves another id (here the reference
    server's ``x/alice``) did not route the URL as the client meant: the client
    stops with exit 5 rather than serve it."""
    async with ReferenceServer(tunnels.token) as ref:
        client = tunnels.client(f"{ref.url('x')}/alice")
        code = await asyncio.to_thread(client.wait, 15.0)
        assert code == 5, client.output()[-2000:]
        assert "hello is for 'x/alice'" in client.output()


# ---------------------------------------------------------------- row 12

#: Ping frames the hostile server sends, in bytes, and the client's allowed growth.
FLOOD_BYTES = 256 * MiB
FLOOD_GROWTH_MIB = 32
HOSTILE_URL = "http://127.0.0.1/\x1b[2J\x1b]0;owned\x07hostile"


@pytest.mark.parametrize("fast_path", [True, False], ids=["fast", "plain"])
async def test_ping_flood_from_a_server_that_does_not_read(
    tunnels: TunnelFactory, tunnel: Tunnel, fast_path: bool
) -> None:
    """Row 12: a malicious server floods the client with 256 MiB of WebSocket pings and
    never reads. The client stops reading once its unread pongs pass its bound: it
    grows by less than 32 MiB (it grew by ~420 MiB before), on the fast path and on
    ``--no-fast-path``. The server's hello names a public URL with terminal escapes:
    the client prints it escaped. Once the server drops the tunnel, the client
    reconnects and answers pings again."""
    if NO_FAST_PATH and fast_path:
        pytest.skip("the suite runs with --no-fast-path")
    async with ReferenceServer(tunnels.token, public_url=HOSTILE_URL) as ref:
        extra = () if fast_path else ("--no-fast-path",)
        client = tunnels.client(ref.url("flood"), *extra)
        session = await ref.next_session(within=20.0)
        before = rss_mib(client.pid)
        handed = await session.flood_pings(total_bytes=FLOOD_BYTES, seconds=8.0)
        await asyncio.sleep(0.5)
        grown = rss_mib(client.pid) - before
        print(f"flood: {handed / MiB:.0f} MiB taken by the client's socket, grew {grown:.1f} MiB")
        assert grown < FLOOD_GROWTH_MIB, f"grew {grown:.0f} MiB ({handed >> 20} MiB of pings)"
        session.abort()
        again = await ref.next_session(within=20.0)
        again.conn.send_ping(7)
        await again.flush()
        assert (await again.next_of(Pong)).id == 7
        output = client.output()
        assert "\x1b" not in output
        assert "\x07" not in output
        assert "\\x1b[2J\\x1b]0;owned\\x07hostile" in output
    await asyncio.to_thread(_normal_traffic_works, tunnel)


# ---------------------------------------------------------------- row 13


#: Caller paths that climb above the local URL's path, and one that stays below.
CLIMBING = (
    "/../admin",
    "/%2e%2e/admin",
    "/%2E%2e/admin",
    "/.%2E/admin",
    "/a/..%2f..%2fadmin",
    "/a/../../admin",
    "/./../admin",
    "/..%5cadmin",
)


def test_caller_path_cannot_climb_above_the_local_prefix(
    tunnels: TunnelFactory, tunnel: Tunnel
) -> None:
    """Row 13: with ``--local-url <origin>/echo/public``, a caller path whose dot
    segments (plain or percent-encoded, any case, with ``/``, ``%2f`` or ``%5c``)
    climb above ``/echo/public`` is answered 400 by the client and never reaches the
    local app (before, the local app got ``/echo/public/../admin`` and answered 200).
    A path that stays below the prefix is relayed as it came; WebSocket upgrades are
    checked alike."""
    _server, port = tunnels.server()
    public = f"{server_base(port)}/prefixed"
    client = tunnels.client(
        f"{ws_base(port)}/prefixed", local_url=f"{tunnels.origin_url}/echo/public"
    )
    wait_relaying(public, process=client)
    for target in CLIMBING:
        answer = raw_request("127.0.0.1", port, "GET", f"/prefixed{target}".encode())
        assert answer.status == 400, (target, answer.status, answer.body[:200])
        assert b"climbs above /echo/public" in answer.body
        status, _, body = websocket_upgrade(port, f"/prefixed{target}", {})
        assert status == 400, (target, status, body[:200])
    below = raw_request("127.0.0.1", port, "GET", b"/prefixed/a/../b")
    assert below.status == 200
    assert b"/echo/public/a/../b" in below.body
    _normal_traffic_works(tunnel)
