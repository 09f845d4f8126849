"""The client under test, driven by the reference server (no server under test involved).

The reference server (:class:`ReferenceServer`) performs the handshake like a real
server, then opens streams itself, checks what the client answers, and sends hostile
frames. After a protocol error the client must close the tunnel with the documented
close code (ER-2) and connect again (LV-3).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from urllib.parse import urlsplit

import pytest
from pipegate_conformance.expected import (
    CLOSE_CODE_AT_HOP,
    HOP_BY_HOP_HEADERS,
    expected_after_hop_by_hop,
)
from pipegate_conformance.harness import ManagedProcess, free_port
from pipegate_conformance.origin import ResponseSpec, pattern_sha256
from pipegate_conformance.plugin import Implementations, Origin
from pipegate_conformance.refpeer import PeerClosed, ReferenceServer, ServerSession
from pipegate_conformance.support import rss_mib, wait_for_origin_event
from pipegate_protocol import (
    CAPABILITY_WEBSOCKET,
    MAX_WINDOW,
    Data,
    FlowControlError,
    Limits,
    Pong,
    ProtocolVersion,
    RemoteProtocolError,
    Reset,
    ResetCode,
    Response,
    Role,
    StreamKind,
    WebSocketClose,
    WebSocketData,
    encode,
)
from pipegate_protocol import Open as OpenMessage


@dataclass
class DrivenClient:
    ref: ReferenceServer
    session: ServerSession
    process: ManagedProcess


async def _drive(
    implementations: Implementations,
    local_url: str,
    limits: Limits | None = None,
) -> AsyncIterator[DrivenClient]:
    async with ReferenceServer(implementations.token, limits=limits) as ref:
        process = implementations.start_client(local_url, ref.url("refnode"))
        try:
            try:
                session = await ref.next_session(within=30.0)
            except TimeoutError:
                pytest.fail(f"the client never completed its hello:\n{process.output()[-2000:]}")
            yield DrivenClient(ref, session, process)
        finally:
            await asyncio.to_thread(process.stop, 5.0)


@pytest.fixture
async def driven(implementations: Implementations, origin: Origin) -> AsyncIterator[DrivenClient]:
    """A client under test connected to a fresh reference server, local app = origin."""
    async for item in _drive(implementations, origin.url):
        yield item


async def _open(session: ServerSession, **fields: object) -> int:
    stream_id = session.conn.open_stream(**fields)  # type: ignore[arg-type]
    await session.flush()
    return stream_id


@pytest.mark.rule("HS-2", "HS-3", "HS-4", "HS-11", "HS-12", "VE-1")
async def test_client_handshake(driven: DrivenClient, implementations: Implementations) -> None:
    """HS-2/3: the upgrade presents the token and offers pipegate.v1; HS-4/11/12: the
    client's hello has role client, the negotiated version, websocket capability and no
    connection id."""
    request = driven.session.request
    assert request is not None
    bearer = request.headers.get("Authorization", "")
    alt = request.headers.get("PipeGate-Client-Token", "")
    assert bearer == f"Bearer {implementations.token}" or alt == implementations.token
    assert implementations.token not in request.path, "HS-2: the token must not be in the URL"
    offered = ",".join(request.headers.get_all("Sec-WebSocket-Protocol"))
    assert ProtocolVersion.V1.value in [item.strip() for item in offered.split(",")]
    hello = driven.session.client_hello
    assert hello is not None
    assert hello.role is Role.CLIENT
    assert hello.version is ProtocolVersion.V1
    assert CAPABILITY_WEBSOCKET in hello.capabilities
    assert hello.connection_id is None


@pytest.mark.rule("HD-1", "HD-3", "HD-6", "ST-3")
async def test_client_relays_request_head(driven: DrivenClient, origin: Origin) -> None:
    """HD-1/HD-6: the client calls the local app with the raw path/query and the local
    authority as Host, passing every other header unchanged."""
    session = driven.session
    headers = [
        ("host", "public.example"),
        ("x-pgc", "cafe"),
        ("x-pgc", ""),
        ("x-forwarded-host", "public.example"),
    ]
    stream_id = await _open(
        session,
        method="PROPFIND",
        path="/echo/a%2Fb/./c/../%C3%A9/",
        query="b=&a=1&a=2",
        headers=headers,
        end_stream=True,
    )
    response = await session.next_of(Response)
    assert response.stream_id == stream_id
    assert response.status == 200
    body = json.loads(await session.read_body(stream_id))
    assert body["method"] == "PROPFIND"
    assert body["raw_path"] == "/echo/a%2Fb/./c/../%C3%A9/"
    assert body["query"] == "b=&a=1&a=2"
    got = [(n.lower(), v) for n, v in body["headers"]]
    assert ("host", urlsplit(origin.url).netloc) in got
    assert [h for h in got if h[0] in ("x-pgc", "x-forwarded-host")] == headers[1:]


@pytest.mark.rule("HD-2", "FR-4")
async def test_client_keeps_header_bytes(driven: DrivenClient) -> None:
    """HD-2/FR-4: header values travel as latin-1 characters, one per byte; the local
    app must receive byte 0xE9 for the character U+00E9, not its UTF-8 encoding."""
    session = driven.session
    stream_id = await _open(
        session,
        method="GET",
        path="/echo/bytes",
        headers=[("x-pgc", "caf\xe9 \x80\xff")],
        end_stream=True,
    )
    await session.next_of(Response)
    body = json.loads(await session.read_body(stream_id))
    assert [v for n, v in body["headers"] if n.lower() == "x-pgc"] == ["caf\xe9 \x80\xff"]


@pytest.mark.rule("FC-2", "FC-3", "FC-4", "HD-8")
async def test_client_returns_credit_for_request_body(driven: DrivenClient) -> None:
    """FC-4: a request body three windows long gets through only if the client returns
    credit as it writes to the local app; the local app sees every byte in order."""
    session = driven.session
    stream_id = await _open(session, method="POST", path="/upload")
    total = 3 * session.conn.peer_limits.initial_window + 12345
    block = hashlib.sha256(b"conformance").digest() * 1024
    digest = hashlib.sha256()
    sent = 0
    async with asyncio.timeout(60):
        while sent < total:
            window = session.conn.send_window(stream_id)
            if window == 0:
                await session.next_message()  # a window update, hopefully
                continue
            size = min(window, session.conn.max_data_size, total - sent, len(block))
            piece = block[:size]
            session.conn.send_data(stream_id, piece, end_stream=sent + size == total)
            await session.flush()
            digest.update(piece)
            sent += size
    response = await session.next_of(Response)
    assert response.status == 200
    body = json.loads(await session.read_body(stream_id))
    assert body == {"length": total, "sha256": digest.hexdigest()}


@pytest.mark.rule("FC-1", "FC-2", "FC-3", "FC-6", "FR-2", "HD-8")
async def test_client_respects_the_servers_window(
    implementations: Implementations, origin: Origin
) -> None:
    """FC-2/FC-6: with a 64 KiB initial window and no credit returned, the client sends
    at most 64 KiB of a 1 MiB response; once credit flows, the rest arrives intact."""
    window = 65536
    async for driven in _drive(implementations, origin.url, Limits(initial_window=window)):
        session = driven.session
        size = 1024 * 1024
        stream_id = await _open(session, method="GET", path=f"/bytes/{size}", end_stream=True)
        await session.next_of(Response)
        received = bytearray()
        try:
            async with asyncio.timeout(1.5):
                while True:
                    message = await session.next_message()
                    if isinstance(message, Data):
                        received += message.data
        except TimeoutError:
            pass  # nothing more arrives while no credit is returned: as it must be
        except FlowControlError as exc:
            pytest.fail(f"FC-6: the client overran its window: {exc}")
        assert 0 < len(received) <= window
        session.conn.acknowledge(stream_id, len(received))
        await session.flush()
        rest = await session.read_body(stream_id, within=30.0)
        assert hashlib.sha256(bytes(received) + rest).hexdigest() == pattern_sha256(size)


@pytest.mark.rule("LV-1")
async def test_client_answers_ping(driven: DrivenClient) -> None:
    """LV-1: a ping is answered with a pong carrying the same id."""
    driven.session.conn.send_ping(4242)
    await driven.session.flush()
    pong = await driven.session.next_of(Pong)
    assert pong.id == 4242


#: Pings a hostile server sends without reading (bytes of ping frames).
PING_FLOOD_BYTES = 256 * 1024 * 1024
#: Growth of the client's memory the flood may cause.
PING_FLOOD_GROWTH_MIB = 32


@pytest.mark.rule("LV-1", "LV-3")
async def test_client_bounds_pongs_to_a_server_that_does_not_read(
    driven: DrivenClient,
) -> None:
    """LV-1 against a hostile server: a client answers pings, but a server that floods
    it with WebSocket pings and never reads must not make it buffer the pongs without
    bound. Once its unread writes pass a bound, the client stops reading (or closes):
    the pings pile up on the server's side. Here 256 MiB of pings in at most 8 s may
    grow the client by less than 32 MiB; once the hostile session is dropped the client
    reconnects and answers pings again (LV-3)."""
    pid = driven.process.pid
    before = rss_mib(pid)
    handed = await driven.session.flood_pings(total_bytes=PING_FLOOD_BYTES, seconds=8.0)
    await asyncio.sleep(0.5)  # whatever was in flight is read by now
    grown = rss_mib(pid) - before
    assert grown < PING_FLOOD_GROWTH_MIB, (
        f"the client grew {grown:.0f} MiB while {handed >> 20} MiB of pings reached it"
    )
    driven.session.abort()
    session = await driven.ref.next_session(within=30.0)
    session.conn.send_ping(77)
    await session.flush()
    assert (await session.next_of(Pong)).id == 77


@pytest.mark.rule("ST-7", "LV-3")
async def test_reset_cancels_the_local_request(driven: DrivenClient, origin: Origin) -> None:
    """ST-7: a reset from the server makes the client cancel its request to the local
    app (the origin records that its caller went away)."""
    session = driven.session
    tag = secrets.token_hex(6)
    stream_id = await _open(
        session, method="GET", path="/drip", query=f"tag={tag}", end_stream=True
    )
    response = await session.next_of(Response)
    assert response.status == 200
    session.conn.reset_stream(stream_id, ResetCode.CALLER_GONE)
    await session.flush()
    event = await asyncio.to_thread(wait_for_origin_event, origin.url, tag, "cancelled", 15.0)
    assert event is not None, "the local request was not cancelled after the reset"


@pytest.mark.rule("HD-12")
async def test_local_app_down_gives_502(implementations: Implementations) -> None:
    """HD-12: local app unreachable -> 502 response (or reset upstream_failed); the
    tunnel stays up."""
    dead = f"http://127.0.0.1:{free_port()}"
    async for driven in _drive(implementations, dead):
        session = driven.session
        stream_id = await _open(session, method="GET", path="/x", end_stream=True)
        message = await session.next_message(within=30.0)
        while not isinstance(message, Response | Reset):
            message = await session.next_message(within=30.0)
        if isinstance(message, Response):
            assert message.status == 502
        else:
            assert message.code.value == "upstream_failed"
        assert message.stream_id == stream_id
        session.conn.send_ping(7)
        await session.flush()
        assert (await session.next_of(Pong)).id == 7


@pytest.mark.rule("WS-1", "WS-2", "WS-3", "WS-4")
async def test_client_relays_a_websocket(driven: DrivenClient, origin: Origin) -> None:
    """WS-3: 101 with the chosen subprotocol; WS-2: messages both ways, fragmented and
    large; WS-4: a ws_close from the server reaches the local app with its code."""
    session = driven.session
    tag = secrets.token_hex(6)
    stream_id = await _open(
        session,
        method="GET",
        path="/ws/echo",
        query=f"tag={tag}",
        headers=[("sec-websocket-protocol", "chat, superchat"), ("sec-websocket-version", "13")],
        kind=StreamKind.WEBSOCKET,
        end_stream=True,
    )
    response = await session.next_of(Response)
    assert response.status == 101
    assert ("sec-websocket-protocol", "chat") in [(n.lower(), v) for n, v in response.headers]

    async def roundtrip(payload: bytes, text: bool, fragments: int) -> None:
        step = max(1, -(-len(payload) // fragments))
        pieces = [payload[i : i + step] for i in range(0, len(payload), step)] or [b""]
        for index, piece in enumerate(pieces):
            while session.conn.send_window(stream_id) < len(piece):
                await session.next_message()
            session.conn.send_websocket_data(
                stream_id, piece, text=text, fin=index == len(pieces) - 1
            )
        await session.flush()
        got = bytearray()
        while True:
            message = await session.next_of(WebSocketData)
            assert message.text is text
            got += message.data
            session.conn.acknowledge(stream_id, len(message.data))
            await session.flush()
            if message.fin:
                break
        assert bytes(got) == payload

    await roundtrip("h\xe9llo \u2603".encode(), text=True, fragments=3)
    await roundtrip(bytes(range(256)) * 8, text=False, fragments=1)
    await roundtrip(b"", text=False, fragments=1)
    await roundtrip(secrets.token_bytes(700_000), text=False, fragments=4)
    session.conn.send_websocket_close(stream_id, 4321, "bye")
    await session.flush()
    event = await asyncio.to_thread(wait_for_origin_event, origin.url, tag, "ws_closed", 10.0)
    assert event is not None
    assert event["code"] == 4321


@pytest.mark.rule("WS-4")
async def test_local_app_close_code_reaches_server(driven: DrivenClient) -> None:
    """WS-4: the local app closing with 4123 arrives as ws_close 4123."""
    session = driven.session
    stream_id = await _open(
        session,
        method="GET",
        path="/ws/close/4123",
        kind=StreamKind.WEBSOCKET,
        headers=[("sec-websocket-version", "13")],
        end_stream=True,
    )
    response = await session.next_of(Response)
    assert response.status == 101
    close = await session.next_of(WebSocketClose)
    assert (close.stream_id, close.code) == (stream_id, 4123)


@pytest.mark.rule("WS-4", "WS-5")
@pytest.mark.parametrize(("received", "closed_with"), sorted(CLOSE_CODE_AT_HOP.items()))
async def test_ws_close_code_at_the_local_apps_hop(
    driven: DrivenClient, origin: Origin, received: int, closed_with: int
) -> None:
    """WS-4: a sendable ws_close code reaches the local app unchanged; WS-5: 1005, 1006
    and 1015, which no close frame may carry, close the local app's WebSocket with 1011."""
    session = driven.session
    tag = secrets.token_hex(6)
    stream_id = await _accepted_websocket(session, tag)
    session.conn.send_websocket_close(stream_id, received, "")
    await session.flush()
    event = await asyncio.to_thread(wait_for_origin_event, origin.url, tag, "ws_closed", 10.0)
    assert event is not None, "the close never reached the local app"
    assert event["code"] == closed_with


def _hop_headers_of(headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The extension and hop-by-hop headers of a list, minus the Connection and framing
    headers an HTTP/1.1 hop may add for itself."""
    return [
        (n.lower(), v)
        for n, v in headers
        if n.lower() not in ("connection", "transfer-encoding")
        and (n.lower().startswith("x-pgc-") or n.lower() in HOP_BY_HOP_HEADERS)
    ]


_HOP_MIX = [
    ("x-pgc-keep", "1"),
    ("keep-alive", "timeout=5"),
    ("x-pgc-private", "hop"),
    ("te", "trailers"),
    ("connection", "x-pgc-private, x-pgc-other"),
    ("proxy-authorization", "Basic eDp5"),
    ("x-pgc-other", "hop"),
    ("trailer", "x-pgc-t"),
    ("x-pgc-keep", "2"),
]


@pytest.mark.rule("HD-4")
async def test_client_drops_hop_by_hop_request_headers(driven: DrivenClient) -> None:
    """HD-4: the local app gets the open's headers without hop-by-hop ones and without
    those a Connection header names; the rest in order with duplicates."""
    session = driven.session
    stream_id = await _open(
        session, method="GET", path="/echo/hd4", headers=_HOP_MIX, end_stream=True
    )
    assert (await session.next_of(Response)).status == 200
    body = json.loads(await session.read_body(stream_id))
    got = _hop_headers_of([(n, v) for n, v in body["headers"]])
    assert got == _hop_headers_of(expected_after_hop_by_hop(_HOP_MIX))


@pytest.mark.rule("HD-4", "HD-3")
async def test_client_drops_hop_by_hop_response_headers(driven: DrivenClient) -> None:
    """HD-4: the response head the client sends has no hop-by-hop headers of the local
    app's answer, nor those its Connection header names."""
    session = driven.session
    sent = [(n, v) for n, v in _HOP_MIX if n not in ("te", "proxy-authorization")]
    spec = ResponseSpec(status=200, headers=sent).model_dump_json().encode()
    stream_id = await _open(
        session,
        method="POST",
        path="/respond",
        headers=[("content-type", "application/json"), ("content-length", str(len(spec)))],
        end_stream=False,
    )
    session.conn.send_data(stream_id, spec, end_stream=True)
    await session.flush()
    response = await session.next_of(Response)
    assert response.status == 200
    assert _hop_headers_of(list(response.headers)) == expected_after_hop_by_hop(sent)


def _raw_open(stream_id: int, path: str = "/stall") -> str:
    encoded = encode(OpenMessage(stream_id=stream_id, method="GET", path=path, end_stream=True))
    assert isinstance(encoded, str)
    return encoded


HOSTILE: dict[str, tuple[int, list[str | bytes]]] = {
    "malformed-json": (1002, ["{not json"]),
    "unknown-type": (1002, ['{"type": "bogus", "stream_id": 1}']),
    "short-binary": (1002, [b"\x00\x00"]),
    "unknown-frame-kind": (1002, [b"\x05\x00\x00\x00\x01payload"]),
    "reserved-bit-stream-id": (1002, [b"\x00\x80\x00\x00\x01payload"]),
    "data-never-opened-stream": (1002, [b"\x80\x00\x00\x00\x63data"]),
    "second-hello": (
        1002,
        ['{"type": "hello", "version": "pipegate.v1", "role": "server"}'],
    ),
    "response-from-server": (1002, ['{"type": "response", "stream_id": 1, "status": 200}']),
    "stream-id-not-increasing": (1002, [_raw_open(5), _raw_open(3)]),
    "window-overflow": (
        4001,
        [_raw_open(1), f'{{"type": "window_update", "stream_id": 1, "increment": {MAX_WINDOW}}}'],
    ),
    "open-after-goaway": (
        1002,
        ['{"type": "goaway", "last_stream_id": 0, "reason": "shutdown"}', _raw_open(1)],
    ),
    "integer-with-fraction": (1002, ['{"type": "ping", "id": 1.0}']),
    "integer-with-exponent": (1002, ['{"type": "ping", "id": 1e2}']),
    "integer-as-string": (1002, ['{"type": "ping", "id": "1"}']),
    "boolean-as-integer": (1002, [_raw_open(1).replace('"end_stream":true', '"end_stream":1')]),
}
RULES_OF = {
    "malformed-json": "FR-6",
    "unknown-type": "VE-4",
    "short-binary": "FR-6",
    "unknown-frame-kind": "FR-3",
    "reserved-bit-stream-id": "FR-7",
    "data-never-opened-stream": "ST-6",
    "second-hello": "HS-4",
    "response-from-server": "ST-9",
    "stream-id-not-increasing": "ST-1",
    "window-overflow": "FC-5",
    "open-after-goaway": "LV-4",
    "integer-with-fraction": "FR-8",
    "integer-with-exponent": "FR-8",
    "integer-as-string": "FR-1",
    "boolean-as-integer": "FR-1",
}


@pytest.mark.rule("ER-1", "ER-2", "ER-3", "LV-3")
@pytest.mark.parametrize(
    "case",
    [pytest.param(name, marks=pytest.mark.rule(RULES_OF[name])) for name in HOSTILE],
)
async def test_client_closes_on_hostile_frames_and_reconnects(
    driven: DrivenClient, implementations: Implementations, case: str
) -> None:
    """ER-2: the client closes the tunnel with the documented code; LV-3: it reconnects."""
    code, payloads = HOSTILE[case]
    for payload in payloads:
        await driven.session.send_raw(payload)
    closed = await driven.session.wait_closed(within=30.0)
    assert closed == code, f"{case}: expected close code {code}, got {closed}"
    reason = driven.session.close_reason
    assert len(reason.encode()) <= 123, "ER-3: reason over 123 bytes"
    assert implementations.token not in reason, "ER-3: the close reason holds the token"
    again = await driven.ref.next_session(within=30.0)
    assert again.client_hello is not None


@pytest.mark.rule("FR-5", "ER-2", "LV-3")
async def test_client_closes_on_oversize_frame(driven: DrivenClient) -> None:
    """FR-5: a frame above the client's max_frame_size closes with 1009."""
    hello = driven.session.client_hello
    assert hello is not None
    await driven.session.send_raw(
        b"\x80\x00\x00\x00\x01" + b"x" * (hello.limits.max_frame_size + 1)
    )
    assert await driven.session.wait_closed(within=30.0) == 1009
    assert (await driven.ref.next_session(within=30.0)).client_hello is not None


@pytest.mark.rule("ST-4", "ER-2")
async def test_client_enforces_its_stream_limit(driven: DrivenClient) -> None:
    """ST-4: one open more than max_concurrent_streams closes with 4002."""
    hello = driven.session.client_hello
    assert hello is not None
    limit = hello.limits.max_concurrent_streams
    if limit > 512:
        pytest.skip(f"client advertises {limit} streams; too many to open in a quick check")
    for stream_id in range(1, limit + 2):
        await driven.session.send_raw(_raw_open(stream_id))
    assert await driven.session.wait_closed(within=30.0) == 4002


@pytest.mark.rule("HS-7")
@pytest.mark.parametrize("status", [403, 400])
async def test_client_stops_after_refusal(
    implementations: Implementations, origin: Origin, status: int
) -> None:
    """HS-7: after 403 (wrong token) or 400 (no common version) the client stops with
    a non-zero exit status instead of retrying in a loop."""
    async with ReferenceServer(implementations.token, refuse_with=status) as ref:
        process = implementations.start_client(origin.url, ref.url("refnode"))
        try:
            code = await asyncio.to_thread(process.wait, 20.0)
        finally:
            await asyncio.to_thread(process.stop, 5.0)
        assert code is not None, f"the client kept running after {status}"
        assert code != 0
        assert len(ref.refusals) <= 2, f"the client retried {len(ref.refusals)} times"


@pytest.mark.rule("LV-3")
async def test_client_reconnects_after_tunnel_loss(driven: DrivenClient) -> None:
    """LV-3: when the server drops the tunnel (1001 going away), the client reconnects."""
    await driven.session.ws.close(1001, "restart")
    session = await driven.ref.next_session(within=30.0)
    assert session.client_hello is not None
    with pytest.raises(PeerClosed):
        await driven.session.next_message(within=1.0)


# ---------------------------------------------------------------------- WS-6, WS-7


async def _accepted_websocket(session: ServerSession, tag: str) -> int:
    """A WebSocket stream to the origin's echo, accepted with 101 (WS-3)."""
    stream_id = await _open(
        session,
        method="GET",
        path="/ws/echo",
        query=f"tag={tag}",
        kind=StreamKind.WEBSOCKET,
        headers=[("sec-websocket-version", "13")],
        end_stream=True,
    )
    assert (await session.next_of(Response)).status == 101
    return stream_id


@pytest.mark.rule("WS-6", "ER-2", "LV-3")
@pytest.mark.parametrize(
    "kinds", [(0x01, 0x02), (0x02, 0x01)], ids=["text-then-binary", "binary-then-text"]
)
async def test_client_closes_on_mixed_fragment_kinds(
    driven: DrivenClient, kinds: tuple[int, int]
) -> None:
    """WS-6: a WebSocket data frame of the other kind while a message is unfinished
    closes the tunnel with 1002; LV-3: the client connects again."""
    session = driven.session
    sid = (await _accepted_websocket(session, secrets.token_hex(6))).to_bytes(4, "big")
    await session.send_raw(bytes([kinds[0]]) + sid + b"first fragment")  # F not set
    await session.send_raw(bytes([0x80 | kinds[1]]) + sid + b"other kind")
    assert await session.wait_closed(within=30.0) == 1002
    assert (await driven.ref.next_session(within=30.0)).client_hello is not None


@pytest.mark.rule("WS-7")
@pytest.mark.parametrize("how", ["closed", "lost"])
async def test_tunnel_loss_closes_the_local_apps_websocket_with_1001(
    driven: DrivenClient, origin: Origin, how: str
) -> None:
    """WS-7: when the server closes the tunnel (1001, as on a restart) or the
    connection drops, the client closes each relayed WebSocket toward its local app
    with 1001 (the origin records the code it received)."""
    session = driven.session
    tag = secrets.token_hex(6)
    await _accepted_websocket(session, tag)
    if how == "closed":
        await session.ws.close(1001, "restart")
    else:
        session.abort()
    event = await asyncio.to_thread(wait_for_origin_event, origin.url, tag, "ws_closed", 15.0)
    assert event is not None, "WS-7: the local app's WebSocket stayed open without a tunnel"
    assert event["code"] == 1001, f"WS-7: the local app's WebSocket closed with {event['code']}"


# ---------------------------------------------------------------------- HD-14

#: The max_frame_size the reference server states for the HD-14 check: the smallest a
#: hello may state (HS-5), so a local head of about 24 KB cannot fit in a response.
_SMALL_FRAME = 16 * 1024
#: Local response heads a ``response`` cannot carry (HD-14), as raw HTTP/1.1 bytes.
UNCARRIABLE_HEADS: dict[str, bytes] = {
    "status-101-on-http": (
        b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: pgc\r\n\r\n"
    ),
    "status-600": b"HTTP/1.1 600 Beyond\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    "header-name-not-a-token": (
        b"HTTP/1.1 200 OK\r\nX-PGC(bad): 1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    ),
    "nul-in-a-value": (
        b"HTTP/1.1 200 OK\r\nX-PGC: a\x00b\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    ),
    "head-above-max-frame-size": (
        b"HTTP/1.1 200 OK\r\n"
        + b"".join(b"X-PGC-%02d: %s\r\n" % (n, b"v" * 1000) for n in range(24))
        + b"Content-Length: 0\r\nConnection: close\r\n\r\n"
    ),
}
_PLAIN_OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"


class _RawLocalApp:
    """A local app that writes raw bytes: ``/hd14/<case>`` gets that case of
    :data:`UNCARRIABLE_HEADS`, anything else a plain ``200 ok``; one request per
    connection. (The origin app cannot send such heads: its HTTP stack refuses.)"""

    def __init__(self) -> None:
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()
        self.url = ""

    async def __aenter__(self) -> _RawLocalApp:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()
        for handler in self._handlers:  # Python 3.11's wait_closed does not wait for them
            handler.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        handler = asyncio.current_task()
        assert handler is not None
        self._handlers.add(handler)
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10.0)
            target = head.split(b" ", 2)[1].decode("latin-1")
            case = target.removeprefix("/hd14/")
            writer.write(UNCARRIABLE_HEADS.get(case, _PLAIN_OK))
            await writer.drain()
            if case == "status-101-on-http":
                await asyncio.sleep(1.0)  # an upgraded connection stays open a while
        except (OSError, asyncio.IncompleteReadError, TimeoutError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            self._handlers.discard(handler)


async def _answer_to(session: ServerSession, stream_id: int) -> str:
    """How the client answered ``stream_id``: ``"response <status>"`` (body read and
    acknowledged) or ``"reset <code>"``; a message the protocol forbids fails."""
    try:
        while True:
            message = await session.next_message(within=30.0)
            if isinstance(message, Reset) and message.stream_id == stream_id:
                return f"reset {message.code.value}"
            if isinstance(message, Response) and message.stream_id == stream_id:
                if not message.end_stream:
                    await session.read_body(stream_id, within=30.0)
                return f"response {message.status}"
    except RemoteProtocolError as exc:
        pytest.fail(f"the client relayed a head the protocol cannot carry: {exc}")


@pytest.mark.rule("HD-14", "HD-12")
async def test_client_answers_502_for_a_local_head_it_cannot_carry(
    implementations: Implementations,
) -> None:
    """HD-14: a local response head that a ``response`` cannot carry (a 101 on an
    http stream, status 600, a header name that is no token, NUL in a value, a head
    above the server's max_frame_size) becomes a 502 (or a reset upstream_failed, as
    for HD-12), never a relayed or edited head; the client keeps serving the tunnel."""
    async with _RawLocalApp() as app:
        limits = Limits(max_frame_size=_SMALL_FRAME)
        async for driven in _drive(implementations, app.url, limits):
            session = driven.session
            for case in UNCARRIABLE_HEADS:
                stream_id = await _open(
                    session, method="GET", path=f"/hd14/{case}", end_stream=True
                )
                answer = await _answer_to(session, stream_id)
                assert answer in ("response 502", "reset upstream_failed"), (
                    f"HD-14 {case}: the client answered {answer}"
                )
            stream_id = await _open(session, method="GET", path="/ok", end_stream=True)
            assert await _answer_to(session, stream_id) == "response 200", (
                "HD-14: the client stopped serving after the heads it could not carry"
            )
