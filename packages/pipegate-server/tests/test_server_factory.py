"""One server factory (_factory): the command line and create_app/create_server build
the same stack; --no-fast-path selects uvicorn's own protocols; uvicorn's WebSocket
lines are filtered by record attributes, and a denied upgrade logs no error."""

from __future__ import annotations

import logging
from typing import Any, cast

import pytest
from pipegate_server import (
    PipeGateServer,
    ServerApp,
    ServerSettings,
    create_app,
    create_server,
)
from pipegate_server._app import PipeGateApp
from pipegate_server._asgi import PEER
from pipegate_server._factory import WebSocketAccessLogFilter
from pipegate_server.cli import build_parser, server_from_args, settings_from_args
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

#: uvicorn options the server sets; both paths must agree on each.
OPTIONS = (
    "host",
    "port",
    "proxy_headers",
    "ws_max_size",
    "ws_per_message_deflate",
    "ws_ping_interval",
    "ws_ping_timeout",
    "server_header",
    "date_header",
    "lifespan",
    "access_log",
    "log_level",
)


def _chain(app: object) -> list[type]:
    """The types of the app and of every app it wraps, outermost first."""
    chain = [type(app)]
    while (inner := getattr(app, "app", None)) is not None and not isinstance(app, PipeGateApp):
        chain.append(type(inner))
        app = inner
    return chain


def _protocols(server: PipeGateServer) -> tuple[list[str], list[str]]:
    config = server.config
    config.load()
    return (
        [cls.__qualname__ for cls in cast(type, config.http_protocol_class).__mro__],
        [cls.__qualname__ for cls in cast(type, config.ws_protocol_class).__mro__],
    )


def _from_cli(*flags: str) -> PipeGateServer:
    args = build_parser().parse_args(["--client-token", "t", "--port", "8123", *flags])
    return server_from_args(args, settings_from_args(args, {}))


@pytest.mark.parametrize("flags", [(), ("--no-fast-path",), ("--http", "h11")])
def test_the_command_line_and_the_factory_build_the_same_stack(flags: tuple[str, ...]) -> None:
    cli = _from_cli(*flags)
    fast_path = "--no-fast-path" not in flags
    http = flags[-1] if flags[:1] == ("--http",) else "auto"
    settings = ServerSettings(client_token="t", fast_path=fast_path)
    api = create_server(settings, port=8123, http=http)
    assert _chain(cli.config.app) == _chain(api.config.app) == [ServerApp, PipeGateApp]
    assert _chain(create_app(settings)) == [ServerApp, PipeGateApp]
    assert _protocols(cli) == _protocols(api)
    for option in OPTIONS:
        assert getattr(cli.config, option) == getattr(api.config, option), option
    assert cli.config.proxy_headers is False  # the app's own middleware does it
    assert type(cli) is type(api) is PipeGateServer


def test_the_fast_path_runs_on_subclasses_of_uvicorn_s_protocols() -> None:
    config = _from_cli().config
    config.load()
    http, ws = cast(type, config.http_protocol_class), cast(type, config.ws_protocol_class)
    assert issubclass(http, HttpToolsProtocol)
    assert http is not HttpToolsProtocol
    assert issubclass(ws, WebSocketsSansIOProtocol)
    assert ws is not WebSocketsSansIOProtocol


def test_no_fast_path_selects_uvicorn_s_own_protocols() -> None:
    args = build_parser().parse_args(["--client-token", "t", "--no-fast-path"])
    settings = settings_from_args(args, {})
    assert settings.fast_path is False
    assert ServerSettings(client_token="t").fast_path is True
    assert "--no-fast-path" in build_parser().format_help()
    config = server_from_args(args, settings).config
    config.load()
    assert config.http_protocol_class is H11Protocol  # every method token, as "auto"
    assert config.ws_protocol_class is WebSocketsSansIOProtocol
    httptools = _from_cli("--no-fast-path", "--http", "httptools").config
    httptools.load()
    assert httptools.http_protocol_class is HttpToolsProtocol


async def test_create_app_applies_proxy_headers_wherever_it_is_mounted() -> None:
    seen: list[dict[str, Any]] = []

    async def inner(scope: Any, receive: Any, send: Any) -> None:
        seen.append(dict(scope))

    app = ServerApp(cast(PipeGateApp, inner), forwarded_allow_ips="127.0.0.1")
    scope = {
        "type": "http",
        "scheme": "http",
        "client": ("127.0.0.1", 5000),
        "headers": [(b"x-forwarded-for", b"203.0.113.9"), (b"x-forwarded-proto", b"https")],
    }
    await app(scope, None, None)  # type: ignore[arg-type]
    assert seen[0]["client"] == ("203.0.113.9", 0)
    assert seen[0]["scheme"] == "https"
    assert seen[0][PEER] == ("127.0.0.1", 5000)
    assert create_app(ServerSettings(client_token="t")).state.gateway is not None


def _record(module: str, level: int) -> logging.LogRecord:
    record = logging.LogRecord("uvicorn.error", level, f"/x/{module}.py", 1, "m", None, None)
    assert record.module == module
    return record


def test_uvicorn_s_websocket_lines_are_filtered_by_module_and_level_not_text() -> None:
    quiet, verbose = WebSocketAccessLogFilter(False), WebSocketAccessLogFilter(True)
    access = _record("websockets_sansio_impl", logging.INFO)
    assert not quiet.filter(access)
    assert verbose.filter(access)
    assert quiet.filter(_record("websockets_sansio_impl", logging.WARNING))
    assert quiet.filter(_record("server", logging.INFO))


async def test_a_denied_upgrade_logs_no_error(
    server: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="uvicorn.error")
    with pytest.raises(InvalidStatus) as refused:
        await connect(server.ws_url("node-1"))  # no token: 401
    assert refused.value.response.status_code == 401
    errors = [r for r in caplog.records if r.name == "uvicorn.error" and r.levelno >= logging.ERROR]
    assert errors == []
