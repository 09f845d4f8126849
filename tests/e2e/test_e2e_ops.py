"""Operations (issue 16) with real processes: JSON logs, metrics on their own address,
the admin API against a real client, and a certificate reload on SIGHUP."""

from __future__ import annotations

import json
import shutil
import signal
import ssl
import time
from pathlib import Path

import httpx
import pytest
import trustme
from e2e_support import Certificates, TunnelFactory, server_base, wait_relaying, ws_base
from pipegate_conformance.harness import free_port
from prometheus_client.parser import text_string_to_metric_families
from websockets.sync.client import connect

ADMIN = "e2e-admin-token-0123456789"


def _metric(text: str, name: str, **labels: str) -> float:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return sample.value
    raise AssertionError(f"no sample {name} {labels}")


def _admin_file(tmp_path: Path) -> Path:
    path = tmp_path / "admin-token"
    path.write_text(ADMIN + "\n")
    return path


def test_json_logs_banner_access_lines_and_metrics_address(
    tunnels: TunnelFactory, http: httpx.Client, tmp_path: Path
) -> None:
    metrics_port = free_port()
    server, port = tunnels.server(
        "--log-format",
        "json",
        "--access-log",
        "--admin-token-file",
        str(_admin_file(tmp_path)),
        "--metrics-addr",
        f"127.0.0.1:{metrics_port}",
    )
    metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
    before = http.get(metrics_url).text
    assert _metric(before, "pipegate_tunnels_connected") == 0
    client = tunnels.client(f"{ws_base(port)}/node")
    public = f"{server_base(port)}/node"
    wait_relaying(public, process=client)
    ready = http.get(metrics_url).text
    response = http.post(f"{public}/echo/x?token=hidden", content=b"0123456789")
    assert response.status_code == 200
    assert http.get(f"{server_base(port)}/ghost/").status_code == 404
    after = http.get(metrics_url).text
    assert _metric(after, "pipegate_tunnels_connected") == 1
    ok = {"status_class": "2xx", "token": "shared token"}
    assert _metric(after, "pipegate_requests_total", **ok) == 1 + _metric(
        ready, "pipegate_requests_total", **ok
    )
    assert _metric(after, "pipegate_request_bytes_total") == 10
    refused = "pipegate_requests_refused_total"
    assert _metric(after, refused, status="404") == 1 + _metric(ready, refused, status="404")
    # The same metrics behind the admin token on the public port.
    guarded = f"{server_base(port)}/_pipegate/metrics"
    assert http.get(guarded).status_code == 401
    assert http.get(guarded, headers={"Authorization": f"Bearer {ADMIN}"}).status_code == 200

    server.stop()
    client.stop()
    output = server.output()
    records = [json.loads(line) for line in output.splitlines() if line.strip()]
    assert records, output
    for record in records:
        assert {"time", "level", "logger", "message"} <= record.keys()
    [banner] = [r for r in records if r["message"].startswith("PipeGate server")]
    assert banner["listen"] == [server_base(port)]
    assert banner["health"] == f"{server_base(port)}/_pipegate/health"
    assert f"http://127.0.0.1:{metrics_port}/metrics" in banner["metrics"]
    assert not any("Uvicorn running" in r["message"] for r in records)
    access = [r for r in records if r["logger"] == "pipegate.access"]
    posted = [r for r in access if r["method"] == "POST"]
    assert len(posted) == 1
    line = posted[0]
    assert line["tunnel"] == "node"
    assert line["path"] == "/echo/x"
    assert line["status"] == 200
    assert line["bytes_in"] == 10
    assert line["bytes_out"] > 0
    assert line["duration_ms"] >= 0
    assert line["visitor"] == "127.0.0.1"
    assert len(line["request_id"]) == 16
    # The local app got the same request id.
    sent = [v for n, v in response.json()["headers"] if n.lower() == "x-request-id"]
    assert sent == [line["request_id"]]
    assert [r["status"] for r in access if r["tunnel"] == "ghost"] == [404]
    for secret in (tunnels.token, ADMIN, "hidden"):
        assert secret not in output


def test_admin_kick_a_real_client_which_backs_off_then_returns(
    tunnels: TunnelFactory, http: httpx.Client, tmp_path: Path
) -> None:
    _, port = tunnels.server("--admin-token-file", str(_admin_file(tmp_path)), "--kick-hold", "3")
    client = tunnels.client(f"{ws_base(port)}/node")
    public = f"{server_base(port)}/node"
    wait_relaying(public, process=client)
    admin = f"{server_base(port)}/_pipegate/admin"
    auth = {"Authorization": f"Bearer {ADMIN}"}
    [listed] = http.get(f"{admin}/tunnels", headers=auth).json()
    assert listed["id"] == "node"
    kicked = http.post(f"{admin}/tunnels/node/kick", headers=auth, json={"reason": "rotating"})
    assert kicked.status_code == 200
    kicked_at = time.monotonic()
    client.wait_for_output("rotating", timeout=10)  # the client was told why
    # Within the hold the id stays free (the client's retries get 429)...
    time.sleep(1.0)
    assert http.get(f"{admin}/tunnels", headers=auth).json() == []
    # ...and after it the client is back on its own.
    wait_relaying(public, process=client, timeout=30)
    assert time.monotonic() - kicked_at >= 2.5
    assert "429" in client.output()


def _issue(ca: trustme.CA, folder: Path, name: str) -> Certificates:
    leaf = ca.issue_cert("127.0.0.1", "localhost")
    paths = Certificates(folder / f"{name}-ca.pem", folder / "cert.pem", folder / "key.pem")
    ca.cert_pem.write_to_path(str(paths.ca_file))
    leaf.cert_chain_pems[0].write_to_path(str(paths.cert_file))
    for extra in leaf.cert_chain_pems[1:]:
        extra.write_to_path(str(paths.cert_file), append=True)
    leaf.private_key_pem.write_to_path(str(paths.key_file))
    return paths


def test_certificate_reload_on_sighup_keeps_the_tunnel(
    tunnels: TunnelFactory, tmp_path: Path
) -> None:
    old_ca, new_ca = trustme.CA(), trustme.CA()
    old = _issue(old_ca, tmp_path, "old")
    both = tmp_path / "both-ca.pem"
    both.write_bytes(old_ca.cert_pem.bytes() + new_ca.cert_pem.bytes())
    server, port = tunnels.server("--admin-token-file", str(_admin_file(tmp_path)), certs=old)
    client = tunnels.client(f"{ws_base(port, tls=True)}/node", "--ca-file", str(both))
    public = f"{server_base(port, tls=True)}/node"
    old_only = old.client_context()
    wait_relaying(public, verify=old_only, process=client)
    auth = {"Authorization": f"Bearer {ADMIN}"}
    admin = f"{server_base(port, tls=True)}/_pipegate/admin/tunnels"
    [before] = httpx.get(admin, headers=auth, verify=old_only).json()

    new = _issue(new_ca, tmp_path, "new")  # overwrites cert.pem and key.pem
    server.signal(signal.SIGHUP)
    server.wait_for_output("certificate reloaded", timeout=10)
    new_only = ssl.create_default_context(cafile=str(new.ca_file))
    # New handshakes get the new certificate...
    response = httpx.get(f"{public}/echo/after", verify=new_only, timeout=10)
    assert response.status_code == 200
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{public}/echo/x", verify=old_only, timeout=5)
    # ...and the tunnel established before the reload is the same one.
    [after] = httpx.get(admin, headers=auth, verify=new_only).json()
    assert after["connected_since"] == before["connected_since"]
    assert after["requests"] > before["requests"]
    assert "reconnecting" not in client.output()


DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def test_caddy_example_in_front_over_wss_and_https(tunnels: TunnelFactory, tmp_path: Path) -> None:
    """deploy/pipegate.caddy, as deploy/Caddyfile imports it, run by Debian's Caddy with
    its internal CA (``local_certs``) on loopback ports in front of a plain server."""
    caddy = shutil.which("caddy")
    if caddy is None:
        pytest.skip("caddy is not installed (.ci/run installs Debian's)")
    server, port = tunnels.server("--forwarded-allow-ips", "127.0.0.1")
    https_port, http_port = free_port(), free_port()
    data = tmp_path / "caddy"
    config = tmp_path / "Caddyfile"
    config.write_text(
        "{\n"
        "\tadmin off\n"
        "\tskip_install_trust\n"
        "\tlocal_certs\n"
        "\tauto_https disable_redirects\n"
        "\tdefault_bind 127.0.0.1\n"
        f"\thttp_port {http_port}\n"
        f"\tstorage file_system {data}\n"
        "}\n"
        f"import {DEPLOY / 'pipegate.caddy'}\n"
    )
    env = {
        "PIPEGATE_SITE": f"https://127.0.0.1:{https_port}",
        "PIPEGATE_UPSTREAM": f"127.0.0.1:{port}",
        "HOME": str(tmp_path),
        "XDG_DATA_HOME": str(data),
        "XDG_CONFIG_HOME": str(tmp_path / "config"),
    }
    proxy = tunnels.group.start(
        "caddy", [caddy, "run", "--config", str(config), "--adapter", "caddyfile"], env
    )
    root = data / "pki" / "authorities" / "local" / "root.crt"
    wait_relaying_ok = f"https://127.0.0.1:{https_port}/_pipegate/health"
    deadline = time.monotonic() + 30
    while not root.exists() or _status(wait_relaying_ok, root) != 200:
        assert proxy.poll() is None, proxy.output()[-3000:]
        assert time.monotonic() < deadline, proxy.output()[-3000:]
        time.sleep(0.1)
    client = tunnels.client(
        f"wss://127.0.0.1:{https_port}/node", "--ca-file", str(root), name="client"
    )
    public = f"https://127.0.0.1:{https_port}/node"
    trusted = ssl.create_default_context(cafile=str(root))
    wait_relaying(public, verify=trusted, process=client)
    response = httpx.post(f"{public}/echo/through-caddy", content=b"x" * 1000, verify=trusted)
    assert response.status_code == 200
    report = response.json()
    assert report["raw_path"] == "/echo/through-caddy"
    proto = [v for n, v in report["headers"] if n.lower() == "x-forwarded-proto"]
    assert proto == ["https"]
    # A caller's WebSocket through Caddy and the tunnel.
    with connect(f"wss://127.0.0.1:{https_port}/node/ws/echo", ssl=trusted, open_timeout=10) as ws:
        ws.send("via caddy")
        assert ws.recv(timeout=10) == "via caddy"
    # The client was told its public URL as the caller sees it: https through Caddy.
    assert public in client.output()
    assert server.poll() is None


def _status(url: str, ca: Path) -> int:
    try:
        return httpx.get(
            url, verify=ssl.create_default_context(cafile=str(ca)), timeout=3
        ).status_code
    except (httpx.HTTPError, ssl.SSLError):
        return -1
