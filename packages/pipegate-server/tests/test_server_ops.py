"""Operations (issue 16): Prometheus metrics, the admin API, the access log, request ids."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import httpx
import pytest
from pipegate_protocol import GoAwayReason
from prometheus_client.parser import text_string_to_metric_families
from websockets.exceptions import InvalidStatus

ADMIN = "admin-token-0123456789"
AUTH = {"Authorization": f"Bearer {ADMIN}"}


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a scrape, by name and sorted labels."""
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


async def scrape(http: httpx.AsyncClient, server: Any) -> dict[Any, float]:
    response = await http.get(f"{server.base}/_pipegate/metrics", headers=AUTH)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    return samples(response.text)


async def test_metrics_move_under_traffic(pg: Any) -> None:
    async with pg.start_server(admin_token=ADMIN) as server, httpx.AsyncClient() as http:
        before = await scrape(http, server)
        assert before[("pipegate_tunnels_connected", ())] == 0
        assert before[("pipegate_tunnel_connects_total", ())] == 0
        async with pg.fake_client(server, "node", pg.echo_handler):
            for _ in range(3):
                response = await http.post(f"{server.base}/node/x", content=b"hello")
                assert response.status_code == 200
            during = await scrape(http, server)
            assert (await http.get(f"{server.base}/nobody/x")).status_code == 404
        # A wrong token: one refused handshake.
        with pytest.raises(InvalidStatus):
            async with pg.fake_client(server, "other", pg.echo_handler, token="wrong-token"):
                pass
        for _ in range(100):
            after = await scrape(http, server)
            if after.get(("pipegate_tunnel_disconnects_total", (("reason", "normal"),))):
                break
            await asyncio.sleep(0.02)
    assert during[("pipegate_tunnels_connected", ())] == 1
    assert during[("pipegate_tunnel_connects_total", ())] == 1
    key = ("pipegate_requests_total", (("status_class", "2xx"), ("token", "shared token")))
    assert during[key] == 3
    assert during[("pipegate_request_bytes_total", ())] == 15
    assert during[("pipegate_response_bytes_total", ())] == 15
    assert during[("pipegate_request_duration_seconds_count", ())] == 3
    assert after[("pipegate_tunnels_connected", ())] == 0
    assert after[("pipegate_open_streams", ())] == 0
    assert after[("pipegate_requests_refused_total", (("status", "404"),))] == 1
    assert after[("pipegate_handshakes_refused_total", (("status", "403"),))] == 1
    assert sum(v for (n, _), v in after.items() if n == "pipegate_tunnel_disconnects_total") == 1
    # No label carries a path or an id without --metrics-per-tunnel.
    for _, labels in after:
        assert all(name != "tunnel" for name, _ in labels)
        assert all("/" not in value for _, value in labels)


async def test_per_tunnel_labels_only_when_asked_for(pg: Any) -> None:
    async with (
        pg.start_server(admin_token=ADMIN, metrics_per_tunnel=True) as server,
        pg.fake_client(server, "node", pg.echo_handler),
        httpx.AsyncClient() as http,
    ):
        assert (await http.get(f"{server.base}/node/")).status_code == 200
        values = await scrape(http, server)
    labels = (("status_class", "2xx"), ("token", "shared token"), ("tunnel", "node"))
    assert values[("pipegate_requests_total", labels)] == 1
    assert values[("pipegate_open_streams", (("tunnel", "node"),))] == 0


async def test_stream_resets_counted_by_reason_and_side(pg: Any) -> None:
    from pipegate_protocol import ResetCode

    async def resetting(client: Any, stream: Any) -> None:
        client.conn.reset_stream(stream.id, ResetCode.UPSTREAM_FAILED, "local app down")
        await client.flush()

    async with (
        pg.start_server(admin_token=ADMIN) as server,
        pg.fake_client(server, "node", resetting),
        httpx.AsyncClient() as http,
    ):
        response = await http.get(f"{server.base}/node/")
        assert response.status_code == 502
        values = await scrape(http, server)
    reset = ("pipegate_stream_resets_total", (("reason", "upstream_failed"), ("side", "client")))
    assert values[reset] == 1
    failed = ("pipegate_requests_total", (("status_class", "5xx"), ("token", "shared token")))
    assert values[failed] == 1


async def test_admin_api_absent_without_an_admin_token(server: Any) -> None:
    async with httpx.AsyncClient() as http:
        for path in ("admin/tunnels", "metrics", "admin/openapi.json", "admin/docs"):
            response = await http.get(f"{server.base}/_pipegate/{path}", headers=AUTH)
            assert response.status_code == 404, path
        response = await http.post(f"{server.base}/_pipegate/admin/reload", headers=AUTH)
        assert response.status_code in (404, 405)


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "admin/tunnels"),
        ("POST", "admin/tunnels/node/kick"),
        ("POST", "admin/reload"),
        ("GET", "metrics"),
    ],
)
async def test_admin_routes_refuse_missing_and_wrong_tokens(
    pg: Any, method: str, path: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    async with (
        pg.start_server(admin_token=ADMIN) as server,
        pg.fake_client(server, "node", pg.echo_handler),
        httpx.AsyncClient() as http,
    ):
        url = f"{server.base}/_pipegate/{path}"
        missing = await http.request(method, url)
        wrong = await http.request(method, url, headers={"Authorization": "Bearer nope"})
        client_token = await http.request(
            method, url, headers={"Authorization": f"Bearer {pg.token}"}
        )
        assert server.gateway.directory.get("node") is not None  # nothing was kicked
    assert missing.status_code == 401
    assert missing.headers["www-authenticate"].startswith("Bearer")
    assert wrong.status_code == 403
    assert client_token.status_code == 403
    assert ADMIN not in caplog.text
    assert "nope" not in caplog.text


async def test_admin_lists_tunnels_with_their_counters(pg: Any) -> None:
    async with (
        pg.start_server(admin_token=ADMIN) as server,
        pg.fake_client(server, "node", pg.echo_handler),
        httpx.AsyncClient() as http,
    ):
        await http.post(f"{server.base}/node/x", content=b"12345")
        response = await http.get(f"{server.base}/_pipegate/admin/tunnels", headers=AUTH)
    assert response.status_code == 200
    [tunnel] = response.json()
    assert tunnel["id"] == "node"
    assert tunnel["token"] == "shared token"
    assert tunnel["peer"] == "127.0.0.1"
    assert tunnel["requests"] == 1
    assert tunnel["bytes_in"] == 5
    assert tunnel["bytes_out"] == 5
    assert tunnel["open_streams"] == 0
    assert tunnel["closed"] is False
    assert tunnel["connected_since"] > 1.7e9


async def test_admin_kick_tells_the_client_and_holds_the_id(pg: Any) -> None:
    async with pg.start_server(admin_token=ADMIN) as server, httpx.AsyncClient() as http:
        async with pg.fake_client(server, "node", pg.echo_handler) as client:
            response = await http.post(
                f"{server.base}/_pipegate/admin/tunnels/node/kick",
                headers=AUTH,
                json={"reason": "maintenance"},
            )
            assert response.status_code == 200
            assert response.json()["ok"] is True
            await asyncio.wait_for(client.ws.wait_closed(), 5)
            goaway = client.conn.goaway_received
            assert goaway is not None
            assert goaway.reason is GoAwayReason.SHUTDOWN
            assert "operator: maintenance" in goaway.message
            assert client.ws.close_code == 1008
        # The client's reconnect within the hold is refused with 429 and Retry-After.
        with pytest.raises(InvalidStatus) as refused:
            async with pg.fake_client(server, "node", pg.echo_handler):
                pass
        assert refused.value.response.status_code == 429
        assert int(refused.value.response.headers["Retry-After"]) >= 29
        missing = await http.post(f"{server.base}/_pipegate/admin/tunnels/ghost/kick", headers=AUTH)
        assert missing.status_code == 404
        values = await scrape(http, server)
    assert values[("pipegate_handshakes_refused_total", (("status", "429"),))] == 1
    assert values[("pipegate_tunnel_disconnects_total", (("reason", "policy_violation"),))] == 1


async def test_admin_reload_rereads_the_tokens_like_sighup(pg: Any, tmp_path: Any) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(pg.token)
    async with (
        pg.start_server(
            admin_token=ADMIN, client_token=pg.token, client_token_file=token_file
        ) as server,
        pg.fake_client(server, "node", pg.echo_handler) as client,
        httpx.AsyncClient() as http,
    ):
        token_file.write_text("a-completely-new-token-42")
        response = await http.post(f"{server.base}/_pipegate/admin/reload", headers=AUTH)
        assert response.status_code == 200
        assert response.json() == {
            "ok": True,
            "detail": "reloaded",
        }
        await asyncio.wait_for(client.ws.wait_closed(), 5)
        assert client.ws.close_code == 4401  # the old token was revoked
        token_file.write_text("")
        failed = await http.post(f"{server.base}/_pipegate/admin/reload", headers=AUTH)
        assert failed.json()["ok"] is False


async def test_openapi_documents_the_admin_api(pg: Any) -> None:
    async with pg.start_server(admin_token=ADMIN) as server, httpx.AsyncClient() as http:
        response = await http.get(f"{server.base}/_pipegate/admin/openapi.json")
    paths = response.json()["paths"]
    assert "/_pipegate/admin/tunnels" in paths
    assert "/_pipegate/admin/tunnels/{connection_id}/kick" in paths
    assert "/_pipegate/admin/reload" in paths
    assert "/_pipegate/metrics" in paths


async def test_request_id_added_unless_the_caller_sent_one(server: Any, pg: Any) -> None:
    async with pg.fake_client(server, "node", pg.echo_handler), httpx.AsyncClient() as http:
        plain = await http.get(f"{server.base}/node/")
        own = await http.get(f"{server.base}/node/", headers={"X-Request-Id": "caller-7"})
    plain_ids = [
        v for n, v in json.loads(plain.headers["x-echo"])["headers"] if n == "x-request-id"
    ]
    own_ids = [v for n, v in json.loads(own.headers["x-echo"])["headers"] if n == "x-request-id"]
    assert len(plain_ids) == 1
    assert len(plain_ids[0]) == 16
    assert own_ids == ["caller-7"]


async def test_access_log_one_line_per_request_with_the_fields(
    pg: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="pipegate.access")
    async with (
        pg.start_server(access_log=True) as server,
        pg.fake_client(server, "node", pg.echo_handler),
        httpx.AsyncClient() as http,
    ):
        await http.post(
            f"{server.base}/node/p?secret=1", content=b"abc", headers={"X-Request-Id": "r1"}
        )
        await http.get(f"{server.base}/ghost/")
    lines = [r for r in caplog.records if r.name == "pipegate.access"]
    assert len(lines) == 2
    ok, missing = lines
    assert (ok.tunnel, ok.method, ok.path, ok.status) == ("node", "POST", "/p", 200)  # type: ignore[attr-defined]
    assert (ok.bytes_in, ok.bytes_out, ok.visitor, ok.request_id) == (3, 3, "127.0.0.1", "r1")  # type: ignore[attr-defined]
    assert ok.duration_ms >= 0  # type: ignore[attr-defined]
    assert "secret" not in ok.getMessage()
    assert (missing.tunnel, missing.status) == ("ghost", 404)  # type: ignore[attr-defined]


def test_json_log_lines_parse_and_carry_extra_fields() -> None:
    import io

    from pipegate_server._logs import configure_logging

    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    stream = io.StringIO()
    try:
        configure_logging("json", "info", stream)
        logging.getLogger("uvicorn.error").info("Started server process [%d]", 7)
        logging.getLogger("pipegate.access").info("line", extra={"tunnel": "node", "status": 200})
        try:
            raise ValueError("boom")
        except ValueError:
            logging.getLogger("pipegate.server").exception("failed")
        logging.getLogger("pipegate.server").debug("hidden at info")
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
    records = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [r["logger"] for r in records] == ["uvicorn.error", "pipegate.access", "pipegate.server"]
    assert records[0]["message"] == "Started server process [7]"
    assert records[0]["time"].endswith("Z")
    assert records[1]["tunnel"] == "node"
    assert records[1]["status"] == 200
    assert "ValueError: boom" in records[2]["exception"]
    assert records[2]["level"] == "ERROR"


def test_unknown_log_format_is_refused() -> None:
    from pipegate_server._logs import configure_logging

    with pytest.raises(ValueError, match="log format"):
        configure_logging("xml")


def test_admin_token_from_env_or_file_never_a_flag(
    tmp_path: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    from pipegate_server.cli import build_parser, parse_addr, settings_from_args

    parser = build_parser()
    with pytest.raises(SystemExit):
        parser.parse_args(["--client-token", "t", "--admin-token", "secret-value"])
    assert "secret-value" not in capsys.readouterr().err
    args = parser.parse_args(["--client-token", "t", "--metrics-addr", "9464"])
    settings = settings_from_args(args, {"PIPEGATE_ADMIN_TOKEN": " from-env "})
    assert settings.admin_token == "from-env"
    assert "from-env" not in repr(settings)
    assert args.metrics_addr == ("127.0.0.1", 9464)
    assert parse_addr("[::1]:9100") == ("::1", 9100)
    token_file = tmp_path / "admin"
    token_file.write_text("from-file\n")
    args = parser.parse_args(["--client-token", "t", "--admin-token-file", str(token_file)])
    settings = settings_from_args(args, {"PIPEGATE_ADMIN_TOKEN": "ignored"})
    assert settings.admin_token is None
    assert settings.admin_token_file == token_file


async def test_visitors_refused_and_open_streams_counted(pg: Any, tmp_path: Any) -> None:
    token = "guarded-token-0123456789"
    path = tmp_path / "tokens.toml"
    path.write_text(
        f'[[tokens]]\nname = "guarded"\ntoken = "{token}"\nids = ["*"]\n'
        '[tokens.access]\ndeny = ["127.0.0.0/8"]\n'
    )
    release = asyncio.Event()

    async def slow(client: Any, stream: Any) -> None:
        await release.wait()
        await pg.echo_handler(client, stream)

    async with (
        pg.start_server(tokens_file=path, admin_token=ADMIN) as server,
        pg.fake_client(server, "shop", pg.echo_handler, token=token),
        pg.fake_client(server, "slow", slow),  # the shared token: no rules
        httpx.AsyncClient(timeout=10) as http,
    ):
        denied = await http.get(f"{server.base}/shop/x")
        assert denied.status_code == 403
        pending = asyncio.ensure_future(http.get(f"{server.base}/slow/x"))
        for _ in range(200):
            during = await scrape(http, server)
            if during[("pipegate_open_streams", ())] == 1:
                break
            await asyncio.sleep(0.01)
        release.set()
        assert (await pending).status_code == 200
        after = await scrape(http, server)
    assert during[("pipegate_open_streams", ())] == 1
    assert after[("pipegate_open_streams", ())] == 0
    assert after[("pipegate_visitors_refused_total", (("status", "403"),))] == 1
    key = ("pipegate_requests_total", (("status_class", "2xx"), ("token", "shared token")))
    assert after[key] == 1
    assert ("pipegate_requests_total", (("status_class", "2xx"), ("token", "guarded"))) not in after


async def test_server_side_resets_counted(pg: Any) -> None:
    async def silent(client: Any, stream: Any) -> None:
        await asyncio.sleep(30)

    async with (
        pg.start_server(admin_token=ADMIN, response_timeout=0.2) as server,
        pg.fake_client(server, "node", silent),
        httpx.AsyncClient(timeout=10) as http,
    ):
        assert (await http.get(f"{server.base}/node/")).status_code == 504
        values = await scrape(http, server)
    assert (
        values[("pipegate_stream_resets_total", (("reason", "timeout"), ("side", "server")))] == 1
    )
    timed_out = ("pipegate_requests_total", (("status_class", "5xx"), ("token", "shared token")))
    assert values[timed_out] == 1
