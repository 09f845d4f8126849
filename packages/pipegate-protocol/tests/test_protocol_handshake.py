"""Pure handshake and header helpers: HS-1, HS-2, HS-3, VE-1, VE-3, HD-4."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pipegate_protocol import (
    CLIENT_TOKEN_HEADER,
    CONNECTION_ID_PATTERN,
    HOP_BY_HOP_HEADERS,
    KNOWN_VERSIONS,
    RESERVED_PREFIX,
    ProtocolVersion,
    connection_id_from_url,
    extract_client_token,
    is_valid_connection_id,
    negotiate_version,
    public_url_for,
    strip_hop_by_hop,
)

ID_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-"

# ---------------------------------------------------------------- HS-1


@pytest.mark.parametrize("value", ["node", "a", "A-b_9", "x" * 64, "_", "-", "__pipegate"])
def test_HS_1_valid_connection_ids(value: str) -> None:
    assert is_valid_connection_id(value)


@pytest.mark.parametrize(
    "value",
    [
        "",
        "x" * 65,
        "a b",
        "a/b",
        "a.b",
        "a%20b",
        "caf\u00e9",
        "node\n",
        "\nnode",
        "n\u0131",
        "\uff41",  # fullwidth a
        "_pipegate",
    ],
)
def test_HS_1_invalid_connection_ids(value: str) -> None:
    assert not is_valid_connection_id(value)


def test_HS_1_reserved_prefix_is_pipegate() -> None:
    assert RESERVED_PREFIX == "_pipegate"
    assert CONNECTION_ID_PATTERN.match(RESERVED_PREFIX)  # syntactically fine ...
    assert not is_valid_connection_id(RESERVED_PREFIX)  # ... but reserved


def test_HS_1_ids_are_case_sensitive_and_reserved_prefix_exact() -> None:
    assert is_valid_connection_id("_Pipegate")
    assert is_valid_connection_id("_PIPEGATE")


@given(st.text(alphabet=ID_CHARS, min_size=1, max_size=64))
def test_HS_1_every_id_of_allowed_characters_is_valid_unless_reserved(value: str) -> None:
    assert is_valid_connection_id(value) == (value != RESERVED_PREFIX)


@given(st.text(max_size=80))
def test_HS_1_validity_matches_the_documented_regex(value: str) -> None:
    expected = 1 <= len(value) <= 64 and all(c in ID_CHARS for c in value) and value != "_pipegate"
    assert is_valid_connection_id(value) == expected


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("wss://example.com/node", "node"),
        ("ws://127.0.0.1:8000/node", "node"),
        ("wss://example.com/node/", "node"),
        ("wss://example.com/prefix/tunnels/node", "node"),
        ("wss://example.com/node?x=1", "node"),
    ],
)
def test_HS_1_connection_id_is_the_last_path_segment(url: str, expected: str) -> None:
    assert connection_id_from_url(url) == expected


@pytest.mark.parametrize(
    "url",
    [
        "https://example.com/node",
        "http://example.com/node",
        "example.com/node",
        "wss://example.com",
        "wss://example.com/",
        "wss://example.com/_pipegate",
        "wss://example.com/bad.id",
        "wss://example.com/" + "x" * 65,
    ],
)
def test_HS_1_connection_id_from_url_rejects_bad_urls(url: str) -> None:
    with pytest.raises(ValueError, match=r"ws://|connection id"):
        connection_id_from_url(url)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("wss://example.com/node", "https://example.com/node"),
        ("ws://127.0.0.1:8000/node", "http://127.0.0.1:8000/node"),
        ("wss://example.com/node/", "https://example.com/node"),
        ("wss://example.com/p/node?x=1", "https://example.com/p/node"),
    ],
)
def test_HS_12_public_url_for(url: str, expected: str) -> None:
    assert public_url_for(url) == expected


# ---------------------------------------------------------------- HS-2


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ([("Authorization", "Bearer s3cret")], "s3cret"),
        ([("authorization", "bearer s3cret")], "s3cret"),
        ([("AUTHORIZATION", "BEARER s3cret")], "s3cret"),
        ([("authorization", "  Bearer   s3cret  ")], "s3cret"),
        ([("PipeGate-Client-Token", "s3cret")], "s3cret"),
        ([("pipegate-client-token", " s3cret ")], "s3cret"),
        ([("pipegate-client-token", "other"), ("authorization", "Bearer s3cret")], "s3cret"),
        ([("authorization", "Bearer s3cret"), ("pipegate-client-token", "other")], "s3cret"),
        ([("authorization", "Basic dXNlcjpwYXNz"), ("pipegate-client-token", "t")], "t"),
        ([("authorization", "Bearer "), ("pipegate-client-token", "t")], "t"),
        ([("pipegate-client-token", "first"), ("pipegate-client-token", "second")], "first"),
        ([("pipegate-client-token", ""), ("pipegate-client-token", "second")], "second"),
        ([("authorization", "Basic x"), ("authorization", "Bearer b")], "b"),
    ],
)
def test_HS_2_extract_client_token(headers: list[tuple[str, str]], expected: str) -> None:
    assert extract_client_token(headers) == expected


@pytest.mark.parametrize(
    "headers",
    [
        [],
        [("host", "example.com")],
        [("authorization", "Bearer")],
        [("authorization", "Bearer    ")],
        [("authorization", "Basic dXNlcjpwYXNz")],
        [("authorization", "s3cret")],
        [("pipegate-client-token", "   ")],
        [("x-pipegate-client-token", "s3cret")],
        [("sec-websocket-protocol", "pipegate.v1, s3cret")],
    ],
)
def test_HS_2_no_token_presented(headers: list[tuple[str, str]]) -> None:
    assert extract_client_token(headers) is None


def test_HS_2_client_token_header_name() -> None:
    assert CLIENT_TOKEN_HEADER == "pipegate-client-token"


# ---------------------------------------------------------------- HS-3, VE-1, VE-3


def test_VE_1_version_tokens() -> None:
    assert ProtocolVersion.V1.value == "pipegate.v1"
    assert KNOWN_VERSIONS == (ProtocolVersion.V1,)
    assert all(v.value.startswith("pipegate.v") for v in KNOWN_VERSIONS)


@pytest.mark.parametrize(
    ("offered", "expected"),
    [
        (["pipegate.v1"], ProtocolVersion.V1),
        (["pipegate.v2", "pipegate.v1"], ProtocolVersion.V1),
        (["chat", " pipegate.v1 "], ProtocolVersion.V1),
        (["pipegate.v2, pipegate.v1"], ProtocolVersion.V1),  # one comma-joined header value
        ([], None),
        ([""], None),
        (["pipegate.v2"], None),
        (["pipegate.v10"], None),  # not "newer than v1 and therefore compatible"
        (["pipegate.v1.1"], None),
        (["pipegate.v01"], None),
        (["Pipegate.V1"], None),  # tokens match exactly, case included
        (["pipegate.v"], None),
        (["pipegate.v0"], None),
        (["pipegate"], None),
    ],
)
def test_HS_3_VE_3_negotiate_version_by_exact_token(
    offered: list[str], expected: ProtocolVersion | None
) -> None:
    assert negotiate_version(offered) is expected


def test_VE_3_negotiation_follows_the_servers_preference_not_string_order() -> None:
    supported = (ProtocolVersion.V1,)
    # Lexically "pipegate.v10" > "pipegate.v1" > "pipegate.v0"; none of that matters.
    assert negotiate_version(["pipegate.v0", "pipegate.v1", "pipegate.v10"], supported) is (
        ProtocolVersion.V1
    )
    assert negotiate_version(["pipegate.v1"], ()) is None


def test_HS_3_negotiate_accepts_any_iterable() -> None:
    assert negotiate_version(iter(["pipegate.v1"])) is ProtocolVersion.V1
    assert negotiate_version(("pipegate.v1",)) is ProtocolVersion.V1


@given(st.lists(st.text(max_size=16), max_size=6))
def test_HS_3_negotiate_returns_a_known_version_only_if_offered(offered: list[str]) -> None:
    result = negotiate_version(offered)
    tokens = {t.strip() for item in offered for t in item.split(",")}
    if result is None:
        assert not any(v.value in tokens for v in KNOWN_VERSIONS)
    else:
        assert result in KNOWN_VERSIONS
        assert result.value in tokens


# ---------------------------------------------------------------- HD-4


def test_HD_4_hop_by_hop_set() -> None:
    assert (
        frozenset(
            {
                "connection",
                "keep-alive",
                "proxy-authenticate",
                "proxy-authorization",
                "proxy-connection",
                "te",
                "trailer",
                "transfer-encoding",
                "upgrade",
            }
        )
        == HOP_BY_HOP_HEADERS
    )


def test_HD_4_strip_hop_by_hop_keeps_order_and_duplicates() -> None:
    headers = [
        ("Host", "example.com"),
        ("Connection", "keep-alive, X-Private"),
        ("Set-Cookie", "a=1"),
        ("Transfer-Encoding", "chunked"),
        ("x-private", "drop me"),
        ("Set-Cookie", "b=2"),
        ("Keep-Alive", "timeout=5"),
        ("TE", "trailers"),
        ("Upgrade", "websocket"),
        ("Content-Length", "5"),
        ("Proxy-Authorization", "Basic x"),
        ("Sec-WebSocket-Protocol", "chat"),
    ]
    assert strip_hop_by_hop(headers) == [
        ("Host", "example.com"),
        ("Set-Cookie", "a=1"),
        ("Set-Cookie", "b=2"),
        ("Content-Length", "5"),
        ("Sec-WebSocket-Protocol", "chat"),
    ]


def test_HD_4_connection_tokens_from_every_connection_header() -> None:
    headers = [
        ("connection", "x-one"),
        ("connection", " , X-Two ,"),
        ("x-one", "1"),
        ("x-two", "2"),
        ("x-three", "3"),
    ]
    assert strip_hop_by_hop(headers) == [("x-three", "3")]


def test_HD_4_strip_hop_by_hop_does_not_mutate_input() -> None:
    headers = [("connection", "close"), ("a", "1")]
    assert strip_hop_by_hop(headers) == [("a", "1")]
    assert headers == [("connection", "close"), ("a", "1")]


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["a", "B", "set-cookie", "x-y", "te", "Upgrade", "connection"]),
            st.sampled_from(["", "1", "a, b", "x-y", "B"]),
        ),
        max_size=10,
    )
)
def test_HD_4_strip_hop_by_hop_is_an_order_preserving_filter(
    headers: list[tuple[str, str]],
) -> None:
    result = strip_hop_by_hop(headers)
    named = {
        token.strip().lower()
        for name, value in headers
        if name.lower() == "connection"
        for token in value.split(",")
    }
    expected = [
        (n, v) for n, v in headers if n.lower() not in HOP_BY_HOP_HEADERS and n.lower() not in named
    ]
    assert result == expected
