"""The server under test, driven by the reference client (no client under test involved).

The reference client (:func:`connect_reference_client`) speaks the handshake and the
hello exchange, answers streams by hand and sends hostile frames. The bystander that
must keep working when another tunnel breaks the rules (ER-4) is a tunnel served by
the reference client too (the ``bystander`` fixture), so a broken client under test
cannot turn these into errors: every check here is the server's alone.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pipegate_conformance.plugin import ServerUnderTest, conformance_settings
from pipegate_conformance.refpeer import ReferenceTunnel, TunnelRefused
from pipegate_conformance.support import connect_reference, new_connection_id, release_reference
from pipegate_protocol import (
    MAX_WINDOW,
    Open,
    ProtocolVersion,
    Role,
)

pytestmark = pytest.mark.usefixtures("reference_clients_closed")


def _get(url: str, **kw: Any) -> httpx.Response:
    return httpx.get(url, timeout=kw.pop("timeout", 40.0), **kw)


def _bystander_works(tunnel: ReferenceTunnel) -> None:
    response = _get(f"{tunnel.public_url}/echo/bystander")
    assert response.status_code == 200, "ER-4: another tunnel was affected"
    assert response.json()["raw_path"] == "/echo/bystander"


# ---------------------------------------------------------------------- handshake


@pytest.mark.rule("HD-13", "HS-1")
def test_health_endpoint_is_reserved(server: ServerUnderTest) -> None:
    """HD-13: GET /_pipegate/health answers 200 from the server itself."""
    assert _get(f"{server.http_base}/_pipegate/health").status_code == 200


@pytest.mark.rule("HS-7")
async def test_missing_token_is_refused_with_401(server: ServerUnderTest) -> None:
    """HS-7: no token -> a real HTTP 401 to the upgrade (not accept-then-close)."""
    with pytest.raises(TunnelRefused) as refused:
        await connect_reference(server, token=None)
    assert refused.value.status == 401
    assert refused.value.headers.get("www-authenticate", "").lower().startswith("bearer")


@pytest.mark.rule("HS-7", "HS-8")
async def test_wrong_token_is_refused_with_403(server: ServerUnderTest) -> None:
    """HS-7: wrong token -> 403; HS-8: the reason does not echo the token."""
    wrong = f"wrong-{secrets.token_hex(8)}"
    with pytest.raises(TunnelRefused) as refused:
        await connect_reference(server, token=wrong)
    assert refused.value.status == 403
    assert wrong.encode() not in refused.value.body
    assert server.token.encode() not in refused.value.body


@pytest.mark.rule("HS-2")
async def test_alternative_token_header_is_accepted(server: ServerUnderTest) -> None:
    """HS-2: PipeGate-Client-Token works like Authorization: Bearer."""
    peer = await connect_reference(server, token_header="PipeGate-Client-Token")
    assert peer.server_hello is not None
    await peer.close()


@pytest.mark.rule("HS-3", "HS-7", "VE-3")
@pytest.mark.parametrize(
    "offer",
    [("pipegate.v999",), ("Pipegate.V1",), ("pipegate.v1.1", "pipegate.v10"), ()],
    ids=["unknown", "wrong-case", "lookalikes", "none"],
)
async def test_no_common_version_is_refused_with_400(
    server: ServerUnderTest, offer: tuple[str, ...]
) -> None:
    """HS-3/VE-3: only an exact known token counts; otherwise 400 before accept."""
    with pytest.raises(TunnelRefused) as refused:
        await connect_reference(server, versions=offer)
    assert refused.value.status == 400


@pytest.mark.rule("HS-3")
async def test_unknown_offers_are_skipped(server: ServerUnderTest) -> None:
    """HS-3: unknown offered tokens are ignored; pipegate.v1 is selected."""
    peer = await connect_reference(server, versions=("pipegate.v999", ProtocolVersion.V1.value))
    assert peer.ws.subprotocol == ProtocolVersion.V1.value
    await peer.close()


@pytest.mark.rule("HS-1", "HS-7")
@pytest.mark.parametrize("bad_id", ["_pipegate", "a" * 65, "bad.id", "caf%C3%A9"])
async def test_invalid_connection_id_is_refused_with_404(
    server: ServerUnderTest, bad_id: str
) -> None:
    """HS-1/HS-7: an invalid or reserved id is refused with 404 before accept."""
    with pytest.raises(TunnelRefused) as refused:
        await connect_reference(server, bad_id)
    assert refused.value.status == 404


@pytest.mark.rule("HS-4", "HS-5", "HS-6", "HS-12", "VE-1")
async def test_server_hello(server: ServerUnderTest) -> None:
    """HS-4/HS-12: the server's hello comes first, names the id and the public URL."""
    connection_id = new_connection_id()
    peer = await connect_reference(server, connection_id)
    hello = peer.server_hello
    assert hello is not None
    assert hello.role is Role.SERVER
    assert hello.version is ProtocolVersion.V1
    assert hello.connection_id == connection_id
    assert hello.public_url is not None
    assert hello.public_url.rstrip("/").endswith(f"/{connection_id}")
    await peer.close()


@pytest.mark.rule("HS-9", "HS-7", "ER-4")
async def test_duplicate_id_is_refused_and_first_keeps_working(server: ServerUnderTest) -> None:
    """HS-9: a second tunnel for a connected id gets 409; the first keeps serving; once
    the first is gone the id is free again."""
    connection_id = new_connection_id()
    first = await connect_reference(server, connection_id)
    with pytest.raises(TunnelRefused) as refused:
        await connect_reference(server, connection_id)
    assert refused.value.status == 409

    caller = asyncio.create_task(
        asyncio.to_thread(_get, f"{server.public_url(connection_id)}/still/first")
    )
    opened = await first.next_of(Open)
    assert opened.path == "/still/first"
    first.conn.send_response(opened.stream_id, 200, [("content-type", "text/plain")])
    first.conn.send_data(opened.stream_id, b"first", end_stream=True)
    await first.flush()
    response = await caller
    assert (response.status_code, response.text) == (200, "first")
    await first.close()

    async with asyncio.timeout(10):
        while True:
            try:
                again = await connect_reference(server, connection_id)
                break
            except TunnelRefused as exc:
                if exc.status != 409:
                    raise
                await asyncio.sleep(0.1)
    await again.close()


@pytest.mark.rule("HD-10", "HD-13")
def test_unknown_id_is_404_naming_it(server: ServerUnderTest) -> None:
    """HD-10: a public request for an id without a tunnel -> 404 naming the id."""
    connection_id = new_connection_id()
    response = _get(f"{server.public_url(connection_id)}/x")
    assert response.status_code == 404
    assert connection_id in response.text


@pytest.mark.rule("HD-13", "HS-1")
def test_reserved_prefix_is_not_relayed(
    server: ServerUnderTest, bystander: ReferenceTunnel
) -> None:
    """HD-13: /_pipegate/... never reaches a tunnel (the origin's echo never answers)."""
    response = _get(f"{server.http_base}/_pipegate/echo/x")
    assert "raw_path" not in response.text


# ---------------------------------------------------------------------- relaying


async def _call(url: str, method: str = "GET", **kw: Any) -> asyncio.Task[httpx.Response]:
    return asyncio.create_task(
        asyncio.to_thread(httpx.request, method, url, timeout=kw.pop("timeout", 40.0), **kw)
    )


@pytest.mark.rule("HD-1", "HD-2", "HD-5", "ST-1", "ST-2")
async def test_server_sends_raw_request_head(server: ServerUnderTest) -> None:
    """HD-1/HD-2/HD-5 at the server: the open carries the raw path and query, header
    bytes as latin-1 characters, and the forwarding headers; ids start at 1."""
    connection_id = new_connection_id()
    peer = await connect_reference(server, connection_id)
    caller = await _call(
        f"{server.public_url(connection_id)}/a%2Fb/%C3%A9/?b=&a=1&a=2",
        headers=[(b"X-PGC", b"caf\xe9"), (b"X-PGC", b"")],
    )
    opened = await peer.next_of(Open)
    assert opened.stream_id >= 1
    assert (opened.method, opened.path, opened.query) == ("GET", "/a%2Fb/%C3%A9/", "b=&a=1&a=2")
    headers = [(n.lower(), v) for n, v in opened.headers]
    assert [h for h in headers if h[0] == "x-pgc"] == [("x-pgc", "caf\xe9"), ("x-pgc", "")]
    assert ("x-forwarded-prefix", f"/{connection_id}") in headers
    assert opened.end_stream, "ST-2: a GET without body has end_stream true"
    peer.conn.send_response(opened.stream_id, 204, [("x-pgc-r", "\xff")], end_stream=True)
    await peer.flush()
    response = await caller
    assert response.status_code == 204
    assert (b"x-pgc-r", b"\xff") in [(n.lower(), v) for n, v in response.headers.raw]
    await peer.close()


@pytest.mark.rule("FC-1", "FC-2", "FC-4", "FR-2", "HD-8")
async def test_server_respects_client_window(server: ServerUnderTest) -> None:
    """FC-2: with a 64 KiB client window and no credit returned, the server sends at
    most 64 KiB of a 1 MiB upload; once credit flows, everything arrives."""
    from pipegate_protocol import Data, FlowControlError, Limits

    window = 65536
    connection_id = new_connection_id()
    peer = await connect_reference(server, connection_id, limits=Limits(initial_window=window))
    body = secrets.token_bytes(1024 * 1024)
    caller = await _call(f"{server.public_url(connection_id)}/up", "POST", content=body)
    opened = await peer.next_of(Open)
    received = bytearray()
    try:
        async with asyncio.timeout(1.5):
            while True:
                message = await peer.next_message()
                if isinstance(message, Data):
                    received += message.data
    except TimeoutError:
        pass
    except FlowControlError as exc:
        pytest.fail(f"FC-6: the server overran the client's window: {exc}")
    assert 0 < len(received) <= window
    peer.conn.acknowledge(opened.stream_id, len(received))
    await peer.flush()
    rest = await peer.read_body(opened.stream_id, within=60.0)
    assert bytes(received) + rest == body
    peer.conn.send_response(opened.stream_id, 200, end_stream=True)
    await peer.flush()
    assert (await caller).status_code == 200
    await peer.close()


@pytest.mark.rule("HD-10", "LV-3")
async def test_tunnel_dropped_before_head_gives_502(server: ServerUnderTest) -> None:
    """HD-10/LV-3: the tunnel drops while the caller waits for the head -> 502."""
    connection_id = new_connection_id()
    peer = await connect_reference(server, connection_id)
    caller = await _call(f"{server.public_url(connection_id)}/wait")
    await peer.next_of(Open)
    await peer.ws.close(1011, "gone")
    assert (await caller).status_code == 502


@pytest.mark.rule("HD-10", "ST-7")
@pytest.mark.parametrize(
    ("code", "status"),
    [("upstream_failed", 502), ("timeout", 504), ("too_large", 413), ("refused", 503)],
)
async def test_reset_before_head_maps_to_status(
    server: ServerUnderTest, code: str, status: int
) -> None:
    """HD-10: a reset before the response head maps to the documented status."""
    from pipegate_protocol import ResetCode

    connection_id = new_connection_id()
    peer = await connect_reference(server, connection_id)
    caller = await _call(f"{server.public_url(connection_id)}/reset")
    opened = await peer.next_of(Open)
    peer.conn.reset_stream(opened.stream_id, ResetCode(code))
    await peer.flush()
    assert (await caller).status_code == status
    await peer.close()


# ---------------------------------------------------------------------- hostile


def _resp(stream_id: int, status: int = 200, end: bool = False) -> str:
    return json.dumps(
        {"type": "response", "stream_id": stream_id, "status": status, "end_stream": end}
    )


def _data(stream_id: int, payload: bytes = b"x", end: bool = False) -> bytes:
    return bytes([0x80 if end else 0x00]) + stream_id.to_bytes(4, "big") + payload


#: case -> (close code, needs an open stream, frames to send given the stream id).
#: Cases whose frames include a valid response head first leave the caller with an
#: aborted response instead of a 502 (HD-10: after the head, the status cannot change).
#: "Data after end of stream" is not here: once the response has ended, a server may
#: reset the rest of the upload at once (ST-5), and then the frame is for a gone stream
#: and rightly ignored (ST-8); which happens first is a race, not a rule.
HOSTILE: dict[str, tuple[int, bool, Callable[[int], list[str | bytes]]]] = {
    "malformed-json": (1002, False, lambda s: ["{not json"]),
    "json-not-object": (1002, False, lambda s: ["[1, 2]"]),
    "unknown-type": (1002, False, lambda s: ['{"type": "bogus"}']),
    "short-binary": (1002, False, lambda s: [b"\x00\x00\x01"]),
    "unknown-frame-kind": (1002, False, lambda s: [b"\x07\x00\x00\x00\x01"]),
    "stream-id-zero": (1002, False, lambda s: [b"\x00\x00\x00\x00\x00x"]),
    "data-never-opened-stream": (1002, False, lambda s: [_data(77)]),
    "open-from-client": (
        1002,
        False,
        lambda s: ['{"type": "open", "stream_id": 1, "method": "GET", "path": "/"}'],
    ),
    "second-hello": (
        1002,
        False,
        lambda s: ['{"type": "hello", "version": "pipegate.v1", "role": "client"}'],
    ),
    "data-before-head": (1002, True, lambda s: [_data(s)]),
    "second-final-response": (1002, True, lambda s: [_resp(s), _resp(s)]),
    "status-101-on-http": (1002, True, lambda s: [_resp(s, 101)]),
    "window-overflow": (
        4001,
        True,
        lambda s: [f'{{"type": "window_update", "stream_id": {s}, "increment": {MAX_WINDOW}}}'],
    ),
    "ws-data-on-http": (1002, True, lambda s: [_resp(s), b"\x81" + s.to_bytes(4, "big") + b"hi"]),
    "integer-with-fraction": (
        1002,
        True,
        lambda s: [f'{{"type": "response", "stream_id": {s}.0, "status": 200}}'],
    ),
    "integer-with-exponent": (1002, False, lambda s: ['{"type": "ping", "id": 1e2}']),
    "boolean-as-integer": (
        1002,
        True,
        lambda s: [f'{{"type": "response", "stream_id": {s}, "status": 204, "end_stream": 1}}'],
    ),
}
RULES_OF = {
    "malformed-json": "FR-6",
    "json-not-object": "FR-1",
    "unknown-type": "VE-4",
    "short-binary": "FR-6",
    "unknown-frame-kind": "FR-3",
    "stream-id-zero": "FR-7",
    "data-never-opened-stream": "ST-6",
    "open-from-client": "ST-1",
    "second-hello": "HS-4",
    "data-before-head": "ST-9",
    "second-final-response": "ST-3",
    "status-101-on-http": "ST-3",
    "integer-with-fraction": "FR-8",
    "integer-with-exponent": "FR-8",
    "boolean-as-integer": "FR-1",
    "window-overflow": "FC-5",
    "ws-data-on-http": "ST-9",
}


@pytest.mark.rule("ER-1", "ER-2", "ER-3", "ER-4", "LV-3")
@pytest.mark.parametrize(
    "case", [pytest.param(name, marks=pytest.mark.rule(RULES_OF[name])) for name in HOSTILE]
)
async def test_server_closes_hostile_tunnel_only(
    server: ServerUnderTest, bystander: ReferenceTunnel, case: str
) -> None:
    """ER-2: the server closes the offending tunnel with the documented code; a caller
    waiting on it gets 502 (LV-3); ER-4: the session tunnel keeps working."""
    code, needs_stream, frames = HOSTILE[case]
    connection_id = new_connection_id()
    peer = await connect_reference(server, connection_id)
    caller = None
    stream_id = 1
    if needs_stream:
        caller = await _call(f"{server.public_url(connection_id)}/victim")
        stream_id = (await peer.next_of(Open)).stream_id
    for frame in frames(stream_id):
        await peer.send_raw(frame)
    closed = await peer.wait_closed(within=30.0)
    assert closed == code, f"{case}: expected close code {code}, got {closed}"
    assert len(peer.close_reason.encode()) <= 123, "ER-3: reason over 123 bytes"
    assert server.token not in peer.close_reason, "ER-3: the close reason holds the token"
    if caller is not None:
        head_relayed = case in ("ws-data-on-http", "second-final-response")
        outcome: int | str
        try:
            outcome = (await caller).status_code
        except httpx.TransportError as exc:
            outcome = f"aborted: {exc}"
        if head_relayed:
            # the head may or may not have reached the caller before the tunnel closed
            assert outcome == 502 or isinstance(outcome, str), (
                f"HD-10: the caller must see 502 or an aborted body, got {outcome}"
            )
        else:
            assert outcome == 502, f"LV-3: a caller without a head must get 502, got {outcome}"
    await asyncio.to_thread(_bystander_works, bystander)


@pytest.mark.rule("HS-4", "HS-6", "ER-2")
@pytest.mark.parametrize(
    ("first", "code"),
    [
        ('{"type": "ping", "id": 1}', 1002),
        ('{"type": "hello", "version": "pipegate.v1", "role": "server"}', 1002),
        ('{"type": "hello", "version": "pipegate.v7", "role": "client"}', 4003),
    ],
    ids=["message-before-hello", "wrong-role", "other-version"],
)
async def test_server_checks_the_client_hello(
    server: ServerUnderTest, first: str, code: int
) -> None:
    """HS-4: nothing before the hello; HS-6: role and version of the hello."""
    peer = await connect_reference(server, send_hello=False)
    await peer.send_raw(first)
    assert await peer.wait_closed(within=30.0) == code


@pytest.mark.rule("FR-5", "ER-2")
async def test_server_closes_on_oversize_frame(
    server: ServerUnderTest, bystander: ReferenceTunnel
) -> None:
    """FR-5: a frame above the server's max_frame_size closes with 1009."""
    peer = await connect_reference(server)
    assert peer.server_hello is not None
    size = peer.server_hello.limits.max_frame_size + 1
    await peer.send_raw(b"\x00\x00\x00\x00\x01" + b"x" * size)
    assert await peer.wait_closed(within=30.0) == 1009
    await asyncio.to_thread(_bystander_works, bystander)


@pytest.mark.rule("FR-6", "ER-1")
@conformance_settings(max_examples=0.5)
@given(
    junk=st.one_of(st.binary(max_size=4), st.text(max_size=30).filter(lambda t: "hello" not in t))
)
def test_server_survives_junk(
    server: ServerUnderTest, bystander: ReferenceTunnel, junk: bytes | str
) -> None:
    """FR-6: after the hellos, junk that is not a valid message closes the tunnel with
    1002 and nothing else happens (no crash: the bystander tunnel works)."""

    async def scenario() -> int | None:
        peer = await connect_reference(server)
        release_reference(peer)  # this event loop ends here: close it in it
        try:
            await peer.send_raw(junk)
            return await peer.wait_closed(within=30.0)
        finally:
            await peer.close()

    assert asyncio.run(scenario()) == 1002
    _bystander_works(bystander)
