"""The origin app: the "local app" that conformance tests, e2e tests, benchmarks and the
demo put behind a tunnel.

It is a raw ASGI app so that it sees requests exactly as the tunnel delivered them
(raw path, raw query, every header in order) and answers exactly as told. Endpoints
(any prefix is fine, the app matches on the last path segments it knows):

* ``/`` — a small HTML page for the demo.
* ``/echo/...`` — any method: JSON of what arrived (method, raw path, raw query,
  headers as ``[name, value]`` latin-1 strings, body length, sha256 and, up to 64 KiB,
  base64 of the body).
* ``/respond`` — POST a JSON :class:`ResponseSpec`; the origin answers with exactly that
  status, those headers and that body, streamed in the given chunks.
* ``/bytes/<n>`` — streams ``n`` deterministic bytes (:func:`pattern_bytes`), in 64 KiB
  chunks, with Content-Length unless ``?chunked=1``.
* ``/upload`` — consumes the body as it arrives, answers ``{"length", "sha256"}``.
* ``/sse?n=5&interval=0.2`` — server-sent events, one every ``interval`` seconds; each
  carries the origin's send time so a test can prove the first arrived early.
* ``/status/<code>`` — an empty response with that status.
* ``/cookies`` — two ``Set-Cookie`` headers.
* ``/stall`` — never answers (the server's response timeout must fire); with
  ``?tag=T`` it records ``{"kind": "cancelled", "tag": T}`` when the caller goes away.
* ``/drip?tag=T&interval=0.05&size=1024`` — answers 200 at once, then streams ``size``
  bytes every ``interval`` seconds for up to ten minutes; records
  ``{"kind": "cancelled", "tag": T}`` as soon as it learns the caller went away, so a
  test can prove that a reset reached the local request.
* ``/log?tag=T`` — JSON list of the events recorded with that tag (the origin's own
  endpoint, never relayed anywhere; tests call it directly).
* ``/ws/echo`` — WebSocket echo of text and binary messages (with ``?tag=T``, its
  handshake headers are logged as a ``ws_opened`` event); selects the first offered
  subprotocol; the text message ``close:<code>`` makes it close with that code. With
  ``?tag=T`` it records ``{"kind": "ws_closed", "code", "reason", "tag"}`` when the
  caller closes. ``/ws/close/<code>`` accepts, then closes with that code.

Run it alone: ``python -m pipegate_conformance.origin --port 5001``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
import time
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from typing import Any
from urllib.parse import parse_qs

from pydantic import BaseModel, Field

__all__ = [
    "ECHO_BODY_LIMIT",
    "EVENTS",
    "ResponseSpec",
    "app",
    "main",
    "pattern_bytes",
    "pattern_sha256",
]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

ECHO_BODY_LIMIT = 64 * 1024
_CHUNK = 64 * 1024
_BASE_BLOCK = hashlib.sha256(b"pipegate").digest() * (_CHUNK // 32)

DEMO_PAGE = b"""<!doctype html>
<html><head><title>PipeGate demo app</title></head>
<body><h1>Hello through PipeGate</h1>
<p>This page is served by the demo app behind your tunnel. Try
<a href="echo/hello?x=1&amp;x=2">echo</a>, <a href="sse?n=5">server-sent events</a>
or <a href="bytes/1048576">a 1 MiB download</a>.</p></body></html>
"""


#: Events the origin noticed (cancellations, WebSocket closes), served by ``/log``.
EVENTS: list[dict[str, Any]] = []
_EVENTS_KEPT = 10_000
_DRIP_SECONDS = 600.0


def _record(event: dict[str, Any]) -> None:
    EVENTS.append(event)
    del EVENTS[:-_EVENTS_KEPT]


class ResponseSpec(BaseModel):
    """What ``/respond`` answers with; bytes are base64 so the spec is JSON."""

    status: int = Field(default=200, ge=100, le=599)
    headers: list[tuple[str, str]] = []
    chunks_b64: list[str] = []


def pattern_chunks(length: int) -> Iterator[bytes]:
    """Deterministic content of ``/bytes/<length>``: 64 KiB blocks, each starting with
    its index, so a lost, repeated or reordered block changes the digest."""
    index = 0
    remaining = length
    while remaining > 0:
        block = index.to_bytes(8, "big") + _BASE_BLOCK[8:]
        piece = block[: min(remaining, _CHUNK)]
        yield piece
        remaining -= len(piece)
        index += 1


def pattern_bytes(length: int) -> bytes:
    """All of ``/bytes/<length>`` in memory (use only for small lengths)."""
    return b"".join(pattern_chunks(length))


def pattern_sha256(length: int) -> str:
    """Hex sha256 of ``/bytes/<length>`` without holding it in memory."""
    digest = hashlib.sha256()
    for piece in pattern_chunks(length):
        digest.update(piece)
    return digest.hexdigest()


def _latin1(pairs: list[tuple[bytes, bytes]] | list[list[bytes]]) -> list[list[str]]:
    return [[name.decode("latin-1"), value.decode("latin-1")] for name, value in pairs]


async def _read_body(receive: Receive) -> tuple[int, str, bytes]:
    digest = hashlib.sha256()
    length = 0
    kept = bytearray()
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunk = message.get("body", b"")
        digest.update(chunk)
        length += len(chunk)
        if len(kept) <= ECHO_BODY_LIMIT:
            kept += chunk[: ECHO_BODY_LIMIT + 1 - len(kept)]
        if not message.get("more_body", False):
            break
    return length, digest.hexdigest(), bytes(kept)


async def _respond(
    send: Send,
    status: int,
    body: bytes = b"",
    headers: list[tuple[bytes, bytes]] | None = None,
    content_type: bytes = b"text/plain; charset=utf-8",
) -> None:
    head = [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": head + (headers or [])})
    await send({"type": "http.response.body", "body": body})


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    """The ASGI entry point."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] == "websocket":
        await _websocket(scope, receive, send)
        return
    await _http(scope, receive, send)


async def _http(scope: Scope, receive: Receive, send: Send) -> None:
    path: str = scope["path"]
    query = parse_qs(scope["query_string"].decode("latin-1"))
    segments = [segment for segment in path.split("/") if segment]
    name = segments[-1] if segments else ""
    parent = segments[-2] if len(segments) >= 2 else ""

    if "echo" in segments:
        length, sha, kept = await _read_body(receive)
        report = {
            "method": scope["method"],
            "raw_path": scope.get("raw_path", path.encode()).decode("latin-1"),
            "query": scope["query_string"].decode("latin-1"),
            "headers": _latin1(scope["headers"]),
            "body_length": length,
            "body_sha256": sha,
            "body_b64": base64.b64encode(kept).decode() if length <= ECHO_BODY_LIMIT else None,
        }
        await _respond(send, 200, json.dumps(report).encode(), content_type=b"application/json")
        return
    if name == "respond":
        _, _, raw = await _read_body(receive)
        spec = ResponseSpec.model_validate_json(raw)
        await send(
            {
                "type": "http.response.start",
                "status": spec.status,
                "headers": [(n.encode("latin-1"), v.encode("latin-1")) for n, v in spec.headers],
            }
        )
        chunks = [base64.b64decode(chunk) for chunk in spec.chunks_b64]
        for index, chunk in enumerate(chunks):
            await send(
                {"type": "http.response.body", "body": chunk, "more_body": index < len(chunks) - 1}
            )
        if not chunks:
            await send({"type": "http.response.body", "body": b""})
        return
    if parent == "bytes" and name.isdigit():
        await _drain(receive)
        length = int(name)
        chunked = query.get("chunked", ["0"])[0] == "1"
        headers = [(b"content-type", b"application/octet-stream")]
        if not chunked:
            headers.append((b"content-length", str(length).encode()))
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        if scope["method"] != "HEAD":
            for piece in pattern_chunks(length):
                await send({"type": "http.response.body", "body": piece, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
        return
    if name == "upload":
        length, sha, _ = await _read_body(receive)
        body = json.dumps({"length": length, "sha256": sha}).encode()
        await _respond(send, 200, body, content_type=b"application/json")
        return
    if name == "sse":
        await _drain(receive)
        count = int(query.get("n", ["5"])[0])
        interval = float(query.get("interval", ["0.2"])[0])
        headers = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        for index in range(count):
            event = f"id: {index}\ndata: {json.dumps({'n': index, 't': time.time()})}\n\n"
            await send({"type": "http.response.body", "body": event.encode(), "more_body": True})
            if index < count - 1:
                await asyncio.sleep(interval)
        await send({"type": "http.response.body", "body": b""})
        return
    if parent == "status" and name.isdigit():
        await _drain(receive)
        await send({"type": "http.response.start", "status": int(name), "headers": []})
        await send({"type": "http.response.body", "body": b""})
        return
    if name == "cookies":
        await _drain(receive)
        cookies = [(b"set-cookie", b"a=1; Path=/"), (b"set-cookie", b"b=2; Path=/")]
        await _respond(send, 200, b"two cookies\n", headers=cookies)
        return
    if name == "stall":
        await _drain(receive)
        tag = query.get("tag", [""])[0]
        await receive()  # returns only when the caller goes away
        if tag:
            _record({"kind": "cancelled", "tag": tag, "path": path})
        return
    if name == "drip":
        await _drain(receive)
        await _drip(
            send,
            receive,
            tag=query.get("tag", [""])[0],
            interval=float(query.get("interval", ["0.05"])[0]),
            size=int(query.get("size", ["1024"])[0]),
        )
        return
    if name == "log" and scope["method"] == "GET":
        await _drain(receive)
        tag = query.get("tag", [""])[0]
        events = [event for event in EVENTS if not tag or event.get("tag") == tag]
        await _respond(send, 200, json.dumps(events).encode(), content_type=b"application/json")
        return
    if not segments:
        await _drain(receive)
        await _respond(send, 200, DEMO_PAGE, content_type=b"text/html; charset=utf-8")
        return
    await _drain(receive)
    await _respond(send, 404, f"origin: no such endpoint {path}\n".encode())


async def _drain(receive: Receive) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect" or not message.get("more_body", False):
            return


async def _drip(send: Send, receive: Receive, *, tag: str, interval: float, size: int) -> None:
    """Stream until the caller goes away; record the cancellation under ``tag``."""
    headers = [(b"content-type", b"application/octet-stream")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    disconnected = asyncio.ensure_future(receive())
    deadline = time.monotonic() + _DRIP_SECONDS
    cancelled = False
    try:
        while time.monotonic() < deadline:
            await send({"type": "http.response.body", "body": b"x" * size, "more_body": True})
            done, _ = await asyncio.wait({disconnected}, timeout=interval)
            if done:
                cancelled = True
                return
        await send({"type": "http.response.body", "body": b""})
    except (OSError, RuntimeError):  # uvicorn's ClientDisconnected is an OSError
        cancelled = True
    finally:
        disconnected.cancel()
        if cancelled and tag:
            _record({"kind": "cancelled", "tag": tag, "path": "drip"})


async def _websocket(scope: Scope, receive: Receive, send: Send) -> None:
    message = await receive()
    if message["type"] != "websocket.connect":
        return
    segments = [segment for segment in scope["path"].split("/") if segment]
    subprotocols: list[str] = scope.get("subprotocols") or []
    if "close" in segments and segments[-1].isdigit():
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.close", "code": int(segments[-1]), "reason": "origin"})
        return
    if "echo" not in segments:
        await send({"type": "websocket.close", "code": 1008})
        return
    tag = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("tag", [""])[0]
    if tag:
        _record({"kind": "ws_opened", "tag": tag, "headers": _latin1(scope["headers"])})
    accept: Message = {"type": "websocket.accept"}
    if subprotocols:
        accept["subprotocol"] = subprotocols[0]
    await send(accept)
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            if tag:
                _record(
                    {
                        "kind": "ws_closed",
                        "tag": tag,
                        "code": message.get("code"),
                        "reason": message.get("reason") or "",
                    }
                )
            return
        if message.get("text") is not None:
            if message["text"].startswith("close:"):
                code = int(message["text"].split(":", 1)[1])
                await send({"type": "websocket.close", "code": code, "reason": "asked to"})
                return
            await send({"type": "websocket.send", "text": message["text"]})
        else:
            await send({"type": "websocket.send", "bytes": message.get("bytes") or b""})


def main(argv: list[str] | None = None) -> int:
    """Serve the origin app with uvicorn (``python -m pipegate_conformance.origin``)."""
    import uvicorn

    parser = argparse.ArgumentParser(prog="pipegate-origin", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5001)
    parser.add_argument("--log-level", default="warning")
    parser.add_argument(
        "--http",
        default="auto",
        choices=["auto", "h11", "httptools"],
        help="HTTP parser; the conformance suite uses h11, which accepts any method token",
    )
    args = parser.parse_args(argv)
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        ws_max_size=64 * 1024 * 1024,
        lifespan="on",
        http=args.http,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
