"""Who may open a tunnel: the token and the connection id are checked before the
WebSocket is accepted, with real HTTP statuses on the upgrade response."""

from __future__ import annotations

import httpx
import pytest
from e2e_support import TunnelFactory
from pipegate_conformance.harness import Tunnel, free_port, server_command
from pipegate_protocol import ProtocolVersion
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

SUBPROTOCOL = ProtocolVersion.V1.value


def _refused_status(url: str, headers: dict[str, str], subprotocols: list[str]) -> int:
    with pytest.raises(InvalidStatus) as refused:
        connect(
            url,
            additional_headers=headers,
            subprotocols=subprotocols,  # type: ignore[arg-type]
            open_timeout=10,
        )
    response = refused.value.response
    assert b"Traceback" not in response.body
    return response.status_code


def test_missing_token_is_401(tunnel: Tunnel) -> None:
    url = tunnel.server_ws_url.rsplit("/", 1)[0] + "/fresh-id"
    assert _refused_status(url, {}, [SUBPROTOCOL]) == 401


@pytest.mark.parametrize("header", ["authorization", "pipegate-client-token"])
def test_wrong_token_is_403(tunnel: Tunnel, header: str) -> None:
    url = tunnel.server_ws_url.rsplit("/", 1)[0] + "/fresh-id"
    value = "Bearer not-the-token" if header == "authorization" else "not-the-token"
    assert _refused_status(url, {header: value}, [SUBPROTOCOL]) == 403
    assert "not-the-token" not in (tunnel.server.output() if tunnel.server else "")


def test_unknown_protocol_version_is_400(tunnel: Tunnel) -> None:
    url = tunnel.server_ws_url.rsplit("/", 1)[0] + "/fresh-id"
    headers = {"authorization": f"Bearer {tunnel.token}"}
    assert _refused_status(url, headers, ["pipegate.v999"]) == 400


def test_duplicate_id_is_409_and_first_tunnel_keeps_working(tunnel: Tunnel) -> None:
    headers = {"authorization": f"Bearer {tunnel.token}"}
    assert _refused_status(tunnel.server_ws_url, headers, [SUBPROTOCOL]) == 409
    response = httpx.get(f"{tunnel.public_url}/echo/still-here", timeout=10)
    assert response.status_code == 200
    assert response.json()["raw_path"] == "/echo/still-here"


def test_second_client_for_a_taken_id_does_not_take_it_over(
    tunnel: Tunnel, tunnels: TunnelFactory
) -> None:
    """A second pipegate-client for ``e2e`` (pointing at a dead local app) is refused
    while the first one keeps serving: requests keep reaching the real origin."""
    intruder = tunnels.client(
        tunnel.server_ws_url, token=tunnel.token, local_url="http://127.0.0.1:9", name="second"
    )
    for index in range(20):
        response = httpx.get(f"{tunnel.public_url}/echo/{index}", timeout=10)
        assert response.status_code == 200, (response.text, intruder.output()[-2000:])
    intruder.stop(timeout=5)


def test_client_with_wrong_token_exits_non_zero(tunnel: Tunnel, tunnels: TunnelFactory) -> None:
    client = tunnels.client(tunnel.server_ws_url.rsplit("/", 1)[0] + "/intruder", token="wrong")
    code = client.wait(timeout=20)
    assert code is not None, f"client still running with a refused token:\n{client.output()}"
    assert code != 0
    assert httpx.get(f"{tunnel.server_base}/intruder/echo/x", timeout=10).status_code == 404


def test_client_without_token_does_not_connect(tunnel: Tunnel, tunnels: TunnelFactory) -> None:
    client = tunnels.client(tunnel.server_ws_url.rsplit("/", 1)[0] + "/tokenless", token="")
    code = client.wait(timeout=20)
    assert code is not None, f"client still running without a token:\n{client.output()}"
    assert code != 0
    assert httpx.get(f"{tunnel.server_base}/tokenless/echo/x", timeout=10).status_code == 404


def test_invalid_connection_id_is_refused(tunnel: Tunnel) -> None:
    url = tunnel.server_ws_url.rsplit("/", 1)[0] + "/_pipegate"
    headers = {"authorization": f"Bearer {tunnel.token}"}
    with pytest.raises(InvalidStatus) as refused:
        connect(url, additional_headers=headers, subprotocols=[SUBPROTOCOL], open_timeout=10)  # type: ignore[list-item]
    assert 400 <= refused.value.response.status_code < 500


def test_server_refuses_to_start_without_a_token(tunnels: TunnelFactory) -> None:
    argv = [arg for arg in server_command(free_port(), "x") if arg not in ("--client-token", "x")]
    server = tunnels.group.start("tokenless-server", argv, env={"PIPEGATE_CLIENT_TOKEN": ""})
    code = server.wait(timeout=15)
    assert code is not None, server.output()
    assert code != 0, server.output()
    assert "token" in server.output().lower()
