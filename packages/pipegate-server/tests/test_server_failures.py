"""What a caller gets when something goes wrong: quick, one line, never a hang."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from typing import Any

import httpx
from pipegate_protocol import Data, Reset, ResetCode
from websockets.asyncio.client import connect


async def _never(client: Any, stream: Any) -> None:
    await asyncio.sleep(60)


def _items(client: Any, kind: type) -> list[Any]:
    return [m for m in client.received if isinstance(m, kind)]


async def _eventually(predicate: Any) -> None:
    for _ in range(200):
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not reached")


async def test_unknown_id_is_404_naming_it(server: Any) -> None:
    async with httpx.AsyncClient() as http:
        response = await http.get(f"{server.base}/nobody/x")
        root = await http.get(f"{server.base}/")
    assert response.status_code == 404
    assert response.text.strip() == "no tunnel is connected for id 'nobody'"
    assert response.headers["content-type"].startswith("text/plain")
    assert root.status_code == 404


async def test_health(server: Any, pg: Any) -> None:
    async with httpx.AsyncClient() as http:
        before = (await http.get(f"{server.base}/_pipegate/health")).json()
        async with pg.fake_client(server, "node", pg.echo_handler):
            during = (await http.get(f"{server.base}/_pipegate/health")).json()
    assert before["status"] == "ok"
    assert before["tunnels"] == 0
    assert during["tunnels"] == 1


async def test_content_length_over_limit_is_413_without_opening(pg: Any) -> None:
    async with (
        pg.start_server(max_body_size=1000) as server,
        pg.fake_client(server, "node", pg.echo_handler) as client,
        httpx.AsyncClient() as http,
    ):
        response = await http.post(f"{server.base}/node/x", content=b"x" * 1001)
        ok = await http.post(f"{server.base}/node/x", content=b"x" * 1000)
    assert response.status_code == 413
    assert ok.status_code == 200
    assert len(client.received) - len(_items(client, Data)) >= 1
    opens = [m for m in client.received if getattr(m, "type", "") == "open"]
    assert len(opens) == 1


async def test_chunked_body_over_limit_is_413_and_reset(pg: Any) -> None:
    async def body() -> AsyncIterator[bytes]:
        for _ in range(10):
            yield b"y" * 500

    async with (
        pg.start_server(max_body_size=1000) as server,
        pg.fake_client(server, "node", _never) as client,
        httpx.AsyncClient() as http,
    ):
        response = await http.post(f"{server.base}/node/x", content=body())
        await _eventually(lambda: _items(client, Reset))
    assert response.status_code == 413
    assert _items(client, Reset)[0].code is ResetCode.TOO_LARGE


async def test_no_response_head_is_504_and_reset(pg: Any) -> None:
    async with (
        pg.start_server(response_timeout=0.3) as server,
        pg.fake_client(server, "node", _never) as client,
        httpx.AsyncClient() as http,
    ):
        response = await http.get(f"{server.base}/node/slow")
        await _eventually(lambda: _items(client, Reset))
    assert response.status_code == 504
    assert _items(client, Reset)[0].code is ResetCode.TIMEOUT


async def test_client_reset_before_head_is_502_with_reason(server: Any, pg: Any) -> None:
    async def refuse(client: Any, stream: Any) -> None:
        client.conn.reset_stream(stream.id, ResetCode.UPSTREAM_FAILED, "connection refused")
        await client.flush()

    async with pg.fake_client(server, "node", refuse), httpx.AsyncClient() as http:
        response = await http.get(f"{server.base}/node/x")
    assert response.status_code == 502
    assert "connection refused" in response.text


async def test_tunnel_dropped_mid_request_is_502(server: Any, pg: Any) -> None:
    async def drop(client: Any, stream: Any) -> None:
        await client.ws.close()

    async with pg.fake_client(server, "node", drop), httpx.AsyncClient() as http:
        response = await http.get(f"{server.base}/node/x")
    assert response.status_code == 502


async def test_tunnel_dropped_mid_body_aborts_the_response(server: Any, pg: Any) -> None:
    async def half(client: Any, stream: Any) -> None:
        await stream.respond(200, [("content-length", "100")], None)
        await stream.send(b"z" * 50)
        await asyncio.sleep(0.05)
        await client.ws.close()

    async with pg.fake_client(server, "node", half), httpx.AsyncClient() as http:
        try:
            response = await http.get(f"{server.base}/node/x")
        except httpx.HTTPError:
            pass
        else:  # pragma: no cover - must not look complete
            raise AssertionError(f"truncated body looked complete: {response.status_code}")


async def test_busy_tunnel_queues_then_503_with_retry_after(pg: Any) -> None:
    release = asyncio.Event()

    async def slow(client: Any, stream: Any) -> None:
        await release.wait()
        await stream.respond(200, [], b"done")

    async with (
        pg.start_server(queue_timeout=0.3) as server,
        pg.fake_client(server, "node", slow, max_streams=1),
        httpx.AsyncClient() as http,
    ):
        first = asyncio.create_task(http.get(f"{server.base}/node/1"))
        await asyncio.sleep(0.1)
        second = await http.get(f"{server.base}/node/2")
        assert second.status_code == 503
        assert second.headers["retry-after"] == "1"
        queued = asyncio.create_task(http.get(f"{server.base}/node/3"))
        await asyncio.sleep(0.05)
        release.set()
        assert (await first).status_code == 200
        assert (await queued).text == "done"


async def test_caller_disconnect_resets_stream(server: Any, pg: Any) -> None:
    async with pg.fake_client(server, "node", _never) as client:
        with socket.create_connection(("127.0.0.1", server.port)) as sock:
            sock.sendall(b"GET /node/x HTTP/1.1\r\nHost: t\r\n\r\n")
            await _eventually(
                lambda: any(getattr(m, "type", "") == "open" for m in client.received)
            )
        await _eventually(lambda: _items(client, Reset))
    assert _items(client, Reset)[0].code is ResetCode.CALLER_GONE


async def test_head_204_304_and_duplicate_set_cookie(server: Any, pg: Any) -> None:
    async def handler(client: Any, stream: Any) -> None:
        path = stream.open.path
        if path == "/head":
            await stream.respond(200, [("content-length", "42")], b"")
        elif path == "/204":
            await stream.respond(204, [], b"")
        elif path == "/304":
            await stream.respond(304, [("content-length", "42"), ("etag", '"a"')], b"")
        else:
            await stream.respond(
                200,
                [("set-cookie", "a=1"), ("set-cookie", "b=2"), ("transfer-encoding", "x")],
                b"ok",
            )

    async with pg.fake_client(server, "node", handler), httpx.AsyncClient() as http:
        head = await http.head(f"{server.base}/node/head")
        no_content = await http.get(f"{server.base}/node/204")
        not_modified = await http.get(f"{server.base}/node/304")
        cookies = await http.get(f"{server.base}/node/cookies")
    assert head.status_code == 200
    assert head.headers["content-length"] == "42"
    assert head.content == b""
    assert no_content.status_code == 204
    assert no_content.content == b""
    assert not_modified.status_code == 304
    assert not_modified.headers["etag"] == '"a"'
    # Two stay two, in order; each gets the tunnel's Path (the _rewrite rules).
    assert cookies.headers.get_list("set-cookie") == ["a=1; Path=/node/", "b=2; Path=/node/"]
    assert cookies.content == b"ok"


async def test_malformed_frame_closes_only_that_tunnel(server: Any, pg: Any) -> None:
    async with pg.fake_client(server, "good", pg.echo_handler):
        async with connect(
            server.ws_url("bad"),
            subprotocols=["pipegate.v1"],  # type: ignore[list-item]
            additional_headers={"Authorization": f"Bearer {pg.token}"},
        ) as bad:
            await bad.recv()  # the server's hello
            await bad.send("{not json")
            await asyncio.wait_for(bad.wait_closed(), 5)
            assert bad.close_code == 1002
        async with httpx.AsyncClient() as http:
            assert (await http.get(f"{server.base}/good/x")).status_code == 200
            # Its id is offline (RT-6), not unknown: the client may well come back.
            assert (await http.get(f"{server.base}/bad/x")).status_code == 503


async def test_short_body_for_content_length_aborts_without_traceback(
    server: Any, pg: Any, caplog: Any
) -> None:
    async def liar(client: Any, stream: Any) -> None:
        await stream.respond(200, [("content-length", "100")], None)
        await stream.send(b"z" * 50, end_stream=True)

    async with pg.fake_client(server, "node", liar), httpx.AsyncClient() as http:
        try:
            response = await http.get(f"{server.base}/node/x")
        except httpx.HTTPError:
            pass
        else:  # pragma: no cover - must not look complete
            raise AssertionError(f"short body looked complete: {response.status_code}")
        assert (await http.get(f"{server.base}/_pipegate/health")).status_code == 200
    assert "Exception in ASGI application" not in caplog.text
    assert "Traceback" not in caplog.text


async def test_silent_and_slow_heads_are_disconnected(pg: Any) -> None:
    async with pg.start_server(head_timeout=0.3) as server:
        silent = await asyncio.open_connection("127.0.0.1", server.port)
        partial = await asyncio.open_connection("127.0.0.1", server.port)
        partial[1].write(b"GET /x/y HTTP/1.1\r\nHost: a\r\n")
        for reader, writer in (silent, partial):
            assert await asyncio.wait_for(reader.read(), 5) == b""
            writer.close()
        async with httpx.AsyncClient() as http:
            health = await http.get(f"{server.base}/_pipegate/health")
        assert health.status_code == 200


async def _read_response(reader: asyncio.StreamReader) -> bytes:
    """The status line of one Content-Length response; its body is read and dropped."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    await asyncio.wait_for(reader.readexactly(length), 5)
    return head.split(b"\r\n", 1)[0]


async def test_the_head_deadline_runs_from_each_request_s_start(pg: Any) -> None:
    health = b"GET /_pipegate/health HTTP/1.1\r\nHost: a\r\n\r\n"
    async with pg.start_server(head_timeout=0.3) as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        # Whole requests further apart than the deadline keep the connection.
        for _ in range(2):
            writer.write(health)
            assert await _read_response(reader) == b"HTTP/1.1 200 OK"
            await asyncio.sleep(0.45)
        # A head that stalls soon after a whole request is cut 0.3 s after it began,
        # not 0.3 s after the earlier request began.
        writer.write(health)
        assert await _read_response(reader) == b"HTTP/1.1 200 OK"
        await asyncio.sleep(0.1)
        loop = asyncio.get_running_loop()
        began = loop.time()
        writer.write(b"GET /x/y HTTP/1.1\r\nHost: a\r\n")
        assert await asyncio.wait_for(reader.read(), 5) == b""
        assert loop.time() - began >= 0.25
        writer.close()


async def test_oversized_headers_are_431(pg: Any) -> None:
    async with (
        pg.start_server(max_header_size=4096) as server,
        pg.fake_client(server, "node", pg.echo_handler) as client,
        httpx.AsyncClient() as http,
    ):
        response = await http.get(f"{server.base}/node/x", headers={"x-big": "v" * 5000})
        ok = await http.get(f"{server.base}/node/x", headers={"x-small": "v" * 100})
    assert response.status_code == 431
    assert ok.status_code == 200
    assert len([m for m in client.received if getattr(m, "type", "") == "open"]) == 1


async def test_head_the_protocol_cannot_carry_is_400(server: Any, pg: Any) -> None:
    async with pg.fake_client(server, "node", pg.echo_handler):
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        method = b"M" * 70  # a valid HTTP token, longer than the protocol's 64
        writer.write(method + b" /node/x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        raw = await asyncio.wait_for(reader.read(), 5)
        writer.close()
    assert raw.startswith(b"HTTP/1.1 400")
    assert b"cannot be relayed" in raw


async def test_stream_channel_lost_tunnel_delivers_what_arrived_first() -> None:
    """A response that arrived whole is not thrown away by the tunnel closing after it;
    a reset, by contrast, decides the outcome at once."""
    from types import SimpleNamespace

    from pipegate_server.errors import StreamResetError, TunnelClosedError
    from pipegate_tunnel import StreamChannel

    shell: Any = SimpleNamespace(loop=asyncio.get_running_loop(), observer=None)
    lost = StreamChannel(shell, 1, method="GET", path="/")
    lost.deliver(Data(1, b"head"))
    lost.deliver(Data(1, b"tail", end_stream=True))
    lost.fail(TunnelClosedError("gone"), drain_first=True)
    assert await lost.next() == Data(1, b"head")
    assert await lost.next() == Data(1, b"tail", end_stream=True)
    try:
        await lost.next()
    except TunnelClosedError:
        pass
    else:
        raise AssertionError("the failure must follow the queued messages")

    reset = StreamChannel(shell, 3, method="GET", path="/")
    reset.deliver(Data(3, b"stale"))
    reset.fail(StreamResetError("reset by client"))
    try:
        await reset.next()
    except StreamResetError:
        pass
    else:
        raise AssertionError("a reset must win over queued messages")


async def test_client_closing_right_after_a_whole_response_loses_nothing(pg: Any) -> None:
    body = bytes(range(256)) * 2048  # 512 KiB, within the initial window

    async def respond_then_leave(client: Any, stream: Any) -> None:
        await stream.respond(200, [("content-type", "application/octet-stream")], body)
        await client.ws.close()

    async with (
        pg.start_server() as server,
        pg.fake_client(server, "node", respond_then_leave),
        httpx.AsyncClient(timeout=10) as http,
    ):
        response = await http.get(f"{server.base}/node/file")
    assert response.status_code == 200
    assert response.content == body
