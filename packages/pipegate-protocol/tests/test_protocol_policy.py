"""The relay policy functions (HD-4, HD-5, HD-10, WS-4, WS-5) against literal tables
written out from docs/protocol.md, not derived from the code under test."""

from __future__ import annotations

import re
from pathlib import Path

import pipegate_protocol
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pipegate_protocol import (
    FORWARDING_HEADERS,
    HOP_BY_HOP_HEADERS,
    RelayFailure,
    ResetCode,
    close_code_for_hop,
    close_code_for_relay,
    close_code_for_reset,
    failure_for_reset,
    forwarding_headers,
    hop_by_hop_names,
    is_proxy_header,
    is_sendable_close_code,
    raw_hop_by_hop_names,
    status_for_failure,
    status_for_reset,
    strip_hop_by_hop,
)
from pipegate_protocol._handshake import HOP_BY_HOP_HEADERS as HANDSHAKE_HOP_BY_HOP
from pipegate_protocol._handshake import strip_hop_by_hop as handshake_strip

#: HD-4, written out.
SPEC_HOP_BY_HOP = {
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


def test_HD_4_hop_by_hop_set_is_the_spec_list() -> None:
    assert set(HOP_BY_HOP_HEADERS) == SPEC_HOP_BY_HOP


def test_HD_4_old_import_place_still_works() -> None:
    assert HANDSHAKE_HOP_BY_HOP is HOP_BY_HOP_HEADERS
    assert handshake_strip is strip_hop_by_hop


def test_HD_4_strip_drops_fixed_and_connection_named_headers() -> None:
    headers = [
        ("X-Keep", "1"),
        ("Keep-Alive", "timeout=5"),
        ("X-Private", "secret"),
        ("TE", "trailers"),
        ("Connection", "X-Private, , keep-alive"),
        ("Transfer-Encoding", "chunked"),
        ("connection", "x-other"),
        ("X-Other", "o"),
        ("Upgrade", "websocket"),
        ("x-keep", "2"),
    ]
    assert strip_hop_by_hop(headers) == [("X-Keep", "1"), ("x-keep", "2")]


def test_HD_4_names_include_every_connection_token_lower_case() -> None:
    names = hop_by_hop_names([("Connection", "Foo,  BAR ,,"), ("a", "b")])
    assert names == SPEC_HOP_BY_HOP | {"foo", "bar"}
    assert hop_by_hop_names([("a", "b")]) == SPEC_HOP_BY_HOP


def test_HD_4_raw_names_match_the_str_version() -> None:
    raw = [(b"connection", b"X-Private, keep-alive"), (b"CONNECTION", b"x-two")]
    expected = {n.encode() for n in SPEC_HOP_BY_HOP} | {b"x-private", b"x-two"}
    assert raw_hop_by_hop_names(raw) == expected
    assert raw_hop_by_hop_names([]) == {n.encode() for n in SPEC_HOP_BY_HOP}


_NAMES = st.sampled_from(["a", "B", "x-y", "Connection", "keep-alive", "TE", "upgrade", "z"])


@given(st.lists(st.tuples(_NAMES, st.sampled_from(["", "a", "b, z", "x-y,Z", "1"]))))
def test_HD_4_strip_keeps_order_and_duplicates_of_the_rest(
    headers: list[tuple[str, str]],
) -> None:
    named = {
        token.strip().lower()
        for name, value in headers
        if name.lower() == "connection"
        for token in value.split(",")
    }
    expected = [
        (n, v) for n, v in headers if n.lower() not in SPEC_HOP_BY_HOP and n.lower() not in named
    ]
    assert strip_hop_by_hop(headers) == expected
    raw = [(n.encode(), v.encode()) for n, v in headers]
    assert raw_hop_by_hop_names(raw) == {n.encode() for n in hop_by_hop_names(headers)}


def test_HD_5_forwarding_headers() -> None:
    assert {
        "x-forwarded-for",
        "x-forwarded-proto",
        "x-forwarded-host",
        "x-forwarded-prefix",
    } == FORWARDING_HEADERS
    assert forwarding_headers(
        scheme="https",
        host="example.com",
        prefix="/node",
        peer="10.0.0.2",
        forwarded_for=["1.2.3.4"],
    ) == [
        ("x-forwarded-for", "1.2.3.4, 10.0.0.2"),
        ("x-forwarded-proto", "https"),
        ("x-forwarded-host", "example.com"),
        ("x-forwarded-prefix", "/node"),
    ]
    assert forwarding_headers(scheme="http", host=None, prefix="/a", peer=None) == [
        ("x-forwarded-proto", "http"),
        ("x-forwarded-prefix", "/a"),
    ]


@pytest.mark.parametrize(
    "name",
    [
        "Forwarded",
        "X-Real-IP",
        "X-Forwarded-Port",
        "X-Original-URL",
        "x-forwarded-server",
        "X-FORWARDED-FOR",
        "x-forwarded-proto",
        "x-forwarded-host",
        "x-forwarded-prefix",
        "True-Client-IP",
    ],
)
def test_HD_5_proxy_headers_from_untrusted_callers_are_dropped(name: str) -> None:
    assert is_proxy_header(name)


@pytest.mark.parametrize("name", ["host", "x-forwarded", "authorization", "x-request-id", "via"])
def test_HD_5_other_headers_are_not_proxy_headers(name: str) -> None:
    assert not is_proxy_header(name)


def test_HD_5_every_forwarding_header_is_a_proxy_header() -> None:
    assert all(is_proxy_header(name) for name in FORWARDING_HEADERS)


#: HD-10's table, written out.
SPEC_FAILURE_STATUS = {
    RelayFailure.NO_TUNNEL: 404,
    RelayFailure.BODY_TOO_LARGE: 413,
    RelayFailure.HEAD_TOO_LARGE: 431,
    RelayFailure.BAD_REQUEST: 400,
    RelayFailure.TUNNEL_CLOSED: 502,
    RelayFailure.UPSTREAM_FAILED: 502,
    RelayFailure.TIMEOUT: 504,
    RelayFailure.BUSY: 503,
}
#: HD-10: "A reset received before the head maps as ...", written out.
SPEC_RESET_STATUS = {
    "upstream_failed": 502,
    "internal_error": 502,
    "cancelled": 502,
    "caller_gone": 502,
    "timeout": 504,
    "too_large": 413,
    "refused": 503,
}


def test_HD_10_status_for_each_failure() -> None:
    assert {failure: status_for_failure(failure) for failure in RelayFailure} == (
        SPEC_FAILURE_STATUS
    )


@pytest.mark.parametrize("code", list(ResetCode))
def test_HD_10_status_for_each_reset_code(code: ResetCode) -> None:
    assert status_for_reset(code) == SPEC_RESET_STATUS[code.value]
    assert status_for_failure(failure_for_reset(code)) == SPEC_RESET_STATUS[code.value]


#: WS-5: every code a close frame may carry below 5000 (RFC 6455 7.4), written out.
SPEC_SENDABLE = {1000, 1001, 1002, 1003, *range(1007, 1015), *range(3000, 5000)}


@given(st.integers(-10, 70_000))
def test_WS_5_sendable_codes(code: int) -> None:
    assert is_sendable_close_code(code) is (code in SPEC_SENDABLE)


@pytest.mark.parametrize(
    ("observed", "went_away", "relayed"),
    [
        (1000, False, 1000),
        (1001, False, 1001),
        (1008, False, 1008),
        (4321, False, 4321),
        (None, False, 1000),
        (1005, False, 1000),
        (1005, True, 1000),
        (1006, False, 1011),
        (1006, True, 1001),
        (1015, False, 1011),
        (1015, True, 1001),
        (1004, False, 1011),
        (2999, False, 1011),
    ],
)
def test_WS_5_close_code_for_relay(observed: int | None, went_away: bool, relayed: int) -> None:
    assert close_code_for_relay(observed, went_away=went_away) == relayed


@pytest.mark.parametrize(
    ("received", "closed_with"),
    [
        (1000, 1000),
        (1001, 1001),
        (1009, 1009),
        (3000, 3000),
        (4999, 4999),
        (1005, 1011),
        (1006, 1011),
        (1015, 1011),
        (1004, 1011),
        (2000, 1011),
    ],
)
def test_WS_5_close_code_for_hop(received: int, closed_with: int) -> None:
    assert close_code_for_hop(received) == closed_with


@given(st.one_of(st.none(), st.integers(0, 6000)), st.booleans())
def test_WS_5_a_relayed_code_is_always_sendable(observed: int | None, went_away: bool) -> None:
    relayed = close_code_for_relay(observed, went_away=went_away)
    assert relayed in SPEC_SENDABLE
    assert close_code_for_hop(relayed) == relayed


@pytest.mark.parametrize("code", list(ResetCode))
def test_WS_4_close_code_for_reset(code: ResetCode) -> None:
    assert close_code_for_reset(code) == (1001 if code.value == "cancelled" else 1011)
    assert close_code_for_reset(None) == 1011


def test_policy_names_are_public() -> None:
    for name in (
        "FORWARDING_HEADERS",
        "HOP_BY_HOP_HEADERS",
        "RelayFailure",
        "close_code_for_hop",
        "close_code_for_relay",
        "close_code_for_reset",
        "failure_for_reset",
        "forwarding_headers",
        "hop_by_hop_names",
        "is_sendable_close_code",
        "raw_hop_by_hop_names",
        "status_for_failure",
        "status_for_reset",
        "strip_hop_by_hop",
    ):
        assert name in pipegate_protocol.__all__


def test_every_reference_implementation_named_in_the_spec_is_public() -> None:
    spec = (Path(__file__).resolve().parents[3] / "docs" / "protocol.md").read_text("utf-8")
    named = set(re.findall(r"`pipegate_protocol\.(\w+)`", spec))
    assert {"strip_hop_by_hop", "forwarding_headers", "status_for_failure"} <= named
    assert {"close_code_for_relay", "close_code_for_hop", "close_code_for_reset"} <= named
    assert named <= set(pipegate_protocol.__all__)
