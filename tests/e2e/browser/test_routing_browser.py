"""Issue 12 in a real browser (Debian's Chromium through Playwright): a web app with an
absolute ``/static/app.js``, a 302 to ``/login``, a ``Path=/`` cookie and a WebSocket
at an absolute path works entirely in host mode (``http://web.localhost:<port>/``,
which Chromium resolves to loopback by itself); in path mode the trailing-slash
redirect, the redirect and the cookie work thanks to the server's rewrites (RT-1,
RT-7). Screenshots of each step land in ``artifacts/browser/``."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from e2e_support import TunnelFactory, wait_until, ws_base
from pipegate_conformance.harness import free_port, wait_for_http
from playwright.sync_api import BrowserContext, Page, expect

WEBAPP = Path(__file__).with_name("webapp.py")


@pytest.fixture
def web_tunnel(tunnels: TunnelFactory) -> int:
    """A server routing *.localhost by host, a client for tunnel ``web`` in front of the
    web app; returns the server's port."""
    app_port = free_port()
    app = tunnels.group.start("webapp", [sys.executable, str(WEBAPP), str(app_port)])
    wait_for_http(f"http://127.0.0.1:{app_port}/next", process=app)
    _server, port = tunnels.server("--domain", "localhost")
    client = tunnels.client(f"{ws_base(port)}/web", local_url=f"http://127.0.0.1:{app_port}")
    client.wait_for_output(f"http://web.localhost:{port}/", timeout=20)
    return port


def test_host_mode_serves_the_whole_app(
    web_tunnel: int, page: Page, context: BrowserContext, screenshot: Callable[[str], Path]
) -> None:
    base = f"http://web.localhost:{web_tunnel}"
    page.goto(f"{base}/")
    expect(page.locator("#script")).to_have_text("script loaded")  # absolute /static/app.js
    expect(page.locator("#ws")).to_have_text("websocket says: pong (ping from the page)")
    screenshot("host-home")
    page.goto(f"{base}/private")  # 302 to /login, which sets the cookie
    assert page.url == f"{base}/login"
    expect(page.locator("#page")).to_have_text("logged in")
    page.click("#back")  # an absolute link in the body: fine on the tunnel's own origin
    expect(page.locator("#page")).to_have_text("private page")
    screenshot("host-private")
    (cookie,) = context.cookies()
    assert (cookie["name"], cookie["path"], cookie["domain"]) == ("session", "/", "web.localhost")


def test_path_mode_redirects_cookies_and_the_trailing_slash(
    web_tunnel: int, page: Page, context: BrowserContext, screenshot: Callable[[str], Path]
) -> None:
    base = f"http://127.0.0.1:{web_tunnel}/web"
    page.goto(base)  # no trailing slash: 308 to /web/
    assert page.url == f"{base}/"
    expect(page.locator("h1")).to_have_text("webapp")
    page.click("#next")  # a relative link resolves below the prefix
    assert page.url == f"{base}/next"
    expect(page.locator("#page")).to_have_text("next page")
    page.goto(f"{base}/private")  # Location: /login became /web/login
    assert page.url == f"{base}/login"
    expect(page.locator("#page")).to_have_text("logged in")
    (cookie,) = context.cookies()
    assert (cookie["name"], cookie["path"]) == ("session", "/web/")  # Path=/ confined
    page.goto(f"{base}/private")
    expect(page.locator("#page")).to_have_text("private page")
    screenshot("path-private")
    # The cookie stays inside the tunnel's prefix: another id on the same origin
    # never receives it.
    page.goto(f"http://127.0.0.1:{web_tunnel}/other/private")
    wait_until(lambda: page.content() or None, timeout=10, what="the 404 page")
    assert "no tunnel is connected for id 'other'" in page.content()
