"""The conformance suite's own expected tables, written out from docs/protocol.md.

Nothing here is imported from ``pipegate_protocol``'s policy (``strip_hop_by_hop``,
``close_code_for_*``, ``status_for_*``): an oracle that shares the implementation's
table cannot catch a bug in it. The suite may use the package's wire models and codec
to *speak* the protocol; what the answers must be comes from here, each table with the
rule it transcribes.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = [
    "CLOSE_CODE_AT_HOP",
    "CLOSE_CODE_FOR_RESET",
    "HOP_BY_HOP_HEADERS",
    "PROXY_HEADERS_SENT",
    "RESET_STATUS",
    "expected_after_hop_by_hop",
]

#: HD-4: "Connection, Keep-Alive, Proxy-Authenticate, Proxy-Authorization,
#: Proxy-Connection, TE, Trailer, Transfer-Encoding, Upgrade, and every header named
#: in a Connection header".
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

#: HD-5: "A server MUST drop the proxy headers of a caller that is not a proxy it was
#: configured to trust (the default trusts nobody): Forwarded, X-Real-IP, every
#: X-Forwarded-* name ..., X-Original-URL, X-Rewrite-URL ...". What a hostile caller
#: sends; none of it may reach the local app as sent (X-Forwarded-For/-Proto/-Host/
#: -Prefix arrive with the server's own values only).
PROXY_HEADERS_SENT = (
    ("Forwarded", "for=198.51.100.7;proto=https;host=evil.example"),
    ("X-Real-IP", "198.51.100.7"),
    ("X-Forwarded-For", "198.51.100.7"),
    ("X-Forwarded-Port", "443"),
    ("X-Forwarded-Server", "evil.example"),
    ("X-Forwarded-Proto", "https"),
    ("X-Forwarded-Host", "evil.example"),
    ("X-Original-URL", "/admin"),
    ("X-Rewrite-URL", "/admin"),
)

#: HD-10: "A reset received before the head maps as: upstream_failed, internal_error,
#: cancelled → 502; timeout → 504; too_large → 413; refused → 503."
RESET_STATUS = {
    "upstream_failed": 502,
    "internal_error": 502,
    "cancelled": 502,
    "timeout": 504,
    "too_large": 413,
    "refused": 503,
}

#: WS-4/WS-5: a ``ws_close`` code received from the tunnel -> the code the receiver
#: closes its hop with. Sendable codes pass unchanged (WS-4); 1005, 1006 and 1015 "MUST
#: NOT appear in a WebSocket close frame ... A receiver that gets one of them anyway
#: closes its hop with 1011; so it does for every other code in 1000..4999 that a
#: close frame may not carry (1004, 1016..2999)" (WS-5).
CLOSE_CODE_AT_HOP = {
    1000: 1000,
    1001: 1001,
    1008: 1008,
    4321: 4321,
    1004: 1011,
    1005: 1011,
    1006: 1011,
    1015: 1011,
    2000: 1011,
}

#: WS-4: "reset also ends a WebSocket stream; the receiver then closes its WebSocket
#: with 1011 (or 1001 when the code is cancelled)".
CLOSE_CODE_FOR_RESET = {
    "cancelled": 1001,
    "upstream_failed": 1011,
    "internal_error": 1011,
}


def expected_after_hop_by_hop(headers: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    """``headers`` (lower-case names) as HD-4 says a relay passes them on: without
    :data:`HOP_BY_HOP_HEADERS` and without every name a ``Connection`` header lists;
    everything else in order, duplicates kept."""
    named = {
        token.strip().lower()
        for name, value in headers
        if name.lower() == "connection"
        for token in value.split(",")
    }
    return [
        (name, value)
        for name, value in headers
        if name.lower() not in HOP_BY_HOP_HEADERS and name.lower() not in named
    ]
