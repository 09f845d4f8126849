"""Visitor access control (issue 14): rules from the tokens file, checked before any
byte crosses the tunnel, with bcrypt work bounded."""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path
from typing import Any

import bcrypt
import httpx
import pytest
from pipegate_server._access import (
    AccessChecker,
    AccessConfigError,
    AccessRules,
    Verdict,
    parse_access_rules,
)
from pipegate_server._auth import load_tokens_file
from pipegate_server.errors import TokensFileError
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

#: Cost 4: the lowest bcrypt allows, so tests stay fast.
HASH = bcrypt.hashpw(b"s3cret", bcrypt.gensalt(4)).decode()
OTHER = bcrypt.hashpw(b"other", bcrypt.gensalt(4)).decode()


def _basic(user: str, password: str) -> bytes:
    return b"Basic " + base64.b64encode(f"{user}:{password}".encode())


def _rules(**table: Any) -> AccessRules:
    return parse_access_rules(table, "test")


# ---------------------------------------------------------------------- parsing


def test_rules_parse_users_and_networks() -> None:
    rules = _rules(users={"admin": HASH}, allow=["127.0.0.0/8", "::1"], deny=["127.0.0.2"])
    assert rules
    assert list(rules.users) == ["admin"]
    assert [str(n) for n in rules.allow] == ["127.0.0.0/8", "::1/128"]
    assert not AccessRules()


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"users": {"admin": "s3cret"}}, "not a bcrypt hash"),
        ({"users": {"admin": HASH.replace("$04$", "$15$")}}, "cost above"),
        ({"users": {"a:b": HASH}}, "not a user name"),
        ({"users": ["admin"]}, "must be a table"),
        ({"allow": ["300.0.0.1"]}, "not an IPv4/IPv6"),
        ({"deny": "10.0.0.0/8"}, "must be a list"),
        ({"alow": ["10.0.0.0/8"]}, "unknown key(s) in 'access': alow"),
    ],
)
def test_bad_rules_name_the_wrong_key(table: dict[str, Any], message: str) -> None:
    with pytest.raises(AccessConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_access_rules(table, "test")


def test_tokens_file_access_table(tmp_path: Path) -> None:
    path = tmp_path / "tokens.toml"
    path.write_text(
        '[[tokens]]\nname = "alice"\ntoken = "alice-token-0123"\nids = ["a*"]\n'
        f'[tokens.access]\nusers = {{ admin = "{HASH}" }}\ndeny = ["10.0.0.0/8"]\n'
    )
    (credential,) = load_tokens_file(path)
    assert credential.access.users == {"admin": HASH.encode()}
    path.write_text(
        '[[tokens]]\nname = "alice"\ntoken = "alice-token-0123"\nids = ["a*"]\n'
        '[tokens.access]\nusers = { admin = "plain-password" }\n'
    )
    with pytest.raises(TokensFileError, match=r"entry 1: tokens file entry 'alice': access"):
        load_tokens_file(path)


# ---------------------------------------------------------------------- the checker


async def test_networks_are_checked_first_and_deny_wins() -> None:
    checker = AccessChecker()
    rules = [_rules(allow=["127.0.0.0/8", "::1"], deny=["127.0.0.2"])]
    assert (await checker.admit(rules, "127.0.0.1", None)).verdict is Verdict.ADMIT
    assert (await checker.admit(rules, "::ffff:127.0.0.1", None)).verdict is Verdict.ADMIT
    assert (await checker.admit(rules, "::1", None)).verdict is Verdict.ADMIT
    for peer in ("127.0.0.2", "192.0.2.1", "2001:db8::1", None, "not-an-address"):
        admission = await checker.admit(rules, peer, _basic("admin", "s3cret"))
        assert admission.verdict is Verdict.FORBIDDEN, peer


async def test_basic_auth_right_wrong_missing_and_unknown_user() -> None:
    checker = AccessChecker()
    rules = [_rules(users={"admin": HASH})]
    assert (await checker.admit(rules, "192.0.2.1", _basic("admin", "s3cret"))).verdict is (
        Verdict.ADMIT
    )
    for header in (
        None,
        b"Bearer x",
        b"Basic !!!",
        b"Basic " + base64.b64encode(b"no-colon"),
        _basic("admin", "wrong"),
        _basic("nobody", "s3cret"),
    ):
        admission = await checker.admit(rules, "192.0.2.1", header)
        assert admission.verdict is Verdict.UNAUTHORIZED, header
        assert admission.headers[0][0] == b"www-authenticate"
        assert b"Basic" in admission.headers[0][1]
        assert "admin" not in admission.reason


async def test_every_set_must_pass_the_stricter_wins() -> None:
    checker = AccessChecker()
    operator = _rules(users={"admin": HASH}, deny=["192.0.2.0/24"])
    client = _rules(users={"admin": HASH, "guest": OTHER}, allow=["192.0.2.0/23"])
    both = [operator, client]
    assert (await checker.admit(both, "192.0.3.1", _basic("admin", "s3cret"))).verdict is (
        Verdict.ADMIT
    )
    # Admitted by the client's rules, refused by the operator's: refused.
    assert (await checker.admit(both, "192.0.3.1", _basic("guest", "other"))).verdict is (
        Verdict.UNAUTHORIZED
    )
    assert (await checker.admit(both, "192.0.2.1", _basic("admin", "s3cret"))).verdict is (
        Verdict.FORBIDDEN
    )


async def test_a_verified_credential_is_not_hashed_again(monkeypatch: pytest.MonkeyPatch) -> None:
    checker = AccessChecker()
    rules = [_rules(users={"admin": HASH})]
    calls: list[bytes] = []
    real = bcrypt.checkpw

    def counting(password: bytes, hashed: bytes) -> bool:
        calls.append(password)
        return real(password, hashed)

    monkeypatch.setattr(bcrypt, "checkpw", counting)
    for _ in range(5):
        assert (await checker.admit(rules, "x", _basic("admin", "s3cret"))).verdict is (
            Verdict.ADMIT
        )
    assert len(calls) == 1
    # A wrong password is hashed every time (and counts as a failure).
    for _ in range(3):
        await checker.admit(rules, "x", _basic("admin", "nope"))
    assert len(calls) == 4


async def test_failed_logins_over_budget_cost_no_hash(monkeypatch: pytest.MonkeyPatch) -> None:
    checker = AccessChecker(failure_budget=3)
    rules = [_rules(users={"admin": HASH})]
    for _ in range(3):
        assert (await checker.admit(rules, "192.0.2.9", _basic("admin", "x"))).verdict is (
            Verdict.UNAUTHORIZED
        )
    monkeypatch.setattr(bcrypt, "checkpw", lambda *_: pytest.fail("hashed over budget"))
    throttled = await checker.admit(rules, "192.0.2.9", _basic("admin", "s3cret"))
    assert throttled.verdict is Verdict.THROTTLED
    assert (b"retry-after", b"60") in throttled.headers


async def test_hashing_is_one_at_a_time_and_the_queue_is_bounded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    checker = AccessChecker(max_hashing=1, max_waiting=4, failure_budget=1000)
    rules = [_rules(users={"admin": HASH})]
    running = 0
    peak = 0
    real = bcrypt.checkpw

    def slow(password: bytes, hashed: bytes) -> bool:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        import time

        time.sleep(0.02)
        running -= 1
        return real(password, hashed)

    monkeypatch.setattr(bcrypt, "checkpw", slow)
    results = await asyncio.gather(
        *(checker.admit(rules, f"192.0.2.{i}", _basic("admin", f"x{i}")) for i in range(12))
    )
    verdicts = [r.verdict for r in results]
    assert peak == 1
    assert verdicts.count(Verdict.UNAUTHORIZED) == 4
    assert verdicts.count(Verdict.THROTTLED) == 8


# ---------------------------------------------------------------------- a real server


async def test_rules_are_enforced_before_the_tunnel_sees_anything(pg: Any, tmp_path: Path) -> None:
    token = "guarded-token-0123456789"
    path = tmp_path / "tokens.toml"
    path.write_text(
        f'[[tokens]]\nname = "guarded"\ntoken = "{token}"\nids = ["*"]\n'
        f'[tokens.access]\nusers = {{ admin = "{HASH}" }}\nallow = ["127.0.0.0/8"]\n'
    )
    seen: list[str] = []

    async def handler(client: Any, stream: Any) -> None:
        seen.append(stream.open.path)
        await pg.echo_handler(client, stream)

    async with (
        pg.start_server(tokens_file=path) as server,
        pg.fake_client(server, "shop", handler, token=token),
        pg.fake_client(server, "open", pg.echo_handler),  # the shared token: no rules
        httpx.AsyncClient(timeout=10) as http,
    ):
        missing = await http.post(f"{server.base}/shop/x", content=b"body")
        assert missing.status_code == 401
        assert missing.headers["www-authenticate"].startswith("Basic")
        wrong = await http.get(f"{server.base}/shop/x", auth=("admin", "nope"))
        assert wrong.status_code == 401
        assert seen == []  # nothing crossed the tunnel
        right = await http.get(f"{server.base}/shop/ok", auth=("admin", "s3cret"))
        assert right.status_code == 200
        assert seen == ["/ok"]
        assert (await http.get(f"{server.base}/open/x")).status_code == 200
        with pytest.raises(InvalidStatus) as refused:
            async with connect(f"ws://127.0.0.1:{server.port}/shop/ws"):
                pass
        assert refused.value.response.status_code == 401
        assert seen == ["/ok"]


# ---------------------------------------------------------------------- AC: the client's rules


async def test_rules_in_the_clients_hello_are_enforced(pg: Any) -> None:
    from pipegate_protocol import CAPABILITY_ACCESS, AccessPolicy

    seen: list[str] = []

    async def handler(client: Any, stream: Any) -> None:
        seen.append(stream.open.path)
        await pg.echo_handler(client, stream)

    policy = AccessPolicy(users={"admin": HASH}, deny=("127.0.0.2",))
    async with (
        pg.start_server() as server,
        pg.fake_client(server, "mine", handler, access=policy) as client,
        httpx.AsyncClient(timeout=10) as http,
    ):
        assert CAPABILITY_ACCESS in client.conn.peer_hello.capabilities
        assert (await http.get(f"{server.base}/mine/x")).status_code == 401
        assert (await http.get(f"{server.base}/mine/x", auth=("admin", "nope"))).status_code == 401
        assert seen == []
        ok = await http.get(f"{server.base}/mine/in", auth=("admin", "s3cret"))
        assert ok.status_code == 200
        other = httpx.AsyncHTTPTransport(local_address="127.0.0.2")
        async with httpx.AsyncClient(transport=other, timeout=10) as from_other:
            refused = await from_other.get(f"{server.base}/mine/x", auth=("admin", "s3cret"))
        assert refused.status_code == 403
        assert seen == ["/in"]


async def test_unusable_declared_rules_close_the_tunnel_with_1008(pg: Any) -> None:
    from pipegate_protocol import AccessPolicy

    policy = AccessPolicy(allow=("999.1.2.3",))  # schema-shaped, not a network
    async with (
        pg.start_server() as server,
        pg.fake_client(server, "bad", pg.echo_handler, access=policy) as client,
    ):
        await asyncio.wait_for(client.ws.wait_closed(), 5)
        assert client.ws.close_code == 1008
        async with httpx.AsyncClient(timeout=10) as http:
            assert (await http.get(f"{server.base}/bad/x")).status_code in (404, 503)


async def test_a_request_before_the_clients_hello_waits_for_its_rules(pg: Any) -> None:
    """The server may not open a stream before it knows the client's rules (AC-4)."""
    from pipegate_protocol import AccessPolicy, Connection, Limits, ProtocolVersion, Role

    async with pg.start_server() as server, httpx.AsyncClient(timeout=10) as http:
        ws = await connect(
            server.ws_url("slow"),
            subprotocols=[ProtocolVersion.V1.value],  # type: ignore[list-item]
            additional_headers={"Authorization": f"Bearer {pg.token}"},
        )
        try:
            await ws.recv()  # the server's hello; ours is not sent yet
            request = asyncio.create_task(http.get(f"{server.base}/slow/x"))
            await asyncio.sleep(0.3)
            assert not request.done()  # waiting for the hello, not relayed
            conn = Connection(
                Role.CLIENT,
                limits=Limits(),
                access=AccessPolicy(users={"admin": HASH}),
            )
            for payload in conn.data_to_send():
                await ws.send(payload)
            response = await asyncio.wait_for(request, 10)
            assert response.status_code == 401  # the rules applied to it
        finally:
            await ws.close()
