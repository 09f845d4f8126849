"""The client's config file (issue 14): tunnels, token sources, interpolation, and a
clear error naming the key for each mistake."""

from __future__ import annotations

from pathlib import Path

import pytest
from pipegate_client._config import describe, load_config
from pipegate_client.errors import ConfigurationError

TOKEN = "config-token-0123456789"

GOOD = """
server_url = "wss://tunnel.example.com"
token_env = "PG_TEST_TOKEN"

[[tunnels]]
id = "web"
local_url = "http://localhost:5173"
hostnames = ["app.example.com"]
host_header = "preserve"

[[tunnels]]
id = "api"
local_url = "${PG_TEST_API}"
"""


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PG_TEST_TOKEN", TOKEN)
    monkeypatch.setenv("PG_TEST_API", "http://127.0.0.1:8000/v1")


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "pipegate.toml"
    path.write_text(text)
    return path


def test_two_tunnels_from_one_file(tmp_path: Path, env: None) -> None:
    config = load_config(_write(tmp_path, GOOD))
    web, api = config.tunnels
    assert (web.server_url, web.local_url) == (
        "wss://tunnel.example.com/web",
        "http://localhost:5173",
    )
    assert web.hostnames == ("app.example.com",)
    assert web.preserve_host
    assert (api.server_url, api.local_url) == (
        "wss://tunnel.example.com/api",
        "http://127.0.0.1:8000/v1",
    )
    assert not api.preserve_host
    assert web.client_token == api.client_token == TOKEN
    assert config.token_source == "$PG_TEST_TOKEN"
    assert config.inspect == "127.0.0.1:4040"
    text = describe(config)
    assert TOKEN not in text
    assert "token from $PG_TEST_TOKEN" in text
    assert "- web: wss://tunnel.example.com/web -> http://localhost:5173" in text
    assert "hostnames: app.example.com" in text
    assert TOKEN not in repr(config)


def test_token_from_a_file_or_an_interpolation(tmp_path: Path, env: None) -> None:
    (tmp_path / "token.txt").write_text(TOKEN + "\n")
    body = GOOD.replace('token_env = "PG_TEST_TOKEN"', 'token_file = "token.txt"')
    assert load_config(_write(tmp_path, body)).tunnels[0].client_token == TOKEN
    body = GOOD.replace(
        'token_env = "PG_TEST_TOKEN"', 'token = "${PG_TEST_TOKEN}"\ninspect = false'
    )
    config = load_config(_write(tmp_path, body))
    assert config.tunnels[0].client_token == TOKEN
    assert config.inspect is None


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            ('token_env = "PG_TEST_TOKEN"', f'token = "{TOKEN}"'),
            "token: a token written in the file is refused",
        ),
        (('token_env = "PG_TEST_TOKEN"', ""), "give exactly one of token_env, token_file"),
        (
            ('token_env = "PG_TEST_TOKEN"', 'token_env = "PG_NOT_SET"'),
            "token_env: the environment variable PG_NOT_SET",
        ),
        (('token_env = "PG_TEST_TOKEN"', 'token_file = "missing.txt"'), "token_file: cannot read"),
        (
            ('"wss://tunnel.example.com"', '"https://tunnel.example.com"'),
            "server_url: must be a ws:// or wss:// URL",
        ),
        (('id = "web"', 'id = "no/slash"'), "tunnels[1].id: 'no/slash' is not a connection id"),
        (('id = "api"', 'id = "web"'), "tunnels[2].id: 'web' is used by two tunnels"),
        (
            ('"${PG_TEST_API}"', '"${PG_MISSING}"'),
            "tunnels[2].local_url: the environment variable PG_MISSING is not set",
        ),
        (('"http://localhost:5173"', '"ftp://x"'), "tunnels[1]: --local-url must be an http"),
        (
            ('host_header = "preserve"', 'host_header = "keep"'),
            "tunnels[1].host_header: must be rewrite or preserve",
        ),
        (
            ('hostnames = ["app.example.com"]', 'hostnames = ["bad_host.example"]'),
            "tunnels[1]: --hostname 'bad_host.example'",
        ),
        (
            ('hostnames = ["app.example.com"]', 'hostname = ["x.example"]'),
            "tunnels[1].hostname: unknown key",
        ),
        (("server_url =", "server-url ="), "server-url: unknown key"),
        (("[[tunnels]]", "[tunnel]"), "unknown key"),
    ],
)
def test_mistakes_name_the_key(
    tmp_path: Path, env: None, change: tuple[str, str], message: str
) -> None:
    old, new = change
    assert old in GOOD
    with pytest.raises(ConfigurationError) as error:
        load_config(_write(tmp_path, GOOD.replace(old, new, 1)))
    assert str(error.value).startswith("pipegate.toml: ")
    assert message in str(error.value)
    assert TOKEN not in str(error.value)


def test_unreadable_and_invalid_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match=r"--config .*No such file"):
        load_config(tmp_path / "absent.toml")
    with pytest.raises(ConfigurationError, match=r"pipegate\.toml: not valid TOML"):
        load_config(_write(tmp_path, "server_url = \n"))
    with pytest.raises(ConfigurationError, match="tunnels: at least one"):
        load_config(_write(tmp_path, 'server_url = "ws://h"\ntoken = "${HOME}"\n'))


def test_userinfo_of_a_local_url_is_never_shown(tmp_path: Path, env: None) -> None:
    from pipegate_client._settings import shown_url

    assert shown_url("http://user:pw@127.0.0.1:5001/app") == "http://127.0.0.1:5001/app"
    assert shown_url("http://127.0.0.1:5001") == "http://127.0.0.1:5001"
    config = load_config(
        _write(tmp_path, GOOD.replace("http://localhost:5173", "http://u:secret-pw@localhost:5173"))
    )
    assert "secret-pw" not in describe(config)
