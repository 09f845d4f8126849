"""TLS: the server serves https and wss with a certificate from a private CA (made by
trustme); the client trusts that CA through ``--ca-file``."""

from __future__ import annotations

import ssl
from collections.abc import Iterator

import httpx
import pytest
from e2e_support import Certificates, MiB, TunnelFactory, expected_sha256, sha256_of, tracked_group
from pipegate_conformance.harness import Tunnel
from websockets.sync.client import connect


@pytest.fixture(scope="module")
def tls_tunnel(origin: str, certs: Certificates) -> Iterator[Tunnel]:
    with tracked_group() as group:
        yield TunnelFactory(group, origin).tunnel("secure", certs=certs)


@pytest.fixture
def https(certs: Certificates) -> Iterator[httpx.Client]:
    with httpx.Client(verify=certs.client_context(), timeout=30) as client:
        yield client


def test_https_request_through_tls_tunnel(tls_tunnel: Tunnel, https: httpx.Client) -> None:
    assert tls_tunnel.public_url.startswith("https://")
    response = https.get(f"{tls_tunnel.public_url}/echo/tls?x=1")
    assert response.status_code == 200
    report = response.json()
    assert report["query"] == "x=1"
    proto = [value for name, value in report["headers"] if name.lower() == "x-forwarded-proto"]
    assert proto == ["https"]


def test_https_download_through_tls_tunnel(tls_tunnel: Tunnel, https: httpx.Client) -> None:
    with https.stream("GET", f"{tls_tunnel.public_url}/bytes/{8 * MiB}") as response:
        assert response.status_code == 200
        assert sha256_of(response.iter_bytes()) == (8 * MiB, expected_sha256(8 * MiB))


def test_wss_echo_through_tls_tunnel(tls_tunnel: Tunnel, certs: Certificates) -> None:
    url = f"{tls_tunnel.server_ws_url}/ws/echo"
    assert url.startswith("wss://")
    with connect(url, ssl=certs.client_context(), open_timeout=10) as ws:
        ws.send("over tls")
        assert ws.recv(timeout=10) == "over tls"


def test_plain_http_to_tls_server_fails(tls_tunnel: Tunnel) -> None:
    plain = tls_tunnel.public_url.replace("https://", "http://")
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"{plain}/echo/x", timeout=5)


def test_untrusted_certificate_is_rejected_by_callers(tls_tunnel: Tunnel) -> None:
    with pytest.raises(httpx.ConnectError) as failed:
        httpx.get(f"{tls_tunnel.public_url}/echo/x", timeout=5)
    assert isinstance(failed.value.__context__, ssl.SSLError) or "CERTIFICATE" in str(failed.value)


def test_client_without_ca_file_does_not_connect(
    tls_tunnel: Tunnel, tunnels: TunnelFactory, certs: Certificates
) -> None:
    """A client that does not trust the server's CA must not open the tunnel."""
    base = tls_tunnel.server_ws_url.rsplit("/", 1)[0]
    client = tunnels.client(f"{base}/untrusting", token=tls_tunnel.token)
    client.wait(timeout=5)
    status = httpx.get(
        f"{tls_tunnel.server_base}/untrusting/echo/x", verify=certs.client_context(), timeout=10
    ).status_code
    assert status == 404, client.output()[-2000:]
