"""Visitor access rules (AC-1 to AC-5) and the promise that v1 clients keep working.

Both checks use :class:`MinimalClient`, a client written from docs/protocol.md alone
with nothing but ``websockets`` and ``json``: the hello is hand-written JSON
(optionally with the ``access`` member of AC-1), an ``open`` is answered with a
hand-written ``response`` and a body frame built byte by byte per FR-2. So a server
is held to the spec's words, not to our models (which now send members a v1 client
never sends).
"""

from __future__ import annotations

import asyncio
import json
import secrets
import struct
from typing import Any

import bcrypt
import httpx
import pytest
from pipegate_conformance.plugin import ServerUnderTest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

#: The smallest hello a v1 client may send (HS-4, HS-5: limits default, VE-2).
V1_HELLO = {"type": "hello", "version": "pipegate.v1", "role": "client"}


class MinimalClient:
    """A tunnel client from the spec's text: hello, answer ``open`` with 200 and a body
    naming the path, answer ``ping`` with ``pong``. Records every ``open``."""

    def __init__(self, ws: ClientConnection, server_hello: dict[str, Any]) -> None:
        self.ws = ws
        self.server_hello = server_hello
        self.opened: list[str] = []
        self._task = asyncio.create_task(self._serve())

    @classmethod
    async def connect(
        cls, server: ServerUnderTest, connection_id: str, hello: dict[str, Any]
    ) -> MinimalClient:
        ws = await connect(
            server.ws_url(connection_id),
            subprotocols=["pipegate.v1"],  # type: ignore[list-item]
            additional_headers={"Authorization": f"Bearer {server.token}"},
            ssl=server.ssl_context(),
            compression=None,
            open_timeout=15,
        )
        await ws.send(json.dumps(hello))
        first = json.loads(await asyncio.wait_for(ws.recv(), 15))
        assert first["type"] == "hello", first
        return cls(ws, first)

    async def _serve(self) -> None:
        try:
            async for message in self.ws:
                if isinstance(message, bytes):
                    continue  # request body frames: not needed by these checks
                control = json.loads(message)
                if control["type"] == "ping":
                    await self.ws.send(json.dumps({"type": "pong", "id": control["id"]}))
                elif control["type"] == "open":
                    await self._answer(control)
        except ConnectionClosed:
            return

    async def _answer(self, control: dict[str, Any]) -> None:
        stream_id = int(control["stream_id"])
        self.opened.append(control["path"])
        body = f"minimal client saw {control['path']}".encode()
        response = {
            "type": "response",
            "stream_id": stream_id,
            "status": 200,
            "headers": [["content-type", "text/plain"], ["content-length", str(len(body))]],
            "end_stream": False,
        }
        await self.ws.send(json.dumps(response))
        # FR-2/FR-3: F bit (0x80) | kind 0x00 (body), then the stream id, big-endian.
        await self.ws.send(struct.pack(">BI", 0x80, stream_id) + body)

    async def close(self) -> None:
        await self.ws.close()
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)


def _new_id() -> str:
    return f"ac-{secrets.token_hex(5)}"


async def _wait_relaying(url: str, ok: tuple[int, ...]) -> httpx.Response:
    async with httpx.AsyncClient(timeout=15) as http:
        for _ in range(100):
            response = await http.get(url)
            if response.status_code in ok:
                return response
            await asyncio.sleep(0.05)
    raise AssertionError(f"{url} never answered {ok}: last {response.status_code}")


@pytest.mark.rule("VE-2", "HS-4", "HD-3", "FR-2")
async def test_a_minimal_v1_client_from_the_spec_is_served(server: ServerUnderTest) -> None:
    """A client that knows nothing of any extension: its hello has no optional member,
    it ignores every member of the server's hello it does not know, and it works."""
    connection_id = _new_id()
    client = await MinimalClient.connect(server, connection_id, V1_HELLO)
    try:
        response = await _wait_relaying(f"{server.public_url(connection_id)}/a/b", (200,))
        assert response.text == "minimal client saw /a/b"
        assert client.opened[-1] == "/a/b"
    finally:
        await client.close()


def _hash(password: bytes) -> str:
    return bcrypt.hashpw(password, bcrypt.gensalt(4)).decode()


@pytest.mark.rule("AC-1", "AC-2", "AC-4")
async def test_declared_rules_are_enforced_before_the_tunnel(server: ServerUnderTest) -> None:
    connection_id = _new_id()
    probe = await MinimalClient.connect(server, _new_id(), V1_HELLO)
    capabilities = probe.server_hello.get("capabilities", [])
    await probe.close()
    if "access" not in capabilities:
        pytest.skip("the server does not list the access capability (AC-1): nothing to enforce")
    hello = {**V1_HELLO, "access": {"users": {"guest": _hash(b"let me in")}, "deny": []}}
    client = await MinimalClient.connect(server, connection_id, hello)
    try:
        url = f"{server.public_url(connection_id)}/x"
        missing = await _wait_relaying(url, (401,))
        assert missing.headers["www-authenticate"].lower().startswith("basic")
        async with httpx.AsyncClient(timeout=15) as http:
            wrong = await http.get(url, auth=("guest", "nope"))
            assert wrong.status_code == 401
            assert client.opened == []  # AC-4: nothing reached the tunnel
            right = await http.get(
                f"{server.public_url(connection_id)}/in", auth=("guest", "let me in")
            )
            assert right.status_code == 200
            assert client.opened == ["/in"]
    finally:
        await client.close()


@pytest.mark.rule("AC-1", "AC-4")
async def test_declared_networks_are_enforced(server: ServerUnderTest) -> None:
    if server.host not in ("127.0.0.1", "localhost"):
        pytest.skip("needs a server on this machine, reached from 127.0.0.2 as another caller")
    probe = await MinimalClient.connect(server, _new_id(), V1_HELLO)
    capabilities = probe.server_hello.get("capabilities", [])
    await probe.close()
    if "access" not in capabilities:
        pytest.skip("the server does not list the access capability (AC-1): nothing to enforce")
    connection_id = _new_id()
    hello = {**V1_HELLO, "access": {"deny": ["127.0.0.2/32"]}}
    client = await MinimalClient.connect(server, connection_id, hello)
    try:
        url = f"{server.public_url(connection_id)}/x"
        await _wait_relaying(url, (200,))
        before = len(client.opened)
        transport = httpx.AsyncHTTPTransport(local_address="127.0.0.2")
        async with httpx.AsyncClient(transport=transport, timeout=15) as other:
            assert (await other.get(f"{url}/denied")).status_code == 403
        assert len(client.opened) == before  # AC-4: nothing reached the tunnel
        assert "/x/denied" not in client.opened
    finally:
        await client.close()


@pytest.mark.rule("AC-2", "FR-6")
async def test_a_password_in_clear_is_a_decode_error(server: ServerUnderTest) -> None:
    """AC-2: only bcrypt hashes; a hello with a password in clear breaks the schema."""
    probe = await MinimalClient.connect(server, _new_id(), V1_HELLO)
    capabilities = probe.server_hello.get("capabilities", [])
    await probe.close()
    if "access" not in capabilities:
        pytest.skip("the server does not list the access capability (AC-1)")
    hello = {**V1_HELLO, "access": {"users": {"guest": "let me in"}}}
    client = await MinimalClient.connect(server, _new_id(), hello)
    try:
        await asyncio.wait_for(client.ws.wait_closed(), 15)
        assert client.ws.close_code == 1002
    finally:
        await client.close()
