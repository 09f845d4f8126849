"""One client process, two tunnels from one config file (issue 14), through a real
server, with one inspector for both; ``--check`` and config mistakes as a user sees
them on the command line."""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import httpx
from e2e_support import CLIENT_ARGS, TunnelFactory, wait_relaying, wait_until, ws_base

CLIENT = [sys.executable, "-m", "pipegate_client"]


#: The client's log line that names an inspector's URL.
INSPECTOR_LINE = re.compile(r"inspector: (http://\S+)")


def _config(tmp_path: Path, port: int, origin: str, token_env: str, inspect: str = "false") -> Path:
    path = tmp_path / "pipegate.toml"
    path.write_text(
        f'server_url = "{ws_base(port)}"\n'
        f'token_env = "{token_env}"\n'
        f"inspect = {inspect}\n"
        "[[tunnels]]\n"
        'id = "first"\n'
        f'local_url = "{origin}"\n'
        "[[tunnels]]\n"
        'id = "second"\n'
        f'local_url = "{origin}/echo"\n'
    )
    return path


def test_two_tunnels_from_one_config_in_one_process(tunnels: TunnelFactory, tmp_path: Path) -> None:
    _server, port = tunnels.server()
    path = _config(tmp_path, port, tunnels.origin_url, "PG_E2E_TOKEN")
    env = {**os.environ, "PG_E2E_TOKEN": tunnels.token}
    client = tunnels.group.start("client", [*CLIENT, "--config", str(path), *CLIENT_ARGS], env)
    base = f"http://127.0.0.1:{port}"
    wait_relaying(f"{base}/first", process=client)
    assert httpx.get(f"{base}/first/echo/a", timeout=10).json()["raw_path"] == "/echo/a"
    # The second tunnel's local URL has a path: /second/b reaches <origin>/echo/b.
    assert httpx.get(f"{base}/second/b", timeout=10).json()["raw_path"] == "/echo/b"
    output = client.output()
    assert f"{base}/first/" in output
    assert f"{base}/second/" in output
    assert tunnels.token not in output
    assert client.poll() is None  # one process serves both


def test_two_tunnels_from_one_config_share_one_inspector(
    tunnels: TunnelFactory, tmp_path: Path
) -> None:
    _server, port = tunnels.server()
    path = _config(tmp_path, port, tunnels.origin_url, "PG_E2E_TOKEN", '"127.0.0.1:0"')
    env = {**os.environ, "PG_E2E_TOKEN": tunnels.token}
    client = tunnels.group.start("client", [*CLIENT, "--config", str(path), *CLIENT_ARGS], env)
    base = f"http://127.0.0.1:{port}"
    wait_relaying(f"{base}/first", process=client)
    wait_relaying(f"{base}/second", process=client)
    (url,) = set(INSPECTOR_LINE.findall(client.output()))  # one inspector, logged once
    with httpx.Client(timeout=20) as http:
        assert http.get(f"{base}/first/echo/a").status_code == 200
        assert http.get(f"{base}/second/b").status_code == 200

        def both() -> dict[str, int] | None:
            requests = http.get(f"{url}/api/requests").json()["requests"]
            seen = {
                r["tunnel"]: r["id"]
                for r in requests
                if r["finished"]
                and (r["tunnel"], r["path"]) in {("first", "/echo/a"), ("second", "/b")}
            }
            return seen if len(seen) == 2 else None

        ids = wait_until(both, timeout=10.0, what="both tunnels' requests in the one inspector")
        listing = http.get(f"{url}/api/requests").json()
        assert [t["connection_id"] for t in listing["tunnels"]] == ["first", "second"]
        assert [t["local_url"] for t in listing["tunnels"]] == [
            tunnels.origin_url,
            f"{tunnels.origin_url}/echo",
        ]
        assert listing["tunnels"][1]["public_urls"] == [f"{base}/second/"]
        # Each replay goes to the local URL of its own tunnel (second's has /echo).
        for tunnel, raw_path in (("second", "/echo/b"), ("first", "/echo/a")):
            replayed = http.post(f"{url}/api/requests/{ids[tunnel]}/replay")
            assert replayed.status_code == 200, replayed.text
            assert replayed.json()["replay"]["tunnel"] == tunnel
            answer = replayed.json()["replay"]["response"]["body"]["base64"]
            assert json.loads(base64.b64decode(answer))["raw_path"] == raw_path
        assert tunnels.token not in http.get(f"{url}/api/requests").text
    assert tunnels.token not in client.output()
    assert client.poll() is None


def test_check_prints_what_would_be_exposed_and_never_the_token(
    tunnels: TunnelFactory, tmp_path: Path
) -> None:
    path = _config(tmp_path, 9, tunnels.origin_url, "PG_E2E_TOKEN")
    env = {**os.environ, "PG_E2E_TOKEN": "secret-token-value-0123"}
    result = subprocess.run(
        [*CLIENT, "--config", str(path), "--check"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert "2 tunnel(s), token from $PG_E2E_TOKEN" in result.stdout
    assert f"- second: ws://127.0.0.1:9/second -> {tunnels.origin_url}/echo" in result.stdout
    assert "secret-token-value-0123" not in result.stdout + result.stderr


def test_config_mistakes_exit_2_naming_the_key(tmp_path: Path) -> None:
    path = tmp_path / "pipegate.toml"
    path.write_text(
        'server_url = "ws://127.0.0.1:9"\ntoken = "literal-secret-0123"\n'
        '[[tunnels]]\nid = "x"\nlocal_url = "http://127.0.0.1:1"\n'
    )
    result = subprocess.run(
        [*CLIENT, "--config", str(path)], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 2
    assert result.stderr.startswith("pipegate-client: pipegate.toml: token: a token written")
    assert "literal-secret-0123" not in result.stderr
    assert "Traceback" not in result.stderr
    path.write_text(path.read_text().replace('token = "literal-secret-0123"', 'token_env = "X"'))
    path.write_text(path.read_text().replace('local_url = "http://127.0.0.1:1"', "local = 1"))
    result = subprocess.run(
        [*CLIENT, "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "X": "t"},
    )
    assert result.returncode == 2
    assert "pipegate.toml: tunnels[1].local: unknown key" in result.stderr


def test_client_json_log_lines_parse_with_the_request_fields(tunnels: TunnelFactory) -> None:
    """Issue 16, one log format: the client's --log-format json, as the server's."""
    import json

    tunnel = tunnels.tunnel("jsonlog", client_args=["--log-format", "json", "--no-inspect"])
    assert httpx.get(f"{tunnel.public_url}/echo/logged?secret=1", timeout=10).status_code == 200
    assert tunnel.client is not None

    def request_line() -> dict[str, object] | None:
        for line in tunnel.client.output().splitlines():
            if line.startswith("{") and '"/echo/logged"' in line:
                return dict(json.loads(line))
        return None

    from e2e_support import wait_until

    record = wait_until(request_line, timeout=10, what="the request's JSON log line")
    assert record["tunnel"] == "jsonlog"
    assert (record["method"], record["path"], record["status"]) == ("GET", "/echo/logged", 200)
    assert isinstance(record["duration_ms"], float)
    assert isinstance(record["bytes_out"], int)
    assert record["level"] == "INFO"
    assert str(record["time"]).endswith("Z")
    output = tunnel.client.output()
    assert "secret=1" not in output  # the query string is never logged
    assert tunnels.token not in output
    for line in output.splitlines():
        if line.startswith("{"):
            json.loads(line)  # every log line is JSON


def test_client_metrics_move_under_traffic(tunnels: TunnelFactory) -> None:
    """Issue 16: the client's own metrics, optionally (--metrics-addr)."""
    from e2e_support import wait_until
    from pipegate_client._metrics import outcome_label
    from pipegate_conformance.harness import free_port

    port = free_port()
    tunnel = tunnels.tunnel(
        "metered", client_args=["--metrics-addr", f"127.0.0.1:{port}", "--no-inspect"]
    )

    def scrape() -> dict[str, float]:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
        values: dict[str, float] = {}
        for line in text.splitlines():
            if line.startswith("pipegate_client_") and 'tunnel="metered"' in line:
                name, _, value = line.rpartition(" ")
                values[name] = float(value)
        return values

    before = scrape()
    assert before['pipegate_client_tunnel_up{tunnel="metered"}'] == 1.0
    for _ in range(3):
        assert httpx.post(f"{tunnel.public_url}/echo/m", content=b"12345", timeout=10).is_success
    assert httpx.get(f"{tunnel.public_url}/status/503", timeout=10).status_code == 503
    ok_key = 'pipegate_client_requests_total{status_class="2xx",tunnel="metered"}'

    def moved() -> dict[str, float] | None:
        values = scrape()
        return values if values.get(ok_key, 0) >= before.get(ok_key, 0) + 3 else None

    after = wait_until(moved, timeout=10, what="the client's request counter")
    assert after['pipegate_client_requests_total{status_class="5xx",tunnel="metered"}'] >= 1
    assert after['pipegate_client_request_bytes_total{tunnel="metered"}'] >= 15
    assert after['pipegate_client_request_duration_seconds_count{tunnel="metered"}'] >= 4
    assert after['pipegate_client_open_streams{tunnel="metered"}'] == 0
    assert all("path" not in key and "/echo" not in key for key in after)
    assert outcome_label("websocket closed 1001") == "websocket closed"
    assert outcome_label("local app failed mid-body: connection reset") == (
        "local app failed mid-body"
    )
