"""One inspector for several tunnels of one process (the ``--config`` case): one list
with each exchange's tunnel, every tunnel in the envelope, and replays that go to the
local app of the exchange's own tunnel, never another's."""

from __future__ import annotations

import asyncio
import contextlib
import io
import socket
from collections.abc import AsyncIterator
from typing import Any

import httpx
from aiohttp import web
from pipegate_client import TunnelClient
from pipegate_client._inspect import Inspector

from .conftest import TOKEN, WAIT, ClientHarness, FakeTunnel


class RecordingApp:
    """A local app that answers ``<name>:<path>`` and remembers what reached it."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.hits: list[tuple[str, str]] = []
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        await request.read()
        self.hits.append((request.method, request.path_qs))
        return web.Response(text=f"{self.name}:{request.path_qs}")


@contextlib.asynccontextmanager
async def recording_app(name: str) -> AsyncIterator[RecordingApp]:
    app = RecordingApp(name)
    web_app = web.Application()
    web_app.router.add_route("*", "/{tail:.*}", app.handle)
    runner = web.AppRunner(web_app)
    await runner.setup()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    await web.SockSite(runner, sock).start()
    app.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    try:
        yield app
    finally:
        await runner.cleanup()


class Shared:
    def __init__(
        self,
        inspector: Inspector,
        clients: dict[str, TunnelClient],
        fakes: dict[str, FakeTunnel],
        http: httpx.AsyncClient,
    ) -> None:
        self.inspector = inspector
        self.clients = clients
        self.fakes = fakes
        self.http = http


@contextlib.asynccontextmanager
async def shared_inspector(
    harness: ClientHarness, local_urls: dict[str, str], **caps: Any
) -> AsyncIterator[Shared]:
    """Clients for each ``{id: local_url}``, all recorded by one inspector."""
    inspector = Inspector("127.0.0.1:0", **caps)
    url = await inspector.start()
    clients = {
        id: TunnelClient(
            harness.settings(server_url=harness.server.url(id), local_url=local_url),
            output=io.StringIO(),
            inspector=inspector,
        )
        for id, local_url in local_urls.items()
    }
    tasks = [asyncio.create_task(client.run()) for client in clients.values()]
    try:
        fakes: dict[str, FakeTunnel] = {}
        for _ in clients:
            fake = await harness.server.next_tunnel()
            assert fake.ws.request is not None
            fakes[fake.ws.request.path.strip("/")] = fake
        for client in clients.values():
            await asyncio.wait_for(client.connected.wait(), WAIT)
            assert client.inspector is inspector
        async with httpx.AsyncClient(base_url=url, timeout=WAIT) as http:
            yield Shared(inspector, clients, fakes, http)
    finally:
        for client in clients.values():
            client.stop(grace_period=0.5)
        await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), WAIT)
        await inspector.aclose()


async def finished(http: httpx.AsyncClient, count: int) -> dict[str, Any]:
    for _ in range(200):
        listing: dict[str, Any] = (await http.get("/api/requests")).json()
        if sum(r["finished"] for r in listing["requests"]) >= count:
            return listing
        await asyncio.sleep(0.02)
    raise AssertionError(f"fewer than {count} finished exchanges: {listing}")


async def test_two_tunnels_share_one_list_and_each_exchange_names_its_tunnel(
    harness: ClientHarness,
) -> None:
    async with (
        recording_app("A") as app_a,
        recording_app("B") as app_b,
    ):
        secret_b = app_b.url.replace("http://", "http://user:hunter2@") + "/base"
        urls = {"alpha": app_a.url, "beta": secret_b}
        async with shared_inspector(harness, urls) as shared:
            head, body = await shared.fakes["alpha"].request("GET", "/one")
            assert (head.status, body) == (200, b"A:/one")
            head, body = await shared.fakes["beta"].request("POST", "/two", body=b"x")
            assert (head.status, body) == (200, b"B:/base/two")
            listing = await finished(shared.http, 2)
            assert [(r["tunnel"], r["method"], r["path"]) for r in listing["requests"]] == [
                ("beta", "POST", "/two"),
                ("alpha", "GET", "/one"),
            ]
            assert listing["tunnel"] is None  # several: see "tunnels"
            assert listing["tunnels"] == [
                {
                    "connection_id": "alpha",
                    "public_url": "https://public.example/node",
                    "public_urls": ["https://public.example/node/"],
                    "local_url": app_a.url,
                },
                {
                    "connection_id": "beta",
                    "public_url": "https://public.example/node",
                    "public_urls": ["https://public.example/node/"],
                    "local_url": app_b.url + "/base",
                },
            ]
            text = (await shared.http.get("/api/requests")).text
            assert TOKEN not in text
            assert "hunter2" not in text
            detail = await shared.http.get(f"/api/requests/{listing['requests'][0]['id']}")
            assert detail.json()["tunnel"] == "beta"


async def test_a_replay_goes_to_the_local_app_of_its_own_tunnel_only(
    harness: ClientHarness,
) -> None:
    async with (
        recording_app("A") as app_a,
        recording_app("B") as app_b,
        shared_inspector(harness, {"alpha": app_a.url, "beta": app_b.url}) as shared,
    ):
        await shared.fakes["alpha"].request("GET", "/from-a")
        await shared.fakes["beta"].request("GET", "/from-b")
        listing = await finished(shared.http, 2)
        ids = {r["tunnel"]: r["id"] for r in listing["requests"]}
        app_a.hits.clear()
        app_b.hits.clear()

        answer = (await shared.http.post(f"/api/requests/{ids['beta']}/replay")).json()
        assert answer["replay"]["tunnel"] == "beta"
        assert answer["replay"]["status"] == 200
        assert app_b.hits == [("GET", "/from-b")]
        assert app_a.hits == []

        edited = await shared.http.post(
            f"/api/requests/{ids['alpha']}/replay",
            json={"method": "PUT", "path": "http://127.0.0.1:1/elsewhere?q=1", "body": "hi"},
        )
        assert edited.status_code == 200
        assert edited.json()["replay"]["tunnel"] == "alpha"
        assert app_a.hits == [("PUT", "/elsewhere?q=1")]
        assert app_b.hits == [("GET", "/from-b")]  # A's replay never reached B

        after = (await shared.http.get("/api/requests")).json()["requests"]
        assert [(r["tunnel"], r["replay_of"]) for r in after[:2]] == [
            ("alpha", ids["alpha"]),
            ("beta", ids["beta"]),
        ]


async def test_a_stopped_tunnel_leaves_the_list_and_its_requests_are_not_replayed(
    harness: ClientHarness,
) -> None:
    async with (
        recording_app("A") as app_a,
        recording_app("B") as app_b,
        shared_inspector(harness, {"alpha": app_a.url, "beta": app_b.url}) as shared,
    ):
        await shared.fakes["beta"].request("GET", "/from-b")
        listing = await finished(shared.http, 1)
        beta = shared.clients["beta"]
        beta.stop(grace_period=0.5)
        for _ in range(200):
            if beta.inspector is None:
                break
            await asyncio.sleep(0.02)
        info = (await shared.http.get("/api/requests")).json()
        assert [t["connection_id"] for t in info["tunnels"]] == ["alpha"]
        assert info["tunnel"]["connection_id"] == "alpha"
        assert [r["tunnel"] for r in info["requests"]] == ["beta"]  # still listed
        app_a.hits.clear()
        app_b.hits.clear()
        refused = await shared.http.post(f"/api/requests/{listing['requests'][0]['id']}/replay")
        assert refused.status_code == 409
        assert "'beta'" in refused.json()["error"]
        assert app_a.hits == app_b.hits == []


async def test_the_memory_bound_holds_for_the_whole_process(harness: ClientHarness) -> None:
    async with (
        recording_app("A") as app_a,
        recording_app("B") as app_b,
        shared_inspector(
            harness, {"alpha": app_a.url, "beta": app_b.url}, max_exchanges=3, body_cap=4
        ) as shared,
    ):
        for n in range(3):
            await shared.fakes["alpha"].request("GET", f"/a{n}")
            await shared.fakes["beta"].request("GET", f"/b{n}")
        listing = await finished(shared.http, 3)
        assert [r["path"] for r in listing["requests"]] == ["/b2", "/a2", "/b1"]
        assert listing["capture"]["max_requests"] == 3
        assert shared.inspector.recorder.captured <= 3 * 2 * 4
