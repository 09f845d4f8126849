"""Transparency: what the caller sends is what the local app gets, and what the local app
answers is what the caller gets, except for the changes docs/protocol.md allows.

Requests go out through :func:`raw_request` so that the request target and header bytes
are exactly the generated ones (httpx would normalize dot segments and re-encode).
Allowances (each also listed in docs/conformance.md):

* hop-by-hop headers are dropped in both directions (HD-4);
* Content-Length / Transfer-Encoding may differ: each hop frames the body itself (HD-4);
* the server appends X-Forwarded-For/-Proto/-Host/-Prefix (HD-5), checked by value;
* Host at the local app is the local URL's authority (HD-6), the caller's is in
  X-Forwarded-Host;
* Date and Server response headers are per-server stamps and not compared;
* header names are compared case-insensitively (HD-2);
* Set-Cookie, Location and Service-Worker-Allowed are rewritten by the server (the
  path-mode rules of issue 12) and compared apart: Set-Cookie by
  ``cookie_relay_problem``.
"""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pipegate_conformance.expected import PROXY_HEADERS_SENT
from pipegate_conformance.harness import Tunnel
from pipegate_conformance.origin import ResponseSpec, pattern_sha256
from pipegate_conformance.plugin import conformance_settings
from pipegate_conformance.rawhttp import RawResponse, raw_request
from pipegate_conformance.support import (
    REWRITTEN_RESPONSE_HEADERS,
    added_request_id_problem,
    cookie_relay_problem,
    expected_at_origin,
    extension_methods,
    header_list,
    header_value,
    methods,
    paths,
    queries,
    received_at_origin,
    relayable_response_headers,
    request_headers,
)

EXTRA = {"allow": "any"}


def _public_prefix(tunnel: Tunnel) -> str:
    """The path in front of the local app's paths: ``/<id>`` in path routing."""
    return urlsplit(tunnel.public_url).path.rstrip("/")


def _send(
    tunnel: Tunnel,
    method: str,
    target: str,
    headers: list[tuple[bytes, bytes]] | None = None,
    body: Any = None,
) -> RawResponse:
    parts = urlsplit(tunnel.server_base)
    prefix = f"/{tunnel.connection_id}"
    return raw_request(
        parts.hostname or "127.0.0.1",
        parts.port or 80,
        method,
        (prefix + target).encode("latin-1"),
        headers or [],
        body,
    )


def _echo(response: RawResponse) -> dict[str, Any]:
    assert response.status == 200, (response.status, response.body[:300])
    try:
        report: dict[str, Any] = json.loads(response.body)
    except ValueError:
        pytest.fail(f"the origin's /echo did not answer (got {response.body[:200]!r})")
    return report


def _check_forwarding(report: dict[str, Any], tunnel: Tunnel, caller_host: str) -> None:
    headers = {n.lower(): v for n, v in report["headers"]}
    origin_authority = urlsplit(tunnel.origin_url).netloc
    assert headers.get("host") == origin_authority, "HD-6: Host must be the local authority"
    assert headers.get("x-forwarded-host") == caller_host, "HD-5: X-Forwarded-Host"
    assert headers.get("x-forwarded-proto") == urlsplit(tunnel.server_base).scheme
    assert headers.get("x-forwarded-prefix") == f"/{tunnel.connection_id}"
    assert "127.0.0.1" in headers.get("x-forwarded-for", ""), "HD-5: X-Forwarded-For"


@pytest.mark.rule("HD-1")
@conformance_settings()
@given(method=methods())
def test_method_is_relayed_verbatim(tunnel: Tunnel, method: str) -> None:
    """HD-1: any method, WebDAV included, reaches the local app unchanged."""
    report = _echo(_send(tunnel, method, "/echo/method"))
    assert report["method"] == method


@pytest.mark.rule("HD-1")
@conformance_settings(max_examples=0.5)
@given(method=extension_methods())
def test_extension_method_token_is_relayed(tunnel: Tunnel, method: str) -> None:
    """HD-1: 'any RFC 9110 token', not only the methods a parser has a table entry for."""
    report = _echo(_send(tunnel, method, "/echo/extension"))
    assert report["method"] == method


@pytest.mark.rule("HD-1", "HD-2")
@conformance_settings()
@given(path=paths())
def test_raw_path_is_relayed_verbatim(tunnel: Tunnel, path: str) -> None:
    """HD-1/HD-2: percent-encoding (either hex case, any byte, UTF-8), dot segments,
    empty segments and trailing slash arrive at the local app byte for byte."""
    report = _echo(_send(tunnel, "GET", path))
    assert report["raw_path"] == path


@pytest.mark.rule("HD-1", "HD-2")
@conformance_settings()
@given(query=queries())
def test_raw_query_is_relayed_verbatim(tunnel: Tunnel, query: str) -> None:
    """HD-1: duplicate keys, empty values, bare keys and order survive byte for byte."""
    report = _echo(_send(tunnel, "GET", f"/echo/query?{query}"))
    assert report["query"] == query


@pytest.mark.rule("HD-1", "RT-1")
def test_id_with_a_slash_has_root_path(tunnel: Tunnel) -> None:
    """HD-1: ``/<id>/`` reaches the local app's ``/`` (the demo page); the bare
    ``/<id>`` is redirected there (RT-1), never relayed."""
    response = _send(tunnel, "GET", "/")
    assert response.status == 200
    assert b"PipeGate demo app" in response.body
    bare = _send(tunnel, "GET", "")
    assert bare.status == 308
    assert dict(bare.headers)[b"location"].endswith(f"/{tunnel.connection_id}/".encode())


def _check_headers(tunnel: Tunnel, headers: list[tuple[str, str]]) -> None:
    caller_host = "caller.example:8443"
    sent = [(b"Host", caller_host.encode())] + [
        (n.encode("latin-1"), v.encode("latin-1")) for n, v in headers
    ]
    report = _echo(_send(tunnel, "GET", "/echo/headers", sent))
    sent_with_close = [*sent, (b"Connection", b"close")]
    received = received_at_origin(report["headers"], sent=sent_with_close)
    assert received == expected_at_origin(sent_with_close)
    _check_forwarding(report, tunnel, caller_host)


@pytest.mark.rule("HD-4", "HD-5", "HD-6", "HD-7")
@conformance_settings()
@given(headers=request_headers())
def test_request_headers_are_relayed_in_order(
    tunnel: Tunnel, headers: list[tuple[str, str]]
) -> None:
    """HD-7: repeated names (mixed case), inner tabs and empty values arrive in order
    with duplicates kept; only the allowed rewrites happen (HD-4/5/6)."""
    _check_headers(tunnel, headers)


@pytest.mark.rule("HD-2")
@conformance_settings()
@given(headers=request_headers(obs_text=True))
def test_request_header_bytes_survive(tunnel: Tunnel, headers: list[tuple[str, str]]) -> None:
    """HD-2/FR-4: header values with bytes 0x80-0xFF (obs-text) arrive byte for byte."""
    _check_headers(tunnel, headers)


@pytest.mark.rule("HD-4")
def test_hop_by_hop_request_headers_are_dropped(tunnel: Tunnel) -> None:
    """HD-4: Connection, Keep-Alive, TE, Upgrade-less hop-by-hop headers and the headers
    named in Connection do not reach the local app; the rest keeps its order."""
    sent = [
        (b"X-PGC-Keep", b"1"),
        (b"Keep-Alive", b"timeout=5"),
        (b"X-PGC-Private", b"secret-hop"),
        (b"TE", b"trailers"),
        (b"Proxy-Authorization", b"Basic Zm9vOmJhcg=="),
        (b"Connection", b"X-PGC-Private, keep-alive"),
        (b"X-PGC-Keep", b"2"),
    ]
    report = _echo(_send(tunnel, "GET", "/echo/hop", sent))
    names = [n.lower() for n, _ in report["headers"]]
    for dropped in ("keep-alive", "x-pgc-private", "te", "proxy-authorization", "connection"):
        assert dropped not in names, f"HD-4: {dropped} reached the local app"
    assert [(n, v) for n, v in received_at_origin(report["headers"]) if n == "x-pgc-keep"] == [
        ("x-pgc-keep", "1"),
        ("x-pgc-keep", "2"),
    ]


@pytest.mark.rule("HD-5")
def test_caller_supplied_forwarded_prefix_is_replaced(tunnel: Tunnel) -> None:
    """HD-5: a caller cannot smuggle its own X-Forwarded-Prefix to the local app."""
    report = _echo(_send(tunnel, "GET", "/echo/xfp", [(b"X-Forwarded-Prefix", b"/evil")]))
    prefixes = [v for n, v in report["headers"] if n.lower() == "x-forwarded-prefix"]
    assert prefixes == [f"/{tunnel.connection_id}"]


@pytest.mark.rule("HD-5")
def test_request_id_is_kept_or_added_once(tunnel: Tunnel) -> None:
    """HD-5: a caller's own X-Request-Id reaches the local app unchanged, once and in
    its place; without one, the server may add one (at most one, a printable token)."""
    sent = [(b"X-PGC-Before", b"1"), (b"X-Request-Id", b"caller-id/42=="), (b"X-PGC-After", b"2")]
    report = _echo(_send(tunnel, "GET", "/echo/request-id", sent))
    got = [(n, v) for n, v in received_at_origin(report["headers"]) if n.startswith("x-")]
    assert got == [
        ("x-pgc-before", "1"),
        ("x-request-id", "caller-id/42=="),
        ("x-pgc-after", "2"),
    ], "HD-5: the caller's X-Request-Id must arrive unchanged, once, in its place"
    bare = _echo(_send(tunnel, "GET", "/echo/no-request-id", [(b"X-PGC", b"1")]))
    added = [v for n, v in header_list(bare["headers"]) if n == "x-request-id"]
    assert added_request_id_problem(added) is None, added_request_id_problem(added)


@pytest.mark.rule("HD-5")
def test_untrusted_caller_proxy_headers_are_dropped(tunnel: Tunnel) -> None:
    """HD-5: proxy headers from a caller that is not a trusted proxy (the loopback
    caller of the suite, with the server's default trusting nobody) do not reach the
    local app; the forwarding headers carry the server's own values."""
    sent = [(n.encode("latin-1"), v.encode("latin-1")) for n, v in PROXY_HEADERS_SENT]
    report = _echo(_send(tunnel, "GET", "/echo/proxy", sent))
    values = [(n.lower(), v) for n, v in report["headers"]]
    for name, value in PROXY_HEADERS_SENT:
        assert (name.lower(), value) not in values, f"HD-5: {name} reached the local app"
    assert [v for n, v in values if n == "x-forwarded-for"] == ["127.0.0.1"], "HD-5: X-F-For"
    for dropped in ("forwarded", "x-real-ip", "x-forwarded-port", "x-original-url"):
        assert dropped not in [n for n, _ in values], f"HD-5: {dropped} reached the local app"


@pytest.mark.rule("HD-8", "ST-5")
@conformance_settings()
@given(body=st.binary(max_size=70_000), chunked=st.booleans(), split=st.integers(1, 5))
def test_request_body_is_relayed(tunnel: Tunnel, body: bytes, chunked: bool, split: int) -> None:
    """HD-8: empty, binary, Content-Length-framed and chunked bodies arrive intact."""
    payload: Any = body
    if chunked:
        step = max(1, len(body) // split)
        payload = [body[i : i + step] for i in range(0, len(body), step)]
    report = _echo(_send(tunnel, "POST", "/echo/body", [], payload))
    assert report["body_length"] == len(body)
    assert report["body_sha256"] == hashlib.sha256(body).hexdigest()


@pytest.mark.rule("HD-8", "FC-3", "FC-4")
def test_large_chunked_upload_without_length(tunnel: Tunnel) -> None:
    """HD-8/FC-4: a 24 MiB upload without Content-Length crosses many windows intact."""
    block = hashlib.sha256(b"upload").digest() * 2048  # 64 KiB
    count = 384
    digest = hashlib.sha256()
    for _ in range(count):
        digest.update(block)

    def chunks() -> Any:
        for _ in range(count):
            yield block

    with httpx.Client(timeout=60.0) as client:
        response = client.post(f"{tunnel.public_url}/upload", content=chunks())
    assert response.status_code == 200
    assert response.json() == {"length": len(block) * count, "sha256": digest.hexdigest()}


_NOTABLE_STATUSES = (
    *(200, 201, 202, 204, 206, 207, 301, 302, 304, 307, 308, 400, 401, 403, 404, 405),
    *(409, 410, 418, 422, 429, 451, 500, 501, 502, 503, 504, 599),
)
_FINAL_STATUSES = st.one_of(st.sampled_from(_NOTABLE_STATUSES), st.integers(200, 599))


@st.composite
def response_specs(draw: st.DrawFn) -> ResponseSpec:
    status = draw(_FINAL_STATUSES)
    names = st.sampled_from(["X-PGC-R", "x-pgc-r", "Set-Cookie", "Vary", "Link", "x-pgc-s"])
    headers = draw(st.lists(st.tuples(names, header_value()), max_size=6))
    if draw(st.booleans()):
        headers += [("set-cookie", "a=1; Path=/"), ("Set-Cookie", "b=2; HttpOnly")]
    chunks: list[bytes] = []
    if status not in (204, 304):
        chunks = draw(st.lists(st.binary(max_size=40_000), max_size=4))
    return ResponseSpec(
        status=status,
        headers=headers,
        chunks_b64=[base64.b64encode(chunk).decode() for chunk in chunks],
    )


@pytest.mark.rule("HD-2", "HD-3", "HD-7", "HD-8", "HD-9", "RT-7")
@conformance_settings()
@given(spec=response_specs())
def test_response_is_relayed(tunnel: Tunnel, spec: ResponseSpec) -> None:
    """HD-3/HD-7: status, headers (several Set-Cookie, obs-text values) in order and the
    streamed body reach the caller as the local app sent them; 204/304 carry no body."""
    body = spec.model_dump_json().encode()
    response = _send(tunnel, "POST", "/respond", [(b"Content-Type", b"application/json")], body)
    assert response.status == spec.status
    sent = relayable_response_headers(spec.headers)
    received = relayable_response_headers(response.headers)
    kept = REWRITTEN_RESPONSE_HEADERS
    assert [h for h in received if h[0] not in kept] == [h for h in sent if h[0] not in kept]
    sent_cookies = [value for name, value in sent if name == "set-cookie"]
    received_cookies = [value for name, value in received if name == "set-cookie"]
    assert len(received_cookies) == len(sent_cookies)
    prefix = _public_prefix(tunnel)
    for before, after in zip(sent_cookies, received_cookies, strict=True):
        assert cookie_relay_problem(before, after, prefix) is None
    expected_body = b"".join(base64.b64decode(chunk) for chunk in spec.chunks_b64)
    assert response.body == expected_body


@pytest.mark.rule("HD-3", "HD-7", "RT-7")
def test_two_set_cookie_headers_stay_two(tunnel: Tunnel) -> None:
    """HD-7: duplicates are not merged."""
    response = _send(tunnel, "GET", "/cookies")
    path = f"Path={_public_prefix(tunnel)}/".encode()
    assert response.header_values(b"set-cookie") == [b"a=1; " + path, b"b=2; " + path]


@pytest.mark.rule("HD-9")
def test_head_keeps_content_length_and_has_no_body(tunnel: Tunnel) -> None:
    """HD-9: HEAD gets the local app's Content-Length and no body."""
    response = _send(tunnel, "HEAD", "/bytes/12345")
    assert response.status == 200
    assert response.header_values(b"content-length") == [b"12345"]
    assert response.body == b""


@pytest.mark.rule("HD-9")
@pytest.mark.parametrize("status", [204, 304])
def test_bodiless_statuses(tunnel: Tunnel, status: int) -> None:
    """HD-9: 204 and 304 reach the caller without a body."""
    response = _send(tunnel, "GET", f"/status/{status}")
    assert response.status == status
    assert response.body == b""


@pytest.mark.rule("HD-8")
@pytest.mark.parametrize("chunked", [False, True])
def test_large_download_is_intact(tunnel: Tunnel, chunked: bool) -> None:
    """HD-8: a 16 MiB response, with and without Content-Length, arrives byte-exact."""
    size = 16 * 1024 * 1024 + 7
    digest = hashlib.sha256()
    received = 0
    url = f"{tunnel.public_url}/bytes/{size}" + ("?chunked=1" if chunked else "")
    with httpx.Client(timeout=60.0) as client, client.stream("GET", url) as response:
        assert response.status_code == 200
        for chunk in response.iter_raw():
            digest.update(chunk)
            received += len(chunk)
    assert received == size
    assert digest.hexdigest() == pattern_sha256(size)
