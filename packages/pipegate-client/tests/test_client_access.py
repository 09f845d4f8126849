"""AC-1..AC-3 at the client: rules declared in the hello (passwords hashed, never
sent), and a client that stops rather than expose its tunnel to a server that cannot
enforce them."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import bcrypt
import pytest
from pipegate_client._config import describe, load_config
from pipegate_client.cli import build_parser, settings_from_args
from pipegate_client.errors import AccessUnsupportedError, ConfigurationError
from pipegate_protocol import CAPABILITY_ACCESS

WAIT = 10.0


def test_flags_hash_the_password_and_keep_the_networks() -> None:
    args = build_parser().parse_args(
        [
            "--server-url", "ws://127.0.0.1:1/node", "--client-token", "t",
            "--basic-auth", "admin:open sesame", "--allow", "192.0.2.0/24",
            "--deny", "2001:db8::1", "--no-inspect",
        ]
    )  # fmt: skip
    settings = settings_from_args(args)
    ((name, hashed),) = settings.access_users
    assert name == "admin"
    assert bcrypt.checkpw(b"open sesame", hashed.encode())
    policy = settings.access_policy
    assert policy is not None
    assert "open sesame" not in policy.model_dump_json()
    assert policy.allow == ("192.0.2.0/24",)
    assert policy.deny == ("2001:db8::1",)


@pytest.mark.parametrize(
    ("flag", "message"),
    [
        (["--basic-auth", "nopassword"], "USER:PASSWORD"),
        (["--allow", "999.1.2.3"], "not an IPv4/IPv6"),
        (["--deny", "example.com"], "not an IPv4/IPv6"),
    ],
)
def test_bad_access_flags(flag: list[str], message: str) -> None:
    args = build_parser().parse_args(
        ["--server-url", "ws://127.0.0.1:1/node", "--client-token", "t", *flag]
    )
    with pytest.raises(ConfigurationError, match=message):
        settings_from_args(args)


async def test_the_hello_carries_the_rules_to_a_server_that_enforces_them(harness: Any) -> None:
    harness.server.hello_extras = {"capabilities": [CAPABILITY_ACCESS]}
    hashed = bcrypt.hashpw(b"pw", bcrypt.gensalt(4)).decode()
    settings = harness.settings(access_users=(("admin", hashed),), access_deny=("10.0.0.0/8",))
    async with harness.run(settings) as (client, output, _task):
        fake = await harness.server.next_tunnel()
        hello = await fake.ready()
        await asyncio.wait_for(client.connected.wait(), WAIT)
        assert hello.access is not None
        assert hello.access.users == {"admin": hashed}
        assert hello.access.deny == ("10.0.0.0/8",)
        assert output.getvalue()  # the URL was shown


async def test_a_server_that_cannot_enforce_them_is_refused(harness: Any) -> None:
    """AC-3: the client closes before answering anything, shows no URL, does not retry;
    a stream the server opens right behind its hello is never answered."""
    hashed = bcrypt.hashpw(b"pw", bcrypt.gensalt(4)).decode()

    async def eager(tunnel: Any) -> None:
        # A v1 server opens a stream as soon as it has the client's hello.
        serving = asyncio.create_task(tunnel.serve())
        try:
            await tunnel.ready()
            await tunnel.open("GET", "/echo/leak", "")
        except Exception:  # the client closes the tunnel under it
            pass
        await serving

    harness.server.handler = eager
    settings = harness.settings(access_users=(("admin", hashed),))
    async with harness.run(settings) as (client, output, task):
        with pytest.raises(AccessUnsupportedError, match="cannot enforce access rules"):
            await asyncio.wait_for(task, WAIT)
        assert output.getvalue() == ""
        assert not client.connected.is_set()
    assert harness.server.attempts == 1
    assert harness.local.requests_seen("/echo/leak") == 0


def test_config_access_tables(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PG_T", "token-0123456789")
    monkeypatch.setenv("PG_PW", "from-the-environment")
    hashed = bcrypt.hashpw(b"x", bcrypt.gensalt(4)).decode()
    path = tmp_path / "pipegate.toml"
    path.write_text(
        'server_url = "wss://h"\ntoken_env = "PG_T"\n'
        '[[tunnels]]\nid = "shop"\nlocal_url = "http://127.0.0.1:1"\n'
        f'[tunnels.access]\nusers = {{ ops = "{hashed}" }}\n'
        'passwords = { guest = "${PG_PW}" }\nallow = ["192.0.2.0/24"]\n'
    )
    config = load_config(path)
    (settings,) = config.tunnels
    users = dict(settings.access_users)
    assert users["ops"] == hashed
    assert bcrypt.checkpw(b"from-the-environment", users["guest"].encode())
    text = describe(config)
    assert "basic auth: ops, guest" in text
    assert "from-the-environment" not in text
    path.write_text(path.read_text().replace('"192.0.2.0/24"', '"nope"'))
    with pytest.raises(
        ConfigurationError, match=r"pipegate\.toml: tunnels\[1\]: --allow/--deny 'nope'"
    ):
        load_config(path)
    path.write_text(path.read_text().replace("passwords =", "pasword ="))
    with pytest.raises(ConfigurationError, match=r"tunnels\[1\]\.access\.pasword: unknown key"):
        load_config(path)
