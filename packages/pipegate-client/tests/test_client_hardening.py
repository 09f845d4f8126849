"""Issue 11, client rows: the local-URL prefix as a boundary (row 13), server URLs and
handshake answers that show no tunnel endpoint (row 6), text from the server escaped
and the ws:// warning (row 12). The abuse suite (tests/e2e/abuse/test_abuse_client.py)
runs the same attacks against real processes."""

from __future__ import annotations

import logging

import pytest
from pipegate_client import (
    ClientSettings,
    ConfigurationError,
    NotATunnelEndpointError,
    TokenRefusedError,
    TunnelClient,
    VersionRefusedError,
)
from pipegate_client._client import _RetryableConnectError
from pipegate_client._local import LocalApp, climbs_above_root
from pipegate_client._text import printable
from pipegate_client.cli import EscapingFormatter
from pipegate_client.errors import LocalPathError, LocalRequestError
from websockets.datastructures import Headers
from websockets.exceptions import InvalidStatus
from websockets.http11 import Response

# ---------------------------------------------------------------- row 13: dot segments

CLIMBING = [
    "/..",
    "/../admin",
    "/%2e%2e/admin",
    "/%2E%2E/admin",
    "/%2e%2E/admin",
    "/.%2e/admin",
    "/%2e./admin",
    "/..%2fadmin",
    "/..%2Fadmin",
    "/a/..%2f..%2fadmin",
    "/a/%2e%2e/%2E%2e/admin",
    "/a/b/../../../admin",
    "/./../admin",
    "/.//../admin",
    "/..\\admin",
    "/..%5cadmin",
    "/a/..%5C..%5Cadmin",
]
STAYING = [
    "/",
    "/admin",
    "/a/../admin",
    "/a/b/../../c",
    "/a/./b",
    "/.well-known/x",
    "/...",
    "/..a/b",
    "/a..",
    "/%2e%2e%2e/x",
    "/file.tar.gz",
    "/a%2fb",
]


@pytest.mark.parametrize("path", CLIMBING)
def test_paths_that_climb_above_the_root(path: str) -> None:
    assert climbs_above_root(path)


@pytest.mark.parametrize("path", STAYING)
def test_paths_that_stay_below_the_root(path: str) -> None:
    assert not climbs_above_root(path)


def _app(local_url: str) -> LocalApp:
    return LocalApp(
        ClientSettings(server_url="ws://127.0.0.1:1/node", client_token="t", local_url=local_url)
    )


@pytest.mark.parametrize("path", CLIMBING)
def test_local_prefix_is_a_boundary(path: str) -> None:
    """Behind a local path, a climbing path is refused (400 in the relay), for HTTP and
    WebSocket alike; the error is typed, not told by its text."""
    app = _app("http://app:8000/public/")
    with pytest.raises(LocalPathError) as caught:
        app.http_target(path, "q=1")
    assert isinstance(caught.value, LocalRequestError)
    with pytest.raises(LocalPathError):
        app.websocket_url(path, "")


@pytest.mark.parametrize("path", STAYING)
def test_paths_below_the_prefix_go_as_they_came(path: str) -> None:
    app = _app("http://app:8000/public")
    assert app.http_target(path, "q=1") == f"/public{path}?q=1"
    assert app.websocket_url(path, "") == f"ws://app:8000/public{path}"


def test_without_a_local_path_nothing_is_checked() -> None:
    """Nothing is above the local app's root: the path goes as the caller wrote it."""
    app = _app("http://app:8000")
    assert app.http_target("/../x", "") == "/../x"


# ---------------------------------------------------------------- row 6: server URLs


@pytest.mark.parametrize(
    "url",
    [
        "ws://h//node",
        "ws://h/a//node",
        "ws://h/./node",
        "ws://h/a/../node",
        "ws://h/%2e%2e/node",
        "ws://h/a%2Fb/node",
        "ws://h/a b/node",
    ],
)
def test_server_urls_with_an_ambiguous_route_are_refused(url: str) -> None:
    with pytest.raises(ConfigurationError, match="before the connection id"):
        ClientSettings(server_url=url, client_token="t")


@pytest.mark.parametrize(
    ("url", "connection_id"),
    [
        ("wss://h/node", "node"),
        ("wss://h/node/", "node"),
        ("wss://h/tunnels/node", "node"),
        ("ws://h:8/a/b/node-1/", "node-1"),
        ("wss://h/node?x=1", "node"),
    ],
)
def test_plain_server_urls_still_work(url: str, connection_id: str) -> None:
    assert ClientSettings(server_url=url, client_token="t").connection_id == connection_id


def _refusal(status: int, body: bytes = b"", **headers: str) -> Exception:
    client = TunnelClient(ClientSettings(server_url="ws://127.0.0.1:1/node", client_token="t"))
    response = Response(status, "x", Headers(headers), body)
    return client._refusal(InvalidStatus(response))


@pytest.mark.parametrize(
    ("status", "kind", "exit_code"),
    [
        (401, TokenRefusedError, 3),
        (403, TokenRefusedError, 3),
        (400, VersionRefusedError, 4),
        (200, NotATunnelEndpointError, 5),
        (204, NotATunnelEndpointError, 5),
        (301, NotATunnelEndpointError, 5),
        (302, NotATunnelEndpointError, 5),
        (308, NotATunnelEndpointError, 5),
        (404, NotATunnelEndpointError, 5),
        (405, NotATunnelEndpointError, 5),
        (426, NotATunnelEndpointError, 5),
    ],
)
def test_answers_that_stop_the_client(status: int, kind: type[Exception], exit_code: int) -> None:
    error = _refusal(status)
    assert type(error) is kind
    assert getattr(error, "exit_code", None) == exit_code
    assert getattr(error, "status", None) == status


@pytest.mark.parametrize("status", [408, 409, 425, 429, 500, 502, 503, 504])
def test_answers_that_are_retried(status: int) -> None:
    assert isinstance(_refusal(status), _RetryableConnectError)


def test_a_redirect_is_named_escaped_and_not_followed() -> None:
    error = _refusal(302, b"moved \x1b[2J\n", Location="wss://elsewhere/x")
    assert "to wss://elsewhere/x (not followed)" in str(error)
    assert "\x1b" not in str(error)
    assert "\\x1b[2J" in str(error)


# ---------------------------------------------------------------- row 12: text from the server


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("https://h/node", "https://h/node"),
        ("caf\u00e9 \u65e5\u672c", "caf\u00e9 \u65e5\u672c"),
        ("a\x1b[2Jb", "a\\x1b[2Jb"),
        ("line\nforged", "line\\nforged"),
        ("\r\x07\x7f\x9b", "\\r\\x07\\x7f\\x9b"),
        ("\u202eevil", "\\u202eevil"),
    ],
)
def test_printable_escapes_control_characters(text: str, shown: str) -> None:
    assert printable(text) == shown


def test_log_lines_are_escaped() -> None:
    formatter = EscapingFormatter()
    record = logging.LogRecord(
        "pipegate_client", logging.WARNING, "", 0, "closed (%s)", ("\x1b]0;x\x07",), None
    )
    line = formatter.format(record)
    assert line.endswith("closed (\\x1b]0;x\\x07)")
    plain = logging.LogRecord("pipegate_client", logging.INFO, "", 0, "ok %s", ("/a",), None)
    assert formatter.format(plain).endswith("pipegate_client: ok /a")


@pytest.mark.parametrize(
    ("url", "warned"),
    [
        ("ws://tunnel.example.com/node", True),
        ("ws://192.0.2.7:8080/node", True),
        ("ws://127.0.0.1:8080/node", False),
        ("ws://[::1]:8080/node", False),
        ("ws://localhost/node", False),
        ("wss://tunnel.example.com/node", False),
    ],
)
def test_token_over_plain_ws_to_another_host_warns_once(
    url: str, warned: bool, caplog: pytest.LogCaptureFixture
) -> None:
    client = TunnelClient(ClientSettings(server_url=url, client_token="secret-token"))
    with caplog.at_level(logging.WARNING, logger="pipegate_client"):
        client._warn_plain_token()
        client._warn_plain_token()
    lines = [r.getMessage() for r in caplog.records if "unencrypted" in r.getMessage()]
    assert len(lines) == (1 if warned else 0)
    assert all("secret-token" not in line for line in lines)
