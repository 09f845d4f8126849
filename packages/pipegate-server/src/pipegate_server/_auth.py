"""Who may claim which connection id: the shared token and the tokens file.

The tokens file is TOML::

    [[tokens]]
    name = "alice"              # shown in logs instead of the token (optional)
    token = "long-random-secret"
    ids = ["alice", "dev-*"]    # exact ids or fnmatch patterns (* ? [..])
    max_tunnels = 4             # optional; default --max-tunnels-per-token
    hostnames = ["api.example.com", "*.alice.example.com"]   # optional (RT-4)

``access`` (optional) sets visitor rules for every tunnel of that token, enforced
before any byte crosses the tunnel (see ``_access``)::

    [tokens.access]
    users = { admin = "$2b$12$..." }      # HTTP basic auth, bcrypt hashes only
    allow = ["192.0.2.0/24", "::1"]        # only these networks (optional)
    deny = ["192.0.2.66"]                  # never these (optional)

``hostnames`` grants custom hostnames a client may ask for with ``--hostname``: an
exact hostname, or ``*.<domain>`` for any name of exactly one more label. The shared
token (``--client-token``) holds no hostname grants.

Tokens are compared in constant time: the presented token is hashed and its digest
compared with :func:`hmac.compare_digest` against *every* known digest, so the time
taken does not depend on which token (if any) matched or on how much of it did.
Tokens are never logged; credentials are named by ``name`` or by their position in
the file.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import time
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path

from pipegate_protocol import hostname_matches, normalize_hostname

from ._access import AccessConfigError, AccessRules, parse_access_rules
from .errors import TokensFileError, TooManyFailuresError

__all__ = ["Authenticator", "Credential", "FailureTracker", "load_tokens_file"]


@dataclass(frozen=True, slots=True)
class Credential:
    """A token's rights; ``patterns`` is ``None`` for the shared token (any id)."""

    label: str
    digest: bytes
    patterns: tuple[str, ...] | None = None
    max_tunnels: int | None = None
    #: Hostname grants in normal form: exact names or ``*.<domain>`` (RT-4).
    hostnames: tuple[str, ...] = ()
    #: The operator's visitor rules for this token's tunnels (empty: none).
    access: AccessRules = field(default_factory=AccessRules)

    def allows(self, connection_id: str) -> bool:
        if self.patterns is None:
            return True
        return any(fnmatchcase(connection_id, pattern) for pattern in self.patterns)

    def allows_hostname(self, hostname: str) -> bool:
        """True when a grant covers ``hostname`` (normal form)."""
        return any(hostname_matches(grant, hostname) for grant in self.hostnames)


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", errors="surrogatepass")).digest()


def load_tokens_file(path: Path) -> list[Credential]:
    """Parse a tokens file; raises :class:`TokensFileError` with a readable message."""
    try:
        with path.open("rb") as handle:
            document = tomllib.load(handle)
    except OSError as exc:
        raise TokensFileError(f"cannot read tokens file {str(path)!r}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise TokensFileError(f"tokens file {str(path)!r} is not valid TOML: {exc}") from None
    entries = document.get("tokens", [])
    if not isinstance(entries, list):
        raise TokensFileError(f"tokens file {str(path)!r}: 'tokens' must be an array of tables")
    credentials: list[Credential] = []
    seen: set[bytes] = set()
    for index, entry in enumerate(entries, start=1):
        credentials.append(_credential(path, index, entry, seen))
    return credentials


def _credential(path: Path, index: int, entry: object, seen: set[bytes]) -> Credential:
    where = f"tokens file {str(path)!r}, entry {index}"
    if not isinstance(entry, Mapping):
        raise TokensFileError(f"{where}: must be a table")
    token = entry.get("token")
    if not isinstance(token, str) or not token.strip():
        raise TokensFileError(f"{where}: 'token' must be a non-empty string")
    ids = entry.get("ids")
    if not isinstance(ids, list) or not ids or not all(isinstance(i, str) and i for i in ids):
        raise TokensFileError(f"{where}: 'ids' must be a non-empty list of id patterns")
    name = entry.get("name", f"tokens-file entry {index}")
    if not isinstance(name, str):
        raise TokensFileError(f"{where}: 'name' must be a string")
    max_tunnels = entry.get("max_tunnels")
    if max_tunnels is not None and (not isinstance(max_tunnels, int) or max_tunnels < 0):
        raise TokensFileError(f"{where}: 'max_tunnels' must be a non-negative integer")
    hostnames = entry.get("hostnames", [])
    if not isinstance(hostnames, list) or not all(isinstance(h, str) for h in hostnames):
        raise TokensFileError(f"{where}: 'hostnames' must be a list of hostnames")
    grants: list[str] = []
    for grant in hostnames:
        wildcard = grant.startswith("*.")
        normal = normalize_hostname(grant[2:] if wildcard else grant)
        if normal is None:
            raise TokensFileError(
                f"{where}: {grant!r} in 'hostnames' is not a hostname or '*.<domain>'"
            )
        grants.append(f"*.{normal}" if wildcard else normal)
    access = AccessRules()
    if "access" in entry:
        try:
            access = parse_access_rules(entry["access"], f"tokens file entry {name!r}")
        except AccessConfigError as exc:
            raise TokensFileError(f"{where}: {exc}") from None
    digest = _digest(token.strip())
    if digest in seen:
        raise TokensFileError(f"{where}: the same token appears twice")
    seen.add(digest)
    return Credential(
        label=name,
        digest=digest,
        patterns=tuple(ids),
        max_tunnels=max_tunnels,
        hostnames=tuple(grants),
        access=access,
    )


class Authenticator:
    """Maps a presented token to its :class:`Credential`, in constant time."""

    def __init__(self, shared_token: str | None, file_credentials: list[Credential]) -> None:
        self.replace(shared_token, file_credentials)

    def replace(self, shared_token: str | None, file_credentials: list[Credential]) -> None:
        """Swap in new credentials (SIGHUP reload); tunnels are re-checked by the caller."""
        credentials = list(file_credentials)
        if shared_token:
            credentials.insert(0, Credential(label="shared token", digest=_digest(shared_token)))
        self._credentials = tuple(credentials)

    def authenticate(self, token: str) -> Credential | None:
        """The credential for ``token``, or ``None``; compares against every digest."""
        presented = _digest(token)
        found: Credential | None = None
        for credential in self._credentials:
            if hmac.compare_digest(presented, credential.digest) and found is None:
                found = credential
        return found

    def current(self, digest: bytes) -> Credential | None:
        """The credential with this digest after a reload, or ``None`` if it was removed."""
        found: Credential | None = None
        for credential in self._credentials:
            if hmac.compare_digest(digest, credential.digest) and found is None:
                found = credential
        return found


class FailureTracker:
    """Counts failed token attempts per address and says how long to delay a refusal.

    Up to ``budget`` failures per ``window`` seconds cost nothing; each further one
    delays the refusal by a growing amount (capped at ``max_delay``). Only refusals
    are delayed: a good token from the same address is never slowed down.

    The address is the socket peer, or the caller a trusted proxy reported (the
    scope's ``client`` after the proxy-header middleware). Because the delay is a wait,
    at most ``max_concurrent`` (0: no cap; the server uses
    ``ServerSettings.max_failing_handshakes``) delayed refusals per address wait at once (each waits
    the delay this tracker handed out, so it knows when each ends); beyond that
    :meth:`record_failure` raises :class:`TooManyFailuresError` and the handshake is
    refused at once with 429, so parallel tries gain nothing and cost nothing.
    """

    def __init__(
        self,
        budget: int,
        *,
        window: float = 60.0,
        max_delay: float = 5.0,
        max_entries: int = 10000,
        max_concurrent: int = 0,
    ) -> None:
        self.budget = budget
        self.window = window
        self.max_delay = max_delay
        self.max_entries = max_entries
        self.max_concurrent = max_concurrent
        self._failures: dict[str, tuple[float, int]] = {}
        #: When each delayed refusal handed out per address ends.
        self._waiting: dict[str, list[float]] = {}

    def record_failure(self, address: str) -> float:
        """Record one failure; returns the delay in seconds to apply to the refusal.

        Raises :class:`TooManyFailuresError` when ``max_concurrent`` delayed refusals
        of this address are still waiting.
        """
        now = time.monotonic()
        start, count = self._failures.get(address, (now, 0))
        if now - start > self.window:
            start, count = now, 0
        count += 1
        if len(self._failures) >= self.max_entries and address not in self._failures:
            self._prune(now)
        self._failures[address] = (start, count)
        excess = count - self.budget
        if excess <= 0:
            return 0.0
        delay = min(self.max_delay, 0.25 * excess)
        waiting = [end for end in self._waiting.get(address, ()) if end > now]
        if self.max_concurrent and len(waiting) >= self.max_concurrent:
            self._waiting[address] = waiting
            raise TooManyFailuresError(
                "too many failing handshakes from this address at once",
                retry_after=max(1, math.ceil(min(waiting) - now)),
            )
        waiting.append(now + delay)
        self._waiting[address] = waiting
        return delay

    def _prune(self, now: float) -> None:
        stale = [a for a, (start, _) in self._failures.items() if now - start > self.window]
        for address in stale:
            del self._failures[address]
            self._waiting.pop(address, None)
        if len(self._failures) >= self.max_entries:
            self._failures.clear()
            self._waiting.clear()
