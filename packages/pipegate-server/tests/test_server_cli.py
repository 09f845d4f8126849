"""The pipegate-server command line."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from pipegate_server.cli import build_parser, main, parse_size, settings_from_args
from pipegate_server.errors import ConfigurationError


def test_refuses_to_start_without_a_token(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("PIPEGATE_CLIENT_TOKEN", raising=False)
    assert main(["--port", "1"]) == 2
    error = capsys.readouterr().err
    assert "no client token" in error
    assert "--client-token-file" in error
    assert "PIPEGATE_CLIENT_TOKEN" in error


def test_token_sources(tmp_path: Path) -> None:
    parser = build_parser()
    from_env = settings_from_args(parser.parse_args([]), {"PIPEGATE_CLIENT_TOKEN": "env-t"})
    assert from_env.client_token == "env-t"
    token_file = tmp_path / "token"
    token_file.write_text("file-t\n")
    from_file = settings_from_args(parser.parse_args(["--client-token-file", str(token_file)]), {})
    assert from_file.client_token == "file-t"
    assert "file-t" not in repr(from_file)
    with pytest.raises(ConfigurationError):
        settings_from_args(
            parser.parse_args(["--client-token", "a", "--client-token-file", str(token_file)]),
            {},
        )


def test_defaults_and_sizes() -> None:
    args = build_parser().parse_args(["--max-body-size", "512MiB"])
    assert args.host == "0.0.0.0"
    assert args.port == 8000
    assert args.max_body_size == 512 * 1024 * 1024
    assert parse_size("64k") == 65536
    assert parse_size("1GiB") == 1024**3
    assert parse_size("123") == 123


def test_bad_tokens_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "tokens.toml"
    bad.write_text("[[tokens]]\ntoken = 'x'\n")
    assert main(["--tokens-file", str(bad)]) == 2
    assert "ids" in capsys.readouterr().err


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_sigterm_drains_and_exits_zero(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("cli-secret-token")
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k != "PIPEGATE_CLIENT_TOKEN"}
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pipegate_server.cli",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--client-token-file",
            str(token_file),
            "--shutdown-grace",
            "2",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        for _ in range(200):
            try:
                health = httpx.get(f"http://127.0.0.1:{port}/_pipegate/health", timeout=1)
                break
            except httpx.HTTPError:
                time.sleep(0.05)
        else:
            raise AssertionError("server did not come up")
        assert health.json()["status"] == "ok"
        token_file.write_text("rotated-secret-token")
        process.send_signal(signal.SIGHUP)
        time.sleep(0.3)
        assert process.poll() is None
        process.send_signal(signal.SIGTERM)
        output = process.communicate(timeout=15)[0].decode()
        assert process.returncode == 0
        assert "cli-secret-token" not in output
        assert "rotated-secret-token" not in output
        assert "credentials reloaded" in output
        assert "shutting down" in output
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()


def test_timeouts_reach_the_settings() -> None:
    args = build_parser().parse_args(
        ["--client-token", "t", "--hello-timeout", "1.5", "--head-timeout", "3"]
    )
    settings = settings_from_args(args, {})
    assert settings.hello_timeout == 1.5
    assert settings.head_timeout == 3
    assert build_parser().parse_args([]).hello_timeout == 10.0


def test_the_command_line_tunes_gc_with_the_shared_function() -> None:
    import pipegate_tunnel
    from pipegate_server import cli

    assert cli.tune_gc is pipegate_tunnel.tune_gc  # tested in pipegate-tunnel
