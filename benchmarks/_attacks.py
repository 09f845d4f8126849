"""Hostile public callers for the soak's attack mix (``soak.py --attacks``).

Each attack is one bounded episode against the server's public port, on loopback,
with no token: a few seconds and a fixed number of frames, sockets or bytes at most.
It returns how the server treated it:

* ``cut`` — the server closed the connection or answered with an error status;
* ``held`` — the server stopped reading from us (our writes stalled): the bound
  holds by backpressure instead of a close;
* ``open`` — neither happened within the episode (for an attack the server should
  end, e.g. a slowloris head, that is worth a look; the RSS figures say whether it
  cost anything).

The normal traffic of the soak runs beside them; what counts is that it stays
``ok`` (no hang, no corruption) and that the server's and client's RSS stay flat.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Awaitable, Callable

from pipegate_tunnel import OP_BINARY, OP_PING, client_frame
from pipegate_tunnel._internals import LIBRARY_MASK

__all__ = ["ATTACKS"]

_KEY_HEADER = "dGhlIHNhbXBsZSBub25jZQ=="


async def _open(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 5)


async def _websocket(
    port: int, path: str
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
    """A raw WebSocket handshake; None when the server refused the upgrade."""
    reader, writer = await _open(port)
    writer.write(
        (
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {_KEY_HEADER}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        ).encode("ascii")
    )
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    if not head.startswith(b"HTTP/1.1 101"):
        writer.close()
        return None
    return reader, writer


async def _flood(writer: asyncio.StreamWriter, frames: list[bytes], seconds: float) -> str:
    """Write ``frames`` round and round for ``seconds``; never read."""
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            writer.writelines(frames)
            try:
                await asyncio.wait_for(writer.drain(), max(0.05, deadline - time.monotonic()))
            except TimeoutError:
                return "held"
    except (ConnectionError, OSError):
        return "cut"
    return "open"


async def ping_flood(port: int, connection_id: str) -> str:
    """Pings as fast as the socket takes them, never reading a pong (issue 11, row 1)."""
    opened = await _websocket(port, f"/{connection_id}/ws/echo")
    if opened is None:
        return "cut"
    _, writer = opened
    key = os.urandom(4)
    frames = [client_frame(OP_PING, b"p" * 16, key, LIBRARY_MASK)] * 2000
    try:
        return await _flood(writer, frames, 4.0)
    finally:
        writer.transport.abort()


async def message_bomb(port: int, connection_id: str) -> str:
    """16 MiB messages to an echo, never reading the echoes (row 2)."""
    opened = await _websocket(port, f"/{connection_id}/ws/echo")
    if opened is None:
        return "cut"
    _, writer = opened
    frame = client_frame(OP_BINARY, b"b" * (16 * 1024 * 1024), os.urandom(4), LIBRARY_MASK)
    try:
        return await _flood(writer, [frame], 5.0)
    finally:
        writer.transport.abort()


async def slowloris(port: int, connection_id: str) -> str:
    """40 partial heads, half with a method llhttp does not know (rows 3 and 4)."""
    sockets: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    try:
        for index in range(40):
            reader, writer = await _open(port)
            method = "FOO" if index % 2 else "GET"
            writer.write(f"{method} /{connection_id}/x HTTP/1.1\r\nHost: a\r\nX-A: ".encode())
            sockets.append((reader, writer))
        deadline = time.monotonic() + 15.0
        closed = 0
        for reader, _ in sockets:
            with contextlib.suppress(TimeoutError, ConnectionError, OSError):
                await asyncio.wait_for(reader.read(), max(0.01, deadline - time.monotonic()))
                closed += 1
        return "cut" if closed == len(sockets) else "open"
    finally:
        for _, writer in sockets:
            writer.transport.abort()


async def header_bomb(port: int, connection_id: str) -> str:
    """A request head of 8 MiB of header lines (row 3)."""
    reader, writer = await _open(port)
    try:
        writer.write(f"GET /{connection_id}/x HTTP/1.1\r\nHost: a\r\n".encode())
        line = b"X-Filler: " + b"f" * 1000 + b"\r\n"
        outcome = await _flood(writer, [line] * 8192, 5.0)
        with contextlib.suppress(TimeoutError, ConnectionError, OSError):
            answer = await asyncio.wait_for(reader.read(64), 2)
            if answer.startswith(b"HTTP/1.1 4") or not answer:
                return "cut"
        return outcome
    finally:
        writer.transport.abort()


async def never_reader(port: int, connection_id: str) -> str:
    """Asks for 64 MiB, reads the head, then reads nothing for 15 s (row 7)."""
    reader, writer = await _open(port)
    try:
        writer.write(f"GET /{connection_id}/bytes/{64 * 1024 * 1024} HTTP/1.1\r\n".encode())
        writer.write(b"Host: a\r\n\r\n")
        await writer.drain()
        await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        await asyncio.sleep(15.0)
        return "held"
    except (ConnectionError, OSError, asyncio.IncompleteReadError):
        return "cut"
    finally:
        writer.transport.abort()


ATTACKS: dict[str, Callable[[int, str], Awaitable[str]]] = {
    "ping_flood": ping_flood,
    "message_bomb": message_bomb,
    "slowloris": slowloris,
    "header_bomb": header_bomb,
    "never_reader": never_reader,
}
