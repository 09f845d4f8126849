"""Helpers shared by the conformance checks: header comparison with the allowances the
spec documents, origin event polling, reference clients that are closed after each
check, and hypothesis strategies for HTTP pieces.

Every allowance lives here, named, so that docs/conformance.md can list them and a
reader can see that a check tolerates nothing else. What HD-4 removes comes from the
suite's own table (:mod:`.expected`), never from the implementation's policy.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import httpx
from hypothesis import strategies as st

from .expected import expected_after_hop_by_hop
from .refpeer import ReferenceClient, connect_reference_client

if TYPE_CHECKING:
    from .plugin import ServerUnderTest

__all__ = [
    "FORWARDING_HEADERS",
    "FRAMING_HEADERS",
    "RELAY_STAMP_HEADERS",
    "REQUEST_ID_HEADER",
    "REWRITTEN_RESPONSE_HEADERS",
    "added_request_id_problem",
    "close_reference_clients",
    "connect_reference",
    "cookie_relay_problem",
    "expected_at_origin",
    "extension_methods",
    "header_list",
    "header_value",
    "methods",
    "new_connection_id",
    "origin_events",
    "paths",
    "queries",
    "received_at_origin",
    "relayable_response_headers",
    "release_reference",
    "request_headers",
    "rss_mib",
    "wait_for_origin_event",
]


def rss_mib(pid: int) -> float:
    """Resident memory of process ``pid`` in MiB (Linux ``/proc``)."""
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


#: Added by the server (HD-5); the checks verify their values separately.
FORWARDING_HEADERS = frozenset(
    {"x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "x-forwarded-prefix"}
)
#: A server MAY add it when the caller sent none, and MUST NOT replace a caller's (HD-5).
REQUEST_ID_HEADER = "x-request-id"
#: Body framing is chosen per hop (HD-4): Content-Length may appear or vanish, chunked
#: encoding is re-applied where needed.
FRAMING_HEADERS = frozenset({"content-length", "transfer-encoding"})
#: Stamped by any HTTP server on every response (RFC 9110 6.6.1, 10.2.4): the origin's
#: uvicorn and the public server's own HTTP stack both add them, so a caller may see
#: either or both.
RELAY_STAMP_HEADERS = frozenset({"date", "server"})
#: Rewritten by the server so that an app stays below ``/<id>/`` in path routing and no
#: tenant scopes a cookie or a service worker over another's (issue 12's path-mode
#: rules): not part of the byte comparison; a Set-Cookie is checked by
#: :func:`cookie_relay_problem`.
REWRITTEN_RESPONSE_HEADERS = frozenset(
    {"set-cookie", "location", "service-worker-allowed", "clear-site-data"}
)


def _cookie_attributes(value: str) -> list[tuple[str, str]]:
    """A browser's reading of a Set-Cookie value's attributes (RFC 6265 5.2)."""
    out = []
    for part in value.split(";")[1:]:
        name, _, attribute = part.partition("=")
        out.append((name.strip(" \t").lower(), attribute.strip(" \t")))
    return out


def cookie_relay_problem(sent: str, received: str, prefix: str) -> str | None:
    """Why ``received`` is not an allowed relay of the local app's Set-Cookie ``sent``
    (``None`` when it is): the cookie pair and every attribute but Path and Domain are
    kept in order, no Domain is left, and with a path ``prefix`` (``/<id>`` in path
    routing, ``""`` in host routing) the Path a browser uses lies below it."""
    if received.split(";")[0] != sent.split(";")[0]:
        return f"cookie pair changed: {sent!r} -> {received!r}"
    scoped = ("path", "domain")
    before = [pair for pair in _cookie_attributes(sent) if pair[0] not in scoped]
    attributes = _cookie_attributes(received)
    if [pair for pair in attributes if pair[0] not in scoped] != before:
        return f"attributes other than Path and Domain changed: {sent!r} -> {received!r}"
    if any(name == "domain" for name, _ in attributes):
        return f"a Domain attribute was kept: {received!r}"
    paths = [value for name, value in attributes if name == "path"]
    if prefix and not (paths and (paths[-1] == prefix or paths[-1].startswith(prefix + "/"))):
        return f"the cookie's Path is not below {prefix}/: {received!r}"
    if not prefix and paths != [v for n, v in _cookie_attributes(sent) if n == "path"]:
        return f"the cookie's Path changed in host routing: {sent!r} -> {received!r}"
    return None


def header_list(pairs: Sequence[tuple[Any, Any]]) -> list[tuple[str, str]]:
    """``(name, value)`` pairs as latin-1 strings with lower-cased names (HD-2 compares
    names case-insensitively), order and duplicates kept."""
    out: list[tuple[str, str]] = []
    for name, value in pairs:
        n = name.decode("latin-1") if isinstance(name, bytes) else str(name)
        v = value.decode("latin-1") if isinstance(value, bytes) else str(value)
        out.append((n.lower(), v))
    return out


def expected_at_origin(sent: Sequence[tuple[Any, Any]]) -> list[tuple[str, str]]:
    """What the local app must receive of the headers a caller sent: hop-by-hop ones
    removed (HD-4), ``Host`` replaced (HD-6, compared separately), framing headers
    and forwarding headers left out (compared separately); everything else in order."""
    kept = expected_after_hop_by_hop(header_list(sent))
    return [
        (n, v)
        for n, v in kept
        if n != "host" and n not in FRAMING_HEADERS and n not in FORWARDING_HEADERS
    ]


def received_at_origin(
    report_headers: Sequence[Sequence[str]], sent: Sequence[tuple[Any, Any]] | None = None
) -> list[tuple[str, str]]:
    """The origin's report minus what :func:`expected_at_origin` leaves out.

    With ``sent`` (the caller's headers): when the caller sent no ``X-Request-Id``,
    one ``X-Request-Id`` the server added (HD-5 allows it) is left out too, after
    checking its form (:func:`added_request_id_problem`); a caller's own stays in the
    comparison, so it must arrive unchanged and in place.
    """
    received = [
        (n, v)
        for n, v in header_list([(h[0], h[1]) for h in report_headers])
        if n != "host" and n not in FRAMING_HEADERS and n not in FORWARDING_HEADERS
    ]
    if sent is None or any(n == REQUEST_ID_HEADER for n, _ in header_list(sent)):
        return received
    added = [v for n, v in received if n == REQUEST_ID_HEADER]
    problem = added_request_id_problem(added)
    assert problem is None, problem
    return [(n, v) for n, v in received if n != REQUEST_ID_HEADER]


def added_request_id_problem(values: Sequence[str]) -> str | None:
    """Why the ``X-Request-Id`` values a server added to a request whose caller sent
    none break HD-5 (at most one, a token of printable ASCII without spaces, at most
    200 characters), or ``None``."""
    if len(values) > 1:
        return f"HD-5: the server added {len(values)} X-Request-Id headers, not at most one"
    for value in values:
        if not 1 <= len(value) <= 200 or not all("\x21" <= ch <= "\x7e" for ch in value):
            return f"HD-5: an added X-Request-Id must be 1-200 printable ASCII, got {value!r}"
    return None


def relayable_response_headers(pairs: Sequence[tuple[Any, Any]]) -> list[tuple[str, str]]:
    """Response headers a caller must get exactly as the local app sent them: all but
    hop-by-hop (HD-4), framing (HD-4) and per-server stamps (``Date``, ``Server``)."""
    kept = expected_after_hop_by_hop(header_list(pairs))
    return [(n, v) for n, v in kept if n not in FRAMING_HEADERS and n not in RELAY_STAMP_HEADERS]


def origin_events(origin_url: str, tag: str) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = httpx.get(f"{origin_url}/log", params={"tag": tag}).json()
    return events


def wait_for_origin_event(
    origin_url: str, tag: str, kind: str, timeout: float = 10.0
) -> dict[str, Any] | None:
    """Poll the origin's event log until an event of ``kind`` with ``tag`` appears."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for event in origin_events(origin_url, tag):
            if event.get("kind") == kind:
                return event
        time.sleep(0.05)
    return None


# ---------------------------------------------------------------------- reference clients

#: Reference clients opened by the running check with :func:`connect_reference`. The
#: plugin's ``reference_clients_closed`` fixture closes them after the check (a module
#: asks for it with ``pytestmark = pytest.mark.usefixtures("reference_clients_closed")``),
#: so a failing check cannot leak a socket into a later one (ResourceWarning is an
#: error). A module-level list rather than a fixture value, because hypothesis checks
#: cannot take function-scoped fixtures.
_REFERENCE_CLIENTS: list[ReferenceClient] = []


def new_connection_id(prefix: str = "ref") -> str:
    """A fresh connection id, ``<prefix>-`` and 10 hex digits: a shared server is fine."""
    return f"{prefix}-{secrets.token_hex(5)}"


async def connect_reference(
    server: ServerUnderTest, connection_id: str | None = None, **kw: Any
) -> ReferenceClient:
    """A reference client with a tunnel to ``server`` (:func:`connect_reference_client`)
    for ``connection_id`` (default: a fresh ``ref-`` id), with the server's token unless
    ``token`` is given (``None``: no token); ``kw`` goes to the connect function. It is
    closed after the check unless :func:`release_reference` takes it back."""
    peer = await connect_reference_client(
        server.ws_url(connection_id or new_connection_id()),
        kw.pop("token", server.token),
        ssl_context=server.ssl_context(),
        **kw,
    )
    _REFERENCE_CLIENTS.append(peer)
    return peer


def release_reference(peer: ReferenceClient) -> None:
    """Take ``peer`` off the list closed after the check: the caller closes it itself,
    e.g. in the event loop of one hypothesis example, which ends before the check."""
    _REFERENCE_CLIENTS.remove(peer)


async def close_reference_clients() -> None:
    """Close every reference client :func:`connect_reference` opened and nobody released."""
    while _REFERENCE_CLIENTS:
        await _REFERENCE_CLIENTS.pop().close()


# ---------------------------------------------------------------------- strategies

#: Methods every HTTP/1.1 parser knows, WebDAV and friends included.
KNOWN_METHODS = (
    "GET",
    "POST",
    "PUT",
    "PATCH",
    "DELETE",
    "OPTIONS",
    "TRACE",
    "PROPFIND",
    "PROPPATCH",
    "MKCOL",
    "COPY",
    "MOVE",
    "LOCK",
    "UNLOCK",
    "REPORT",
    "SEARCH",
    "MKCALENDAR",
    "PURGE",
)


def methods() -> st.SearchStrategy[str]:
    return st.sampled_from(KNOWN_METHODS)


def extension_methods() -> st.SearchStrategy[str]:
    """Method tokens no parser has a table entry for (RFC 9110 allows any token)."""
    return st.from_regex(r"X-[A-Z0-9!#$%&'*+.^_`|~-]{1,12}", fullmatch=True)


_UNRESERVED = st.from_regex(r"[A-Za-z0-9._~-]{1,8}", fullmatch=True)
_SUB_DELIMS = st.text(alphabet="!$&'()*+,;=:@", min_size=1, max_size=4)


@st.composite
def _percent_bytes(draw: st.DrawFn) -> str:
    data = draw(st.binary(min_size=1, max_size=4))
    upper = draw(st.booleans())
    return "".join(f"%{b:02X}" if upper else f"%{b:02x}" for b in data)


def _unicode_segment() -> st.SearchStrategy[str]:
    return st.text(min_size=1, max_size=4).map(lambda s: quote(s.encode("utf-8"), safe=""))


_SEGMENT = st.one_of(
    _UNRESERVED,
    _SUB_DELIMS,
    _percent_bytes(),
    _unicode_segment(),
    st.sampled_from([".", "..", ""]),
)


@st.composite
def paths(draw: st.DrawFn) -> str:
    """A raw path below ``/echo/``: percent-encoding of any byte (both hex cases),
    percent-encoded UTF-8, sub-delims, dot segments, empty segments, trailing slash."""
    segments = draw(st.lists(_SEGMENT, min_size=1, max_size=5))
    trailing = "/" if draw(st.booleans()) else ""
    return "/echo/" + "/".join(segments) + trailing


_QUERY_TEXT = st.one_of(
    st.from_regex(r"[A-Za-z0-9._~-]{0,5}", fullmatch=True),
    st.text(alphabet="!$'()*+,;:@/?", max_size=3),
    _percent_bytes(),
    _unicode_segment(),
)


@st.composite
def queries(draw: st.DrawFn) -> str:
    """A raw query string: duplicate keys, empty values, bare keys, order that matters."""
    keys = draw(st.lists(st.sampled_from(["a", "b", "x", "A"]) | _QUERY_TEXT, max_size=6))
    parts: list[str] = []
    for key in keys:
        form = draw(st.sampled_from(["kv", "k=", "k", "=v"]))
        value = draw(_QUERY_TEXT)
        parts.append({"kv": f"{key}={value}", "k=": f"{key}=", "k": key, "=v": f"={value}"}[form])
    return "&".join(parts)


_ASCII_CHARS = [chr(c) for c in range(0x21, 0x7F)]
_OBS_TEXT = [chr(c) for c in range(0x80, 0x100)]


@st.composite
def header_value(draw: st.DrawFn, obs_text: bool = True) -> str:
    """A legal field value (latin-1 string): visible ASCII, with ``obs_text`` also bytes
    0x80-0xFF, and inner spaces/tabs; no leading or trailing whitespace (parsers strip
    it, RFC 9110 5.5)."""
    alphabet = [*_ASCII_CHARS, " ", "\t", *(_OBS_TEXT if obs_text else [])]
    core = draw(st.text(alphabet=alphabet, max_size=24))
    if obs_text and not any(ch in _OBS_TEXT for ch in core):
        core += draw(st.sampled_from(_OBS_TEXT))
    return core.strip(" \t")


@st.composite
def request_headers(draw: st.DrawFn, obs_text: bool = False) -> list[tuple[str, str]]:
    """Extension headers with repeated names in mixed case (multi-valued fields); with
    ``obs_text`` every value has at least one byte 0x80-0xFF."""
    names = st.sampled_from(["X-PGC-A", "x-pgc-a", "X-Pgc-B", "x-pgc-c", "Accept", "Cookie"])
    size = (1, 8) if obs_text else (0, 8)
    return draw(
        st.lists(
            st.tuples(names, header_value(obs_text=obs_text)), min_size=size[0], max_size=size[1]
        )
    )
