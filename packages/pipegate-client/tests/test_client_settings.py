"""Settings validation, the command line, and TLS to the server with a private CA."""

from __future__ import annotations

import asyncio
import logging
import ssl
from pathlib import Path
from typing import Any

import pytest
import trustme
from pipegate_client import ClientSettings, ConfigurationError
from pipegate_client.cli import build_parser, main, settings_from_args

WAIT = 10.0


def test_client_settings_defaults_and_derived_values() -> None:
    settings = ClientSettings(server_url="wss://example.com/node", client_token="t")
    assert settings.connection_id == "node"
    assert settings.local_url == "http://localhost:5001"
    assert settings.limits.max_concurrent_streams == 128
    assert "client_token" not in repr(settings)
    assert isinstance(settings.server_ssl_context(), ssl.SSLContext)
    plain = ClientSettings(server_url="ws://example.com/a/b/node-1/", client_token="t")
    assert plain.connection_id == "node-1"
    assert plain.server_ssl_context() is None


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"server_url": "https://example.com/node"}, "ws:// or wss://"),
        ({"server_url": "wss://example.com/"}, "connection id"),
        ({"server_url": "wss://example.com/_pipegate"}, "connection id"),
        ({"client_token": ""}, "client token"),
        ({"client_token": "a b"}, "whitespace"),
        ({"local_url": "ftp://localhost"}, "--local-url"),
        ({"local_url": "http://localhost:5001/?x=1"}, "query"),
        ({"ca_file": "/nonexistent/ca.pem"}, "--ca-file"),
        ({"max_concurrency": 0}, "invalid limits"),
        ({"max_frame_size": 10}, "invalid limits"),
        ({"ping_interval": 0}, "ping_interval"),
    ],
)
def test_client_settings_rejects_bad_values(overrides: dict[str, Any], message: str) -> None:
    values: dict[str, Any] = {"server_url": "wss://example.com/node", "client_token": "t"}
    values.update(overrides)
    with pytest.raises(ConfigurationError, match=message):
        ClientSettings(**values)


def test_client_cli_token_sources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    parser = build_parser()
    base = ["--server-url", "ws://127.0.0.1:1/node"]
    monkeypatch.setenv("PIPEGATE_CLIENT_TOKEN", "from-env")
    assert settings_from_args(parser.parse_args(base)).client_token == "from-env"
    token_file = tmp_path / "token"
    token_file.write_text("from-file\n")
    args = parser.parse_args([*base, "--client-token-file", str(token_file)])
    assert settings_from_args(args).client_token == "from-file"
    args = parser.parse_args([*base, "--client-token", "from-flag", "--max-concurrency", "9"])
    settings = settings_from_args(args)
    assert settings.client_token == "from-flag"
    assert settings.max_concurrency == 9
    assert settings.grace_period == 30.0


def test_client_cli_configuration_errors_exit_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("PIPEGATE_CLIENT_TOKEN", raising=False)
    monkeypatch.delenv("PIPEGATE_SERVER_URL", raising=False)
    assert main(["--server-url", "ws://127.0.0.1:1/node"]) == 2
    assert "no client token" in capsys.readouterr().err
    assert main(["--client-token", "t"]) == 2
    assert "--server-url is required" in capsys.readouterr().err
    assert main(["--server-url", "http://x/node", "--client-token", "t"]) == 2
    with pytest.raises(SystemExit) as info:
        main(["--max-concurrency", "lots"])
    assert info.value.code == 2


@pytest.fixture
def private_ca(tmp_path: Path) -> tuple[ssl.SSLContext, str]:
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_context)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    return server_context, str(ca_file)


async def test_client_wss_with_private_ca(
    harness: Any, private_ca: tuple[ssl.SSLContext, str], caplog: pytest.LogCaptureFixture
) -> None:
    server_context, ca_file = private_ca
    await harness.server.stop()
    harness.server.ssl_context = server_context
    harness.server.public_url = None
    await harness.server.start()
    # Without the CA the certificate is refused (and retried, with a hint).
    with caplog.at_level(logging.WARNING, logger="pipegate_client"):
        async with harness.run() as (client, _output, _task):
            for _ in range(100):
                if "--ca-file" in caplog.text:
                    break
                await asyncio.sleep(0.02)
            assert not client.connected.is_set()
    assert "pass --ca-file if the server uses a private CA" in caplog.text
    async with harness.run(harness.settings(ca_file=ca_file)) as (client, output, _task):
        tunnel = await harness.server.next_tunnel()
        await asyncio.wait_for(client.connected.wait(), WAIT)
        assert output.getvalue().strip() == f"https://127.0.0.1:{harness.server.port}/node/"
        head, _ = await tunnel.request("GET", "/cookies")
        assert head.status == 200


def test_client_settings_strip_trailing_slash_from_server_url() -> None:
    """HS-1: the tunnel endpoint is exactly /<id>; a trailing slash would make the
    server treat the upgrade as a caller's WebSocket into that tunnel."""
    settings = ClientSettings(server_url="wss://example.com/node/", client_token="t")
    assert settings.server_url == "wss://example.com/node"
    assert settings.connection_id == "node"


def test_the_command_line_tunes_gc_with_the_shared_function() -> None:
    import pipegate_tunnel
    from pipegate_client import cli

    assert cli.tune_gc is pipegate_tunnel.tune_gc  # tested in pipegate-tunnel
