"""The tunnel endpoint refuses before accepting, with real HTTP statuses."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

SUBPROTOCOL = "pipegate.v1"


async def _refusal(url: str, headers: dict[str, str], subprotocols: list[str]) -> tuple[int, str]:
    status, body, _ = await _refusal_full(url, headers, subprotocols)
    return status, body


async def _refusal_full(
    url: str, headers: dict[str, str], subprotocols: list[str]
) -> tuple[int, str, Any]:
    with pytest.raises(InvalidStatus) as info:
        async with connect(url, additional_headers=headers, subprotocols=subprotocols):  # type: ignore[arg-type]
            pass
    response = info.value.response
    return response.status_code, response.body.decode() if response.body else "", response.headers


async def test_missing_token_is_401(server: Any, caplog: pytest.LogCaptureFixture) -> None:
    status, body, headers = await _refusal_full(server.ws_url("node"), {}, [SUBPROTOCOL])
    assert status == 401
    assert "token" in body
    assert headers["www-authenticate"].lower().startswith("bearer")


async def test_wrong_token_is_403_and_never_logged(
    server: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    secret = "wrong-secret-value-xyz"
    status, body = await _refusal(
        server.ws_url("node"), {"Authorization": f"Bearer {secret}"}, [SUBPROTOCOL]
    )
    assert status == 403
    assert body.strip() == "invalid client token"
    assert "tunnel refused" in caplog.text
    assert secret not in caplog.text
    assert len(caplog.records) == 1, [r.getMessage() for r in caplog.records]


async def test_no_common_version_is_400(server: Any, pg: Any) -> None:
    status, body = await _refusal(
        server.ws_url("node"), {"Authorization": f"Bearer {pg.token}"}, ["pipegate.v9"]
    )
    assert status == 400
    assert "pipegate.v1" in body


@pytest.mark.parametrize("bad_id", ["bad.id", "x" * 65, "_pipegate"])
async def test_invalid_id_is_404(server: Any, pg: Any, bad_id: str) -> None:
    status, _ = await _refusal(
        server.ws_url(bad_id), {"Authorization": f"Bearer {pg.token}"}, [SUBPROTOCOL]
    )
    assert status == 404


async def test_duplicate_id_is_409_and_first_keeps_working(server: Any, pg: Any) -> None:
    async with pg.fake_client(server, "node", pg.echo_handler):
        status, body = await _refusal(
            server.ws_url("node"), {"PipeGate-Client-Token": pg.token}, [SUBPROTOCOL]
        )
        assert status == 409
        assert "node" in body
        async with httpx.AsyncClient() as http:
            response = await http.get(f"{server.base}/node/still")
        assert response.status_code == 200


async def test_client_token_header_is_accepted(server: Any, pg: Any) -> None:
    async with connect(
        server.ws_url("alt"),
        additional_headers={"PipeGate-Client-Token": pg.token},
        subprotocols=[SUBPROTOCOL],  # type: ignore[list-item]
    ) as ws:
        assert ws.subprotocol == SUBPROTOCOL
        hello = await asyncio.wait_for(ws.recv(), 5)
        assert '"hello"' in hello
        assert '"connection_id":"alt"' in hello


def _write_tokens(path: Path, entries: list[tuple[str, str, list[str]]]) -> None:
    lines = []
    for name, token, ids in entries:
        quoted = ", ".join(f'"{i}"' for i in ids)
        lines.append(f'[[tokens]]\nname = "{name}"\ntoken = "{token}"\nids = [{quoted}]\n')
    path.write_text("\n".join(lines))


async def test_tokens_file_patterns_and_reload(pg: Any, tmp_path: Path) -> None:
    tokens = tmp_path / "tokens.toml"
    _write_tokens(tokens, [("alice", "alice-secret", ["dev-*"]), ("bob", "bob-secret", ["prod"])])
    async with pg.start_server(client_token=None, tokens_file=tokens) as server:
        status, body = await _refusal(
            server.ws_url("prod"), {"Authorization": "Bearer alice-secret"}, [SUBPROTOCOL]
        )
        assert status == 403
        assert "prod" in body
        async with (
            pg.fake_client(server, "dev-1", pg.echo_handler, token="alice-secret") as alice,
            pg.fake_client(server, "prod", pg.echo_handler, token="bob-secret") as bob,
        ):
            _write_tokens(tokens, [("bob", "bob-secret", ["prod"])])
            assert server.gateway.reload()
            await asyncio.wait_for(alice.ws.wait_closed(), 5)
            assert alice.ws.close_code == 4401
            assert bob.ws.state.name == "OPEN"
            async with httpx.AsyncClient() as http:
                assert (await http.get(f"{server.base}/prod/x")).status_code == 200
                assert (await http.get(f"{server.base}/dev-1/x")).status_code == 404


async def test_max_tunnels_per_token_is_429(pg: Any) -> None:
    async with (
        pg.start_server(max_tunnels_per_token=1) as server,
        pg.fake_client(server, "one", pg.echo_handler),
    ):
        status, _ = await _refusal(
            server.ws_url("two"), {"Authorization": f"Bearer {pg.token}"}, [SUBPROTOCOL]
        )
        assert status == 429


async def test_repeated_bad_tokens_are_slowed_down(pg: Any) -> None:
    async with pg.start_server(bad_token_budget=1) as server:
        headers = {"Authorization": "Bearer nope"}
        for _ in range(2):
            status, _ = await _refusal(server.ws_url("node"), headers, [SUBPROTOCOL])
            assert status == 403
        tracker = server.gateway.failures
        assert tracker.record_failure("127.0.0.1") > 0  # over budget: refusals now wait
        assert tracker.record_failure("10.0.0.1") == 0  # other addresses are unaffected
        async with pg.fake_client(server, "good", pg.echo_handler) as good:
            assert good.conn.peer_hello is not None


def test_failure_tracker_budget_window_and_cap() -> None:
    from pipegate_server._auth import FailureTracker

    tracker = FailureTracker(2, window=60.0, max_delay=1.0)
    delays = [tracker.record_failure("a") for _ in range(10)]
    assert delays[:2] == [0.0, 0.0]
    assert delays[2] > 0
    assert max(delays) == 1.0
    assert delays == sorted(delays)
