"""HTTP/1.1 requests with an exact request target, header bytes and body framing.

httpx (like every friendly client) normalizes what it sends: it removes dot segments
from paths, percent-encodes some bytes and picks the body framing itself. Transparency
checks need the opposite, so this module writes the request bytes verbatim to a socket
and parses only the *response*, with h11 (which is strict about the response framing).
"""

from __future__ import annotations

import socket
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import h11

__all__ = ["RawResponse", "build_request", "raw_request"]


@dataclass(frozen=True)
class RawResponse:
    """What came back: status, headers as ``(name, value)`` bytes in order, and body."""

    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes
    informational: list[int]

    def header_values(self, name: bytes) -> list[bytes]:
        lowered = name.lower()
        return [value for key, value in self.headers if key.lower() == lowered]


def build_request(
    method: str,
    target: bytes,
    headers: Sequence[tuple[bytes, bytes]],
    body: bytes | Iterable[bytes] | None = None,
) -> bytes:
    """The request bytes. ``body`` as ``bytes`` goes with Content-Length; as an iterable
    of chunks it goes with ``Transfer-Encoding: chunked`` (one chunk per item)."""
    lines = [method.encode("ascii") + b" " + target + b" HTTP/1.1"]
    lines += [name + b": " + value for name, value in headers]
    payload = b""
    if isinstance(body, bytes | bytearray):
        lines.append(b"Content-Length: " + str(len(body)).encode())
        payload = bytes(body)
    elif body is not None:
        lines.append(b"Transfer-Encoding: chunked")
        pieces = [
            f"{len(chunk):x}".encode() + b"\r\n" + bytes(chunk) + b"\r\n" for chunk in body if chunk
        ]
        payload = b"".join(pieces) + b"0\r\n\r\n"
    return b"\r\n".join(lines) + b"\r\n\r\n" + payload


def raw_request(
    host: str,
    port: int,
    method: str,
    target: bytes,
    headers: Sequence[tuple[bytes, bytes]] = (),
    body: bytes | Iterable[bytes] | None = None,
    *,
    timeout: float = 15.0,
) -> RawResponse:
    """Send one request on a fresh connection and read the whole response.

    ``Host`` is added when ``headers`` lacks it; ``Connection: close`` is always added.
    """
    names = {name.lower() for name, _ in headers}
    all_headers = list(headers)
    if b"host" not in names:
        all_headers.insert(0, (b"Host", f"{host}:{port}".encode()))
    all_headers.append((b"Connection", b"close"))
    data = build_request(method, target, all_headers, body)

    conn = h11.Connection(our_role=h11.CLIENT)
    # h11 tracks the exchange from a stand-in request: same method (so HEAD responses
    # are framed right), no body; the real bytes above go to the socket instead.
    conn.send(
        h11.Request(method=method, target="/", headers=[("Host", "x"), ("Content-Length", "0")])
    )
    conn.send(h11.EndOfMessage())
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(data)
        informational: list[int] = []
        status = 0
        response_headers: list[tuple[bytes, bytes]] = []
        body_parts: list[bytes] = []
        for _ in range(1_000_000):
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(sock.recv(65536))
                continue
            if isinstance(event, h11.InformationalResponse):
                informational.append(event.status_code)
            elif isinstance(event, h11.Response):
                status = event.status_code
                response_headers = [(bytes(n), bytes(v)) for n, v in event.headers.raw_items()]
            elif isinstance(event, h11.Data):
                body_parts.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                break
        return RawResponse(status, response_headers, b"".join(body_parts), informational)
