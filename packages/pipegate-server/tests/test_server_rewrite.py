"""The response-head rules of ``_rewrite``, alone: tables of values, then properties.

Run as a script, this module prints the micro-benchmark quoted in ``_rewrite``'s
docstring (building ``out_headers`` in ``Relay._respond`` without and with the rules).
"""

from __future__ import annotations

import string
from typing import Any

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pipegate_protocol import StreamKind, strip_hop_by_hop
from pipegate_server._rewrite import (
    default_path,
    rewrite_location,
    rewrite_response_headers,
    rewrite_service_worker_allowed,
    rewrite_set_cookie,
)

P = "/e2e"


@pytest.mark.parametrize(
    ("value", "prefix", "expected"),
    [
        ("/sub/", P, "/e2e/sub/"),
        ("/", P, "/e2e/"),
        ("/login?next=/a#top", P, "/e2e/login?next=/a#top"),
        ("/e2e/sub", P, "/e2e/sub"),  # already prefixed (X-Forwarded-Prefix aware app)
        ("/e2e", P, "/e2e"),
        ("/e2e?x=1", P, "/e2e?x=1"),
        ("/e2ex/y", P, "/e2e/e2ex/y"),  # another id that starts like ours
        ("//evil.example/x", P, "//evil.example/x"),
        ("http://example.com/a", P, "http://example.com/a"),
        ("sub/page", P, "sub/page"),
        ("../up", P, "../up"),
        ("?q=1", P, "?q=1"),
        ("", P, ""),
        ("/\\evil.example", P, "/e2e/\\evil.example"),
        ("/sub/", "", "/sub/"),  # host routing: nothing to add
    ],
)
def test_location(value: str, prefix: str, expected: str) -> None:
    assert rewrite_location(value, prefix) == expected


@pytest.mark.parametrize(
    ("request_path", "expected"),
    [
        ("/", "/"),
        ("/login", "/"),
        ("/a/b", "/a"),
        ("/a/b/", "/a/b"),
        ("", "/"),
        ("x/y", "/"),
        ("/a;Domain=x/b", "/"),  # would inject an attribute
        ("/a b/c", "/"),
        ("/\xe9/c", "/"),
        ("/a\x01/c", "/"),
    ],
)
def test_default_path(request_path: str, expected: str) -> None:
    assert default_path(request_path) == expected


@pytest.mark.parametrize(
    ("value", "prefix", "request_path", "expected"),
    [
        ("a=1; Path=/", P, "/", "a=1; Path=/e2e/"),
        ("a=1; Path=/x", P, "/", "a=1; Path=/e2e/x"),
        ("a=1; path=/x; HttpOnly", P, "/", "a=1; path=/e2e/x; HttpOnly"),
        ("a=1;PATH=/x;Secure", P, "/", "a=1;PATH=/e2e/x;Secure"),
        ("a=1; Path = /x ; Secure", P, "/", "a=1; Path =/e2e/x; Secure"),
        ("a=1", P, "/", "a=1; Path=/e2e/"),
        ("a=1", P, "/app/login", "a=1; Path=/e2e/app"),
        ("a=1; HttpOnly", P, "/app/login", "a=1; HttpOnly; Path=/e2e/app"),
        ("a=1; Path=rel", P, "/app/login", "a=1; Path=/e2e/app"),
        ("a=1; Path=", P, "/", "a=1; Path=/e2e/"),
        ("a=1; Path", P, "/", "a=1; Path=/e2e/"),
        ("a=1; Path=/e2e/x", P, "/", "a=1; Path=/e2e/x"),
        ("a=1; Path=/e2e", P, "/", "a=1; Path=/e2e"),
        ("a=1; Path=/e2ex", P, "/", "a=1; Path=/e2e/e2ex"),
        ("a=1; Path=/a; Path=/b", P, "/", "a=1; Path=/e2e/a; Path=/e2e/b"),
        ("a=1; Domain=example.com; Path=/", P, "/", "a=1; Path=/e2e/"),
        ("a=1; domain=.example.com", "", "/", "a=1"),
        ("a=1; Secure; DOMAIN=x; SameSite=Lax", "", "/", "a=1; Secure; SameSite=Lax"),
        ("a=1; Domain=x; Domain=y; Max-Age=5", "", "/", "a=1; Max-Age=5"),
        ("a=1; Path=/x", "", "/", "a=1; Path=/x"),  # host routing keeps the path
        ("a=1", "", "/x/y", "a=1"),
        # The cookie pair is not an attribute, even when it is named like one.
        ("Path=/; Domain=x", P, "/", "Path=/; Path=/e2e/"),
        ("Domain=x", "", "/", "Domain=x"),
        # Everything but the two attributes, byte for byte.
        (
            'sid="a b;"; Expires=Wed, 21 Oct 2026 07:28:00 GMT; Path=/',
            P,
            "/",
            'sid="a b;"; Expires=Wed, 21 Oct 2026 07:28:00 GMT; Path=/e2e/',
        ),
        ("a=\xff\t; Path=/\xe9", P, "/", "a=\xff\t; Path=/e2e/\xe9"),
        ("a=1;", P, "/", "a=1;; Path=/e2e/"),
        ("", P, "/", "; Path=/e2e/"),
        ("x=1; Path=/other-tenant; Domain=127.0.0.1", P, "/", "x=1; Path=/e2e/other-tenant"),
    ],
)
def test_set_cookie(value: str, prefix: str, request_path: str, expected: str) -> None:
    assert rewrite_set_cookie(value, prefix, request_path) == expected


def test_set_cookie_without_a_change_is_the_same_object() -> None:
    value = "a=1; Path=/e2e/x"
    assert rewrite_set_cookie(value, P) is value


@pytest.mark.parametrize(
    ("value", "prefix", "expected"),
    [
        ("/x", P, "/e2e/x"),
        ("/", P, "/e2e/"),
        ("/e2e/x/", P, "/e2e/x/"),
        ("/e2e", P, "/e2e/"),  # a scope matches by string prefix: /e2e covers /e2ex/
        ("/e2ex/", P, "/e2e/e2ex/"),
        (" /x ", P, "/e2e/x"),
        ("https://example.com/", P, "/e2e/"),
        ("//example.com/", P, "/e2e/"),
        ("x/", P, "/e2e/"),
        ("", P, "/e2e/"),
        ("/x/../../other/", P, "/e2e/"),
        ("/x/%2E%2e/%2e./other/", P, "/e2e/"),
        ("/x/.%2E/", P, "/e2e/"),
        ("/x\\..\\..\\other/", P, "/e2e/"),
        ("/x/.\t./other/", P, "/e2e/"),
        ("/x?y", P, "/e2e/"),
        ("/x#y", P, "/e2e/"),
        ("/a.b/..c/", P, "/e2e/a.b/..c/"),
        ("/", "", "/"),  # host routing: the host is the boundary
        ("https://example.com/", "", "https://example.com/"),
    ],
)
def test_service_worker_allowed(value: str, prefix: str, expected: str) -> None:
    assert rewrite_service_worker_allowed(value, prefix) == expected


def test_response_headers_rewrite_only_the_three_names_and_keep_order() -> None:
    headers = [
        ("Content-Type", "text/html"),
        ("LOCATION", "/next"),
        ("Set-Cookie", "a=1; Path=/; Domain=example.com"),
        ("X-Location", "/next"),
        ("set-cookie", "b=2"),
        ("Service-Worker-Allowed", "/"),
        ("Content-Length", "0"),
    ]
    assert rewrite_response_headers(headers, P, "/login") == [
        ("Content-Type", "text/html"),
        ("LOCATION", "/e2e/next"),
        ("Set-Cookie", "a=1; Path=/e2e/"),
        ("X-Location", "/next"),
        ("set-cookie", "b=2; Path=/e2e/"),
        ("Service-Worker-Allowed", "/e2e/"),
        ("Content-Length", "0"),
    ]
    assert headers[1] == ("LOCATION", "/next"), "the input list must not change"


def test_response_headers_in_host_routing_only_drop_domain() -> None:
    headers = [
        ("Location", "/next"),
        ("Set-Cookie", "a=1; Path=/; Domain=example.com"),
        ("Service-Worker-Allowed", "/"),
    ]
    assert rewrite_response_headers(headers, "", "/login") == [
        ("Location", "/next"),
        ("Set-Cookie", "a=1; Path=/"),
        ("Service-Worker-Allowed", "/"),
    ]


def test_response_headers_without_a_change_are_the_same_list() -> None:
    headers = [("Content-Type", "text/plain"), ("Location", "http://example.com/")]
    assert rewrite_response_headers(headers, P, "/") is headers
    assert rewrite_response_headers(headers, "", "/") is headers


# ---------------------------------------------------------------------- in the relay

_HEAD = [
    ("Location", "/next"),
    ("Set-Cookie", "a=1; Path=/; Domain=127.0.0.1"),
    ("Set-Cookie", "b=2"),
    ("Service-Worker-Allowed", "/"),
]
_EXPECTED = {
    "location": ["/node/next"],
    "set-cookie": ["a=1; Path=/node/", "b=2; Path=/node/app"],
    "service-worker-allowed": ["/node/"],
}


async def _local_app(client: Any, stream: Any) -> None:
    if stream.open.kind is StreamKind.WEBSOCKET and stream.open.path == "/app/accept":
        client.conn.send_response(stream.id, 101, _HEAD)
        await client.flush()
        return
    status = 200 if stream.open.kind is StreamKind.HTTP else 403
    await stream.respond(status, [*_HEAD, ("content-length", "2")], b"ok")


def _rewritten(headers: Any) -> dict[str, list[str]]:
    return {name: headers.get_list(name) for name in _EXPECTED}


async def test_the_relay_rewrites_an_http_response_head(server: Any, pg: Any) -> None:
    async with pg.fake_client(server, "node", _local_app), httpx.AsyncClient() as http:
        response = await http.get(f"{server.base}/node/app/page")
    assert response.status_code == 200
    assert _rewritten(response.headers) == _EXPECTED


async def test_the_relay_rewrites_a_websocket_accept_and_refusal(server: Any, pg: Any) -> None:
    from websockets.asyncio.client import connect
    from websockets.exceptions import InvalidStatus

    base = f"ws://127.0.0.1:{server.port}/node/app"
    async with pg.fake_client(server, "node", _local_app):
        async with connect(f"{base}/accept") as ws:
            assert ws.response is not None
            accepted = ws.response.headers
        with pytest.raises(InvalidStatus) as refused:
            async with connect(f"{base}/refuse"):
                pass
    got = {name: accepted.get_all(name) for name in _EXPECTED}
    assert got == _EXPECTED
    assert refused.value.response.status_code == 403
    headers = refused.value.response.headers
    assert {name: headers.get_all(name) for name in _EXPECTED} == _EXPECTED


# ---------------------------------------------------------------------- properties

#: What a header value can carry on the wire (HTAB, SP, VCHAR, obs-text), with the
#: characters the rules look at over-represented.
_VALUE = st.lists(
    st.one_of(
        st.sampled_from([";", "=", "/", " ", "\t", ".", "%2e", "%2E", "\\", "?"]),
        st.sampled_from(["Path", "path=/", "Domain", " domain=x", "/e2e", "/e2e/", "/a"]),
        st.characters(min_codepoint=0x21, max_codepoint=0xFF, exclude_characters="\x7f"),
    ),
    max_size=30,
).map("".join)
_PREFIX = st.sampled_from(["/e2e", "/a", "/x" * 32])
_ANY_TEXT = st.text(max_size=60)


def _attributes(cookie: str) -> list[tuple[str, str]]:
    """A browser's reading of a Set-Cookie value (RFC 6265 §5.2): the attributes after
    the cookie pair, names case-folded and trimmed of SP and HTAB."""
    attributes = []
    for part in cookie.split(";")[1:]:
        name, _, value = part.partition("=")
        attributes.append((name.strip(" \t").lower(), value.strip(" \t")))
    return attributes


@given(_ANY_TEXT, st.sampled_from(["", "/e2e"]), _ANY_TEXT)
def test_no_value_makes_any_rule_raise(value: str, prefix: str, request_path: str) -> None:
    headers = [(name, value) for name in ("Location", "Set-Cookie", "Service-Worker-Allowed")]
    assert len(rewrite_response_headers(headers, prefix, request_path)) == 3


@given(_VALUE, _PREFIX, _ANY_TEXT)
def test_a_path_mode_cookie_never_leaves_its_prefix(
    value: str, prefix: str, request_path: str
) -> None:
    attributes = _attributes(rewrite_set_cookie(value, prefix, request_path))
    paths = [path for name, path in attributes if name == "path"]
    assert paths, "a cookie without Path takes the browser's default path"
    last = paths[-1]  # the one a browser uses
    assert last == prefix or last.startswith(prefix + "/")


@given(_VALUE, st.sampled_from(["", "/e2e"]), _ANY_TEXT)
def test_a_cookie_never_keeps_a_domain(value: str, prefix: str, request_path: str) -> None:
    attributes = _attributes(rewrite_set_cookie(value, prefix, request_path))
    assert "domain" not in [name for name, _ in attributes]


@given(_VALUE, _PREFIX)
def test_a_path_mode_cookie_keeps_every_other_attribute_in_order(value: str, prefix: str) -> None:
    before = [(n, v) for n, v in _attributes(value) if n not in ("path", "domain")]
    after = [(n, v) for n, v in _attributes(rewrite_set_cookie(value, prefix)) if n != "path"]
    assert after == before
    assert rewrite_set_cookie(value, prefix).split(";")[0] == value.split(";")[0]


@given(_VALUE, _PREFIX)
def test_service_worker_scope_stays_below_the_prefix(value: str, prefix: str) -> None:
    allowed = rewrite_service_worker_allowed(value, prefix).strip(" \t")
    assert allowed.startswith(prefix + "/")
    segments = allowed.lower().replace("%2e", ".").replace("\\", "/").split("/")
    assert "." not in segments
    assert ".." not in segments
    assert not set(allowed) & set(string.whitespace + "?#")


@given(_VALUE, _PREFIX)
def test_rules_are_idempotent(value: str, prefix: str) -> None:
    once = rewrite_location(value, prefix)
    assert rewrite_location(once, prefix) == once
    cookie = rewrite_set_cookie(value, prefix)
    assert rewrite_set_cookie(cookie, prefix) == cookie
    allowed = rewrite_service_worker_allowed(value, prefix)
    assert rewrite_service_worker_allowed(allowed, prefix) == allowed


# ---------------------------------------------------------------------- benchmark


def _benchmark() -> None:
    import functools
    import timeit

    plain = [
        ("Content-Type", "text/html; charset=utf-8"),
        ("Content-Length", "1234"),
        ("Date", "Tue, 01 Dec 2026 03:00:00 GMT"),
        ("Server", "local"),
        ("Cache-Control", "no-cache"),
        ("ETag", '"abc"'),
        ("Vary", "Accept-Encoding"),
        ("Last-Modified", "Tue, 01 Dec 2026 03:00:00 GMT"),
        ("X-Frame-Options", "DENY"),
        ("X-Content-Type-Options", "nosniff"),
    ]
    cookie = [*plain[:9], ("Set-Cookie", "sid=abc123; Path=/; HttpOnly; SameSite=Lax")]
    status = 200

    def before(head: list[tuple[str, str]]) -> object:
        return [
            (name.encode("latin-1"), value.encode("latin-1"))
            for name, value in strip_hop_by_hop(head)
            if not (status in (204, 304) and name.lower() == "content-length")
        ]

    def after(head: list[tuple[str, str]]) -> object:
        headers = rewrite_response_headers(strip_hop_by_hop(head), "/node", "/api/items")
        return [
            (name.encode("latin-1"), value.encode("latin-1"))
            for name, value in headers
            if not (status in (204, 304) and name.lower() == "content-length")
        ]

    number = 20_000
    for label, head in (("10 headers", plain), ("10 headers, one Set-Cookie", cookie)):
        results = {}
        for name, function in (("before", before), ("after", after)):
            runs = timeit.repeat(functools.partial(function, head), number=number, repeat=25)
            results[name] = min(runs) / number * 1e6
        print(
            f"{label}: before {results['before']:.2f} µs, after {results['after']:.2f} µs, "
            f"added {results['after'] - results['before']:+.2f} µs"
        )


if __name__ == "__main__":
    _benchmark()


def test_clear_site_data_is_dropped_in_path_mode_only() -> None:
    from pipegate_server._rewrite import rewrite_response_headers

    head = [("content-type", "text/html"), ("Clear-Site-Data", '"*"'), ("x-a", "1")]
    assert rewrite_response_headers(head, "/node", "/") == [
        ("content-type", "text/html"),
        ("x-a", "1"),
    ]
    assert rewrite_response_headers(head, "", "/") is head
