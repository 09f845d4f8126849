"""The client's config file: one server, one token source, several tunnels (issue 14).

``pipegate-client --config pipegate.toml`` (or ``$PIPEGATE_CONFIG``)::

    server_url = "wss://tunnel.example.com"   # the tunnels' ids are appended to it
    token_env = "PIPEGATE_CLIENT_TOKEN"       # or token_file = "...", or token = "${VAR}"
    inspect = "127.0.0.1:4040"                # or false; optional

    [[tunnels]]
    id = "web"
    local_url = "http://localhost:5173"
    hostnames = ["app.example.com"]           # optional (RT-4)
    host_header = "preserve"                  # optional: rewrite (default) or preserve

    [[tunnels]]
    id = "api"
    local_url = "http://localhost:8000"

Every string may use ``${VAR}`` (environment variables; a missing one is an error that
names it). The token is never required in the file: it comes from ``token_env``, from
``token_file`` or from a ``token = "${VAR}"`` interpolation, and a literal token in the
file is refused (it would end up in version control). Every mistake is a
:class:`~pipegate_client.errors.ConfigurationError` whose message starts with the file
and the key that is wrong (``pipegate.toml: tunnels[2].local_url: ...``), never a
traceback. :func:`describe` is what ``--check`` prints: what would be exposed, with the
token's source but never the token.

``inspect`` is the address of the one request inspector of the process: every tunnel
of the file is recorded by it (one page, one list with each exchange's tunnel, one
memory bound for all), and a replay goes to the local app of its own tunnel.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from pipegate_protocol import is_valid_connection_id

from ._settings import ClientSettings, hash_password, shown_url
from .errors import ConfigurationError

__all__ = ["ClientConfig", "describe", "load_config"]

_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_TOP_KEYS = {"server_url", "token_env", "token_file", "token", "inspect", "ca_file", "tunnels"}
_TUNNEL_KEYS = {"id", "local_url", "hostnames", "host_header", "max_concurrency", "access"}
_ACCESS_KEYS = {"users", "passwords", "allow", "deny"}


@dataclass(frozen=True)
class ClientConfig:
    """A loaded config file: one :class:`ClientSettings` per tunnel, in file order."""

    path: Path
    tunnels: tuple[ClientSettings, ...]
    #: Where the token came from, for ``--check`` ("$PIPEGATE_CLIENT_TOKEN", a path).
    token_source: str
    #: The inspector's address, ``None`` for none (one inspector shared by every
    #: tunnel: ``cli._serve_config`` starts it and hands it to each client).
    inspect: str | None


class _Reader:
    """Reads keys of one table, with the file and key path in every error."""

    def __init__(self, path: Path, where: str, table: Mapping[str, Any]) -> None:
        self.path = path
        self.where = where
        self.table = table

    def error(self, key: str, message: str) -> ConfigurationError:
        at = f"{self.where}.{key}" if self.where else key
        return ConfigurationError(f"{self.path.name}: {at}: {message}")

    def string(self, key: str, *, required: bool = False, default: str | None = None) -> str | None:
        if key not in self.table:
            if required:
                raise self.error(key, "missing (a string is required)")
            return default
        value = self.table[key]
        if not isinstance(value, str):
            raise self.error(key, f"must be a string, not {type(value).__name__}")
        return self.interpolate(key, value)

    def interpolate(self, key: str, value: str) -> str:
        def substitute(match: re.Match[str]) -> str:
            name = match.group(1)
            if name not in os.environ:
                raise self.error(key, f"the environment variable {name} is not set")
            return os.environ[name]

        return _VARIABLE.sub(substitute, value)

    def unknown(self, allowed: set[str]) -> None:
        extra = sorted(set(self.table) - allowed)
        if extra:
            raise self.error(
                extra[0], f"unknown key (expected one of: {', '.join(sorted(allowed))})"
            )


def load_config(path: str | Path, *, fast_path: bool = True) -> ClientConfig:
    """Load and validate a config file; raises :class:`ConfigurationError`."""
    path = Path(path)
    try:
        with path.open("rb") as handle:
            document = tomllib.load(handle)
    except OSError as exc:
        raise ConfigurationError(f"--config {str(path)!r}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigurationError(f"{path.name}: not valid TOML: {exc}") from None
    top = _Reader(path, "", document)
    top.unknown(_TOP_KEYS)
    server_url = top.string("server_url", required=True)
    assert server_url is not None
    parts = urlsplit(server_url)
    if parts.scheme not in ("ws", "wss") or not parts.netloc:
        raise top.error("server_url", f"must be a ws:// or wss:// URL, got {server_url!r}")
    token, token_source = _token(top)
    inspect = _inspect(top)
    ca_file = top.string("ca_file")
    tunnels_value = document.get("tunnels")
    if not isinstance(tunnels_value, list) or not tunnels_value:
        raise top.error("tunnels", "at least one [[tunnels]] table is required")
    tunnels: list[ClientSettings] = []
    seen: set[str] = set()
    for index, table in enumerate(tunnels_value, start=1):
        where = f"tunnels[{index}]"
        if not isinstance(table, Mapping):
            raise ConfigurationError(f"{path.name}: {where}: must be a table")
        reader = _Reader(path, where, table)
        reader.unknown(_TUNNEL_KEYS)
        settings = _tunnel(reader, parts, token, ca_file, inspect, fast_path)
        if settings.connection_id in seen:
            raise reader.error("id", f"{settings.connection_id!r} is used by two tunnels")
        seen.add(settings.connection_id)
        tunnels.append(settings)
    return ClientConfig(path, tuple(tunnels), token_source, inspect)


def _token(top: _Reader) -> tuple[str, str]:
    given = [key for key in ("token_env", "token_file", "token") if key in top.table]
    if len(given) != 1:
        raise top.error(
            "token_env",
            'give exactly one of token_env, token_file, token = "${VAR}" '
            f"(found {', '.join(given) or 'none'})",
        )
    key = given[0]
    if key == "token_env":
        name = top.string("token_env") or ""
        token = os.environ.get(name, "").strip()
        if not token:
            raise top.error("token_env", f"the environment variable {name} is not set or empty")
        return token, f"${name}"
    if key == "token_file":
        file = Path(top.string("token_file") or "").expanduser()
        if not file.is_absolute():
            file = top.path.parent / file
        try:
            token = file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise top.error("token_file", f"cannot read {str(file)!r}: {exc.strerror}") from None
        if not token:
            raise top.error("token_file", f"{str(file)!r} is empty")
        return token, str(file)
    raw = top.table["token"]
    if not isinstance(raw, str) or not _VARIABLE.fullmatch(raw.strip()):
        raise top.error(
            "token",
            "a token written in the file is refused (it would end up in version control): "
            'use token_env, token_file or token = "${VAR}"',
        )
    token = (top.string("token") or "").strip()
    if not token:
        raise top.error("token", f"{raw.strip()} is empty")
    return token, raw.strip()


def _inspect(top: _Reader) -> str | None:
    if "inspect" not in top.table:
        return "127.0.0.1:4040"
    value = top.table["inspect"]
    if value is False:
        return None
    if not isinstance(value, str):
        raise top.error("inspect", 'must be an address ("127.0.0.1:4040") or false')
    return top.interpolate("inspect", value)


def _tunnel(
    reader: _Reader,
    server: Any,
    token: str,
    ca_file: str | None,
    inspect: str | None,
    fast_path: bool,
) -> ClientSettings:
    connection_id = reader.string("id", required=True)
    assert connection_id is not None
    if not is_valid_connection_id(connection_id):
        raise reader.error(
            "id", f"{connection_id!r} is not a connection id (1-64 of A-Z a-z 0-9 _ -)"
        )
    local_url = reader.string("local_url", required=True)
    hostnames_value = reader.table.get("hostnames", [])
    if not isinstance(hostnames_value, list) or not all(
        isinstance(h, str) for h in hostnames_value
    ):
        raise reader.error("hostnames", "must be a list of hostnames")
    hostnames = tuple(reader.interpolate("hostnames", h) for h in hostnames_value)
    host_header = reader.string("host_header", default="rewrite")
    if host_header not in ("rewrite", "preserve"):
        raise reader.error("host_header", f"must be rewrite or preserve, not {host_header!r}")
    concurrency = reader.table.get("max_concurrency", 128)
    if isinstance(concurrency, bool) or not isinstance(concurrency, int):
        raise reader.error("max_concurrency", "must be an integer")
    users, allow, deny = _access(reader)
    server_url = urlunsplit(
        (server.scheme, server.netloc, f"{server.path.rstrip('/')}/{connection_id}", "", "")
    )
    try:
        return ClientSettings(
            server_url=server_url,
            client_token=token,
            local_url=local_url or "",
            ca_file=ca_file,
            max_concurrency=concurrency,
            hostnames=hostnames,
            preserve_host=host_header == "preserve",
            access_users=users,
            access_allow=allow,
            access_deny=deny,
            fast_path=fast_path,
            inspect=inspect,
            inspect_optional=True,
        )
    except ConfigurationError as exc:
        # The settings speak in flags ("--local-url ..."); say which tunnel it was.
        raise ConfigurationError(f"{reader.path.name}: {reader.where}: {exc}") from None


def _access(
    tunnel: _Reader,
) -> tuple[tuple[tuple[str, str], ...], tuple[str, ...], tuple[str, ...]]:
    """``[tunnels.access]``: ``users`` (name = bcrypt hash), ``passwords`` (name =
    password, usually ``${VAR}``, hashed here: it never leaves the machine), ``allow``
    and ``deny`` (CIDR networks)."""
    table = tunnel.table.get("access")
    if table is None:
        return (), (), ()
    if not isinstance(table, Mapping):
        raise tunnel.error("access", "must be a table")
    reader = _Reader(tunnel.path, f"{tunnel.where}.access", table)
    reader.unknown(_ACCESS_KEYS)
    users: list[tuple[str, str]] = []
    for key in ("users", "passwords"):
        value = table.get(key, {})
        if not isinstance(value, Mapping) or not all(isinstance(v, str) for v in value.values()):
            raise reader.error(key, "must be a table of user = string")
        for name, text in value.items():
            secret = reader.interpolate(f"{key}.{name}", text)
            users.append((name, secret if key == "users" else hash_password(secret)))
    networks: list[tuple[str, ...]] = []
    for key in ("allow", "deny"):
        value = table.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise reader.error(key, "must be a list of addresses or CIDR networks")
        networks.append(tuple(value))
    return tuple(users), networks[0], networks[1]


def describe(config: ClientConfig) -> str:
    """What ``--check`` prints: each tunnel and what it would expose; the token's
    source, never the token."""
    lines = [
        f"{config.path}: {len(config.tunnels)} tunnel(s), token from {config.token_source}",
        f"inspector: {config.inspect or 'off'}",
    ]
    for settings in config.tunnels:
        lines.append(
            f"- {settings.connection_id}: {settings.server_url} -> {shown_url(settings.local_url)}"
        )
        if settings.hostnames:
            lines.append(f"    hostnames: {', '.join(settings.hostnames)}")
        if settings.preserve_host:
            lines.append("    host header: preserve (the public host)")
        if settings.access_users:
            names = ", ".join(name for name, _ in settings.access_users)
            lines.append(f"    basic auth: {names} (hashed; passwords never sent)")
        if settings.access_allow:
            lines.append(f"    allow: {', '.join(settings.access_allow)}")
        if settings.access_deny:
            lines.append(f"    deny: {', '.join(settings.access_deny)}")
    return "\n".join(lines)
