"""Relay policy: what a shell does to headers, close codes and failures, one function
per rule of docs/protocol.md.

Both shells (server and client) call these instead of writing the rule inline, so a
fix lands once. Everything here is pure: no I/O, no state, no logging. The
conformance suite keeps its own literal copies of these tables on purpose and must
never import them, so that a bug here shows up there.

* HD-4 — hop-by-hop headers: :data:`HOP_BY_HOP_HEADERS`, :func:`hop_by_hop_names`,
  :func:`raw_hop_by_hop_names`, :func:`strip_hop_by_hop`.
* HD-5 — forwarding headers: :data:`FORWARDING_HEADERS`, :func:`forwarding_headers`;
  proxy headers dropped from untrusted callers: :data:`PROXY_HEADERS`,
  :func:`is_proxy_header`.
* HD-10 — the status a caller gets for each failure: :class:`RelayFailure`,
  :func:`status_for_failure`, :func:`failure_for_reset`, :func:`status_for_reset`.
* WS-4, WS-5 — close codes: :func:`is_sendable_close_code`,
  :func:`close_code_for_relay`, :func:`close_code_for_hop`, :func:`close_code_for_reset`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from enum import StrEnum
from types import MappingProxyType

from ._models import ResetCode

__all__ = [
    "FORWARDING_HEADERS",
    "HOP_BY_HOP_HEADERS",
    "PROXY_HEADERS",
    "PROXY_HEADER_PREFIX",
    "RelayFailure",
    "close_code_for_hop",
    "close_code_for_relay",
    "close_code_for_reset",
    "failure_for_reset",
    "forwarding_headers",
    "hop_by_hop_names",
    "is_proxy_header",
    "is_sendable_close_code",
    "raw_hop_by_hop_names",
    "status_for_failure",
    "status_for_reset",
    "strip_hop_by_hop",
]

# ---------------------------------------------------------------------- HD-4

#: Connection-specific headers that a relay must not forward (HD-4, RFC 9110 7.6.1).
HOP_BY_HOP_HEADERS = frozenset(
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
_RAW_HOP_BY_HOP = frozenset(name.encode("latin-1") for name in HOP_BY_HOP_HEADERS)


def hop_by_hop_names(headers: Iterable[tuple[str, str]]) -> frozenset[str]:
    """The lower-case header names HD-4 removes from ``headers``: every name of
    :data:`HOP_BY_HOP_HEADERS` and every name a ``Connection`` header lists (HD-4)."""
    named: set[str] | None = None
    for name, value in headers:
        if name.lower() == "connection":
            tokens = {token.strip().lower() for token in value.split(",")}
            named = tokens if named is None else named | tokens
    if not named:
        return HOP_BY_HOP_HEADERS
    named.discard("")
    return HOP_BY_HOP_HEADERS | named


def raw_hop_by_hop_names(headers: Iterable[tuple[bytes, bytes]]) -> frozenset[bytes]:
    """:func:`hop_by_hop_names` for byte-string headers (HD-4), as an ASGI scope or an
    HTTP/1.1 parser holds them."""
    named: set[bytes] | None = None
    for name, value in headers:
        if name.lower() == b"connection":
            tokens = {token.strip().lower() for token in value.split(b",")}
            named = tokens if named is None else named | tokens
    if not named:
        return _RAW_HOP_BY_HOP
    named.discard(b"")
    return _RAW_HOP_BY_HOP | named


def strip_hop_by_hop(headers: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    """Drop hop-by-hop headers, including any that ``Connection`` names (HD-4).

    Order and duplicates of everything else are kept.
    """
    drop = hop_by_hop_names(headers)
    return [(name, value) for name, value in headers if name.lower() not in drop]


# ---------------------------------------------------------------------- HD-5

#: Headers the server sets itself (HD-5). A caller's own X-Forwarded-For is kept and
#: appended to; its other forwarding headers are replaced.
FORWARDING_HEADERS = frozenset(
    {"x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "x-forwarded-prefix"}
)


#: Headers through which a proxy tells the next hop about the original request (HD-5).
#: A server drops every one of them, and every ``x-forwarded-*`` name, from a caller
#: that is not a proxy it trusts: the local app would otherwise believe a caller's
#: claim about its own address, scheme, host or URL.
PROXY_HEADERS = frozenset(
    {
        "forwarded",
        "x-real-ip",
        "x-client-ip",
        "true-client-ip",
        "x-cluster-client-ip",
        "cf-connecting-ip",
        "fastly-client-ip",
        "x-original-url",
        "x-rewrite-url",
        "x-original-uri",
        "x-original-host",
        "x-original-forwarded-for",
        "x-host",
        "x-url-scheme",
        "front-end-https",
        "x-proxyuser-ip",
    }
)
#: Every name that starts with this is a proxy header too (X-Forwarded-Port, -Server...).
PROXY_HEADER_PREFIX = "x-forwarded-"


def is_proxy_header(name: str) -> bool:
    """Whether HD-5 drops header ``name`` (any case) from a caller that is not a
    trusted proxy: the :data:`FORWARDING_HEADERS`, the :data:`PROXY_HEADERS` and
    every ``x-forwarded-*`` name."""
    lowered = name.lower()
    return lowered in PROXY_HEADERS or lowered.startswith(PROXY_HEADER_PREFIX)


def forwarding_headers(
    *,
    scheme: str,
    host: str | None,
    prefix: str,
    peer: str | None,
    forwarded_for: Sequence[str] = (),
) -> list[tuple[str, str]]:
    """The forwarding headers the server appends after the caller's (HD-5).

    ``forwarded_for`` are the values of the X-Forwarded-For headers the request
    arrived with (in order), ``peer`` the address it arrived from; ``scheme`` is
    ``http`` or ``https``; ``host`` the Host the caller sent (none: no
    X-Forwarded-Host); ``prefix`` the path prefix, ``/<connection_id>`` (``""`` in
    host routing, RT-2: no X-Forwarded-Prefix).
    """
    chain = [*forwarded_for, peer] if peer else list(forwarded_for)
    headers: list[tuple[str, str]] = []
    if chain:
        headers.append(("x-forwarded-for", ", ".join(chain)))
    headers.append(("x-forwarded-proto", scheme))
    if host:
        headers.append(("x-forwarded-host", host))
    if prefix:
        headers.append(("x-forwarded-prefix", prefix))
    return headers


# ---------------------------------------------------------------------- HD-10


class RelayFailure(StrEnum):
    """Why a caller's request could not be relayed (HD-10); each has one status."""

    NO_TUNNEL = "no_tunnel"
    """No tunnel is connected for the id, or the id is invalid."""
    BODY_TOO_LARGE = "body_too_large"
    """The request body exceeds the server's limit (or a ``too_large`` reset)."""
    HEAD_TOO_LARGE = "head_too_large"
    """The request head cannot be expressed within the protocol's size limits."""
    BAD_REQUEST = "bad_request"
    """The request's framing is invalid (e.g. a bad ``Content-Length``)."""
    TUNNEL_CLOSED = "tunnel_closed"
    """The tunnel dropped before the response head."""
    UPSTREAM_FAILED = "upstream_failed"
    """The client reports the local app unreachable or failing (or reset otherwise)."""
    TIMEOUT = "timeout"
    """No response head within the response timeout."""
    BUSY = "busy"
    """The tunnel has no free stream slot, or is going away (HD-11)."""


_FAILURE_STATUS: Mapping[RelayFailure, int] = MappingProxyType(
    {
        RelayFailure.NO_TUNNEL: 404,
        RelayFailure.BODY_TOO_LARGE: 413,
        RelayFailure.HEAD_TOO_LARGE: 431,
        RelayFailure.BAD_REQUEST: 400,
        RelayFailure.TUNNEL_CLOSED: 502,
        RelayFailure.UPSTREAM_FAILED: 502,
        RelayFailure.TIMEOUT: 504,
        RelayFailure.BUSY: 503,
    }
)

_RESET_FAILURE: Mapping[ResetCode, RelayFailure] = MappingProxyType(
    {
        ResetCode.TIMEOUT: RelayFailure.TIMEOUT,
        ResetCode.TOO_LARGE: RelayFailure.BODY_TOO_LARGE,
        ResetCode.REFUSED: RelayFailure.BUSY,
    }
)


def status_for_failure(failure: RelayFailure) -> int:
    """The HTTP status a caller gets for ``failure`` before a response head (HD-10)."""
    return _FAILURE_STATUS[failure]


def failure_for_reset(code: ResetCode) -> RelayFailure:
    """What a reset received before the response head means for the caller (HD-10):
    ``timeout`` a timeout, ``too_large`` a body too large, ``refused`` busy, every
    other code (``upstream_failed``, ``internal_error``, ``cancelled``, ...) a failed
    upstream."""
    return _RESET_FAILURE.get(code, RelayFailure.UPSTREAM_FAILED)


def status_for_reset(code: ResetCode) -> int:
    """The status for a reset received before the response head (HD-10): 504 for
    ``timeout``, 413 for ``too_large``, 503 for ``refused``, else 502."""
    return _FAILURE_STATUS[failure_for_reset(code)]


# ---------------------------------------------------------------------- WS-4, WS-5

_ABNORMAL = frozenset({1006, 1015})


def is_sendable_close_code(code: int) -> bool:
    """True for a code a WebSocket close frame may carry (RFC 6455 7.4; WS-5): 1000-1003,
    1007-1014 and 3000-4999. 1005, 1006 and 1015 never are."""
    return 1000 <= code <= 1003 or 1007 <= code <= 1014 or 3000 <= code <= 4999


def close_code_for_relay(observed: int | None, *, went_away: bool = False) -> int:
    """The code to send in ``ws_close`` for a close observed on one hop (WS-4, WS-5).

    A sendable code is relayed as it is. A close without a status code (1005, or
    ``None``) becomes 1000; an abnormal closure or TLS failure (1006, 1015) becomes
    1011, or 1001 when ``went_away`` (it was the caller who went away); any other
    code, which no close frame may carry, becomes 1011.
    """
    if observed is None or observed == 1005:
        return 1000
    if is_sendable_close_code(observed):
        return observed
    if observed in _ABNORMAL and went_away:
        return 1001
    return 1011


def close_code_for_hop(received: int) -> int:
    """The code to close a hop's WebSocket with for a ``ws_close`` code received from
    the tunnel (WS-4, WS-5): the same code when a close frame may carry it, else 1011."""
    return received if is_sendable_close_code(received) else 1011


def close_code_for_reset(code: ResetCode | None) -> int:
    """The code to close a relayed WebSocket with when its stream is reset (WS-4):
    1001 for ``cancelled``, 1011 for every other reset (or an unknown one)."""
    return 1001 if code == ResetCode.CANCELLED else 1011
