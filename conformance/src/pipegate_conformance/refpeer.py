"""Reference protocol peers built directly on :mod:`pipegate_protocol`.

They are *not* our client or server: they are the smallest correct speakers of the
protocol, plus the ability to send any raw frame, so that a server can be tested
without any client and a client without any server.

* :class:`ReferenceClient` opens a tunnel to a server under test, completes the
  handshake with a :class:`~pipegate_protocol.Connection` in the client role, answers
  streams by hand and can break every rule on request (:meth:`ReferenceClient.send_raw`).
* :class:`ReferenceServer` accepts tunnels from a client under test (checking the
  token and version like a real server), completes the hello exchange and lets a test
  open streams and send raw frames to the client, or turn hostile: flood it with
  WebSocket pings while reading nothing (:meth:`ServerSession.flood_pings`).
* :class:`ReferenceTunnel` keeps a reference client connected in a thread of its own
  and answers every HTTP stream with the request's raw path and query as JSON: a
  tunnel through the server under test that needs no client under test.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import websockets
from pipegate_protocol import (
    CAPABILITY_WEBSOCKET,
    Connection,
    Data,
    Hello,
    Limits,
    Message,
    Open,
    Ping,
    Pong,
    ProtocolVersion,
    RemoteProtocolError,
    Role,
    decode,
    encode,
    extract_client_token,
    negotiate_version,
)
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.http11 import Request
from websockets.http11 import Response as HttpResponse
from websockets.typing import Subprotocol

__all__ = [
    "OFFERED",
    "Observed",
    "PeerClosed",
    "ReferenceClient",
    "ReferenceServer",
    "ReferenceTunnel",
    "ServerSession",
    "TunnelRefused",
    "connect_reference_client",
]


class TunnelRefused(Exception):
    """The server answered the upgrade with a non-101 status."""

    def __init__(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        super().__init__(f"upgrade refused with {status}: {body[:200]!r}")
        self.status = status
        self.body = body
        self.headers = headers or {}


class PeerClosed(Exception):
    """The WebSocket closed while a test waited for a message."""

    def __init__(self, code: int | None, reason: str) -> None:
        super().__init__(f"tunnel closed with code {code} {reason!r}")
        self.code = code
        self.reason = reason


async def _recv(ws: ClientConnection | ServerConnection, within: float) -> str | bytes:
    try:
        async with asyncio.timeout(within):
            return await ws.recv()
    except websockets.ConnectionClosed as exc:
        rcvd = exc.rcvd
        raise PeerClosed(rcvd.code if rcvd else None, rcvd.reason if rcvd else "") from None


async def _wait_closed(
    ws: ClientConnection | ServerConnection, within: float, conn: Connection | None = None
) -> tuple[int | None, str]:
    """Read messages until the peer closes; returns the code and reason it sent. Pings
    are still answered (through ``conn``) so that a slow close is not mistaken for
    silence."""
    try:
        async with asyncio.timeout(within):
            while True:
                payload = await ws.recv()
                if conn is not None and isinstance(payload, str) and '"ping"' in payload:
                    with contextlib.suppress(Exception):
                        decoded = decode(payload)
                        if isinstance(decoded, Ping):
                            await ws.send(encode(Pong(id=decoded.id)))
    except websockets.ConnectionClosed as exc:
        return (exc.rcvd.code, exc.rcvd.reason) if exc.rcvd else (None, "")


@dataclass
class _Endpoint:
    """What both reference peers share: a WebSocket, a core connection and helpers."""

    ws: Any
    conn: Connection
    received: list[Message] = field(default_factory=list)
    #: The close reason the peer sent, once :meth:`wait_closed` returned.
    close_reason: str = ""

    async def flush(self) -> None:
        for item in self.conn.data_to_send():
            await self.ws.send(item)

    async def send_raw(self, payload: str | bytes) -> None:
        """Send one WebSocket message as is, bypassing every rule of the core."""
        await self.ws.send(payload)

    async def next_message(self, within: float = 10.0) -> Message:
        """The next message the core accepts (pongs to pings are sent automatically)."""
        while True:
            payload = await _recv(self.ws, within)
            message = self.conn.receive(payload)
            await self.flush()
            if message is not None:
                self.received.append(message)
                return message

    async def next_of(self, kind: type[Any], within: float = 10.0) -> Any:
        """Skip pings/pongs/window updates until a message of ``kind`` arrives."""
        async with asyncio.timeout(within):
            while True:
                message = await self.next_message(within)
                if isinstance(message, kind):
                    return message

    async def read_body(self, stream_id: int, within: float = 10.0) -> bytes:
        """Collect body data on ``stream_id`` until end of stream, acknowledging it."""
        parts: list[bytes] = []
        async with asyncio.timeout(within):
            while True:
                message = await self.next_message(within)
                if isinstance(message, Data) and message.stream_id == stream_id:
                    parts.append(message.data)
                    self.conn.acknowledge(stream_id, len(message.data))
                    await self.flush()
                    if message.end_stream:
                        return b"".join(parts)

    async def wait_closed(self, within: float = 10.0) -> int | None:
        """Wait until the peer closes the tunnel; the close code it sent."""
        code, self.close_reason = await _wait_closed(self.ws, within, self.conn)
        return code

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.ws.close()


@dataclass
class ReferenceClient(_Endpoint):
    """The client end of a tunnel to a server under test."""

    server_hello: Hello | None = None


async def connect_reference_client(
    ws_url: str,
    token: str | None,
    *,
    versions: Sequence[str] = (ProtocolVersion.V1.value,),
    limits: Limits | None = None,
    capabilities: Sequence[str] = (CAPABILITY_WEBSOCKET,),
    token_header: str = "Authorization",
    send_hello: bool = True,
    ssl_context: ssl.SSLContext | None = None,
    within: float = 10.0,
    extra_headers: Sequence[tuple[str, str]] = (),
    agent: str = "pipegate-conformance-reference-client",
) -> ReferenceClient:
    """Open a tunnel to ``ws_url`` (``ws://host/<id>``) and exchange hellos.

    Raises :class:`TunnelRefused` when the server answers the upgrade with another
    status than 101. With ``send_hello=False`` the tunnel stops right after the
    upgrade, before either hello is read.
    """
    headers: list[tuple[str, str]] = []
    if token is not None:
        value = f"Bearer {token}" if token_header.lower() == "authorization" else token
        headers.append((token_header, value))
    headers.extend(extra_headers)
    try:
        ws = await ws_connect(
            ws_url,
            additional_headers=headers,
            subprotocols=list(versions) or None,  # type: ignore[arg-type]
            max_size=None,
            open_timeout=within,
            ping_interval=None,
            ssl=ssl_context,
            compression=None,
        )
    except websockets.InvalidStatus as exc:
        response = exc.response
        refusal_headers = {name.lower(): value for name, value in response.headers.raw_items()}
        raise TunnelRefused(
            response.status_code, bytes(response.body or b""), refusal_headers
        ) from None
    conn = Connection(
        Role.CLIENT,
        limits=limits,
        capabilities=capabilities,
        agent=agent,
    )
    peer = ReferenceClient(ws, conn)
    if send_hello:
        await peer.flush()
        peer.server_hello = await peer.next_of(Hello, within)
    return peer


@dataclass
class ServerSession(_Endpoint):
    """One tunnel a client under test opened to the :class:`ReferenceServer`."""

    request: Request | None = None
    client_hello: Hello | None = None
    closed: asyncio.Event = field(default_factory=asyncio.Event)

    async def flood_pings(
        self,
        *,
        total_bytes: int,
        seconds: float,
        payload: bytes = b"p" * 125,
        own_buffer_cap: int = 16 * 1024 * 1024,
    ) -> int:
        """Turn hostile: stop reading from the client, then write WebSocket ping frames
        (each of ``payload``) until ``total_bytes`` were handed over or ``seconds``
        passed, never holding more than ``own_buffer_cap`` unsent bytes here (a client
        that stops reading makes our own buffer fill; we then wait). Returns the bytes
        the socket took (handed over minus what is still in our buffer).

        A client that answers every ping while nobody reads its pongs buffers them
        without bound; a correct one stops reading (or closes) once its unread writes
        pass a bound, so that these pings pile up here instead.
        """
        loop = asyncio.get_running_loop()
        transport = self.ws.transport
        transport.pause_reading()
        frame = bytes([0x89, len(payload)]) + payload  # FIN + ping, unmasked (server)
        chunk = frame * max(1, (256 * 1024) // len(frame))
        handed = 0
        deadline = loop.time() + seconds
        while handed < total_bytes and loop.time() < deadline and not transport.is_closing():
            if transport.get_write_buffer_size() > own_buffer_cap:
                await asyncio.sleep(0.02)
                continue
            transport.write(chunk)
            handed += len(chunk)
            await asyncio.sleep(0)
        return handed - int(transport.get_write_buffer_size())

    def abort(self) -> None:
        """Drop the connection at once (no close handshake)."""
        self.ws.transport.abort()


class _Offered:
    """Type of :data:`OFFERED`."""


#: Select the negotiated version as subprotocol, as a correct server does.
OFFERED = _Offered()


@dataclass
class Observed:
    """What a client did on a tunnel the reference server did not run as a session.

    ``close_code`` is the code of the client's close frame, ``None`` when the
    connection ended without one, ``-1`` when it was still open after the wait.
    """

    messages: list[str | bytes]
    close_code: int | None
    seconds: float

    @property
    def sent_hello(self) -> bool:
        return any(isinstance(m, str) and '"hello"' in m for m in self.messages)


class ReferenceServer:
    """A minimal PipeGate server: handshake rules, hello exchange, nothing else.

    Every accepted tunnel appears in :attr:`sessions` (an asyncio queue) once the
    client's hello has arrived; the test then drives it. Upgrades that break the
    handshake rules are refused with the status the spec gives (401, 403, 400, 404).
    """

    def __init__(
        self,
        token: str,
        *,
        host: str = "127.0.0.1",
        limits: Limits | None = None,
        hello_timeout: float = 10.0,
        refuse_with: int | None = None,
        public_url: str | None = None,
        subprotocol: str | _Offered | None = OFFERED,
        hello_payload: str | None = None,
    ) -> None:
        self.token = token
        self.refuse_with = refuse_with
        #: The subprotocol the 101 selects: ``OFFERED`` (the negotiated version, as a
        #: real server does), ``None`` (no subprotocol) or any token (HS-3 checks).
        self.subprotocol = subprotocol
        #: Sent instead of our hello (``""``: send no hello at all, HS-10). A tunnel
        #: with such a hello, or with a wrong subprotocol, is not a session: what the
        #: client did is recorded in :attr:`observed` instead.
        self.hello_payload = hello_payload
        #: Upgrade requests that reached the server (refused ones included).
        self.upgrades = 0
        #: One :class:`Observed` per tunnel that was not run as a session.
        self.observed: asyncio.Queue[Observed] = asyncio.Queue()
        #: The public URL the hello announces (a hostile one for escape checks).
        self.public_url = public_url
        self.host = host
        self.limits = limits
        self.hello_timeout = hello_timeout
        self.port = 0
        self.sessions: asyncio.Queue[ServerSession] = asyncio.Queue()
        self.refusals: list[int] = []
        self._server: Server | None = None

    async def __aenter__(self) -> ReferenceServer:
        select = None if self.subprotocol is OFFERED else self._select_subprotocol
        self._server = await serve(
            self._handler,
            self.host,
            0,
            subprotocols=[version.value for version in ProtocolVersion],  # type: ignore[misc]
            select_subprotocol=select,
            process_request=self._process_request,
            max_size=None,
            ping_interval=None,
            compression=None,
        )
        self.port = next(iter(self._server.sockets)).getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                async with asyncio.timeout(5):
                    await self._server.wait_closed()

    def url(self, connection_id: str) -> str:
        return f"ws://{self.host}:{self.port}/{connection_id}"

    def _select_subprotocol(
        self, connection: ServerConnection, offered: Sequence[Subprotocol]
    ) -> Subprotocol | None:
        assert not isinstance(self.subprotocol, _Offered)
        return None if self.subprotocol is None else Subprotocol(self.subprotocol)

    def _process_request(
        self, connection: ServerConnection, request: Request
    ) -> HttpResponse | None:
        self.upgrades += 1
        token = extract_client_token(request.headers.raw_items())
        offered = [
            item.strip()
            for value in request.headers.get_all("Sec-WebSocket-Protocol")
            for item in value.split(",")
        ]
        status, reason = 0, ""
        if self.refuse_with is not None:
            status, reason = self.refuse_with, "refused by the reference server"
        elif token is None:
            status, reason = 401, "missing client token"
        elif token != self.token:
            status, reason = 403, "wrong client token"
        elif negotiate_version(offered) is None:
            status, reason = 400, "no common protocol version"
        if status:
            self.refusals.append(status)
            return connection.respond(status, reason + "\n")
        return None

    async def _handler(self, ws: ServerConnection) -> None:
        if self.subprotocol is not OFFERED or self.hello_payload is not None:
            await self._observe(ws)
            return
        version = ProtocolVersion(ws.subprotocol) if ws.subprotocol else ProtocolVersion.V1
        connection_id = (ws.request.path if ws.request else "/x").strip("/") or "x"
        conn = Connection(
            Role.SERVER,
            version=version,
            limits=self.limits,
            agent="pipegate-conformance-reference-server",
            connection_id=connection_id,
            public_url=self.public_url or f"http://{self.host}:{self.port}/{connection_id}",
        )
        session = ServerSession(ws, conn, request=ws.request)
        try:
            await session.flush()
            session.client_hello = await session.next_of(Hello, self.hello_timeout)
        except (PeerClosed, RemoteProtocolError, TimeoutError):
            return
        await self.sessions.put(session)
        await ws.wait_closed()
        session.closed.set()

    async def _observe(self, ws: ServerConnection, within: float = 60.0) -> None:
        """Send the configured hello (if any), then record what the client sends until
        it closes: its messages and its close code, and how long that took."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        if self.hello_payload:
            await ws.send(self.hello_payload)
        messages: list[str | bytes] = []
        code: int | None = None
        try:
            async with asyncio.timeout(within):
                while True:
                    messages.append(await ws.recv())
        except websockets.ConnectionClosed as exc:
            code = exc.rcvd.code if exc.rcvd else None
        except TimeoutError:
            code = -1
        await self.observed.put(Observed(messages, code, loop.time() - started))

    async def next_observed(self, within: float = 60.0) -> Observed:
        """What the client did on the next tunnel that was not run as a session."""
        async with asyncio.timeout(within):
            return await self.observed.get()

    async def next_session(self, within: float = 20.0) -> ServerSession:
        """The next tunnel whose hello exchange completed."""
        async with asyncio.timeout(within):
            return await self.sessions.get()


class ReferenceTunnel:
    """A reference client serving a tunnel from a background thread.

    Every HTTP stream is answered ``200`` with ``{"raw_path": ..., "query": ...}`` as
    JSON (the shape of the origin app's ``/echo``); request bodies are read and
    credited. :meth:`start` returns once the hellos are exchanged; :meth:`stop` closes
    the tunnel and joins the thread.
    """

    def __init__(
        self,
        ws_url: str,
        token: str,
        *,
        public_url_base: str,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.ws_url = ws_url
        self.token = token
        self.connection_id = ws_url.rstrip("/").rsplit("/", 1)[-1]
        #: The path URL callers use: ``<server http base>/<connection id>``.
        self.public_url = f"{public_url_base}/{self.connection_id}"
        self.ssl_context = ssl_context
        self.streams_answered = 0
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="reference-tunnel", daemon=True)

    def start(self, timeout: float = 20.0) -> ReferenceTunnel:
        self._thread.start()
        if not self._ready.wait(timeout):
            raise TimeoutError(f"reference tunnel {self.ws_url} not up after {timeout}s")
        if self._error is not None:
            raise RuntimeError(f"reference tunnel {self.ws_url}: {self._error!r}")
        return self

    def stop(self, timeout: float = 10.0) -> None:
        if self._loop is not None and self._stopping is not None:
            with contextlib.suppress(RuntimeError):  # the loop may have ended already
                self._loop.call_soon_threadsafe(self._stopping.set)
        self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive() and self._error is None

    def _run(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:  # reported by start() or alive
            self._error = exc
        finally:
            self._ready.set()

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        peer = await connect_reference_client(self.ws_url, self.token, ssl_context=self.ssl_context)
        self._ready.set()
        stopper = asyncio.ensure_future(self._stopping.wait())
        try:
            while not self._stopping.is_set():
                receiver = asyncio.ensure_future(_recv(peer.ws, 3600.0))
                await asyncio.wait({receiver, stopper}, return_when=asyncio.FIRST_COMPLETED)
                if not receiver.done():
                    receiver.cancel()
                    break
                message = peer.conn.receive(receiver.result())
                if isinstance(message, Open):
                    body = json.dumps({"raw_path": message.path, "query": message.query})
                    peer.conn.send_response(
                        message.stream_id, 200, [("content-type", "application/json")]
                    )
                    peer.conn.send_data(message.stream_id, body.encode(), end_stream=True)
                    self.streams_answered += 1
                elif isinstance(message, Data) and message.data:
                    peer.conn.acknowledge(message.stream_id, len(message.data))
                await peer.flush()
        finally:
            stopper.cancel()
            await peer.close()
