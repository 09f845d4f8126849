"""Bounds on a public caller's connection (issue 11, rows 3 and 4), in process: a
request head read in pieces is answered 431 once it passes ``--max-header-size`` plus
the request line's allowance, on httptools and on the h11 hand-over alike, and a
head handed over to h11 keeps its deadline. (Rows 1 and 2, the WebSocket bounds, are
measured with real processes in ``tests/e2e/abuse/test_abuse_server_public.py``.)"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from pipegate_server._internals import REQUEST_LINE_ALLOWANCE, head_limit

LIMIT = 4096


def test_head_limit_is_the_header_limit_plus_the_request_line() -> None:
    assert head_limit(LIMIT) == LIMIT + REQUEST_LINE_ALLOWANCE
    assert head_limit(0) is None  # "no limit"


async def _head_in_pieces(port: int, method: str, lines: int, *, end: bool) -> bytes:
    """Send a head one 1 KiB header line per write (each its own read on the server),
    stopping once the server answered; returns the start of the answer ('' if none
    within 5 s)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    answer = asyncio.ensure_future(reader.read(4096))  # the answer, before any reset
    try:
        writer.write(f"{method} /node/echo HTTP/1.1\r\nHost: a\r\n".encode())
        await asyncio.sleep(0.05)
        for _ in range(lines):
            if answer.done():
                break
            writer.write(b"X-Pad: " + b"p" * 1015 + b"\r\n")
            await asyncio.sleep(0.005)
        if end and not answer.done():
            writer.write(b"\r\n")
        return await asyncio.wait_for(answer, 5)
    except (ConnectionError, TimeoutError):
        return answer.result() if answer.done() and not answer.exception() else b""
    finally:
        answer.cancel()
        writer.close()


@pytest.mark.parametrize("method", ["GET", "FOO"])
async def test_head_growing_past_the_bound_is_431_before_it_ends(method: str, pg: Any) -> None:
    async with pg.start_server(max_header_size=LIMIT) as running:
        answer = await _head_in_pieces(running.port, method, 64, end=False)
    assert answer.startswith(b"HTTP/1.1 431 "), answer[:200]


@pytest.mark.parametrize("method", ["GET", "FOO"])
async def test_head_within_the_bound_in_many_reads_is_not_refused_early(
    method: str, pg: Any
) -> None:
    """3 KiB of headers in 1 KiB reads reach the app (no tunnel there: 404)."""
    async with pg.start_server(max_header_size=LIMIT) as running:
        answer = await _head_in_pieces(running.port, method, 3, end=True)
    assert answer.startswith(b"HTTP/1.1 404 "), answer[:200]


@pytest.mark.parametrize("method", ["GET", "FOO"])
async def test_partial_head_is_closed_after_the_head_timeout(method: str, pg: Any) -> None:
    async with pg.start_server(head_timeout=0.5) as running:
        reader, writer = await asyncio.open_connection("127.0.0.1", running.port)
        try:
            writer.write(f"{method} /node/x HTTP/1.1\r\nHost: a\r\n".encode())
            loop = asyncio.get_running_loop()
            started = loop.time()
            assert await asyncio.wait_for(reader.read(4096), 5) == b""
            assert loop.time() - started < 3
        finally:
            writer.close()
