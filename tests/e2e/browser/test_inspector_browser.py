"""The inspector page in a real Chromium (Playwright): requests sent through a real
tunnel appear live, open, replay, edit and replay, copy as curl; a binary body shows as
hex, an image as an image, a WebSocket stream with its messages, and a 5 MiB download
is truncated at the stated cap; two tunnels from one config file on one page, with a
tunnel column and filter. Screenshots of each step are kept in ``artifacts/browser/``."""

from __future__ import annotations

import base64
import json
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path

import httpx
from e2e_support import CLIENT_ARGS, MiB, TunnelFactory, wait_relaying, wait_until, ws_base
from playwright.sync_api import Locator, Page, expect
from websockets.sync.client import connect

#: The client's log line that names the inspector's URL.
INSPECTOR_LINE = re.compile(r"inspector: (http://\S+)")
#: A 1x1 PNG.
PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
)


def row(page: Page, text: str) -> Locator:
    return page.locator("#requests tbody tr", has_text=text)


def test_the_inspector_page_shows_replays_and_edits_live_traffic(
    tunnels: TunnelFactory, page: Page, screenshot: Callable[[str], Path]
) -> None:
    tunnel = tunnels.tunnel("browser", client_args=["--inspect", "127.0.0.1:0"])
    assert tunnel.client is not None
    client = tunnel.client

    def found() -> str | None:
        match = INSPECTOR_LINE.search(client.output())
        return match.group(1) if match else None

    url = wait_until(found, timeout=20.0, what="the inspector URL")
    public = tunnel.public_url
    http = httpx.Client(timeout=30)

    page.goto(url)
    expect(page.locator("#tunnel")).to_contain_text(public)
    expect(page.locator("#caps")).to_contain_text("64.0 KiB each")
    screenshot("01-empty")

    # Live: requests sent after the page loaded appear without a reload.
    before = page.locator("#requests tbody tr").count()
    assert http.post(f"{public}/echo/hello?x=1", json={"greeting": "hi"}).status_code == 200
    assert http.get(f"{public}/status/404").status_code == 404
    expect(row(page, "/echo/hello?x=1")).to_have_count(1)
    expect(row(page, "/status/404")).to_contain_text("404")
    assert page.locator("#requests tbody tr").count() >= before + 2
    expect(page.locator("#live")).not_to_have_class(re.compile(r"\boff\b"))
    screenshot("02-live")

    # Filters by text and by status.
    page.fill("#filter-text", "status")
    expect(row(page, "/echo/hello")).to_have_count(0)
    expect(row(page, "/status/404")).to_have_count(1)
    page.fill("#filter-text", "")
    page.select_option("#filter-status", "4")
    expect(row(page, "/echo/hello")).to_have_count(0)
    expect(row(page, "/status/404")).to_have_count(1)
    page.select_option("#filter-status", "")

    # Open one: heads in wire order, the JSON bodies pretty, the timings.
    row(page, "/echo/hello?x=1").click()
    original = page.locator("#original")
    expect(original).to_contain_text("POST /echo/hello?x=1")
    expect(original.locator(".heads").first).to_contain_text("x-forwarded-for")
    expect(original.locator("pre.body-json").first).to_contain_text('"greeting": "hi"')
    expect(original.locator(".timings")).to_contain_text("first byte")
    screenshot("03-detail")

    # Replay: the result beside the original.
    page.click("#replay")
    replayed = page.locator("#replayed")
    expect(replayed).to_be_visible()
    expect(replayed).to_contain_text("(replay of #")
    expect(replayed.locator(".summary")).to_contain_text("200")
    expect(row(page, "replay of #")).to_have_count(1)
    screenshot("04-replay")

    # Edit and replay: method, path, a header, the body.
    expect(page.locator("#edit-form")).to_be_hidden()
    page.click("#edit-toggle")
    expect(page.locator("#edit-form")).to_be_visible()
    page.fill("#edit-method", "PUT")
    page.fill("#edit-path", "/echo/edited?y=2")
    headers = page.input_value("#edit-headers")
    page.fill("#edit-headers", headers + "\nX-Edited: yes")
    page.fill("#edit-body", "edited body")
    page.click("#edit-send")
    expect(replayed).to_contain_text("PUT /echo/edited?y=2")
    echoed = replayed.locator("pre.body-json").last
    expect(echoed).to_contain_text('"method": "PUT"')
    expect(echoed).to_contain_text("x-edited")
    screenshot("05-edit-replay")

    # Copy as curl (the clipboard may be denied headless: the command is shown too).
    page.click("#copy-curl")
    expect(page.locator("#curl-text")).to_contain_text(f"curl -X 'POST' '{public}/echo/hello?x=1'")

    # A binary body as hex.
    assert http.get(f"{public}/bytes/256").status_code == 200
    row(page, "/bytes/256").click()
    hexdump = page.locator("#original pre.body-hex")
    expect(hexdump).to_contain_text("00000000  00 00 00 00 00 00 00 00")
    screenshot("06-binary-hex")

    # An image as an image.
    spec = {
        "headers": [["content-type", "image/png"]],
        "chunks_b64": [base64.b64encode(PNG).decode()],
    }
    assert http.post(f"{public}/respond", content=json.dumps(spec)).status_code == 200
    row(page, "/respond").click()
    expect(page.locator("#original img.body-image")).to_be_visible()

    # A WebSocket stream with its messages both ways and its close.
    ws_url = public.replace("http://", "ws://", 1) + "/ws/echo"
    with connect(ws_url, open_timeout=10) as websocket:
        websocket.send("hello over ws")
        assert websocket.recv(timeout=10) == "hello over ws"
        websocket.send(b"\x00\x01\x02")
        assert websocket.recv(timeout=10) == b"\x00\x01\x02"
    row(page, "/ws/echo").click()
    expect(page.locator("#edit-form")).to_be_hidden()  # closed when another row opens
    messages = page.locator("#original .ws-messages")
    expect(messages.locator("li.ws-in").first).to_contain_text("hello over ws")
    expect(messages.locator("li.ws-out").first).to_contain_text("hello over ws")
    expect(messages.locator("li.ws-out pre.body-hex")).to_contain_text("00 01 02")
    expect(page.locator("#original .ws-close").first).to_contain_text("1000")
    expect(page.locator("#replay")).to_be_disabled()
    screenshot("08-websocket")

    # A 5 MiB download streams through whole; the page shows 64 KiB and says so.
    size = 5 * MiB
    with http.stream("GET", f"{public}/bytes/{size}") as response:
        assert sum(len(chunk) for chunk in response.iter_bytes()) == size
    row(page, f"/bytes/{size}").click()
    note = page.locator("#original .truncated")
    expect(note).to_contain_text("showing the first 65,536 of 5,242,880 bytes")
    expect(note).to_contain_text("64.0 KiB of each body")
    screenshot("07-truncated")
    http.close()


def test_one_page_shows_every_tunnel_of_a_config_file(
    tunnels: TunnelFactory, tmp_path: Path, page: Page, screenshot: Callable[[str], Path]
) -> None:
    _server, port = tunnels.server()
    config = tmp_path / "pipegate.toml"
    config.write_text(
        f'server_url = "{ws_base(port)}"\ntoken_env = "PG_E2E_TOKEN"\n'
        'inspect = "127.0.0.1:0"\n'
        f'[[tunnels]]\nid = "first"\nlocal_url = "{tunnels.origin_url}"\n'
        f'[[tunnels]]\nid = "second"\nlocal_url = "{tunnels.origin_url}/echo"\n'
    )
    env = {**os.environ, "PG_E2E_TOKEN": tunnels.token}
    command = [sys.executable, "-m", "pipegate_client", "--config", str(config), *CLIENT_ARGS]
    client = tunnels.group.start("client", command, env)
    base = f"http://127.0.0.1:{port}"
    wait_relaying(f"{base}/first", process=client)
    wait_relaying(f"{base}/second", process=client)

    def found() -> str | None:
        match = INSPECTOR_LINE.search(client.output())
        return match.group(1) if match else None

    url = wait_until(found, timeout=20.0, what="the inspector URL")
    page.goto(url)
    expect(page.locator("#tunnel")).to_contain_text("2 tunnels")
    expect(page.locator("#tunnel")).to_contain_text(f"second: {base}/second")
    with httpx.Client(timeout=30) as http:
        assert http.get(f"{base}/first/echo/from-first").status_code == 200
        assert http.get(f"{base}/second/from-second").status_code == 200
    expect(row(page, "/echo/from-first").locator("td.tunnel")).to_have_text("first")
    expect(row(page, "/from-second").locator("td.tunnel")).to_have_text("second")
    tunnel_filter = page.locator("#filter-tunnel")
    expect(tunnel_filter).to_be_visible()
    tunnel_filter.select_option("second")
    expect(row(page, "/echo/from-first")).to_have_count(0)
    expect(row(page, "/from-second")).to_have_count(1)
    screenshot("09-two-tunnels")

    # A replay from the page goes to the second tunnel's local URL (its /echo prefix).
    row(page, "/from-second").first.click()
    page.locator("#replay").click()
    replayed = page.locator("#replayed")
    expect(replayed.locator(".summary")).to_contain_text("[second]")
    expect(replayed.locator("pre.body-json").last).to_contain_text(
        '"raw_path": "/echo/from-second"'
    )
