"""What a cluster node passes on when it forwards a request to the node that holds its
tunnel (``_forward``): the caller's headers minus hop-by-hop and proxy headers, the
caller's address as the only ``X-Forwarded-For``, and the loop guard."""

from __future__ import annotations

from typing import Any

from pipegate_server._forward import VIA, Forwarder, _caller_headers, _raw_target


def _scope(headers: list[tuple[bytes, bytes]], **extra: Any) -> dict[str, Any]:
    return {
        "type": "http",
        "headers": headers,
        "client": ("203.0.113.9", 40000),
        "scheme": "https",
        "path": "/a b",
        "raw_path": b"/a%20b",
        "query_string": b"x=1&x=2",
        **extra,
    }


def test_a_callers_proxy_headers_never_cross_and_the_caller_is_reported() -> None:
    scope = _scope(
        [
            (b"host", b"app.example.org"),
            (b"x-forwarded-for", b"10.0.0.1"),  # spoofed by the caller
            (b"forwarded", b"for=10.0.0.1"),
            (b"x-real-ip", b"10.0.0.1"),
            (b"x-forwarded-host", b"evil.example"),
            (b"connection", b"keep-alive, x-secret"),
            (b"x-secret", b"hop"),
            (b"keep-alive", b"timeout=5"),
            (b"transfer-encoding", b"chunked"),
            (b"Cookie", b"a=1"),
            (b"cookie", b"b=2"),
        ]
    )
    headers = _caller_headers(scope, frozenset())
    names = [name for name, _ in headers]
    assert (b"host", b"app.example.org") in headers  # the holder routes by it
    assert [v for n, v in headers if n == b"x-forwarded-for"] == [b"203.0.113.9"]
    assert [v for n, v in headers if n == b"x-forwarded-proto"] == [b"https"]
    for dropped in (b"forwarded", b"x-real-ip", b"x-forwarded-host", b"x-secret"):
        assert dropped not in names
    for hop in (b"connection", b"keep-alive", b"transfer-encoding"):
        assert hop not in names
    # order and duplicates of the rest are kept
    assert [v for n, v in headers if n == b"cookie"] == [b"a=1", b"b=2"]
    assert headers[-1] == (b"via", VIA)


def test_the_websocket_handshake_headers_are_left_to_the_client() -> None:
    scope = _scope(
        [
            (b"host", b"app.example.org"),
            (b"sec-websocket-key", b"k"),
            (b"sec-websocket-protocol", b"chat"),
            (b"origin", b"https://app.example.org"),
        ]
    )
    own = frozenset({b"host", b"sec-websocket-key", b"sec-websocket-protocol"})
    names = [name for name, _ in _caller_headers(scope, own)]
    assert b"origin" in names
    assert not own & set(names)


def test_the_raw_target_keeps_the_bytes_the_caller_sent() -> None:
    assert _raw_target(_scope([])) == b"/a%20b?x=1&x=2"
    # without a raw path (another ASGI server), the decoded path as UTF-8
    assert _raw_target(_scope([], raw_path=None, query_string=b"")) == b"/a b"


def test_a_request_another_node_forwarded_is_recognised() -> None:
    assert Forwarder.was_forwarded(_scope([(b"via", b"1.1 pipegate")]))
    assert Forwarder.was_forwarded(_scope([(b"via", b"1.1 caddy, 1.1 PipeGate")]))
    assert not Forwarder.was_forwarded(_scope([(b"via", b"1.1 caddy")]))
    assert not Forwarder.was_forwarded(_scope([]))
