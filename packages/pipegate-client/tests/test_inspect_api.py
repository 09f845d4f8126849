"""The request inspector's JSON API, on a real client in process: a fake server opens
streams, the client relays them to the aiohttp local app, and the tests read what the
inspector recorded (and replay it) over HTTP, as the page does."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import logging
import socket
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from pipegate_client import TunnelClient
from pipegate_client._inspect import PORT_ATTEMPTS
from pipegate_client.errors import ConfigurationError
from pipegate_protocol import StreamKind, WebSocketClose, WebSocketData

from .conftest import TOKEN, WAIT, ClientHarness, FakeTunnel

WS_HEADERS = [
    ("Host", "public.example"),
    ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ("Sec-WebSocket-Version", "13"),
]


@contextlib.asynccontextmanager
async def inspected(
    harness: ClientHarness, **overrides: Any
) -> AsyncIterator[tuple[FakeTunnel, TunnelClient, httpx.AsyncClient]]:
    """A client with an inspector on a free loopback port, its tunnel, and an HTTP
    client for the inspector (its Host header is the inspector's own)."""
    overrides.setdefault("inspect", "127.0.0.1:0")
    async with harness.run(harness.settings(**overrides)) as (client, _output, _task):
        fake = await harness.server.next_tunnel()
        await fake.ready()
        assert client.inspector is not None
        assert client.inspector.url is not None
        async with httpx.AsyncClient(base_url=client.inspector.url, timeout=WAIT) as http:
            yield fake, client, http


async def wait_finished(http: httpx.AsyncClient, count: int) -> list[dict[str, Any]]:
    """The list once ``count`` exchanges are finished (the end is recorded a moment
    after the fake server read the last byte)."""
    for _ in range(200):
        requests: list[dict[str, Any]] = (await http.get("/api/requests")).json()["requests"]
        if sum(r["finished"] for r in requests) >= count:
            return requests
        await asyncio.sleep(0.02)
    raise AssertionError(f"fewer than {count} finished exchanges: {requests}")


def body_bytes(body: dict[str, Any]) -> bytes:
    return base64.b64decode(body["base64"])


# ---------------------------------------------------------------- list and detail


async def test_list_and_detail_show_heads_in_wire_order_bodies_and_timings(
    harness: ClientHarness,
) -> None:
    async with inspected(harness) as (fake, _client, http):
        headers = [("X-Dup", "one"), ("Content-Type", "text/plain"), ("x-dup", "two")]
        head, answer = await fake.request(
            "POST", "/echo/items", "a=1&a=2", headers, body=b"hello inspector"
        )
        assert head.status == 200
        head2, _ = await fake.request("GET", "/cookies")
        assert head2.status == 200
        listing = await wait_finished(http, 2)
        assert [(r["method"], r["path"]) for r in listing] == [
            ("GET", "/cookies"),
            ("POST", "/echo/items"),
        ]
        post = listing[1]
        assert post["query"] == "a=1&a=2"
        assert post["status"] == 200
        assert post["request_bytes"] == len(b"hello inspector")
        assert post["response_bytes"] == len(answer)
        assert post["duration_ms"] is not None
        assert post["duration_ms"] >= 0

        detail = (await http.get(f"/api/requests/{post['id']}")).json()
        assert detail["request"]["headers"] == [list(pair) for pair in headers]
        assert body_bytes(detail["request"]["body"]) == b"hello inspector"
        assert body_bytes(detail["response"]["body"]) == answer
        assert not detail["response"]["body"]["truncated"]
        timings = detail["timings"]
        assert 0 <= timings["response_head_ms"] <= timings["first_byte_ms"] <= timings["end_ms"]
        assert detail["websocket"] is None

        cookies = (await http.get(f"/api/requests/{listing[0]['id']}")).json()
        set_cookies = [v for n, v in cookies["response"]["headers"] if n.lower() == "set-cookie"]
        dups = [v for n, v in cookies["response"]["headers"] if n.lower() == "x-dup"]
        assert set_cookies == ["a=1; Path=/", "b=2; Path=/"]
        assert dups == ["one", "two"]

        info = (await http.get("/api/requests")).json()
        assert info["tunnel"] == {
            "connection_id": "node",
            "public_url": "https://public.example/node",
            "local_url": harness.local_url,
        }
        assert info["capture"]["max_requests"] == 200
        assert info["capture"]["body_cap"] == 64 * 1024
        assert info["capture"]["total_cap"] == 32 * 1024 * 1024


async def test_a_long_body_is_kept_up_to_the_cap_and_marked_truncated(
    harness: ClientHarness,
) -> None:
    async with inspected(harness, inspect_body_cap=1000) as (fake, _client, http):
        head, data = await fake.request("GET", "/download", "size=300000")
        assert head.status == 200
        assert len(data) == 300000
        (summary,) = await wait_finished(http, 1)
        assert summary["response_bytes"] == 300000
        detail = (await http.get(f"/api/requests/{summary['id']}")).json()
        response_body = detail["response"]["body"]
        assert response_body["size"] == 300000
        assert response_body["captured"] == 1000
        assert response_body["truncated"] is True
        assert body_bytes(response_body) == data[:1000]


async def test_binary_bodies_come_back_byte_for_byte(harness: ClientHarness) -> None:
    payload = bytes(range(256)) * 3
    async with inspected(harness) as (fake, _client, http):
        head, _data = await fake.request(
            "POST",
            "/echo/bin",
            headers=[("Content-Type", "application/octet-stream")],
            body=payload,
        )
        assert head.status == 200
        head, download = await fake.request("GET", "/download", "size=1024")
        (dl, post) = await wait_finished(http, 2)
        detail = (await http.get(f"/api/requests/{post['id']}")).json()
        assert body_bytes(detail["request"]["body"]) == payload
        detail = (await http.get(f"/api/requests/{dl['id']}")).json()
        assert body_bytes(detail["response"]["body"]) == download == bytes(range(256)) * 4


async def test_websocket_streams_show_their_messages_and_close(harness: ClientHarness) -> None:
    async with inspected(harness) as (fake, _client, http):
        stream = await fake.open("GET", "/ws", headers=WS_HEADERS, kind=StreamKind.WEBSOCKET)
        assert (await fake.response(stream)).status == 101
        for data, text in ((b"hi there", True), (b"\x00\xff\x10", False)):
            fake.conn.send_websocket_data(stream, data, text=text, fin=True)
            await fake.flush()
            echo = await fake.next_item(stream)
            assert isinstance(echo, WebSocketData)
            assert echo.data == data
        fake.conn.send_websocket_data(stream, b"close:4001", text=True, fin=True)
        await fake.flush()
        for _ in range(5):
            item = await fake.next_item(stream)
            if isinstance(item, WebSocketClose):
                break
        assert isinstance(item, WebSocketClose)
        assert item.code == 4001
        (summary,) = await wait_finished(http, 1)
        assert summary["kind"] == "websocket"
        assert summary["status"] == 101
        detail = (await http.get(f"/api/requests/{summary['id']}")).json()
        messages = [
            (m["direction"], m["text"], body_bytes(m["body"]))
            for m in detail["websocket"]["messages"]
        ]
        assert messages == [
            ("in", True, b"hi there"),
            ("out", True, b"hi there"),
            ("in", False, b"\x00\xff\x10"),
            ("out", False, b"\x00\xff\x10"),
            ("in", True, b"close:4001"),
        ]
        assert {"direction": "out", "code": 4001, "reason": "bye from app"} in detail["websocket"][
            "closes"
        ]
        refused = await http.post(f"/api/requests/{summary['id']}/replay")
        assert refused.status_code == 409
        assert "WebSocket" in refused.json()["error"]


# ---------------------------------------------------------------- replay


async def test_replay_sends_the_same_request_to_the_local_app_again(
    harness: ClientHarness,
) -> None:
    async with inspected(harness) as (fake, _client, http):
        head, first = await fake.request(
            "POST", "/echo/again", "k=v", [("X-Trace", "7")], body=b"payload"
        )
        assert head.status == 200
        (original,) = await wait_finished(http, 1)
        answer = await http.post(f"/api/requests/{original['id']}/replay")
        assert answer.status_code == 200, answer.text
        result = answer.json()
        assert result["original"] == original["id"]
        replayed = result["replay"]
        assert replayed["replay_of"] == original["id"]
        assert replayed["status"] == 200
        assert replayed["finished"]
        echoed = json.loads(body_bytes(replayed["response"]["body"]))
        assert echoed == json.loads(first) | {"headers": echoed["headers"]}
        assert ["X-Trace", "7"] in echoed["headers"]
        assert echoed["body_sha256"] == hashlib.sha256(b"payload").hexdigest()
        listing = (await http.get("/api/requests")).json()["requests"]
        assert [r["replay_of"] for r in listing] == [original["id"], None]


async def test_edit_and_replay_changes_method_path_headers_and_body(
    harness: ClientHarness,
) -> None:
    async with inspected(harness) as (fake, _client, http):
        await fake.request("GET", "/echo/start")
        (original,) = await wait_finished(http, 1)
        edits = {
            "method": "PUT",
            "path": "/echo/edited?z=9",
            "headers": [["X-Edit", "yes"], ["Host", "evil.example"], ["X-Edit", "twice"]],
            "body": "new body é",
        }
        answer = await http.post(f"/api/requests/{original['id']}/replay", json=edits)
        assert answer.status_code == 200, answer.text
        replayed = answer.json()["replay"]
        echoed = json.loads(body_bytes(replayed["response"]["body"]))
        assert echoed["method"] == "PUT"
        assert echoed["raw_path"] == "/echo/edited?z=9"
        sent = [(n.lower(), v) for n, v in echoed["headers"]]
        assert [v for n, v in sent if n == "x-edit"] == ["yes", "twice"]
        # The Host of an edit is ignored: the local app's own authority is sent.
        assert ("host", harness.local_url.split("://", 1)[1]) in sent
        assert echoed["body_sha256"] == hashlib.sha256("new body é".encode()).hexdigest()
        assert replayed["method"] == "PUT"
        assert replayed["path"] == "/echo/edited"

        # An absolute URL keeps only its path and query: replays go to the local app.
        answer = await http.post(
            f"/api/requests/{original['id']}/replay",
            json={"path": "http://evil.example:1/echo/abs?q=1"},
        )
        assert answer.status_code == 200, answer.text
        echoed = json.loads(body_bytes(answer.json()["replay"]["response"]["body"]))
        assert echoed["raw_path"] == "/echo/abs?q=1"

        answer = await http.post(
            f"/api/requests/{original['id']}/replay", json={"body_base64": "AAEC/w=="}
        )
        echoed = json.loads(body_bytes(answer.json()["replay"]["response"]["body"]))
        assert echoed["body_len"] == 4

        answer = await http.post(
            f"/api/requests/{original['id']}/replay", json={"method": "POST", "body": ""}
        )
        echoed = json.loads(body_bytes(answer.json()["replay"]["response"]["body"]))
        assert echoed["body_len"] == 0
        assert ("content-length", "0") in [(n.lower(), v) for n, v in echoed["headers"]]


async def test_replay_never_climbs_above_the_local_url_path(harness: ClientHarness) -> None:
    async with inspected(harness, local_url=harness.local_url + "/echo") as (fake, _c, http):
        await fake.request("GET", "/inside")
        (original,) = await wait_finished(http, 1)
        for path in ("/../cookies", "/%2e%2e/cookies", "/a/..%2f..%2fcookies"):
            answer = await http.post(f"/api/requests/{original['id']}/replay", json={"path": path})
            assert answer.status_code == 400, path
            assert "climbs above" in answer.json()["error"]
        assert len((await http.get("/api/requests")).json()["requests"]) == 1


async def test_a_truncated_request_body_is_only_replayed_with_an_edited_body(
    harness: ClientHarness,
) -> None:
    async with inspected(harness, inspect_body_cap=10) as (fake, _client, http):
        await fake.request("POST", "/echo/big", body=b"x" * 100)
        (original,) = await wait_finished(http, 1)
        refused = await http.post(f"/api/requests/{original['id']}/replay")
        assert refused.status_code == 409
        assert "100 bytes" in refused.json()["error"]
        answer = await http.post(f"/api/requests/{original['id']}/replay", json={"body": "short"})
        assert answer.status_code == 200


async def test_a_replay_to_a_local_app_that_is_gone_is_a_502(
    harness: ClientHarness, unused_port: int
) -> None:
    # A client whose local app does not listen: its 502 is recorded from the tunnel,
    # and the replay of it fails with a 502 JSON error.
    async with inspected(harness, local_url=f"http://127.0.0.1:{unused_port}") as (
        fake,
        _client,
        http,
    ):
        head, _ = await fake.request("GET", "/nothing")
        assert head.status == 502
        (original,) = await wait_finished(http, 1)
        answer = await http.post(f"/api/requests/{original['id']}/replay")
        assert answer.status_code == 502
        assert "connection refused" in answer.json()["error"]


# ---------------------------------------------------------------- bounded memory


async def test_the_ring_buffer_keeps_the_last_n_exchanges(harness: ClientHarness) -> None:
    async with inspected(harness, inspect_max_requests=3) as (fake, _client, http):
        for index in range(5):
            await fake.request("GET", f"/echo/{index}")
        listing = await wait_finished(http, 3)
        assert [r["path"] for r in listing] == ["/echo/4", "/echo/3", "/echo/2"]
        evicted = min(r["id"] for r in listing) - 1
        gone = await http.get(f"/api/requests/{evicted}")
        assert gone.status_code == 404
        assert "evicted" in gone.json()["error"]


async def test_the_total_cap_evicts_the_oldest_bodies_first(harness: ClientHarness) -> None:
    async with inspected(harness, inspect_body_cap=4096, inspect_total_cap=10000) as (
        fake,
        client,
        http,
    ):
        for _ in range(4):
            await fake.request("GET", "/download", "size=4096")
        listing = await wait_finished(http, 2)
        assert client.inspector is not None
        assert client.inspector.recorder.captured <= 10000
        # Three bodies of 4 KiB would pass 10000 bytes: only the newest two are kept.
        assert len(listing) == 2
        for summary in listing:
            detail = (await http.get(f"/api/requests/{summary['id']}")).json()
            assert detail["response"]["body"]["captured"] == 4096


# ---------------------------------------------------------------- who may call


async def raw_request(url: str, head: str, body: bytes = b"") -> tuple[int, bytes]:
    """Send exactly ``head`` (and ``body``) to the inspector; the status and body."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(head.encode("latin-1") + body)
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), WAIT)
    finally:
        writer.close()
    status = int(data.split(b" ", 2)[1])
    return status, data.split(b"\r\n\r\n", 1)[1]


async def test_a_foreign_host_or_origin_is_refused_as_a_hostile_page_would_send_it(
    harness: ClientHarness,
) -> None:
    async with inspected(harness) as (fake, client, http):
        await fake.request("POST", "/echo/x", body=b"secret-ish")
        (original,) = await wait_finished(http, 1)
        assert client.inspector is not None
        assert client.inspector.url is not None
        url = client.inspector.url
        port = url.rsplit(":", 1)[1]
        replay = f"/api/requests/{original['id']}/replay"
        hostile = [
            # DNS rebinding: the page of evil.example now resolves to 127.0.0.1.
            ("GET", "/api/requests", {"Host": f"evil.example:{port}"}),
            ("GET", "/", {"Host": f"evil.example:{port}"}),
            ("GET", "/api/requests", {"Host": "127.0.0.1:1"}),
            # CSRF: a page the user visits posts to the inspector.
            ("POST", replay, {"Origin": "http://evil.example"}),
            ("POST", replay, {"Origin": "null"}),
            ("POST", replay, {"Origin": f"https://127.0.0.1:{port}"}),
            ("GET", "/api/requests", {"Origin": "http://localhost:5001"}),
            ("GET", "/api/requests", {"Sec-Fetch-Site": "cross-site"}),
            ("GET", "/api/requests", {"Sec-Fetch-Site": "same-site"}),
        ]
        for method, path, headers in hostile:
            answer = await http.request(method, path, headers=headers)
            assert answer.status_code == 403, (method, path, headers)
            assert answer.json()["status"] == 403
        status, _ = await raw_request(url, "GET /api/requests HTTP/1.1\r\n\r\n")
        assert status == 403  # no Host at all
        # A simple form post (text/plain) with no Origin still cannot replay.
        answer = await http.post(replay, content=b"x=1", headers={"Content-Type": "text/plain"})
        assert answer.status_code == 415
        # Only the original request was ever sent to the local app.
        assert len((await http.get("/api/requests")).json()["requests"]) == 1
        # Its own names are fine.
        for name in (f"localhost:{port}", f"127.0.0.1:{port}", f"[::1]:{port}"):
            answer = await http.get("/api/requests", headers={"Host": name})
            assert answer.status_code == 200, name
        answer = await http.post(
            replay,
            headers={"Origin": f"http://localhost:{port}", "Sec-Fetch-Site": "same-origin"},
        )
        assert answer.status_code == 200


async def test_bad_input_gets_a_clear_json_4xx_never_a_traceback(harness: ClientHarness) -> None:
    async with inspected(harness) as (fake, client, http):
        await fake.request("GET", "/echo/x")
        (original,) = await wait_finished(http, 1)
        replay = f"/api/requests/{original['id']}/replay"
        cases: list[tuple[str, str, Any, int]] = [
            ("GET", "/api/requests/999999", None, 404),
            ("GET", "/api/requests/abc", None, 404),
            ("GET", "/nope", None, 404),
            ("DELETE", "/api/requests", None, 405),
            ("GET", replay, None, 405),
            ("POST", "/api/requests/999999/replay", None, 404),
            ("POST", replay, b"{not json", 400),
            ("POST", replay, b"[1, 2]", 400),
            ("POST", replay, {"method": 7}, 400),
            ("POST", replay, {"method": "GE T"}, 400),
            ("POST", replay, {"path": "no-slash"}, 400),
            ("POST", replay, {"path": "/a b"}, 400),
            ("POST", replay, {"path": "/a\r\nX-Injected: 1"}, 400),
            ("POST", replay, {"headers": "X: y"}, 400),
            ("POST", replay, {"headers": [["X"]]}, 400),
            ("POST", replay, {"headers": [["Bad Name", "v"]]}, 400),
            ("POST", replay, {"headers": [["X", "a\r\nInjected: 1"]]}, 400),
            ("POST", replay, {"headers": [["X", "€"]]}, 400),
            ("POST", replay, {"body": 5}, 400),
            ("POST", replay, {"body_base64": "***"}, 400),
            ("POST", replay, {"body": "a", "body_base64": "YQ=="}, 400),
        ]
        for method, path, payload, status in cases:
            if isinstance(payload, bytes):
                answer = await http.request(
                    method, path, content=payload, headers={"Content-Type": "application/json"}
                )
            else:
                answer = await http.request(method, path, json=payload)
            assert answer.status_code == status, (method, path, payload, answer.text)
            error = answer.json()
            assert error["status"] == status
            assert error["error"]
            assert "Traceback" not in answer.text
        assert client.inspector is not None
        assert client.inspector.url is not None
        status, body = await raw_request(client.inspector.url, "GARBAGE\r\n\r\n")
        assert status == 400
        assert b"malformed" in body
        port = client.inspector.url.rsplit(":", 1)[1]
        big = "GET / HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nX: {}\r\n\r\n".format(port, "a" * 70000)
        status, _ = await raw_request(client.inspector.url, big)
        assert status == 431
        # Still serving after all that.
        assert (await http.get("/api/requests")).status_code == 200


async def test_the_page_is_served_and_the_token_appears_nowhere(harness: ClientHarness) -> None:
    async with inspected(harness) as (fake, _client, http):
        await fake.request("GET", "/echo/x", "token=abc")
        await wait_finished(http, 1)
        page = await http.get("/")
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        assert "script-src 'self'" in page.headers["content-security-policy"]
        assert page.headers["x-frame-options"] == "DENY"
        script = await http.get("/app.js")
        assert script.status_code == 200
        assert "/api/requests" in script.text
        assert (await http.get("/app.css")).status_code == 200
        texts = [page.text, script.text, (await http.get("/api/requests")).text]
        texts.append((await http.get("/api/requests/1")).text)
        for text in texts:
            assert TOKEN not in text


async def test_live_events_announce_each_change(harness: ClientHarness) -> None:
    async with (
        inspected(harness) as (fake, _client, http),
        http.stream("GET", "/api/events") as events,
    ):
        assert events.headers["content-type"] == "text/event-stream"
        lines = events.aiter_lines()
        versions: list[int] = []

        async def next_version() -> int:
            async for line in lines:
                if line.startswith("data: "):
                    return int(json.loads(line[6:])["version"])
            raise AssertionError("event stream ended")

        versions.append(await asyncio.wait_for(next_version(), WAIT))
        await fake.request("GET", "/echo/live")
        versions.append(await asyncio.wait_for(next_version(), WAIT))
        assert versions[1] > versions[0]


# ---------------------------------------------------------------- the address


async def test_a_taken_port_makes_the_inspector_take_the_next_one(
    harness: ClientHarness, caplog: pytest.LogCaptureFixture
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        if port + PORT_ATTEMPTS > 65535:
            pytest.skip("port too close to the top of the range")
        caplog.set_level(logging.INFO, logger="pipegate_client")
        async with inspected(harness, inspect=f"127.0.0.1:{port}") as (_fake, client, http):
            assert client.inspector is not None
            assert client.inspector.url is not None
            got = int(client.inspector.url.rsplit(":", 1)[1])
            assert port < got < port + PORT_ATTEMPTS
            assert (await http.get("/api/requests")).status_code == 200
        assert f"inspector: http://127.0.0.1:{got}" in caplog.text
        assert f"(inspector http://127.0.0.1:{got})" in caplog.text


def _take_port_block(count: int) -> list[socket.socket]:
    """``count`` consecutive loopback ports, bound and listening. Blocks are tried below
    Linux's ephemeral range (32768+), where the tests' own connections do not land;
    a block with a port in use by someone else is let go and another tried."""
    import random

    for _ in range(200):
        base = random.randrange(20000, 32000)
        taken: list[socket.socket] = []
        try:
            for port in range(base, base + count):
                sock = socket.socket()
                taken.append(sock)
                sock.bind(("127.0.0.1", port))
                sock.listen()
            return taken
        except OSError:
            for sock in taken:
                sock.close()
    raise AssertionError(f"no {count} consecutive free loopback ports in 200 tries")


async def test_with_every_port_taken_an_explicit_address_stops_the_client_and_the_default_warns(
    harness: ClientHarness, caplog: pytest.LogCaptureFixture
) -> None:
    sockets = _take_port_block(PORT_ATTEMPTS)
    port = sockets[0].getsockname()[1]
    try:
        client = TunnelClient(harness.settings(inspect=f"127.0.0.1:{port}"))
        with pytest.raises(ConfigurationError, match="cannot listen"):
            await asyncio.wait_for(client.run(), WAIT)
        settings = harness.settings(inspect=f"127.0.0.1:{port}", inspect_optional=True)
        async with harness.run(settings) as (client, _output, _task):
            await harness.server.next_tunnel()
            assert client.inspector is None
        assert "no inspector: --inspect: cannot listen" in caplog.text
    finally:
        for sock in sockets:
            sock.close()


def test_the_inspect_address_is_checked_with_the_settings(harness: ClientHarness) -> None:
    for bad in ("4040", "localhost:", "127.0.0.1:99999", "::1:4040", "host:port"):
        with pytest.raises(ConfigurationError, match="--inspect"):
            harness.settings(inspect=bad)
    assert harness.settings(inspect="[::1]:0").inspect == "[::1]:0"
    assert harness.settings().inspect is None  # a client built in code has none


def test_the_command_line_inspects_on_loopback_4040_by_default() -> None:
    from pipegate_client.cli import build_parser, settings_from_args

    base = ["--server-url", "ws://127.0.0.1:1/node", "--client-token", "t"]
    default = settings_from_args(build_parser().parse_args(base))
    assert default.inspect == "127.0.0.1:4040"
    assert default.inspect_optional  # the default address may be given up for
    explicit = settings_from_args(build_parser().parse_args([*base, "--inspect", ":0"]))
    assert explicit.inspect == ":0"
    assert not explicit.inspect_optional
    off = settings_from_args(build_parser().parse_args([*base, "--no-inspect"]))
    assert off.inspect is None
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args([*base, "--inspect", ":0", "--no-inspect"])
    assert exited.value.code == 2


async def test_replays_are_logged_with_the_connection_id_and_without_the_query(
    harness: ClientHarness, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="pipegate_client")
    async with inspected(harness) as (fake, _client, http):
        await fake.request("GET", "/echo/logged", "secret=1")
        (original,) = await wait_finished(http, 1)
        assert (await http.post(f"/api/requests/{original['id']}/replay")).status_code == 200
        assert (await http.head("/")).content == b""
    lines = [r.getMessage() for r in caplog.records if "replay of" in r.getMessage()]
    assert lines == [f"[node] inspector: replay of #{original['id']} as #2: GET /echo/logged 200"]


async def test_pipelined_requests_are_answered_in_order_and_bounded(
    harness: ClientHarness,
) -> None:
    async with inspected(harness) as (_fake, client, _http):
        assert client.inspector is not None
        assert client.inspector.url is not None
        port = client.inspector.url.rsplit(":", 1)[1]
        one = f"GET /api/requests/7 HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n"
        last = (
            f"GET /api/requests/8 HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
        )
        _, body = await raw_request(client.inspector.url, one * 3 + last)
        # Everything after the first head: three answers for 7, then the one for 8.
        assert body.count(b"no request 7") == 3
        assert body.rindex(b"no request 7") < body.index(b"no request 8")
        status, _ = await raw_request(client.inspector.url, one * 40 + last)
        assert status in (404, 503)
        # A fragment never reaches the target; the path and query are what remains.
        from pipegate_client._inspect._replay import split_target

        assert split_target("/a?b=1#frag") == ("/a", "b=1")
        assert split_target("//evil.example/x?y") == ("/x", "y")
        assert split_target("https://evil.example") == ("/", "")


def test_the_host_guard_knows_its_own_names_for_each_kind_of_address() -> None:
    from pipegate_client._inspect._api import HostGuard

    loopback = HostGuard("127.0.0.1", 4040)
    for name in ("127.0.0.1:4040", "localhost:4040", "LOCALHOST:4040", "[::1]:4040"):
        assert loopback.allowed_host(name), name
    for name in ("127.0.0.1", "127.0.0.1:4041", "evil.example:4040", "10.0.0.1:4040", ":4040"):
        assert not loopback.allowed_host(name), name
    # A wildcard address answers to any IP literal, never to a name (DNS rebinding).
    wildcard = HostGuard("0.0.0.0", 4040)
    for name in ("192.168.1.5:4040", "[fe80::1]:4040", "localhost:4040"):
        assert wildcard.allowed_host(name), name
    assert not wildcard.allowed_host("evil.example:4040")
    assert not wildcard.allowed_host("192.168.1.5.nip.io:4040")
    # A specific address answers to itself only.
    lan = HostGuard("192.168.1.5", 4040)
    assert lan.allowed_host("192.168.1.5:4040")
    assert not lan.allowed_host("localhost:4040")
    assert HostGuard("::1", 4040).allowed_host("[::1]:4040")
