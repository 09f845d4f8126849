"""The client's own HTTP/1.1 client (``pipegate_client._http1``) against a raw origin.

The origin is a bare asyncio server on 127.0.0.1 that records the exact bytes it got
and answers scripted bytes, so each test states precisely what went over the wire.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
import trustme
from pipegate_client._http1 import (
    BUFFER_HIGH_WATER,
    HTTP1Pool,
    HTTP1Response,
    Origin,
    encode_request_head,
)
from pipegate_client.errors import (
    LocalConnectError,
    LocalRequestError,
    LocalResponseError,
)

WAIT = 10.0
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


class RawConnection:
    """One accepted connection: what arrived, and helpers to read and answer."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.heads: list[bytes] = []
        self.bodies: list[bytes] = []
        self.closed_by_peer = asyncio.Event()

    async def next_head(self) -> bytes | None:
        """The next request head, ``None`` when the client closed the connection."""
        try:
            head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), WAIT)
        except asyncio.IncompleteReadError:
            self.closed_by_peer.set()
            return None
        self.heads.append(head)
        return head

    async def read_exactly(self, size: int) -> bytes:
        data = await asyncio.wait_for(self.reader.readexactly(size), WAIT)
        self.bodies.append(data)
        return data

    async def read_chunked(self) -> bytes:
        """A chunked body, returned exactly as it was framed on the wire."""
        raw = bytearray()
        while True:
            line = await asyncio.wait_for(self.reader.readuntil(b"\r\n"), WAIT)
            raw += line
            size = int(line.strip(), 16)
            raw += await asyncio.wait_for(self.reader.readexactly(size + 2), WAIT)
            if size == 0:
                self.bodies.append(bytes(raw))
                return bytes(raw)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def wait_client_close(self) -> None:
        """Read (and drop) whatever comes until the client closes the connection."""
        await asyncio.wait_for(self.reader.read(), WAIT)
        self.closed_by_peer.set()

    def close(self) -> None:
        self.writer.close()


Handler = Callable[[RawConnection, int], Awaitable[None]]


class RawOrigin:
    """A scripted origin; ``handler(connection, index)`` runs for each connection."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections: list[RawConnection] = []
        self.port = 0
        self._server: asyncio.Server | None = None
        #: Serve TLS with this context when set.
        self.ssl: ssl.SSLContext | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connection = RawConnection(reader, writer)
        self.connections.append(connection)
        try:
            await self.handler(connection, len(self.connections) - 1)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def __aenter__(self) -> RawOrigin:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0, ssl=self.ssl)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for connection in self.connections:
            connection.writer.close()
        await self._server.wait_closed()


@contextlib.asynccontextmanager
async def pool_for(
    handler: Handler, *, max_connections: int = 4
) -> AsyncIterator[tuple[RawOrigin, HTTP1Pool]]:
    async with RawOrigin(handler) as origin:
        pool = HTTP1Pool(Origin(origin.url), max_connections=max_connections, connect_timeout=WAIT)
        try:
            yield origin, pool
        finally:
            await pool.aclose()


async def keep_answering(connection: RawConnection, _index: int) -> None:
    """Answer every body-less request with 200 "ok", on the same connection."""
    while await connection.next_head() is not None:
        await connection.send(OK)


async def read_all(response: HTTP1Response) -> bytes:
    chunks = []
    for _ in range(100_000):
        chunk = await asyncio.wait_for(response.read(65536), WAIT)
        if not chunk:
            break
        chunks.append(chunk)
    await response.aclose()
    return b"".join(chunks)


async def body_of(*chunks: bytes) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk


async def wait_until(predicate: Callable[[], bool]) -> None:
    for _ in range(1000):
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not reached")


# ---------------------------------------------------------------------- request heads


async def test_http1_head_is_written_byte_for_byte() -> None:
    async with pool_for(keep_answering) as (origin, pool):
        response = await pool.request(
            "purge",
            "/a%2Fb/./caf\xe9?x=1&x=2&y=%20+z",
            [("X-Dup", "1"), ("x-dup", "2"), ("X-Bytes", "caf\xe9 \x80\xff"), ("Empty", "")],
        )
        assert (response.status, await read_all(response)) == (200, b"ok")
    assert origin.connections[0].heads == [
        b"purge /a%2Fb/./caf\xe9?x=1&x=2&y=%20+z HTTP/1.1\r\n"
        + f"Host: 127.0.0.1:{origin.port}\r\n".encode()
        + b"X-Dup: 1\r\nx-dup: 2\r\nX-Bytes: caf\xe9 \x80\xff\r\nEmpty: \r\n"
        # Only GET, HEAD, OPTIONS and TRACE (case-sensitive) go without a length.
        + b"Content-Length: 0\r\n\r\n"
    ]


def test_http1_framing_headers_added_per_method_and_body() -> None:
    get, _ = encode_request_head("GET", "/", "h", [], has_body=False)
    post, _ = encode_request_head("POST", "/", "h", [], has_body=False)
    lower_get, _ = encode_request_head("get", "/", "h", [], has_body=False)
    chunked, declared = encode_request_head("PUT", "/", "h", [("A", "b")], has_body=True)
    fixed, length = encode_request_head("PUT", "/", "h", [("content-length", "5")], has_body=True)
    assert get == b"GET / HTTP/1.1\r\nHost: h\r\n\r\n"
    assert post == b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n"
    assert lower_get == b"get / HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n"
    assert chunked == b"PUT / HTTP/1.1\r\nHost: h\r\nA: b\r\nTransfer-Encoding: chunked\r\n\r\n"
    assert declared is None
    assert fixed == b"PUT / HTTP/1.1\r\nHost: h\r\ncontent-length: 5\r\n\r\n"
    assert length == 5


@pytest.mark.parametrize(
    ("method", "target", "headers", "words"),
    [
        ("GET", "/", [("X-Evil", "a\r\nInjected: 1")], "X-Evil"),
        ("GET", "/", [("X-Evil", "a\nb")], "X-Evil"),
        ("GET", "/", [("X-Nul", "a\x00b")], "X-Nul"),
        ("GET", "/", [("Bad Name", "v")], "not an HTTP token"),
        ("GET", "/", [("X-Wide", "\u2603")], "X-Wide"),
        ("GE T", "/", [], "not an HTTP token"),
        ("GET", "/a b", [], "target"),
        ("GET", "/a\r\nb", [], "target"),
        ("GET", "/", [("Content-Length", "1"), ("Content-Length", "2")], "contradictory"),
        ("GET", "/", [("Content-Length", "-1")], "invalid Content-Length"),
        ("GET", "/", [("Content-Length", "3")], "no body"),
    ],
)
async def test_http1_refuses_heads_http1_cannot_carry(
    method: str, target: str, headers: list[tuple[str, str]], words: str
) -> None:
    async with pool_for(keep_answering) as (origin, pool):
        with pytest.raises(LocalRequestError) as refused:
            await pool.request(method, target, headers)
        assert words in refused.value.reason
        assert origin.connections == []  # refused before anything was sent


def test_http1_origin_host_header_and_credentials() -> None:
    assert Origin("http://localhost:80/app").host_header == "localhost"
    assert Origin("https://example.com:443").host_header == "example.com"
    assert Origin("https://example.com:8443").host_header == "example.com:8443"
    v6 = Origin("http://[::1]:5001")
    assert (v6.host, v6.port, v6.host_header) == ("::1", 5001, "[::1]:5001")
    assert Origin("http://localhost").authorization is None
    with_user = Origin("http://al%40ice:s3cret@localhost:5001")
    assert with_user.host_header == "localhost:5001"
    assert with_user.authorization == "Basic YWxAaWNlOnMzY3JldA=="  # al@ice:s3cret


# ---------------------------------------------------------------------- request bodies


async def test_http1_chunked_upload_skips_empty_chunks() -> None:
    async def handler(connection: RawConnection, _index: int) -> None:
        await connection.next_head()
        await connection.read_chunked()
        await connection.send(OK)

    async with pool_for(handler) as (origin, pool):
        response = await pool.request("POST", "/up", [], body_of(b"abc", b"", b"defgh"))
        assert await read_all(response) == b"ok"
    connection = origin.connections[0]
    assert connection.heads[0].endswith(b"\r\nTransfer-Encoding: chunked\r\n\r\n")
    assert connection.bodies == [b"3\r\nabc\r\n5\r\ndefgh\r\n0\r\n\r\n"]


async def test_http1_content_length_upload_is_sent_as_is() -> None:
    async def handler(connection: RawConnection, _index: int) -> None:
        while await connection.next_head() is not None:
            await connection.read_exactly(8)
            await connection.send(OK)

    async with pool_for(handler) as (origin, pool):
        for _ in range(2):
            response = await pool.request(
                "PUT", "/up", [("Content-Length", "8")], body_of(b"abcd", b"efgh")
            )
            assert await read_all(response) == b"ok"
        assert len(origin.connections) == 1  # a finished upload leaves a reusable connection
    connection = origin.connections[0]
    assert b"transfer-encoding" not in connection.heads[0].lower()
    assert connection.bodies == [b"abcdefgh", b"abcdefgh"]


async def test_http1_body_longer_than_content_length_is_refused() -> None:
    async def handler(connection: RawConnection, _index: int) -> None:
        await connection.next_head()
        await connection.wait_client_close()

    async with pool_for(handler) as (origin, pool):
        with pytest.raises(LocalRequestError, match="longer than its Content-Length 4"):
            await pool.request("PUT", "/", [("Content-Length", "4")], body_of(b"abc", b"de"))
        await asyncio.wait_for(origin.connections[0].closed_by_peer.wait(), WAIT)
        assert pool.connections == set()


async def test_http1_body_iterator_failure_propagates_unchanged() -> None:
    class Boom(Exception):
        pass

    async def failing() -> AsyncIterator[bytes]:
        yield b"a"
        raise Boom("caller went away")

    async def handler(connection: RawConnection, _index: int) -> None:
        await connection.next_head()
        await connection.wait_client_close()

    async with pool_for(handler) as (_origin, pool):
        with pytest.raises(Boom):
            await pool.request("POST", "/", [], failing())
        assert pool.connections == set()


async def test_http1_early_response_stops_the_upload_and_closes() -> None:
    finished = asyncio.Event()

    async def endless() -> AsyncIterator[bytes]:
        try:
            for _ in range(10_000):
                yield b"x" * 1024
                await asyncio.sleep(0)
        finally:
            finished.set()

    async def handler(connection: RawConnection, _index: int) -> None:
        await connection.next_head()
        await connection.send(b"HTTP/1.1 413 Too Large\r\nContent-Length: 3\r\n\r\nbig")
        await connection.wait_client_close()

    async with pool_for(handler) as (origin, pool):
        response = await pool.request("POST", "/", [], endless())
        assert response.status == 413
        assert await read_all(response) == b"big"
        await asyncio.wait_for(finished.wait(), WAIT)  # the body iterator was closed
        await asyncio.wait_for(origin.connections[0].closed_by_peer.wait(), WAIT)
        assert pool.idle == []


# ---------------------------------------------------------------------- responses


async def test_http1_response_framings() -> None:
    answers = [
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-A: 1\r\nX-A: 2\r\n\r\n"
        b"3\r\nabc\r\n4\r\ndefg\r\n0\r\n\r\n",
        b"HTTP/1.1 201 Created\r\nContent-Length: 5\r\n\r\nhello",
        b"HTTP/1.1 204 No Content\r\nX-B: 1\r\n\r\n",
        b"HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n",
    ]

    async def handler(connection: RawConnection, _index: int) -> None:
        for answer in answers:
            await connection.next_head()
            await connection.send(answer)
        await connection.wait_client_close()

    async with pool_for(handler) as (origin, pool):
        results = []
        for _ in answers:
            response = await pool.request("GET", "/", [])
            results.append((response.status, response.headers, await read_all(response)))
        assert results == [
            (
                200,
                [(b"Transfer-Encoding", b"chunked"), (b"X-A", b"1"), (b"X-A", b"2")],
                b"abcdefg",
            ),
            (201, [(b"Content-Length", b"5")], b"hello"),
            (204, [(b"X-B", b"1")], b""),
            (304, [(b"Content-Length", b"10")], b""),
        ]
        assert len(origin.connections) == 1  # all four on one kept-alive connection


async def test_http1_chunked_trailers_are_not_response_headers() -> None:
    async def handler(connection: RawConnection, _index: int) -> None:
        await connection.next_head()
        await connection.send(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"2\r\nok\r\n0\r\nX-Checksum: abc\r\n\r\n"
        )
        await keep_answering(connection, 0)

    async with pool_for(handler) as (origin, pool):
        response = await pool.request("GET", "/", [])
        assert await read_all(response) == b"ok"
        assert response.headers == [(b"Transfer-Encoding", b"chunked")]
        response = await pool.request("GET", "/", [])
        assert await read_all(response) == b"ok"
        assert len(origin.connections) == 1


async def test_http1_close_delimited_body_ends_at_eof() -> None:
    async def handler(connection: RawConnection, index: int) -> None:
        await connection.next_head()
        await connection.send(b"HTTP/1.1 200 OK\r\n\r\nuntil the end")
        connection.close()

    async with pool_for(handler) as (origin, pool):
        for _ in range(2):
            response = await pool.request("GET", "/", [])
            assert await read_all(response) == b"until the end"
        assert len(origin.connections) == 2
        assert pool.idle == []


async def test_http1_head_response_has_no_body_and_is_not_reused() -> None:
    async with pool_for(lambda c, i: _answer_head(c)) as (origin, pool):
        for _ in range(2):
            response = await pool.request("HEAD", "/", [])
            assert response.status == 200
            assert (b"Content-Length", b"12345") in response.headers
            assert response.at_eof
            assert await read_all(response) == b""
        assert len(origin.connections) == 2
        for connection in origin.connections:
            await asyncio.wait_for(connection.closed_by_peer.wait(), WAIT)


async def _answer_head(connection: RawConnection) -> None:
    await connection.next_head()
    await connection.send(b"HTTP/1.1 200 OK\r\nContent-Length: 12345\r\n\r\n")
    await connection.wait_client_close()


async def test_http1_interim_responses_are_skipped() -> None:
    async def handler(connection: RawConnection, _index: int) -> None:
        await connection.next_head()
        await connection.send(
            b"HTTP/1.1 100 Continue\r\n\r\n"
            b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n"
        )
        await connection.send(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nbody")
        await keep_answering(connection, 0)

    async with pool_for(handler) as (origin, pool):
        response = await pool.request("GET", "/", [])
        assert (response.status, response.headers) == (200, [(b"Content-Length", b"4")])
        assert await read_all(response) == b"body"
        response = await pool.request("GET", "/", [])
        assert await read_all(response) == b"ok"
        assert len(origin.connections) == 1


async def test_http1_101_to_a_plain_request_is_returned_and_not_reused() -> None:
    async def handler(connection: RawConnection, _index: int) -> None:
        await connection.next_head()
        await connection.send(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\nConnection: upgrade\r\n\r\nzz"
        )
        await connection.wait_client_close()

    async with pool_for(handler) as (origin, pool):
        response = await pool.request("GET", "/", [])
        assert response.status == 101
        assert await read_all(response) == b""
        await asyncio.wait_for(origin.connections[0].closed_by_peer.wait(), WAIT)
        assert pool.connections == set()


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nok",
    ],
    ids=["connection-close", "http-1.0", "http-1.0-keep-alive"],
)
async def test_http1_connection_not_reused_when_the_response_says_so(answer: bytes) -> None:
    async def handler(connection: RawConnection, _index: int) -> None:
        await connection.next_head()
        await connection.send(answer)
        await connection.wait_client_close()

    async with pool_for(handler) as (origin, pool):
        for _ in range(2):
            response = await pool.request("GET", "/", [])
            assert await read_all(response) == b"ok"
        assert len(origin.connections) == 2


async def test_http1_invalid_response_is_a_typed_error() -> None:
    async def handler(connection: RawConnection, _index: int) -> None:
        await connection.next_head()
        await connection.send(b"HTTP/1.1 2OO OK\r\n\r\n")
        await connection.wait_client_close()

    async with pool_for(handler) as (_origin, pool):
        with pytest.raises(LocalResponseError, match=r"invalid HTTP/1\.1 response"):
            await pool.request("GET", "/", [])


# ---------------------------------------------------------------------- keep-alive


async def test_http1_keep_alive_reuses_one_connection() -> None:
    async with pool_for(keep_answering) as (origin, pool):
        for path in ("/one", "/two", "/three"):
            response = await pool.request("GET", path, [])
            assert await read_all(response) == b"ok"
        assert len(origin.connections) == 1
        assert [head.split(b" ")[1] for head in origin.connections[0].heads] == [
            b"/one",
            b"/two",
            b"/three",
        ]
        assert len(pool.idle) == 1


async def test_http1_pool_never_exceeds_max_connections() -> None:
    release = asyncio.Event()

    async def handler(connection: RawConnection, _index: int) -> None:
        while await connection.next_head() is not None:
            await release.wait()
            await connection.send(OK)

    async with pool_for(handler, max_connections=2) as (origin, pool):
        tasks = [asyncio.create_task(pool.request("GET", f"/{i}", [])) for i in range(5)]
        await wait_until(lambda: sum(len(c.heads) for c in origin.connections) == 2)
        assert len(pool.connections) == 2
        release.set()
        responses = await asyncio.wait_for(asyncio.gather(*tasks), WAIT)
        assert [await read_all(r) for r in responses] == [b"ok"] * 5
        assert len(origin.connections) == 2


async def test_http1_idle_connection_closed_by_origin_is_dropped() -> None:
    async def handler(connection: RawConnection, _index: int) -> None:
        await connection.next_head()
        await connection.send(OK)
        connection.close()  # keep-alive timeout on the origin's side

    async with pool_for(handler) as (origin, pool):
        response = await pool.request("GET", "/", [])
        assert await read_all(response) == b"ok"
        await wait_until(lambda: not pool.idle)
        assert pool.connections == set()
        response = await pool.request("GET", "/", [])
        assert await read_all(response) == b"ok"
        assert len(origin.connections) == 2


async def test_http1_keep_alive_race_is_retried_once_on_a_fresh_connection() -> None:
    async def handler(connection: RawConnection, index: int) -> None:
        if index == 0:
            await connection.next_head()
            await connection.send(OK)
            await connection.next_head()  # the reused connection dies unanswered
            return
        await keep_answering(connection, index)

    async with pool_for(handler) as (origin, pool):
        for _ in range(2):
            response = await pool.request("GET", "/", [])
            assert await read_all(response) == b"ok"
        assert len(origin.connections) == 2
        assert len(origin.connections[0].heads) == 2
        assert len(origin.connections[1].heads) == 1  # the retry


async def test_http1_no_retry_with_a_body_or_on_a_fresh_connection() -> None:
    async def handler(connection: RawConnection, index: int) -> None:
        if index == 0:
            await connection.next_head()
            await connection.send(OK)
        await connection.next_head()  # then close unanswered

    async with pool_for(handler) as (origin, pool):
        response = await pool.request("GET", "/", [])
        assert await read_all(response) == b"ok"
        with pytest.raises(LocalResponseError) as failed:
            await pool.request("POST", "/", [("Content-Length", "3")], body_of(b"abc"))
        assert failed.value.reason == "it closed the connection without answering"
        assert len(origin.connections) == 1  # a body is never sent twice
        with pytest.raises(LocalResponseError):
            await pool.request("GET", "/", [])  # fresh connection: not retried
        assert len(origin.connections) == 2


async def test_http1_origin_closing_mid_body_is_a_typed_error() -> None:
    async def handler(connection: RawConnection, _index: int) -> None:
        await connection.next_head()
        await connection.send(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + b"x" * 10)

    async with pool_for(handler) as (_origin, pool):
        response = await pool.request("GET", "/", [])
        assert await asyncio.wait_for(response.read(100), WAIT) == b"x" * 10
        with pytest.raises(LocalResponseError, match="before the end of the body"):
            await asyncio.wait_for(response.read(100), WAIT)
        await response.aclose()
        assert pool.connections == set()


# ---------------------------------------------------------------------- cancellation


async def test_http1_cancellation_closes_the_connection() -> None:
    async def handler(connection: RawConnection, _index: int) -> None:
        await connection.next_head()
        await connection.wait_client_close()

    async with pool_for(handler) as (origin, pool):
        task = asyncio.create_task(pool.request("GET", "/slow", []))
        await wait_until(lambda: bool(origin.connections and origin.connections[0].heads))
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.wait_for(origin.connections[0].closed_by_peer.wait(), WAIT)
        assert pool.connections == set()
        assert pool.idle == []


async def test_http1_abandoned_body_closes_the_connection() -> None:
    async def handler(connection: RawConnection, _index: int) -> None:
        await connection.next_head()
        await connection.send(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nstart")
        await connection.wait_client_close()

    async with pool_for(handler) as (origin, pool):
        response = await pool.request("GET", "/", [])
        assert await response.read(100) == b"start"
        await response.aclose()
        await asyncio.wait_for(origin.connections[0].closed_by_peer.wait(), WAIT)
        assert pool.idle == []


# ---------------------------------------------------------------------- backpressure


async def test_http1_large_body_is_not_read_ahead_of_the_consumer() -> None:
    size = 16 * 1024 * 1024
    block = bytes(range(256)) * 256

    async def handler(connection: RawConnection, _index: int) -> None:
        await connection.next_head()
        await connection.send(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size)
        for _ in range(size // len(block)):
            await connection.send(block)
        await keep_answering(connection, 0)

    async with pool_for(handler) as (_origin, pool):
        response = await pool.request("GET", "/big", [])
        await wait_until(lambda: response.buffered > BUFFER_HIGH_WATER)
        await asyncio.sleep(0.2)  # the origin keeps writing; we must not keep reading
        # At most one socket read beyond the high-water mark (256 KiB here).
        assert response.buffered <= BUFFER_HIGH_WATER + 256 * 1024
        digest = hashlib.sha256()
        received = 0
        for _ in range(size):
            chunk = await asyncio.wait_for(response.read(100_000), WAIT)
            if not chunk:
                break
            digest.update(chunk)
            received += len(chunk)
            assert response.buffered <= BUFFER_HIGH_WATER + 256 * 1024
        assert digest.digest() == hashlib.sha256(block * (size // len(block))).digest()
        assert received == size
        await response.aclose()
        response = await pool.request("GET", "/", [])  # paused reading was resumed
        assert await read_all(response) == b"ok"


# ---------------------------------------------------------------------- connect


async def test_http1_connection_refused_is_a_connect_error(unused_port: int) -> None:
    pool = HTTP1Pool(
        Origin(f"http://127.0.0.1:{unused_port}"), max_connections=2, connect_timeout=WAIT
    )
    try:
        with pytest.raises(LocalConnectError) as refused:
            await pool.request("GET", "/", [])
        assert refused.value.reason == "connection refused"
        assert pool.connections == set()
    finally:
        await pool.aclose()


async def _tls_origin(ca: trustme.CA) -> RawOrigin:
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_context)
    origin = RawOrigin(keep_answering)
    origin.ssl = server_context
    return origin


async def test_http1_https_origin_verified_with_its_ca() -> None:
    ca = trustme.CA()
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)
    async with await _tls_origin(ca) as origin:
        pool = HTTP1Pool(
            Origin(f"https://127.0.0.1:{origin.port}"),
            max_connections=2,
            connect_timeout=WAIT,
            ssl_context=client_context,
        )
        try:
            for _ in range(2):
                response = await pool.request("GET", "/tls", [])
                assert await read_all(response) == b"ok"
            assert len(origin.connections) == 1
            assert (
                origin.connections[0]
                .heads[0]
                .startswith(b"GET /tls HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n" % origin.port)
            )
        finally:
            await pool.aclose()


async def test_http1_https_origin_with_unknown_ca_is_a_connect_error() -> None:
    async with await _tls_origin(trustme.CA()) as origin:
        pool = HTTP1Pool(
            Origin(f"https://127.0.0.1:{origin.port}"), max_connections=2, connect_timeout=WAIT
        )
        try:
            with pytest.raises(LocalConnectError) as refused:
                await pool.request("GET", "/", [])
            assert refused.value.reason.startswith("TLS certificate verification failed: ")
        finally:
            await pool.aclose()


# ---------------------------------------------------------------------- uvloop


def test_http1_on_uvloop() -> None:
    """The command line runs on uvloop, whose transports differ from asyncio's (they
    do not subclass asyncio.Transport, and read in other sizes)."""
    uvloop = pytest.importorskip("uvloop")

    async def upload_twice() -> None:
        async def handler(connection: RawConnection, _index: int) -> None:
            while await connection.next_head() is not None:
                await connection.read_chunked()
                await connection.send(OK)

        async with pool_for(handler) as (origin, pool):
            for _ in range(2):
                response = await pool.request("POST", "/", [], body_of(b"abc"))
                assert await read_all(response) == b"ok"
            assert len(origin.connections) == 1
            assert origin.connections[0].bodies == [b"3\r\nabc\r\n0\r\n\r\n"] * 2

    uvloop.run(upload_twice())
    uvloop.run(test_http1_large_body_is_not_read_ahead_of_the_consumer())
    uvloop.run(test_http1_cancellation_closes_the_connection())
    uvloop.run(test_http1_close_delimited_body_ends_at_eof())
