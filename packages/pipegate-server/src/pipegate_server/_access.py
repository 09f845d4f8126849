"""Visitor access control: who may reach a tunnel, decided on the server before any
byte crosses it (issue 14).

A tunnel carries zero or more :class:`AccessRules` — today the operator's, from the
tokens file entry of the token that opened it (``[tokens.access]``). A visitor must
pass **every** set (the stricter wins):

* ``deny`` — networks (CIDR, IPv4 and IPv6) refused with **403**;
* ``allow`` — when present, only these networks are admitted (others **403**);
* ``users`` — HTTP basic auth: user names and **bcrypt** hashes of their passwords
  (``$2b$12$...``; never a password in clear). A visitor without valid credentials gets
  **401** with ``WWW-Authenticate: Basic``. When two sets both list users, one
  credential must be valid in both.

The address is the socket peer, or the caller a trusted proxy reported
(``--forwarded-allow-ips``, issue 7); an IPv4-mapped IPv6 address counts as its IPv4
address. Network rules are checked first, so a refused network never costs a hash.

bcrypt is slow on purpose, which makes a password check an attack on the server's
CPU. :class:`AccessChecker` bounds it: hashes run in a worker thread, one at a time
(``max_hashing``; a visitor finding it busy with ``max_waiting`` others queued gets
**429**), a credential that verified once is remembered (a bounded cache of SHA-256
digests of user, password and hash: ``cache_size`` entries), an unknown user costs the
same hash as a known one (no user enumeration by timing), and an address with more
than ``failure_budget`` failed logins in a minute gets **429** without any hashing
(at most ``max_addresses`` addresses are tracked). So an attacker without a password
can keep at most one core busy, and loses even that once over its budget.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import enum
import hashlib
import ipaddress
import re
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import bcrypt
from pipegate_protocol import AccessPolicy

__all__ = [
    "AccessChecker",
    "AccessConfigError",
    "AccessRules",
    "Admission",
    "Verdict",
    "parse_access_rules",
    "rules_from_policy",
]

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address

#: A bcrypt hash as bcrypt writes it: ``$2a$``/``$2b$``/``$2y$``, a two-digit cost,
#: 53 characters of bcrypt's base64.
_BCRYPT = re.compile(r"\$2[aby]\$(\d\d)\$[./A-Za-z0-9]{53}\Z")
#: Highest bcrypt cost accepted in rules: cost 15 is ~8x the work of 12 per check.
MAX_BCRYPT_COST = 14
#: The hash an unknown user's password is checked against (cost 12, as typical ones).
_DUMMY_HASH = b"$2b$12$8.n9JSDQDTeE/OC2JlgHHeTiKA.XUihHGwyZQimQPnZByebiUVt7m"


class AccessConfigError(ValueError):
    """Rules that cannot work; the message names the key that is wrong."""


@dataclass(frozen=True, slots=True)
class AccessRules:
    """One set of visitor rules; see the module docstring."""

    users: Mapping[str, bytes] = field(default_factory=dict)
    allow: tuple[Network, ...] = ()
    deny: tuple[Network, ...] = ()
    #: Where the rules come from, for logs ("tokens file entry alice").
    source: str = ""

    def __bool__(self) -> bool:
        return bool(self.users or self.allow or self.deny)

    def admits_network(self, address: Address | None) -> bool:
        if address is None:
            # No address known (a unix socket): only rules without networks pass.
            return not self.allow and not self.deny
        if any(address in network for network in self.deny):
            return False
        return not self.allow or any(address in network for network in self.allow)


def parse_access_rules(value: object, where: str) -> AccessRules:
    """Rules from a TOML table ``{users = {name = hash}, allow = [...], deny = [...]}``;
    raises :class:`AccessConfigError` naming ``where`` and the wrong key."""
    if not isinstance(value, Mapping):
        raise AccessConfigError(f"{where}: 'access' must be a table")
    unknown = set(value) - {"users", "allow", "deny"}
    if unknown:
        raise AccessConfigError(
            f"{where}: unknown key(s) in 'access': {', '.join(sorted(unknown))} "
            "(expected users, allow, deny)"
        )
    users_value = value.get("users", {})
    if not isinstance(users_value, Mapping):
        raise AccessConfigError(f"{where}: 'access.users' must be a table of name = hash")
    users: dict[str, bytes] = {}
    for name, hashed in users_value.items():
        if not isinstance(name, str) or not name or ":" in name:
            raise AccessConfigError(
                f"{where}: access.users: {name!r} is not a user name (non-empty, no ':')"
            )
        users[name] = _checked_hash(hashed, f"{where}: access.users.{name}")
    return AccessRules(
        users=users,
        allow=_networks(value.get("allow", []), f"{where}: access.allow"),
        deny=_networks(value.get("deny", []), f"{where}: access.deny"),
        source=where,
    )


def rules_from_policy(policy: AccessPolicy, where: str) -> AccessRules:
    """The rules a client declared in its hello (AC-1); raises
    :class:`AccessConfigError` for a network that does not parse."""
    return AccessRules(
        users={
            name: _checked_hash(hashed, f"{where}: users.{name}")
            for name, hashed in policy.users.items()
        },
        allow=_networks(list(policy.allow), f"{where}: allow"),
        deny=_networks(list(policy.deny), f"{where}: deny"),
        source=f"{where} (declared by its client)",
    )


def _checked_hash(value: object, where: str) -> bytes:
    if not isinstance(value, str):
        raise AccessConfigError(f"{where} must be a bcrypt hash string")
    match = _BCRYPT.match(value)
    if match is None:
        raise AccessConfigError(
            f'{where} is not a bcrypt hash ($2b$12$... from `python -c "import bcrypt; '
            f"print(bcrypt.hashpw(b'secret', bcrypt.gensalt()).decode())\"`); "
            "passwords in clear are refused"
        )
    if int(match.group(1)) > MAX_BCRYPT_COST:
        raise AccessConfigError(f"{where}: bcrypt cost above {MAX_BCRYPT_COST} is refused")
    return value.encode("ascii")


def _networks(value: object, where: str) -> tuple[Network, ...]:
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise AccessConfigError(f"{where} must be a list of addresses or CIDR networks")
    networks: list[Network] = []
    for item in value:
        try:
            networks.append(ipaddress.ip_network(item.strip(), strict=False))
        except ValueError:
            raise AccessConfigError(
                f"{where}: {item!r} is not an IPv4/IPv6 address or CIDR network"
            ) from None
    return tuple(networks)


class Verdict(enum.Enum):
    """What :meth:`AccessChecker.admit` decided."""

    ADMIT = 200
    UNAUTHORIZED = 401
    FORBIDDEN = 403
    THROTTLED = 429


@dataclass(frozen=True, slots=True)
class Admission:
    verdict: Verdict
    #: One line for the visitor (never names a user or a rule's network).
    reason: str = ""

    @property
    def headers(self) -> list[tuple[bytes, bytes]]:
        if self.verdict is Verdict.UNAUTHORIZED:
            return [(b"www-authenticate", b'Basic realm="pipegate", charset="UTF-8"')]
        if self.verdict is Verdict.THROTTLED:
            return [(b"retry-after", b"60")]
        return []


_ADMIT = Admission(Verdict.ADMIT)


def _address(peer: str | None) -> Address | None:
    if not peer:
        return None
    try:
        address = ipaddress.ip_address(peer.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _credentials(authorization: bytes | None) -> tuple[str, bytes] | None:
    if not authorization:
        return None
    scheme, _, encoded = authorization.strip().partition(b" ")
    if scheme.lower() != b"basic":
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    user, colon, password = decoded.partition(b":")
    if not colon:
        return None
    return user.decode("utf-8", errors="replace"), password


class AccessChecker:
    """Admits visitors against rule sets, with the CPU bounds of the module docstring."""

    def __init__(
        self,
        *,
        max_hashing: int = 1,
        max_waiting: int = 32,
        cache_size: int = 1024,
        failure_budget: int = 20,
        failure_window: float = 60.0,
        max_addresses: int = 10_000,
    ) -> None:
        self._hashing = asyncio.Semaphore(max_hashing)
        self._waiting = 0
        self.max_waiting = max_waiting
        self.cache_size = cache_size
        self.failure_budget = failure_budget
        self.failure_window = failure_window
        self.max_addresses = max_addresses
        #: SHA-256 of (user, password, hash) that verified, most recent last.
        self._verified: OrderedDict[bytes, None] = OrderedDict()
        #: address -> (window start, failures in it)
        self._failures: dict[str, tuple[float, int]] = {}

    async def admit(
        self, rules: Sequence[AccessRules], peer: str | None, authorization: bytes | None
    ) -> Admission:
        """Whether a visitor from ``peer`` with this ``Authorization`` header value may
        pass every set of ``rules``."""
        address = _address(peer)
        for rule in rules:
            if not rule.admits_network(address):
                return Admission(Verdict.FORBIDDEN, "your address may not reach this tunnel")
        with_users = [rule for rule in rules if rule.users]
        if not with_users:
            return _ADMIT
        credentials = _credentials(authorization)
        if credentials is None:
            return Admission(Verdict.UNAUTHORIZED, "this tunnel needs a user name and password")
        key = peer or "-"
        if self._over_budget(key):
            return Admission(Verdict.THROTTLED, "too many failed logins from your address")
        user, password = credentials
        for rule in with_users:
            verified = await self._verify(user, password, rule.users.get(user))
            if verified is None:
                return Admission(Verdict.THROTTLED, "too many logins at once; try again")
            if not verified:
                self._record_failure(key)
                return Admission(Verdict.UNAUTHORIZED, "wrong user name or password")
        return _ADMIT

    async def _verify(self, user: str, password: bytes, hashed: bytes | None) -> bool | None:
        """Whether ``password`` matches ``hashed`` (an unknown user: ``None`` hash, checked
        against a dummy all the same); ``None`` when too many checks are queued."""
        digest = hashlib.sha256(
            b"\0".join((user.encode(), password, hashed or _DUMMY_HASH))
        ).digest()
        if hashed is not None and digest in self._verified:
            self._verified.move_to_end(digest)
            return True
        if self._waiting >= self.max_waiting:
            return None
        self._waiting += 1
        try:
            async with self._hashing:
                ok = await asyncio.to_thread(bcrypt.checkpw, password, hashed or _DUMMY_HASH)
        finally:
            self._waiting -= 1
        if ok and hashed is not None:
            self._verified[digest] = None
            if len(self._verified) > self.cache_size:
                self._verified.popitem(last=False)
            return True
        return False

    def _over_budget(self, key: str) -> bool:
        start, count = self._failures.get(key, (0.0, 0))
        if time.monotonic() - start > self.failure_window:
            return False
        return count >= self.failure_budget

    def _record_failure(self, key: str) -> None:
        now = time.monotonic()
        start, count = self._failures.get(key, (now, 0))
        if now - start > self.failure_window:
            start, count = now, 0
        if key not in self._failures and len(self._failures) >= self.max_addresses:
            stale = [k for k, (s, _) in self._failures.items() if now - s > self.failure_window]
            for old in stale:
                del self._failures[old]
            if len(self._failures) >= self.max_addresses:
                self._failures.clear()
        self._failures[key] = (start, count + 1)
