"""What the server changes in a local app's response head, and why.

Pure functions, no I/O: the relay applies :func:`rewrite_response_headers` to the head
of every relayed HTTP response (a refused WebSocket upgrade's included) and to the
headers of a relayed WebSocket accept. ``prefix`` is the route's ``public_prefix``:
``/<id>`` in path routing, ``""`` in host routing. ``request_path`` is the path the
local app saw (``Route.local_path``).

The rules, for three header names (case-insensitive); every other header, and every
byte of these three that no rule names, passes unchanged:

``Location``
    An absolute path (``/sub/``: starts with ``/``, not ``//``) gets the prefix
    (``/<id>/sub/``), so a redirect stays inside the tunnel the browser is looking
    at. Absolute URLs, network-path references (``//host/x``) and relative
    references are left alone: the browser resolves a relative one against
    ``/<id>/...`` already. (The client has already turned a ``Location`` that is an
    absolute URL of the local app's own origin into an absolute path, so both
    compose.)
``Set-Cookie``
    Every ``Domain`` attribute is dropped, in both modes: in host routing a
    ``Domain=example.com`` set from ``alice.example.com`` would reach every tenant's
    host; without it the cookie is host-only. In path routing every ``Path``
    attribute gets the prefix (``Path=/`` → ``Path=/<id>/``, ``Path=/x`` →
    ``Path=/<id>/x``); a ``Path`` whose value does not start with ``/`` (which a
    browser replaces by the default path) and a cookie without ``Path`` get an
    explicit ``Path=<prefix><default-path>``, where the default path is RFC 6265
    §5.1.4's, computed from ``request_path``: the path the browser would have chosen
    itself (``/<id>/a`` for a cookie set by ``/<id>/a/b``), except that it never
    leaves the prefix — a browser computes ``/`` for a cookie set by a bare
    ``/<id>``, which would reach every tenant. A default path that could not be
    written as an attribute value (``;``, spaces, controls, non-ASCII) becomes
    ``/``. Attribute names are matched case-insensitively after trimming
    whitespace, as browsers do; the cookie pair, the other attributes and their
    order are kept byte for byte. Nothing is validated: a malformed cookie passes
    with only these changes, so no value can make this raise.
``Service-Worker-Allowed``
    In path routing, limited to the prefix: an absolute path becomes
    ``<prefix><path>``; anything else — an absolute URL, a relative reference, a
    value with a dot segment (``..``, ``%2e%2e``, or spelled with ``\\``, which a
    URL parser resolves and so could climb out of the prefix), a query or a
    fragment, or a character outside the URL path characters — becomes
    ``<prefix>/``. In host routing unchanged.

``Clear-Site-Data`` (path routing): dropped. Its scope is the whole origin — every
tenant's cookies, storage and caches — so in path routing one tenant could wipe all
the others'; in host routing the origin is the tenant's own and it passes unchanged.

Already prefixed values are kept (idempotence): ``Location: /<id>/x``, ``Path=/<id>``,
``Path=/<id>/x`` and ``Service-Worker-Allowed: /<id>/x`` are not prefixed twice. The
server sends ``X-Forwarded-Prefix: /<id>`` (HD-5), and an app that honours it
(Werkzeug's ``ProxyFix``, Spring's ``ForwardedHeaderFilter``) already builds
``/<id>/...``; prefixing again would break exactly the apps that did the right thing.
The cost is an app with its own top-level path named like its tunnel id, whose
redirect to it is not prefixed. ``Service-Worker-Allowed: /<id>`` without the slash
still becomes ``/<id>/``: a service worker's scope matches by plain string prefix,
and ``/<id>`` would cover ``/<id>x/``, another tenant.

Why the server enforces this rather than trusting the client: in path routing all
tunnels share one origin, so a cookie's ``Path`` and a service worker's scope are the
only boundary between tenants in a browser (in host routing, the hostname is, and a
``Domain`` attribute is the way across it). A client is run by a tenant, and a
malicious one would simply not apply the rules; the server is the one party every
tenant's response passes through. The ``Location`` rule is not a boundary (a tenant
can redirect anywhere with an absolute URL) but belongs with the others because it
is what keeps a path-mode app usable.

Cost: only headers of the three lengths (8, 10, 22) are lowered and compared; the
head's list is returned as it is when nothing changed. Best of 25 runs of 20 000 on a
shared core, CPython 3.11, by ``uv run python
packages/pipegate-server/tests/test_server_rewrite.py``, for a 10-header response
head in path routing (``/node``): without ``Set-Cookie`` +0.5 to +0.7 µs, with one
``Set-Cookie`` (``sid=abc123; Path=/; HttpOnly; SameSite=Lax``, no ``Location``) +1.9
to +2.1 µs, over about 3.0 µs for building ``out_headers`` as before (two runs) — well
under 1 % of the Python a relayed request runs on the server. Splitting the cookie's
attributes is most of the second figure; it is paid only by responses that set one.
"""

from __future__ import annotations

__all__ = [
    "default_path",
    "rewrite_location",
    "rewrite_response_headers",
    "rewrite_service_worker_allowed",
    "rewrite_set_cookie",
]

#: Lengths of the four header names with a rule, checked before lowering a name.
_LENGTHS = frozenset({8, 10, 15, 22})
#: Characters a Service-Worker-Allowed path may keep (RFC 3986 pchar and "/").
_PATH_CHARS = frozenset(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~!$&'()*+,;=:@%/"
)


def rewrite_response_headers(
    headers: list[tuple[str, str]], prefix: str, request_path: str
) -> list[tuple[str, str]]:
    """``headers`` with the rules of the module docstring applied, order and name
    spelling kept. Returns ``headers`` itself when no rule changed anything (it is
    never modified); otherwise a new list."""
    out: list[tuple[str, str]] | None = None
    dropped = False
    for index, (name, value) in enumerate(headers):
        if len(name) not in _LENGTHS:
            continue
        lowered = name.lower()
        if lowered == "set-cookie":
            new = rewrite_set_cookie(value, prefix, request_path)
        elif not prefix:
            continue
        elif lowered == "location":
            new = rewrite_location(value, prefix)
        elif lowered == "service-worker-allowed":
            new = rewrite_service_worker_allowed(value, prefix)
        elif lowered == "clear-site-data":
            if out is None:
                out = list(headers)
            out[index] = ("", "")
            dropped = True
            continue
        else:
            continue
        if new is not value:
            if out is None:
                out = list(headers)
            out[index] = (name, new)
    if out is None:
        return headers
    return [pair for pair in out if pair[0]] if dropped else out


def _under(value: str, prefix: str) -> bool:
    """``value`` is ``prefix`` itself or below it (``/`` next)."""
    return value.startswith(prefix) and (len(value) == len(prefix) or value[len(prefix)] == "/")


def rewrite_location(value: str, prefix: str) -> str:
    """The ``Location`` rule: an absolute path gets ``prefix`` (unless already below
    it, or followed by its query or fragment); anything else is returned as it is."""
    if not prefix or not value.startswith("/") or value.startswith("//"):
        return value
    if value.startswith(prefix):
        rest = value[len(prefix) : len(prefix) + 1]
        if rest in ("", "/", "?", "#"):
            return value
    return prefix + value


def default_path(request_path: str) -> str:
    """RFC 6265 §5.1.4's default-path of ``request_path``, or ``/`` when it could not
    be written as a cookie attribute value."""
    cut = request_path.rfind("/")
    if cut <= 0 or request_path[0] != "/":
        return "/"
    path = request_path[:cut]
    if not (path.isascii() and path.isprintable()) or ";" in path or " " in path:
        return "/"
    return path


def rewrite_set_cookie(value: str, prefix: str, request_path: str = "/") -> str:
    """The ``Set-Cookie`` rule: drop every ``Domain`` attribute; with a ``prefix``,
    confine every ``Path`` to it and add one when there is none (see the module
    docstring). Never raises."""
    if ";" not in value:
        if prefix:
            return f"{value}; Path={prefix}{default_path(request_path)}"
        return value
    parts = value.split(";")
    kept = [parts[0]]
    changed = False
    has_path = False
    for part in parts[1:]:
        name, _, attribute = part.partition("=")
        key = name.strip().lower()
        if key == "domain":
            changed = True
            continue
        if key == "path" and prefix:
            has_path = True
            path = attribute.strip()
            if not path.startswith("/"):
                part = f"{name}={prefix}{default_path(request_path)}"
                changed = True
            elif not _under(path, prefix):
                part = f"{name}={prefix}{path}"
                changed = True
        kept.append(part)
    if prefix and not has_path:
        kept.append(f" Path={prefix}{default_path(request_path)}")
        changed = True
    return ";".join(kept) if changed else value


def rewrite_service_worker_allowed(value: str, prefix: str) -> str:
    """The ``Service-Worker-Allowed`` rule: in path routing the largest scope allowed
    is below ``prefix + "/"`` (see the module docstring); in host routing unchanged."""
    if not prefix:
        return value
    path = value.strip(" \t")
    if not path.startswith("/") or path.startswith("//") or not _PATH_CHARS.issuperset(path):
        return prefix + "/"
    for segment in path.lower().replace("%2e", ".").split("/"):
        if segment in (".", ".."):
            return prefix + "/"
    if path.startswith(prefix + "/"):
        return value
    if path == prefix:
        return prefix + "/"
    return prefix + path
