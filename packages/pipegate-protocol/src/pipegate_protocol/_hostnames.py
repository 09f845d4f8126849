"""Hostnames: how ids become DNS labels and how a client asks for its own names
(rules RT-2 to RT-5 of ``docs/protocol.md``).

Pure functions, shared by servers and clients so both normalise the same way:

* a **hostname** is compared in its normal form — ASCII, lower case, without the one
  trailing dot DNS allows (``API.Example.com.`` is ``api.example.com``); each label is
  1-63 letters, digits or hyphens, not starting or ending with a hyphen, and the whole
  name at most 253 characters (RFC 1123). Internationalised names travel in their
  ``xn--`` form, which is plain ASCII and passes unchanged.
* a connection id can be a hostname label only if it is a DNS label
  (:func:`is_dns_label`): ``node-1`` can, ``my_app`` (underscore) and ``-x`` cannot.
  Its label is the id in lower case (:func:`label_for`), so in host routing ``Node``
  and ``node`` are the same name.
* a grant in a tokens file is an exact hostname or ``*.<domain>``, which matches any
  name of exactly one more label (as a TLS wildcard certificate does).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

__all__ = [
    "CAPABILITY_ACCESS",
    "CAPABILITY_HOSTNAMES",
    "HOSTNAME_HEADER",
    "MAX_REQUESTED_HOSTNAMES",
    "host_of_authority",
    "hostname_matches",
    "is_dns_label",
    "label_for",
    "normalize_hostname",
    "normalize_hostnames",
    "requested_hostnames",
]

#: The upgrade-request header in which a client asks for hostnames (RT-4); repeatable,
#: and each value may list several names separated by commas.
HOSTNAME_HEADER = "pipegate-hostname"
#: The capability a server lists in its hello when it routes by hostname and honours
#: :data:`HOSTNAME_HEADER` (RT-4, HS-11).
CAPABILITY_HOSTNAMES = "hostnames"
#: The capability a server lists in its hello when it enforces the visitor rules of
#: the client's hello (AC-1).
CAPABILITY_ACCESS = "access"
#: At most this many hostnames in one upgrade request (RT-4).
MAX_REQUESTED_HOSTNAMES = 8

_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\Z")


def is_dns_label(value: str) -> bool:
    """True when ``value`` (any case) can be one label of a hostname (RT-3)."""
    return value.isascii() and _LABEL.match(value.lower()) is not None


def label_for(connection_id: str) -> str:
    """The hostname label of a connection id: the id in lower case (RT-3)."""
    return connection_id.lower()


def normalize_hostname(value: str) -> str | None:
    """``value`` in normal form (lower case, no trailing dot), or ``None`` when it is
    not a valid hostname (RT-2)."""
    if not value.isascii():
        return None
    name = value.strip().lower()
    if name.endswith("."):
        name = name[:-1]
    if not name or len(name) > 253:
        return None
    for label in name.split("."):
        if _LABEL.match(label) is None:
            return None
    return name


def host_of_authority(authority: str) -> str | None:
    """The normalised host of a ``Host`` header value (port removed), or ``None`` for
    an IP literal or a value that is not a hostname.

    IP addresses never name a tunnel, so ``127.0.0.1:8000`` and ``[::1]`` give ``None``.
    """
    if not authority or authority.startswith("["):
        return None
    host, _, port = authority.rpartition(":")
    if not host or not port.isdigit():
        host = authority
    name = normalize_hostname(host)
    if name is None or name.replace(".", "").isdigit():
        return None
    return name


def hostname_matches(pattern: str, hostname: str) -> bool:
    """True when a granted ``pattern`` (an exact hostname or ``*.<domain>``) covers
    ``hostname`` (both in normal form). A wildcard stands for exactly one label."""
    if pattern.startswith("*."):
        head, dot, rest = hostname.partition(".")
        return bool(head) and bool(dot) and rest == pattern[2:]
    return pattern == hostname


def normalize_hostnames(values: Iterable[str]) -> list[str]:
    """``values`` in normal form, duplicates removed, in order of first appearance;
    raises :class:`ValueError` naming the first that is not a valid hostname."""
    names: list[str] = []
    for value in values:
        normal = normalize_hostname(value)
        if normal is None:
            raise ValueError(f"{value.strip()[:80]!r} is not a valid hostname")
        if normal not in names:
            names.append(normal)
    return names


def requested_hostnames(headers: Iterable[tuple[str, str]]) -> list[str]:
    """The hostnames an upgrade request asks for (RT-4), normalised, duplicates removed,
    in order of first appearance.

    Raises :class:`ValueError` with a one-line reason for a name that is not a valid
    hostname or when more than :data:`MAX_REQUESTED_HOSTNAMES` are asked for.
    """
    names = normalize_hostnames(
        item
        for name, value in headers
        if name.lower() == HOSTNAME_HEADER
        for item in value.split(",")
        if item.strip()
    )
    if len(names) > MAX_REQUESTED_HOSTNAMES:
        raise ValueError(f"at most {MAX_REQUESTED_HOSTNAMES} hostnames per tunnel")
    return names
