"""HTTP semantics through a real tunnel: what the caller sends reaches the local app
as sent, and what the local app answers reaches the caller as answered."""

from __future__ import annotations

import concurrent.futures
import json
import time
from typing import Any

import httpx
import pytest
from e2e_support import TunnelFactory
from pipegate_conformance.harness import Tunnel, free_port, origin_command, wait_for_http
from pipegate_conformance.origin import pattern_bytes

Report = dict[str, Any]


def _echo(http: httpx.Client, tunnel: Tunnel, method: str, path: str, **kwargs: Any) -> Report:
    response = http.request(method, f"{tunnel.public_url}{path}", **kwargs)
    assert response.status_code == 200, response.text[:300]
    report: Report = response.json()
    return report


def _headers(report: Report, name: str) -> list[str]:
    return [value for key, value in report["headers"] if key.lower() == name]


def test_server_sent_events_stream_as_produced(tunnel: Tunnel, http: httpx.Client) -> None:
    """The first event reaches the caller before the origin produced the last one."""
    count, interval = 5, 0.4
    events: list[tuple[float, Report]] = []
    url = f"{tunnel.public_url}/sse?n={count}&interval={interval}"
    with http.stream("GET", url) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line.startswith("data: "):
                events.append((time.time(), json.loads(line[len("data: ") :])))
    assert [event["n"] for _, event in events] == list(range(count))
    first_arrived = events[0][0]
    last_produced = events[-1][1]["t"]
    assert first_arrived < last_produced, (
        f"first event arrived {first_arrived - last_produced:+.3f}s after the last was produced:"
        " the response was buffered"
    )


def test_duplicate_query_keys_keep_their_order(tunnel: Tunnel, http: httpx.Client) -> None:
    report = _echo(http, tunnel, "GET", "/echo/q?a=1&b=2&a=3&a=&c=%20x%2B")
    assert report["query"] == "a=1&b=2&a=3&a=&c=%20x%2B"


def test_two_set_cookie_headers_stay_two(tunnel: Tunnel, http: httpx.Client) -> None:
    response = http.get(f"{tunnel.public_url}/cookies")
    assert response.status_code == 200
    # Each confined to the tunnel's path (test_e2e_rewrite), still two and in order.
    assert response.headers.get_list("set-cookie") == ["a=1; Path=/e2e/", "b=2; Path=/e2e/"]
    assert set(response.cookies.keys()) == {"a", "b"}


def test_cookies_are_not_remembered_for_other_callers(tunnel: Tunnel) -> None:
    """The client must not keep a cookie jar: cookies the local app set for one caller
    never reach the local app on another caller's request."""
    assert httpx.get(f"{tunnel.public_url}/cookies", timeout=10).status_code == 200
    response = httpx.get(f"{tunnel.public_url}/echo/cookieless", timeout=10)
    assert _headers(response.json(), "cookie") == []


def test_duplicate_request_headers_stay_separate_and_ordered(
    tunnel: Tunnel, http: httpx.Client
) -> None:
    report = _echo(http, tunnel, "GET", "/echo/h", headers=[("x-dup", "one"), ("x-dup", "two")])
    assert _headers(report, "x-dup") == ["one", "two"]


def test_head_answers_headers_without_body(tunnel: Tunnel, http: httpx.Client) -> None:
    response = http.head(f"{tunnel.public_url}/bytes/1048576")
    assert response.status_code == 200
    assert response.headers["content-length"] == "1048576"
    assert response.content == b""
    # The tunnel still serves a normal request on the same keep-alive connection.
    assert http.get(f"{tunnel.public_url}/bytes/10").content == pattern_bytes(10)


@pytest.mark.parametrize("status", [204, 304])
def test_bodiless_statuses(tunnel: Tunnel, http: httpx.Client, status: int) -> None:
    response = http.get(f"{tunnel.public_url}/status/{status}")
    assert response.status_code == status
    assert response.content == b""
    follow_up = http.get(f"{tunnel.public_url}/echo/after")
    assert follow_up.status_code == 200


def test_304_keeps_validators(tunnel: Tunnel, http: httpx.Client) -> None:
    spec = {"status": 304, "headers": [["etag", '"v1"'], ["cache-control", "max-age=60"]]}
    response = http.post(f"{tunnel.public_url}/respond", json=spec)
    assert response.status_code == 304
    assert response.headers["etag"] == '"v1"'
    assert response.headers["cache-control"] == "max-age=60"
    assert response.content == b""


def test_percent_encoded_path_arrives_raw(tunnel: Tunnel, http: httpx.Client) -> None:
    path = "/echo/a%20b/c%2Fd/%E2%82%AC/semi%3Bcolon/plus+sign"
    report = _echo(http, tunnel, "GET", path)
    assert report["raw_path"] == path


def test_webdav_propfind_with_body(tunnel: Tunnel, http: httpx.Client) -> None:
    body = b'<?xml version="1.0"?><propfind xmlns="DAV:"><allprop/></propfind>'
    report = _echo(
        http,
        tunnel,
        "PROPFIND",
        "/echo/dav/folder/",
        headers={"depth": "1", "content-type": "application/xml"},
        content=body,
    )
    assert report["method"] == "PROPFIND"
    assert report["body_length"] == len(body)
    assert _headers(report, "depth") == ["1"]


@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "MKCOL"])
def test_every_method_is_relayed(tunnel: Tunnel, http: httpx.Client, method: str) -> None:
    assert _echo(http, tunnel, method, "/echo/m")["method"] == method


def test_forwarding_headers_added_and_hop_by_hop_dropped(
    tunnel: Tunnel, http: httpx.Client
) -> None:
    report = _echo(
        http, tunnel, "GET", "/echo/fwd", headers={"keep-alive": "timeout=5", "x-keep": "yes"}
    )
    authority = tunnel.server_base.split("://", 1)[1]
    origin_authority = tunnel.origin_url.split("://", 1)[1]
    assert _headers(report, "x-forwarded-for") == ["127.0.0.1"]
    assert _headers(report, "x-forwarded-proto") == ["http"]
    assert _headers(report, "x-forwarded-host") == [authority]
    assert _headers(report, "x-forwarded-prefix") == [f"/{tunnel.connection_id}"]
    assert _headers(report, "host") == [origin_authority]
    assert _headers(report, "keep-alive") == []
    assert _headers(report, "x-keep") == ["yes"]


def test_bare_connection_id_reaches_root(tunnel: Tunnel, http: httpx.Client) -> None:
    response = http.get(f"{tunnel.public_url}/")
    assert response.status_code == 200
    assert "Hello through PipeGate" in response.text


def test_unknown_id_is_404_naming_it(tunnel: Tunnel, http: httpx.Client) -> None:
    response = http.get(f"{tunnel.server_base}/nobody-here/echo/x")
    assert response.status_code == 404
    assert "nobody-here" in response.text
    assert response.headers["content-type"].startswith("text/plain")
    assert "Traceback" not in response.text


def test_health_endpoint(tunnel: Tunnel, http: httpx.Client) -> None:
    assert http.get(f"{tunnel.server_base}/_pipegate/health").status_code == 200


def test_concurrent_requests_do_not_mix(tunnel: Tunnel) -> None:
    """32 requests in flight at once each get their own answer."""

    def one(index: int) -> str:
        with httpx.Client(timeout=30) as client:
            return str(client.get(f"{tunnel.public_url}/echo/n{index}?i={index}").json()["query"])

    with concurrent.futures.ThreadPoolExecutor(32) as pool:
        results = list(pool.map(one, range(64)))
    assert results == [f"i={index}" for index in range(64)]


def test_extension_method_is_relayed(tunnels: TunnelFactory) -> None:
    """A method token no HTTP parser table knows (RFC 9110 allows any token) reaches a
    local app that accepts it (an origin on uvicorn's h11 parser)."""
    port = free_port()
    origin = tunnels.group.start("h11-origin", origin_command(port, http="h11"))
    wait_for_http(f"http://127.0.0.1:{port}/echo/ready", process=origin)
    tunnel = TunnelFactory(tunnels.group, f"http://127.0.0.1:{port}").tunnel("methods")
    for method in ("PURGE", "X-CUSTOM-METHOD", "REPORT"):
        response = httpx.request(method, f"{tunnel.public_url}/echo/m", timeout=10)
        assert response.status_code == 200, response.text[:300]
        assert response.json()["method"] == method
