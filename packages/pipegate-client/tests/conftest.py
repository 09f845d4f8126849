"""Fixtures for the client tests: a fake PipeGate server and a small local app.

The fake server is the ``websockets`` server API around a
``pipegate_protocol.Connection(Role.SERVER)``; tests drive it stream by stream, so
they can check exactly what the client sends. The local app is aiohttp.web on a free
127.0.0.1 port.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import socket
import ssl
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

import pytest
from aiohttp import WSMsgType, web
from pipegate_client import ClientSettings, TunnelClient
from pipegate_protocol import (
    Connection,
    Data,
    Hello,
    Limits,
    Message,
    ProtocolVersion,
    RemoteProtocolError,
    Reset,
    Response,
    Role,
    StreamKind,
    WebSocketClose,
    WebSocketData,
    WindowUpdate,
    extract_client_token,
)
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request
from websockets.http11 import Response as HttpResponse

TOKEN = "test-token"
WAIT = 10.0  # upper bound for any single wait in these tests


@dataclass
class StreamState:
    response: asyncio.Future[Response]
    items: asyncio.Queue[Data | WebSocketData | WebSocketClose | Reset] = field(
        default_factory=asyncio.Queue
    )
    window: asyncio.Event = field(default_factory=asyncio.Event)


class FakeTunnel:
    """The server end of one accepted tunnel."""

    def __init__(
        self,
        websocket: ServerConnection,
        limits: Limits,
        public_url: str | None,
        hello_extras: dict[str, Any] | None = None,
    ):
        self.ws = websocket
        self.conn = Connection(
            Role.SERVER,
            limits=limits,
            connection_id=websocket.request.path.rsplit("/", 1)[-1] if websocket.request else "",
            public_url=public_url,
            **(hello_extras or {}),
        )
        self.client_hello: asyncio.Future[Hello] = asyncio.get_running_loop().create_future()
        self.streams: dict[int, StreamState] = {}
        self.received: list[Message] = []
        self.closed = asyncio.Event()
        #: When True, nothing the core queues is sent (e.g. to ignore pings).
        self.mute = False
        self.protocol_error: RemoteProtocolError | None = None

    async def flush(self) -> None:
        for message in self.conn.data_to_send():
            if not self.mute:
                await self.ws.send(message)
        if self.conn.goaway_received is not None and self.conn.open_streams == 0:
            # Like the real server: the client is leaving and nothing is open any more.
            await self.ws.close(1000, "go-away received and no streams left")

    async def serve(self) -> None:
        try:
            await self.flush()  # our hello
            async for payload in self.ws:
                try:
                    message = self.conn.receive(payload)
                except RemoteProtocolError as exc:
                    self.protocol_error = exc
                    await self.ws.close(int(exc.close_code), exc.reason)
                    break
                if message is None:
                    continue
                self.received.append(message)
                self._route(message)
                await self.flush()
        except ConnectionClosed:
            pass
        finally:
            self.closed.set()
            for state in self.streams.values():
                state.window.set()
                if not state.response.done():
                    state.response.cancel()

    def _route(self, message: Message) -> None:
        if isinstance(message, Hello):
            self.client_hello.set_result(message)
            return
        stream_id = getattr(message, "stream_id", None)
        state = self.streams.get(stream_id) if stream_id is not None else None
        if state is None:
            return
        if isinstance(message, Response):
            if message.status >= 200 or message.status == 101:
                state.response.set_result(message)
        elif isinstance(message, WindowUpdate):
            state.window.set()
        elif isinstance(message, Data | WebSocketData | WebSocketClose | Reset):
            if isinstance(message, Reset) and not state.response.done():
                state.response.set_exception(AssertionError(f"stream reset: {message}"))
            state.items.put_nowait(message)
            state.window.set()

    # -------------------------------------------------------------- test API

    async def ready(self) -> Hello:
        return await asyncio.wait_for(asyncio.shield(self.client_hello), WAIT)

    async def open(
        self,
        method: str = "GET",
        path: str = "/",
        query: str = "",
        headers: list[tuple[str, str]] | None = None,
        *,
        body: bytes | None = None,
        kind: StreamKind = StreamKind.HTTP,
        end_stream: bool | None = None,
    ) -> int:
        await self.ready()
        if end_stream is None:
            end_stream = body is None
        stream_id = self.conn.open_stream(
            method=method,
            path=path,
            query=query,
            headers=headers or [],
            kind=kind,
            end_stream=end_stream,
        )
        self.streams[stream_id] = StreamState(asyncio.get_running_loop().create_future())
        await self.flush()
        if body is not None:
            await self.send_body(stream_id, body, end_stream=True)
        return stream_id

    async def send_body(self, stream_id: int, data: bytes, *, end_stream: bool) -> None:
        """Send body bytes within the client's window, waiting for window updates."""
        state = self.streams[stream_id]
        offset = 0
        while True:
            size = min(
                len(data) - offset, self.conn.send_window(stream_id), self.conn.max_data_size
            )
            if size == 0 and offset < len(data):
                state.window.clear()
                await asyncio.wait_for(state.window.wait(), WAIT)
                if not self.conn.is_open(stream_id):
                    raise AssertionError("stream closed while sending")
                continue
            last = offset + size == len(data)
            self.conn.send_data(
                stream_id, data[offset : offset + size], end_stream=end_stream and last
            )
            offset += size
            await self.flush()
            if last:
                return

    async def response(self, stream_id: int) -> Response:
        return await asyncio.wait_for(asyncio.shield(self.streams[stream_id].response), WAIT)

    async def next_item(self, stream_id: int) -> Data | WebSocketData | WebSocketClose | Reset:
        return await asyncio.wait_for(self.streams[stream_id].items.get(), WAIT)

    async def read_body(self, stream_id: int, *, acknowledge: bool = True) -> bytes:
        chunks = []
        while True:
            item = await self.next_item(stream_id)
            if isinstance(item, Reset):
                raise AssertionError(f"stream reset: {item}")
            assert isinstance(item, Data)
            chunks.append(item.data)
            if acknowledge:
                self.conn.acknowledge(stream_id, len(item.data))
                await self.flush()
            if item.end_stream:
                return b"".join(chunks)

    async def request(self, *args: Any, **kwargs: Any) -> tuple[Response, bytes]:
        stream_id = await self.open(*args, **kwargs)
        head = await self.response(stream_id)
        body = b"" if head.end_stream else await self.read_body(stream_id)
        return head, body


class FakeServer:
    """A websockets server that accepts tunnels like a PipeGate server would."""

    def __init__(
        self,
        *,
        token: str = TOKEN,
        limits: Limits | None = None,
        public_url: str | None = "https://public.example/node",
    ) -> None:
        self.token = token
        self.limits = limits or Limits()
        self.public_url = public_url
        #: More arguments for the server hello's Connection (capabilities, hostnames,
        #: public_urls), as a server with the RT extensions sends them.
        self.hello_extras: dict[str, Any] = {}
        #: The headers of every upgrade request, in order.
        self.requests: list[list[tuple[str, str]]] = []
        self.tunnels: asyncio.Queue[FakeTunnel] = asyncio.Queue()
        self.attempts = 0
        #: Statuses to answer the next upgrade requests with, in order (then accept).
        self.refusals: list[int] = []
        #: Called with each accepted tunnel instead of the default serve loop, if set.
        self.handler: Callable[[FakeTunnel], Any] | None = None
        self.port = 0
        #: Serve wss:// with this context when set.
        self.ssl_context: ssl.SSLContext | None = None
        self._server: Server | None = None

    def url(self, connection_id: str = "node") -> str:
        scheme = "wss" if self.ssl_context is not None else "ws"
        return f"{scheme}://127.0.0.1:{self.port}/{connection_id}"

    def _process_request(
        self, connection: ServerConnection, request: Request
    ) -> HttpResponse | None:
        self.attempts += 1
        self.requests.append(list(request.headers.raw_items()))
        if self.refusals:
            status = self.refusals.pop(0)
            return connection.respond(HTTPStatus(status), f"refused with {status}\n")
        token = extract_client_token(request.headers.raw_items())
        if token is None:
            return connection.respond(HTTPStatus.UNAUTHORIZED, "missing client token\n")
        if token != self.token:
            return connection.respond(HTTPStatus.FORBIDDEN, "wrong client token\n")
        return None

    async def _handle(self, websocket: ServerConnection) -> None:
        tunnel = FakeTunnel(websocket, self.limits, self.public_url, self.hello_extras)
        self.tunnels.put_nowait(tunnel)
        if self.handler is not None:
            await self.handler(tunnel)
        else:
            await tunnel.serve()

    async def start(self, port: int = 0) -> None:
        self._server = await serve(
            self._handle,
            "127.0.0.1",
            port,
            subprotocols=[ProtocolVersion.V1.value],  # type: ignore[list-item]
            process_request=self._process_request,
            compression=None,
            ping_interval=None,
            max_size=None,
            ssl=self.ssl_context,
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def next_tunnel(self) -> FakeTunnel:
        tunnel = await asyncio.wait_for(self.tunnels.get(), WAIT)
        await tunnel.ready()
        return tunnel


# ---------------------------------------------------------------------- local app


class LocalApp:
    """State the local app exposes to tests."""

    def __init__(self) -> None:
        self.slow_started = asyncio.Event()
        self.slow_cancelled = asyncio.Event()
        self.upload_chunks: list[int] = []
        #: Raw paths of every echo request, in order.
        self.echoed: list[str] = []
        #: The Host of every WebSocket handshake, in order.
        self.ws_hosts: list[str] = []

    def requests_seen(self, raw_path: str) -> int:
        return self.echoed.count(raw_path)


def make_local_app(state: LocalApp) -> web.Application:
    async def echo(request: web.Request) -> web.Response:
        state.echoed.append(request.raw_path)
        body = await request.read()
        return web.json_response(
            {
                "method": request.method,
                "raw_path": request.raw_path,
                "headers": [
                    [k.decode("latin-1"), v.decode("latin-1")] for k, v in request.raw_headers
                ],
                "body_sha256": hashlib.sha256(body).hexdigest(),
                "body_len": len(body),
            }
        )

    async def upload(request: web.Request) -> web.Response:
        digest = hashlib.sha256()
        total = 0
        async for chunk in request.content.iter_any():
            digest.update(chunk)
            total += len(chunk)
            state.upload_chunks.append(len(chunk))
        return web.json_response({"len": total, "sha256": digest.hexdigest()})

    async def download(request: web.Request) -> web.StreamResponse:
        size = int(request.query["size"])
        response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        if request.query.get("length") == "1":
            response.content_length = size
        await response.prepare(request)
        block = bytes(range(256)) * 256  # 64 KiB
        sent = 0
        while sent < size:
            piece = block[: min(len(block), size - sent)]
            await response.write(piece)
            sent += len(piece)
        await response.write_eof()
        return response

    async def cookies(request: web.Request) -> web.Response:
        response = web.Response(text="two cookies")
        response.headers.add("Set-Cookie", "a=1; Path=/")
        response.headers.add("Set-Cookie", "b=2; Path=/")
        response.headers.add("X-Dup", "one")
        response.headers.add("X-Dup", "two")
        return response

    async def status(request: web.Request) -> web.Response:
        code = int(request.match_info["code"])
        return web.Response(status=code, headers={"X-Status": str(code)})

    async def gzip(request: web.Request) -> web.Response:
        import gzip as gz

        data = gz.compress(b"hello gzip")
        return web.Response(body=data, headers={"Content-Encoding": "gzip"})

    async def redirect(request: web.Request) -> web.Response:
        return web.Response(status=302, headers={"Location": "/echo"})

    async def slow(request: web.Request) -> web.StreamResponse:
        state.slow_started.set()
        try:
            await asyncio.sleep(WAIT * 3)
        except asyncio.CancelledError:
            state.slow_cancelled.set()
            raise
        return web.Response(text="too late")

    async def websocket(request: web.Request) -> web.WebSocketResponse:
        state.ws_hosts.append(request.headers.get("Host", ""))
        ws = web.WebSocketResponse(protocols=("chat", "superchat"), max_msg_size=0)
        await ws.prepare(request)
        async for msg in ws:
            if msg.type is WSMsgType.TEXT:
                if msg.data.startswith("close:"):
                    await ws.close(code=int(msg.data[6:]), message=b"bye from app")
                    break
                await ws.send_str(msg.data)
            elif msg.type is WSMsgType.BINARY:
                await ws.send_bytes(msg.data)
        state.ws_close_code = ws.close_code  # type: ignore[attr-defined]
        return ws

    async def websocket_refuse(request: web.Request) -> web.Response:
        return web.Response(status=403, text="no websockets for you")

    app = web.Application()
    app.router.add_route("*", "/echo{tail:.*}", echo)
    app.router.add_post("/upload", upload)
    app.router.add_get("/download", download)
    app.router.add_get("/cookies", cookies)
    app.router.add_route("*", "/status/{code}", status)
    app.router.add_get("/gzip", gzip)
    app.router.add_get("/redirect", redirect)
    app.router.add_get("/slow", slow)
    app.router.add_get("/ws", websocket)
    app.router.add_get("/ws-refuse", websocket_refuse)
    return app


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def unused_port() -> int:
    """A 127.0.0.1 port nothing listens on."""
    return free_port()


@pytest.fixture
async def local_app() -> AsyncIterator[tuple[str, LocalApp]]:
    state = LocalApp()
    runner = web.AppRunner(make_local_app(state), handler_cancellation=True)
    await runner.setup()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    site = web.SockSite(runner, sock)
    await site.start()
    port = sock.getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}", state
    finally:
        await runner.cleanup()


@pytest.fixture
async def fake_server() -> AsyncIterator[FakeServer]:
    server = FakeServer()
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


def make_settings(server: FakeServer, **overrides: Any) -> ClientSettings:
    values: dict[str, Any] = {
        "server_url": server.url(),
        "client_token": TOKEN,
        "backoff_initial": 0.05,
        "backoff_max": 0.2,
        "grace_period": 2.0,
    }
    values.update(overrides)
    return ClientSettings(**values)


@contextlib.asynccontextmanager
async def running_client(
    settings: ClientSettings,
) -> AsyncIterator[tuple[TunnelClient, io.StringIO, asyncio.Task[None]]]:
    """Run a TunnelClient in the background; stop it (and wait) on exit."""
    output = io.StringIO()
    client = TunnelClient(settings, output=output)
    task = asyncio.create_task(client.run())
    try:
        yield client, output, task
    finally:
        client.stop(grace_period=0.5)
        try:
            await asyncio.wait_for(asyncio.shield(task), WAIT)
        except Exception:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


class ClientHarness:
    """What most tests need: the fake server, the local app, and a way to run clients."""

    def __init__(self, server: FakeServer, local_url: str, local: LocalApp) -> None:
        self.server = server
        self.local_url = local_url
        self.local = local

    def settings(self, **overrides: Any) -> ClientSettings:
        overrides.setdefault("local_url", self.local_url)
        return make_settings(self.server, **overrides)

    def run(
        self, settings: ClientSettings | None = None
    ) -> contextlib.AbstractAsyncContextManager[
        tuple[TunnelClient, io.StringIO, asyncio.Task[None]]
    ]:
        return running_client(settings or self.settings())


@pytest.fixture
def harness(fake_server: FakeServer, local_app: tuple[str, LocalApp]) -> ClientHarness:
    return ClientHarness(fake_server, local_app[0], local_app[1])


@pytest.fixture
async def tunnel(
    harness: ClientHarness,
) -> AsyncIterator[tuple[FakeTunnel, TunnelClient, io.StringIO]]:
    """A client connected to the fake server, relaying to the local app."""
    async with harness.run() as (client, output, _task):
        tunnel = await harness.server.next_tunnel()
        await asyncio.wait_for(client.connected.wait(), WAIT)
        yield tunnel, client, output
