"""A small web app of the kind that breaks behind a path prefix, for the browser tests:
an absolute ``/static/app.js``, a redirect to ``/login``, a ``Path=/`` cookie and a
WebSocket at an absolute path. ``python webapp.py PORT`` serves it on 127.0.0.1."""

from __future__ import annotations

import sys
from typing import Any

import uvicorn

Scope = dict[str, Any]

PAGE = b"""<!doctype html>
<html><head><title>webapp</title><script src="/static/app.js"></script></head>
<body><h1>webapp</h1>
<a id="next" href="next">a relative link</a>
<a id="private" href="private">a private page</a>
<p id="script">script not loaded</p><p id="ws">no websocket</p>
</body></html>
"""

SCRIPT = b"""
document.addEventListener("DOMContentLoaded", () => {
  document.getElementById("script").textContent = "script loaded";
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const ws = new WebSocket(scheme + "://" + location.host + "/ws");
  ws.onopen = () => ws.send("ping from the page");
  ws.onmessage = (event) => {
    document.getElementById("ws").textContent = "websocket says: " + event.data;
  };
  ws.onerror = () => { document.getElementById("ws").textContent = "websocket failed"; };
});
"""


def _cookie(scope: Scope, name: str) -> str:
    for key, value in scope["headers"]:
        if key == b"cookie":
            for part in value.decode("latin-1").split(";"):
                k, _, v = part.strip().partition("=")
                if k == name:
                    return v
    return ""


async def _send(
    send: Any, status: int, body: bytes, ctype: bytes, *extra: tuple[bytes, bytes]
) -> None:
    headers = [(b"content-type", ctype), (b"content-length", str(len(body)).encode()), *extra]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def app(scope: Scope, receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    path = scope["path"]
    if scope["type"] == "websocket":
        await receive()
        if path != "/ws":
            await send({"type": "websocket.close", "code": 1008})
            return
        await send({"type": "websocket.accept"})
        message = await receive()
        if message["type"] == "websocket.receive":
            await send({"type": "websocket.send", "text": f"pong ({message.get('text')})"})
        await receive()
        return
    html = b"text/html; charset=utf-8"
    if path == "/":
        await _send(send, 200, PAGE, html)
    elif path == "/static/app.js":
        await _send(send, 200, SCRIPT, b"text/javascript")
    elif path == "/next":
        await _send(send, 200, b"<h1 id='page'>next page</h1>", html)
    elif path == "/private":
        if _cookie(scope, "session") == "s3cret":
            await _send(send, 200, b"<h1 id='page'>private page</h1>", html)
        else:
            await _send(send, 302, b"", html, (b"location", b"/login"))
    elif path == "/login":
        await _send(
            send,
            200,
            b"<h1 id='page'>logged in</h1><a id='back' href='/private'>back</a>",
            html,
            (b"set-cookie", b"session=s3cret; Path=/; HttpOnly; SameSite=Lax"),
        )
    else:
        await _send(send, 404, b"webapp: not found " + path.encode(), b"text/plain")


if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
