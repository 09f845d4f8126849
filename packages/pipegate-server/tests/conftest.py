"""In-process harness for the server tests.

``start_server`` runs the real app under uvicorn on a free 127.0.0.1 port inside the
test's event loop. ``FakeClient`` is a minimal tunnel client built on
``pipegate_protocol.Connection`` and the ``websockets`` library: it obeys flow control
and hands every opened stream to a handler coroutine, so each test scripts exactly
what the "local app" does.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import pytest
import uvicorn
from pipegate_protocol import (
    CAPABILITY_WEBSOCKET,
    Connection,
    Data,
    Limits,
    Open,
    ProtocolVersion,
    Reset,
    Role,
    WebSocketClose,
    WebSocketData,
    WindowUpdate,
)
from pipegate_server import ServerSettings, create_app
from pipegate_server.cli import uvicorn_config
from websockets.asyncio.client import ClientConnection, connect

TOKEN = "test-token-0123456789"


@dataclass
class RunningServer:
    port: int
    app: Any
    server: uvicorn.Server

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def ws_url(self, connection_id: str) -> str:
        return f"ws://127.0.0.1:{self.port}/{connection_id}"

    @property
    def gateway(self) -> Any:
        return self.app.state.gateway


@contextlib.asynccontextmanager
async def start_server(**overrides: Any) -> AsyncIterator[RunningServer]:
    settings = replace(ServerSettings(client_token=TOKEN), **overrides)
    async with serve_app(create_app(settings), settings) as running:
        yield running


@contextlib.asynccontextmanager
async def serve_app(app: Any, settings: ServerSettings) -> AsyncIterator[RunningServer]:
    """``app`` (from ``create_app(settings, ...)``) under uvicorn on a free loopback
    port, as the command line configures it, until the block ends."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn_config(
        app, settings, host="127.0.0.1", port=port, log_level="warning", log_config=None
    )
    server = uvicorn.Server(config)
    server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign,assignment]
    task = asyncio.create_task(server.serve(sockets=[sock]))
    for _ in range(500):
        if server.started or task.done():
            break
        await asyncio.sleep(0.01)
    assert server.started, "server did not start"
    try:
        yield RunningServer(port, app, server)
    finally:
        server.should_exit = True
        try:
            await asyncio.wait_for(task, 10)
        finally:
            sock.close()


@pytest.fixture
async def server() -> AsyncIterator[RunningServer]:
    async with start_server() as running:
        yield running


Handler = Callable[["FakeClient", "ClientStream"], Awaitable[None]]


@dataclass
class ClientStream:
    """The client side of one stream, as a handler sees it."""

    open: Open
    client: FakeClient
    inbox: asyncio.Queue[Any] = field(default_factory=asyncio.Queue)
    window: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def id(self) -> int:
        return self.open.stream_id

    async def read_body(self) -> bytes:
        """The whole request body; credit returned as it is consumed."""
        chunks = []
        if self.open.end_stream:
            return b""
        while True:
            item = await self.inbox.get()
            if isinstance(item, Data):
                chunks.append(item.data)
                self.client.conn.acknowledge(self.id, len(item.data))
                await self.client.flush()
                if item.end_stream:
                    return b"".join(chunks)
            elif isinstance(item, Reset):
                raise ConnectionResetError(item.code.value)

    async def next_item(self) -> Any:
        return await self.inbox.get()

    async def respond(
        self,
        status: int,
        headers: Sequence[tuple[str, str]] = (),
        body: bytes | None = b"",
    ) -> None:
        end = body is not None and len(body) == 0
        self.client.conn.send_response(self.id, status, list(headers), end_stream=end)
        await self.client.flush()
        if body:
            await self.send(body, end_stream=True)

    async def send(
        self, data: bytes, *, end_stream: bool = False, text: bool | None = None
    ) -> None:
        conn = self.client.conn
        view = memoryview(data)
        offset = 0
        while True:
            if not conn.is_open(self.id):
                raise ConnectionResetError("stream gone")
            size = min(len(data) - offset, conn.send_window(self.id), conn.max_data_size)
            if size == 0 and offset < len(data):
                self.window.clear()
                await self.window.wait()
                continue
            last = offset + size == len(data)
            chunk = bytes(view[offset : offset + size])
            if text is None:
                conn.send_data(self.id, chunk, end_stream=end_stream and last)
            else:
                conn.send_websocket_data(self.id, chunk, text=text, fin=last)
            await self.client.flush()
            offset += size
            if last:
                return


class FakeClient:
    def __init__(self, ws: ClientConnection, conn: Connection, handler: Handler) -> None:
        self.ws = ws
        self.conn = conn
        self.handler = handler
        self.streams: dict[int, ClientStream] = {}
        self.tasks: set[asyncio.Task[None]] = set()
        self.received: list[Any] = []
        self.errors: list[Exception] = []
        self.hello = asyncio.Event()

    async def flush(self) -> None:
        for item in self.conn.data_to_send():
            await self.ws.send(item)

    async def run(self) -> None:
        try:
            await self._run()
        except Exception as exc:  # the tunnel ended; tests look at errors
            self.errors.append(exc)

    async def _run(self) -> None:
        if True:
            async for payload in self.ws:
                message = self.conn.receive(payload)
                await self.flush()
                if message is None:
                    continue
                self.received.append(message)
                if isinstance(message, Open):
                    stream = ClientStream(message, self)
                    self.streams[message.stream_id] = stream
                    task = asyncio.create_task(self._handle(stream))
                    self.tasks.add(task)
                    task.add_done_callback(self.tasks.discard)
                elif isinstance(message, WindowUpdate):
                    if message.stream_id in self.streams:
                        self.streams[message.stream_id].window.set()
                elif isinstance(message, Data | Reset | WebSocketData | WebSocketClose):
                    target = self.streams.get(message.stream_id)
                    if target is not None:
                        target.inbox.put_nowait(message)
                        target.window.set()
                elif message.type == "hello":
                    self.hello.set()

    async def _handle(self, stream: ClientStream) -> None:
        try:
            await self.handler(self, stream)
        except Exception as exc:  # recorded for tests that need to know
            self.errors.append(exc)


@contextlib.asynccontextmanager
async def fake_client(
    server: RunningServer,
    connection_id: str,
    handler: Handler,
    *,
    token: str = TOKEN,
    max_streams: int = 128,
    websocket: bool = True,
    headers: dict[str, str] | None = None,
    access: Any = None,
) -> AsyncIterator[FakeClient]:
    ws = await connect(
        server.ws_url(connection_id),
        subprotocols=[ProtocolVersion.V1.value],  # type: ignore[list-item]
        additional_headers={"Authorization": f"Bearer {token}", **(headers or {})},
        compression=None,
        max_size=None,
    )
    conn = Connection(
        Role.CLIENT,
        capabilities=[CAPABILITY_WEBSOCKET] if websocket else [],
        limits=Limits(max_concurrent_streams=max_streams),
        agent="fake-client",
        access=access,
    )
    client = FakeClient(ws, conn, handler)
    await client.flush()
    runner = asyncio.create_task(client.run())
    await asyncio.wait_for(client.hello.wait(), 5)
    try:
        yield client
    finally:
        await ws.close()
        runner.cancel()
        for task in list(client.tasks):
            task.cancel()
        await asyncio.gather(runner, *client.tasks, return_exceptions=True)


async def echo_handler(client: FakeClient, stream: ClientStream) -> None:
    """Answers with the request head as JSON headers and the body echoed back."""
    import json

    body = await stream.read_body()
    info = {
        "method": stream.open.method,
        "path": stream.open.path,
        "query": stream.open.query,
        "headers": [list(h) for h in stream.open.headers],
        "scheme": stream.open.scheme,
        "client_host": stream.open.client_host,
    }
    await stream.respond(
        200,
        [("content-type", "application/octet-stream"), ("x-echo", json.dumps(info))],
        body,
    )


@dataclass(frozen=True)
class Harness:
    """What test modules use (conftest helpers are not importable by module name)."""

    token: str = TOKEN
    start_server: Any = start_server
    serve_app: Any = serve_app
    fake_client: Any = fake_client
    echo_handler: Any = echo_handler


@pytest.fixture
def pg() -> Harness:
    return Harness()
