"""Lifecycle of a tunnel at each side: handshake failures, timers, shutdown and
revocation (issue 15: the client behaviours the first rounds did not check).

Client checks run against the reference server (no server under test involved);
server checks run with the reference client (no client under test involved). Timers
of the implementation under test cannot be configured through the suite's command
templates, so each timer check measures the implementation's own timer once, with a
generous bound: the hello timeout (HS-10, RECOMMENDED 10 s) and the heartbeat
(LV-2, RECOMMENDED timeout 20-30 s).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import signal
import time
from collections.abc import AsyncIterator

import httpx
import pytest
import websockets
from pipegate_conformance.harness import ManagedProcess
from pipegate_conformance.plugin import Implementations, Origin, ServerUnderTest
from pipegate_conformance.refpeer import (
    PeerClosed,
    ReferenceClient,
    ReferenceServer,
    ServerSession,
    connect_reference_client,
)
from pipegate_conformance.support import wait_for_origin_event
from pipegate_protocol import (
    Data,
    GoAway,
    GoAwayReason,
    Hello,
    Limits,
    Open,
    Pong,
    ProtocolVersion,
    Response,
    Role,
    StreamKind,
    WebSocketData,
    encode,
)
from pipegate_protocol import Open as OpenMessage

#: Bound for a timer whose RECOMMENDED value is 10 s (HS-10).
HELLO_TIMEOUT_BOUND = 40.0
#: Bound for the heartbeat: RECOMMENDED timeout 20-30 s after the last message (LV-2).
HEARTBEAT_BOUND = 90.0
#: The largest message a side may send before the peer's hello (FR-10): the smallest
#: max_frame_size a hello may state (HS-5).
BEFORE_HELLO_MAX = 16384
#: A ping whose ``id`` member appears twice (FR-9): the receiver answers 2 (the last)
#: or closes with 1002, never answers 1 (the first).
DUPLICATE_ID_PING = '{"type": "ping", "id": 1, "id": 2}'


def _size(message: str | bytes) -> int:
    """A WebSocket message's size in bytes (UTF-8 for text, FR-5)."""
    return len(message.encode()) if isinstance(message, str) else len(message)


def _server_hello(connection_id: str = "refnode") -> str:
    hello = encode(
        Hello(
            version=ProtocolVersion.V1,
            role=Role.SERVER,
            connection_id=connection_id,
            public_url=f"http://127.0.0.1/{connection_id}",
        )
    )
    assert isinstance(hello, str)
    return hello


@pytest.fixture
async def driven_session(
    implementations: Implementations, origin: Origin
) -> AsyncIterator[tuple[ReferenceServer, ServerSession, ManagedProcess]]:
    async with ReferenceServer(implementations.token) as ref:
        process = implementations.start_client(origin.url, ref.url("refnode"))
        try:
            try:
                session = await ref.next_session(within=30.0)
            except TimeoutError:
                pytest.fail(f"the client never completed its hello:\n{process.output()[-2000:]}")
            yield ref, session, process
        finally:
            await asyncio.to_thread(process.stop, 5.0)


# ---------------------------------------------------------------------- client


@pytest.mark.rule("HS-3", "LV-3")
@pytest.mark.side("client")
@pytest.mark.parametrize("selected", [None, "pipegate.v999"], ids=["no-subprotocol", "unoffered"])
async def test_client_stops_on_a_wrong_subprotocol(
    implementations: Implementations,
    origin: Origin,
    selected: str | None,
) -> None:
    """HS-3: a 101 without a subprotocol, or with one the client did not offer: the
    client sends no hello, closes with 1002 (or its library drops the connection
    without a close frame), and stops with a non-zero exit status, without retrying."""
    async with ReferenceServer(implementations.token, subprotocol=selected) as ref:
        process = implementations.start_client(origin.url, ref.url("refnode"))
        try:
            observed = await ref.next_observed(within=30.0)
            code = await asyncio.to_thread(process.wait, 20.0)
        finally:
            await asyncio.to_thread(process.stop, 5.0)
    assert not observed.sent_hello, "HS-3: the client sent its hello over a wrong subprotocol"
    assert observed.close_code in (1002, None), (
        f"HS-3: close with 1002 (or drop the connection), got {observed.close_code}"
    )
    assert code is not None, "HS-3: the client kept running (retrying) after a wrong subprotocol"
    assert code != 0, "HS-3: the client must stop with a non-zero exit status"
    assert ref.upgrades <= 2, f"HS-3: the client retried ({ref.upgrades} upgrades)"


@pytest.mark.rule("HS-6", "ER-2")
@pytest.mark.side("client")
@pytest.mark.parametrize(
    ("hello", "code"),
    [
        (_server_hello().replace('"pipegate.v1"', '"pipegate.v2"'), 4003),
        (_server_hello().replace('"pipegate.v1"', '"Pipegate.V1"'), 4003),
        (_server_hello().replace('"role":"server"', '"role":"client"'), 1002),
    ],
    ids=["other-version", "look-alike-version", "wrong-role"],
)
async def test_client_checks_the_server_hello(
    implementations: Implementations, origin: Origin, hello: str, code: int
) -> None:
    """HS-6 at the client: a server hello naming another version closes with 4003 (also
    when the schema would reject it first); one claiming the client role with 1002."""
    assert hello != _server_hello()
    async with ReferenceServer(implementations.token, hello_payload=hello) as ref:
        process = implementations.start_client(origin.url, ref.url("refnode"))
        try:
            observed = await ref.next_observed(within=30.0)
        finally:
            await asyncio.to_thread(process.stop, 5.0)
    assert observed.close_code == code, f"HS-6: expected {code}, got {observed.close_code}"


@pytest.mark.rule("HS-10", "ER-2", "FR-10")
@pytest.mark.side("client")
async def test_client_hello_timeout(implementations: Implementations, origin: Origin) -> None:
    """HS-10 at the client: a server that accepts the WebSocket but never sends its
    hello is closed with 4004 by the client's own timer (RECOMMENDED 10 s). FR-10:
    everything the client sent meanwhile (its hello, pings if any) is at most 16384
    bytes, as it does not know the server's max_frame_size yet."""
    async with ReferenceServer(implementations.token, hello_payload="") as ref:
        process = implementations.start_client(origin.url, ref.url("refnode"))
        try:
            observed = await ref.next_observed(within=HELLO_TIMEOUT_BOUND + 10)
        finally:
            await asyncio.to_thread(process.stop, 5.0)
    assert observed.sent_hello, "HS-4: the client must send its hello without waiting"
    sizes = [_size(message) for message in observed.messages]
    assert all(size <= BEFORE_HELLO_MAX for size in sizes), (
        f"FR-10: messages of {sizes} bytes before the server's hello"
    )
    assert observed.close_code == 4004, (
        f"HS-10: expected 4004 within {HELLO_TIMEOUT_BOUND} s, got {observed.close_code} "
        f"after {observed.seconds:.1f} s"
    )
    assert observed.seconds <= HELLO_TIMEOUT_BOUND


@pytest.mark.rule("LV-2", "ER-2")
@pytest.mark.side("client")
async def test_client_heartbeat_closes_a_silent_server(
    implementations: Implementations, origin: Origin
) -> None:
    """LV-2 at the client: after the hellos the server goes silent (it answers no ping
    and sends nothing): the client pings and then closes with 4005."""
    async with ReferenceServer(implementations.token, hello_payload=_server_hello()) as ref:
        process = implementations.start_client(origin.url, ref.url("refnode"))
        try:
            observed = await ref.next_observed(within=HEARTBEAT_BOUND + 10)
        finally:
            await asyncio.to_thread(process.stop, 5.0)
    pings = [m for m in observed.messages if isinstance(m, str) and '"ping"' in m]
    assert observed.close_code == 4005, (
        f"LV-2: expected 4005 within {HEARTBEAT_BOUND} s, got {observed.close_code} "
        f"after {observed.seconds:.1f} s"
    )
    assert pings, "LV-2: the client closed for silence without pinging first"


@pytest.mark.rule("LV-1", "FR-8")
@pytest.mark.side("client")
@pytest.mark.parametrize("ping_id", [2**53 + 1, 2**63 - 1, 12345678901234567])
async def test_client_echoes_ping_ids_exactly(
    driven_session: tuple[ReferenceServer, ServerSession, ManagedProcess], ping_id: int
) -> None:
    """LV-1/FR-8: ping ids above 2^53 come back exactly (a client that reads numbers as
    IEEE doubles answers 9007199254740992 to 9007199254740993 and fails)."""
    _, session, _ = driven_session
    await session.send_raw(f'{{"type":"ping","id":{ping_id}}}')
    async with asyncio.timeout(10.0):
        while True:
            payload = await session.ws.recv()
            if isinstance(payload, str) and '"pong"' in payload:
                break
    assert json.loads(payload)["id"] == ping_id, f"LV-1: pong {payload} for ping {ping_id}"


@pytest.mark.rule("FR-9", "LV-1")
@pytest.mark.side("client")
async def test_client_never_uses_the_first_of_duplicate_members(
    driven_session: tuple[ReferenceServer, ServerSession, ManagedProcess],
) -> None:
    """FR-9 at the client: a ping with two ``id`` members is answered with the last
    (pong 2) or rejected as a decode error (close 1002); pong 1 breaks the rule."""
    _, session, _ = driven_session
    await session.send_raw(DUPLICATE_ID_PING)
    try:
        async with asyncio.timeout(10.0):
            while True:
                payload = await session.ws.recv()
                if isinstance(payload, str) and '"pong"' in payload:
                    break
        answer: int | str = json.loads(payload)["id"]
    except websockets.ConnectionClosed as exc:
        answer = f"closed {exc.rcvd.code if exc.rcvd else None}"
    assert answer in (2, "closed 1002"), f"FR-9: the ping with ids 1 and 2 got {answer}"


@pytest.mark.rule("LV-5", "LV-4")
@pytest.mark.side("client")
async def test_client_stops_gracefully_on_sigterm(
    driven_session: tuple[ReferenceServer, ServerSession, ManagedProcess],
) -> None:
    """LV-5: on SIGTERM the client sends goaway (reason shutdown), closes the tunnel
    with 1000 and exits with status 0, without reconnecting."""
    ref, session, process = driven_session
    process.signal(signal.SIGTERM)
    goaways: list[GoAway] = []
    closed: int | None = -1
    try:
        async with asyncio.timeout(45.0):
            while True:
                message = await session.next_message(within=45.0)
                if isinstance(message, GoAway):
                    goaways.append(message)
    except PeerClosed as exc:
        closed = exc.code
    code = await asyncio.to_thread(process.wait, 45.0)
    assert [g.reason for g in goaways] == [GoAwayReason.SHUTDOWN], (
        f"LV-5: expected one goaway (shutdown), got {goaways}"
    )
    assert closed == 1000, f"LV-5: a stopping client closes with 1000, got {closed}"
    assert code == 0, f"LV-5: exit status after SIGTERM must be 0, got {code}"
    assert ref.sessions.empty(), "LV-5: the client reconnected while stopping"


@pytest.mark.rule("LV-6")
@pytest.mark.side("client")
async def test_client_stops_after_token_revoked(
    driven_session: tuple[ReferenceServer, ServerSession, ManagedProcess],
) -> None:
    """LV-6: goaway token_revoked and close 4401: the client stops with a non-zero exit
    status and does not reconnect."""
    ref, session, process = driven_session
    upgrades = ref.upgrades
    await session.send_raw(
        '{"type":"goaway","last_stream_id":0,"reason":"token_revoked","message":"revoked"}'
    )
    await session.ws.close(4401, "token revoked")
    code = await asyncio.to_thread(process.wait, 20.0)
    assert code is not None, "LV-6: the client kept running after 4401"
    assert code != 0, "LV-6: the client must exit with a non-zero status after 4401"
    assert ref.upgrades == upgrades, "LV-6: the client reconnected after 4401"


# ---------------------------------------------------------------------- server


@pytest.mark.rule("HS-10", "ER-2")
@pytest.mark.side("server")
async def test_server_hello_timeout(server: ServerUnderTest) -> None:
    """HS-10 at the server: a client that never sends its hello is closed with 4004."""
    peer = await connect_reference_client(
        server.ws_url(f"ref-{time.monotonic_ns()}"),
        server.token,
        send_hello=False,
        ssl_context=server.ssl_context(),
    )
    started = time.monotonic()
    try:
        code = await peer.wait_closed(within=HELLO_TIMEOUT_BOUND + 10)
    finally:
        await peer.close()
    assert code == 4004, f"HS-10: expected 4004, got {code}"
    assert time.monotonic() - started <= HELLO_TIMEOUT_BOUND


@pytest.mark.rule("LV-2", "ER-2")
@pytest.mark.side("server")
async def test_server_heartbeat_closes_a_silent_client(server: ServerUnderTest) -> None:
    """LV-2 at the server: after the hellos the reference client reads but answers
    nothing; the server pings and then closes with 4005."""
    peer = await connect_reference_client(
        server.ws_url(f"ref-{time.monotonic_ns()}"),
        server.token,
        ssl_context=server.ssl_context(),
    )
    pings = 0
    code: int | None = -1
    try:
        async with asyncio.timeout(HEARTBEAT_BOUND):
            while True:
                payload = await peer.ws.recv()
                pings += isinstance(payload, str) and '"ping"' in payload
    except websockets.ConnectionClosed as exc:
        code = exc.rcvd.code if exc.rcvd else None
    finally:
        await peer.close()
    assert code == 4005, f"LV-2: expected 4005 within {HEARTBEAT_BOUND} s, got {code}"
    assert pings, "LV-2: the server closed for silence without pinging first"


@pytest.mark.rule("HD-11", "ST-4")
@pytest.mark.side("server")
async def test_server_busy_tunnel_gives_503(server: ServerUnderTest) -> None:
    """HD-11: a tunnel whose client allows one stream and holds it: the next caller gets
    503 with Retry-After (after at most a short wait), and never reaches the tunnel."""
    connection_id = f"ref-{time.monotonic_ns()}"
    peer = await connect_reference_client(
        server.ws_url(connection_id),
        server.token,
        limits=Limits(max_concurrent_streams=1),
        ssl_context=server.ssl_context(),
    )
    url = f"{server.public_url(connection_id)}/busy"
    first = asyncio.create_task(asyncio.to_thread(httpx.get, url, timeout=90.0))
    try:
        held = await peer.next_of(Open, within=20.0)
        second = await asyncio.to_thread(httpx.get, url, timeout=90.0)
        assert second.status_code == 503, f"HD-11: expected 503, got {second.status_code}"
        assert second.headers.get("retry-after", "").strip().isdigit(), (
            "HD-11: 503 needs Retry-After in seconds"
        )
        peer.conn.send_response(held.stream_id, 204, end_stream=True)
        await peer.flush()
        assert (await first).status_code == 204
        assert all(not isinstance(m, Open) or m is held for m in peer.received), (
            "ST-4: a second stream was opened beyond max_concurrent_streams"
        )
    finally:
        first.cancel()
        await peer.close()


@pytest.mark.rule("VE-5")
@pytest.mark.side("server")
@pytest.mark.parametrize(
    "agent", ["", "pipegate-client/0.0.1", "other-tunnel/99 (not pipegate)", "é" * 300]
)
async def test_server_ignores_the_agent(server: ServerUnderTest, agent: str) -> None:
    """VE-5: the hello's agent is for logs only: any agent string gets the same hello
    and the same relaying."""
    peer: ReferenceClient = await connect_reference_client(
        server.ws_url(f"ref-{time.monotonic_ns()}"),
        server.token,
        agent=agent,
        ssl_context=server.ssl_context(),
    )
    try:
        assert peer.server_hello is not None
        assert peer.server_hello.version is ProtocolVersion.V1
        caller = asyncio.create_task(
            asyncio.to_thread(httpx.get, f"{peer.server_hello.public_url}/agent", timeout=30.0)
        )
        opened = await peer.next_of(Open, within=20.0)
        peer.conn.send_response(opened.stream_id, 200, [("x-agent-check", "1")])
        peer.conn.send_data(opened.stream_id, b"ok", end_stream=True)
        await peer.flush()
        response = await caller
        assert (response.status_code, response.content) == (200, b"ok")
    finally:
        await peer.close()


async def _pong_for(peer: ReferenceClient, ping_id: int) -> Pong:
    await peer.send_raw(f'{{"type":"ping","id":{ping_id}}}')
    pong: Pong = await peer.next_of(Pong, within=10.0)
    return pong


@pytest.mark.rule("LV-1", "FR-8")
@pytest.mark.side("server")
async def test_server_echoes_ping_ids_exactly(server: ServerUnderTest) -> None:
    """LV-1/FR-8 at the server: ping ids above 2^53 come back exactly."""
    peer = await connect_reference_client(
        server.ws_url(f"ref-{time.monotonic_ns()}"),
        server.token,
        ssl_context=server.ssl_context(),
    )
    try:
        for ping_id in (2**53 + 1, 2**63 - 1):
            assert (await _pong_for(peer, ping_id)).id == ping_id
    finally:
        await peer.close()


@pytest.mark.rule("FR-9", "LV-1")
@pytest.mark.side("server")
async def test_server_never_uses_the_first_of_duplicate_members(server: ServerUnderTest) -> None:
    """FR-9 at the server: a ping with two ``id`` members is answered with the last
    (pong 2) or rejected as a decode error (close 1002); pong 1 breaks the rule."""
    peer = await connect_reference_client(
        server.ws_url(f"ref-{time.monotonic_ns()}"),
        server.token,
        ssl_context=server.ssl_context(),
    )
    answer: int | str
    try:
        await peer.send_raw(DUPLICATE_ID_PING)
        answer = (await peer.next_of(Pong, within=10.0)).id
    except PeerClosed as closed:
        answer = f"closed {closed.code}"
    finally:
        await peer.close()
    assert answer in (2, "closed 1002"), f"FR-9: the ping with ids 1 and 2 got {answer}"


@pytest.mark.rule("FR-9", "FC-2")
@pytest.mark.side("server")
async def test_server_takes_the_last_of_duplicate_limits(server: ServerUnderTest) -> None:
    """FR-9 in a nested object: a client hello whose ``limits`` say ``initial_window``
    1 MiB and then 64 KiB grants 64 KiB (the last), so the server sends at most 64 KiB
    of a 1 MiB upload before credit returns; or it closes the tunnel with 1002."""
    window = 65536
    connection_id = f"ref-{time.monotonic_ns()}"
    peer = await connect_reference_client(
        server.ws_url(connection_id),
        server.token,
        send_hello=False,
        limits=Limits(initial_window=1024 * 1024),
        ssl_context=server.ssl_context(),
    )
    body = secrets.token_bytes(1024 * 1024)
    caller: asyncio.Task[httpx.Response] | None = None
    received = 0
    closed_with: int | None = None
    try:
        hello = str(peer.conn.data_to_send()[0])
        first = '"initial_window":1048576'
        assert first in hello, hello
        await peer.send_raw(hello.replace(first, f'{first},"initial_window":{window}'))
        caller = asyncio.create_task(
            asyncio.to_thread(
                httpx.post, f"{server.public_url(connection_id)}/up", content=body, timeout=30.0
            )
        )
        await peer.next_of(Open, within=20.0)
        async with asyncio.timeout(1.5):
            while True:
                message = await peer.next_message()
                if isinstance(message, Data):
                    received += len(message.data)
    except TimeoutError:
        pass  # nothing more arrives without credit, as it must be
    except PeerClosed as closed:
        closed_with = closed.code
    finally:
        await peer.close()
        if caller is not None:
            with contextlib.suppress(httpx.HTTPError):
                await caller
    if closed_with is not None:
        assert closed_with == 1002, f"FR-9: closed with {closed_with}, not 1002"
    else:
        assert 0 < received <= window, (
            f"FR-9: {received} bytes sent against a window of {window} (the last member)"
        )


@pytest.mark.rule("FR-10", "HS-4")
@pytest.mark.side("server")
async def test_server_hello_fits_before_the_clients_hello(server: ServerUnderTest) -> None:
    """FR-10 at the server: its hello, sent without waiting for the client's (HS-4),
    is at most 16384 bytes, as the server does not know the client's max_frame_size."""
    peer = await connect_reference_client(
        server.ws_url(f"ref-{time.monotonic_ns()}"),
        server.token,
        send_hello=False,
        ssl_context=server.ssl_context(),
    )
    try:
        first = await asyncio.wait_for(peer.ws.recv(), 10.0)
    finally:
        await peer.close()
    assert isinstance(first, str), first
    assert json.loads(first)["type"] == "hello", first
    assert _size(first) <= BEFORE_HELLO_MAX, f"FR-10: a hello of {_size(first)} bytes"


@pytest.mark.rule("HS-1", "HS-12")
@pytest.mark.side("server")
async def test_server_ignores_a_query_on_the_tunnel_url(server: ServerUnderTest) -> None:
    """HS-1: a query string in the server URL goes into the upgrade request but is not
    part of the id: the tunnel is accepted for the id before the ``?``."""
    connection_id = f"ref-{time.monotonic_ns()}"
    peer = await connect_reference_client(
        f"{server.ws_url(connection_id)}?region=eu&x=1",
        server.token,
        ssl_context=server.ssl_context(),
    )
    try:
        assert peer.server_hello is not None
        assert peer.server_hello.connection_id == connection_id
    finally:
        await peer.close()


# ---------------------------------------------------------------------- WS-3 headers

_CALLER_KEY = "Y2FsbGVyLWtleS0wMDAwMQ=="


@pytest.mark.rule("WS-3")
@pytest.mark.side("client")
@pytest.mark.parametrize("end_stream", [True, False], ids=["end-stream", "no-end-stream"])
async def test_client_websocket_handshake_headers_per_hop(
    driven_session: tuple[ReferenceServer, ServerSession, ManagedProcess],
    origin: Origin,
    end_stream: bool,
) -> None:
    """WS-3 at the client: its handshake with the local app uses its own key and
    version and not the caller's extensions, and passes Origin and Cookie on; its 101
    carries no Sec-WebSocket-Accept or -Extensions. A websocket open without
    end_stream (which a server must not send) is still served."""
    _, session, _ = driven_session
    tag = secrets.token_hex(6)
    stream_id = session.conn.open_stream(
        method="GET",
        path="/ws/echo",
        query=f"tag={tag}",
        kind=StreamKind.WEBSOCKET,
        headers=[
            ("host", "caller.example"),
            ("sec-websocket-key", _CALLER_KEY),
            ("sec-websocket-version", "13"),
            ("sec-websocket-extensions", "x-pgc-caller-extension"),
            ("origin", "https://caller.example"),
            ("cookie", "pgc=1"),
        ],
        end_stream=True,
    )
    if not end_stream:
        # Forge the flag the core will not set: the client must tolerate it (WS-3).
        session.conn.data_to_send()
        await session.send_raw(
            encode(
                OpenMessage(
                    stream_id=stream_id,
                    kind=StreamKind.WEBSOCKET,
                    method="GET",
                    path="/ws/echo",
                    query=f"tag={tag}",
                    headers=(("host", "caller.example"), ("origin", "https://caller.example")),
                    end_stream=False,
                )
            )
        )
    else:
        await session.flush()
    response = await session.next_of(Response, within=20.0)
    assert response.status == 101, f"WS-3: expected 101, got {response.status}"
    names = {name.lower() for name, _ in response.headers}
    assert not names & {"sec-websocket-accept", "sec-websocket-extensions"}, (
        f"WS-3: per-hop headers in the client's 101: {sorted(names)}"
    )
    event = await asyncio.to_thread(wait_for_origin_event, origin.url, tag, "ws_opened", 10.0)
    assert event is not None, "the local app never saw the WebSocket handshake"
    got = [(n.lower(), v) for n, v in event["headers"]]
    assert ("origin", "https://caller.example") in got, "WS-3: Origin must be passed on"
    if end_stream:
        assert ("cookie", "pgc=1") in got, "WS-3: Cookie must be passed on"
        assert ("sec-websocket-key", _CALLER_KEY) not in got, "WS-3: the caller's key was reused"
        assert ("sec-websocket-extensions", "x-pgc-caller-extension") not in got, (
            "WS-3: the caller's extensions were offered to the local app"
        )
    session.conn.send_websocket_data(stream_id, b"ping?", text=True)
    await session.flush()
    echoed = await session.next_of(WebSocketData, within=10.0)
    assert (echoed.stream_id, echoed.data) == (stream_id, b"ping?")
