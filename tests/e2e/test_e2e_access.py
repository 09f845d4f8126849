"""Visitor access control through real processes (issue 14): the operator's rules in
the tokens file, enforced by the server before anything reaches the client. The
"other address" is a caller bound to 127.0.0.2."""

from __future__ import annotations

from pathlib import Path

import bcrypt
import httpx
from e2e_support import TunnelFactory, wait_relaying, ws_base

TOKEN = "guarded-e2e-token-0123456789"


def _other_address() -> httpx.Client:
    return httpx.Client(transport=httpx.HTTPTransport(local_address="127.0.0.2"), timeout=20)


def test_basic_auth_and_address_rules_from_the_tokens_file(
    tunnels: TunnelFactory, tmp_path: Path
) -> None:
    hashed = bcrypt.hashpw(b"open sesame", bcrypt.gensalt(4)).decode()
    tokens = tmp_path / "tokens.toml"
    tokens.write_text(
        f'[[tokens]]\nname = "shop"\ntoken = "{TOKEN}"\nids = ["shop"]\n'
        f'[tokens.access]\nusers = {{ admin = "{hashed}" }}\ndeny = ["127.0.0.2"]\n'
    )
    server, port = tunnels.server("--tokens-file", str(tokens))
    client = tunnels.client(f"{ws_base(port)}/shop", token=TOKEN, name="shop")
    base = f"http://127.0.0.1:{port}/shop"
    wait_relaying(base, process=client, ok=(401,))
    with httpx.Client(timeout=20) as http:
        missing = http.get(f"{base}/echo/x")
        assert missing.status_code == 401
        assert missing.headers["www-authenticate"].startswith("Basic")
        assert http.get(f"{base}/echo/x", auth=("admin", "wrong")).status_code == 401
        ok = http.get(f"{base}/echo/in", auth=("admin", "open sesame"))
        assert ok.status_code == 200
        assert ok.json()["raw_path"] == "/echo/in"
    with _other_address() as other:
        refused = other.get(f"{base}/echo/x", auth=("admin", "open sesame"))
        assert refused.status_code == 403
    # Only the admitted request reached the client (one access line per request).
    lines = [line for line in client.output().splitlines() if " GET /echo/" in line]
    assert [line.split(" GET ")[1].split()[0] for line in lines] == ["/echo/in"]
    # No password or hash in any log.
    for process in (server, client):
        assert "open sesame" not in process.output()
        assert hashed not in process.output()


def test_a_config_with_a_password_protected_tunnel_and_an_open_one(
    tunnels: TunnelFactory, tmp_path: Path
) -> None:
    """The README's example: two tunnels from one file, one behind a password declared
    by the client (hashed before it leaves, AC-2), combined with the operator's rules
    for the same token (deny 127.0.0.2, AC-5)."""
    import os
    import sys

    tokens = tmp_path / "tokens.toml"
    tokens.write_text(
        f'[[tokens]]\nname = "team"\ntoken = "{TOKEN}"\nids = ["*"]\n'
        f'[tokens.access]\ndeny = ["127.0.0.2"]\n'
    )
    _server, port = tunnels.server("--tokens-file", str(tokens))
    config = tmp_path / "pipegate.toml"
    config.write_text(
        f'server_url = "{ws_base(port)}"\ntoken_env = "PG_E2E_TOKEN"\ninspect = false\n'
        f'[[tunnels]]\nid = "private"\nlocal_url = "{tunnels.origin_url}"\n'
        '[tunnels.access]\npasswords = { guest = "${PG_GUEST_PASSWORD}" }\n'
        f'[[tunnels]]\nid = "public"\nlocal_url = "{tunnels.origin_url}"\n'
    )
    env = {**os.environ, "PG_E2E_TOKEN": TOKEN, "PG_GUEST_PASSWORD": "let me in"}
    client = tunnels.group.start(
        "client", [sys.executable, "-m", "pipegate_client", "--config", str(config)], env
    )
    base = f"http://127.0.0.1:{port}"
    wait_relaying(f"{base}/public", process=client)
    wait_relaying(f"{base}/private", process=client, ok=(401,))
    with httpx.Client(timeout=20) as http:
        assert http.get(f"{base}/public/echo/x").status_code == 200
        assert http.get(f"{base}/private/echo/x").status_code == 401
        assert http.get(f"{base}/private/echo/x", auth=("guest", "nope")).status_code == 401
        ok = http.get(f"{base}/private/echo/in", auth=("guest", "let me in"))
        assert ok.json()["raw_path"] == "/echo/in"
    with _other_address() as other:  # the operator's deny covers both tunnels
        assert other.get(f"{base}/public/echo/x").status_code == 403
        assert other.get(f"{base}/private/echo/x", auth=("guest", "let me in")).status_code == 403
    assert "let me in" not in client.output()
    assert TOKEN not in client.output()
