"""The request inspector through real processes: a server, a client with
``--inspect``, the shared origin; requests go through the public URL and the
inspector shows and replays them."""

from __future__ import annotations

import base64
import json
import re
import socket

import httpx
from e2e_support import TunnelFactory, wait_until
from pipegate_conformance.harness import ManagedProcess

#: The client's log line that names the inspector's URL.
INSPECTOR_LINE = re.compile(r"inspector: (http://\S+)")


def inspector_url(client: ManagedProcess) -> str:
    """The URL the client printed for its inspector (waits for the line)."""

    def found() -> str | None:
        match = INSPECTOR_LINE.search(client.output())
        return match.group(1) if match else None

    return wait_until(found, timeout=20.0, what="the inspector URL in the client's output")


def test_requests_through_the_tunnel_appear_and_replay(tunnels: TunnelFactory) -> None:
    tunnel = tunnels.tunnel("inspected", client_args=["--inspect", "127.0.0.1:0"])
    assert tunnel.client is not None
    url = inspector_url(tunnel.client)
    with httpx.Client(timeout=20) as http:
        answer = http.post(f"{tunnel.public_url}/echo/first?x=1", content=b"through the tunnel")
        assert answer.status_code == 200

        def listed() -> list[dict[str, object]] | None:
            requests = http.get(f"{url}/api/requests").json()["requests"]
            mine = [r for r in requests if r["path"] == "/echo/first" and r["finished"]]
            return mine or None

        (summary,) = wait_until(listed, timeout=10.0, what="the request in the inspector")
        detail = http.get(f"{url}/api/requests/{summary['id']}").json()
        assert detail["query"] == "x=1"
        assert base64.b64decode(detail["request"]["body"]["base64"]) == b"through the tunnel"
        names = [name.lower() for name, _ in detail["request"]["headers"]]
        assert "x-forwarded-for" in names
        assert "authorization" not in names

        replayed = http.post(f"{url}/api/requests/{summary['id']}/replay")
        assert replayed.status_code == 200, replayed.text
        echoed = json.loads(
            base64.b64decode(replayed.json()["replay"]["response"]["body"]["base64"])
        )
        assert echoed["body_length"] == len(b"through the tunnel")
        # The token is in no answer of the inspector and in none of the client's lines.
        for text in (http.get(f"{url}/api/requests").text, http.get(url).text):
            assert tunnel.token not in text
    assert tunnel.token not in tunnel.client.output()


def test_the_default_inspector_is_on_loopback_and_no_inspect_turns_it_off(
    tunnels: TunnelFactory,
) -> None:
    tunnel = tunnels.tunnel("defaultinspect")
    assert tunnel.client is not None
    output = tunnel.client.output()
    match = INSPECTOR_LINE.search(output)
    if match is not None:  # 4040..4049 may all be taken by other clients on this machine
        assert match.group(1).startswith("http://127.0.0.1:40")
        assert httpx.get(f"{match.group(1)}/api/requests", timeout=5).status_code == 200
    else:
        assert "no inspector: --inspect: cannot listen" in output

    off = tunnels.tunnel("noinspect", client_args=["--no-inspect"])
    assert off.client is not None
    assert INSPECTOR_LINE.search(off.client.output()) is None
    assert "no inspector" not in off.client.output()


def test_an_explicit_address_that_is_taken_tries_the_next_ports(tunnels: TunnelFactory) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        tunnel = tunnels.tunnel("nextport", client_args=["--inspect", f"127.0.0.1:{port}"])
        assert tunnel.client is not None
        url = inspector_url(tunnel.client)
        got = int(url.rsplit(":", 1)[1])
        assert port < got < port + 10
        assert httpx.get(f"{url}/api/requests", timeout=5).status_code == 200
