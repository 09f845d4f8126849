"""Streaming and flow control, black box (HD-8, FC-4): bodies are relayed as produced,
and a slow reader bounds the memory of the server and the client."""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import time

import httpx
import pytest
from pipegate_conformance.harness import ManagedProcess, Tunnel, group_rss
from pipegate_conformance.origin import pattern_sha256
from pipegate_conformance.support import wait_for_origin_event


@pytest.mark.rule("HD-8")
def test_first_sse_event_arrives_before_the_origin_finishes(tunnel: Tunnel) -> None:
    """HD-8: streamed responses are not buffered: the caller has the first event while
    the origin has not yet produced the last (each event carries its send time)."""
    events: list[tuple[float, dict[str, float]]] = []
    url = f"{tunnel.public_url}/sse?n=3&interval=1.0"
    with httpx.Client(timeout=20.0) as client, client.stream("GET", url) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line.startswith("data: "):
                events.append((time.time(), json.loads(line[6:])))
    assert [event["n"] for _, event in events] == [0, 1, 2]
    first_arrival = events[0][0]
    last_produced = events[-1][1]["t"]
    assert first_arrival < last_produced, "the first event was held back until the end"


# RSS allowance: a slow reader may cost each process its windows (1 MiB per stream by
# default), socket and library buffers; a relay that buffers without bound grows by
# hundreds of MiB in the time this check waits.
_RSS_GROWTH_LIMIT = 64 * 1024 * 1024


def _measured(tunnel: Tunnel) -> dict[str, ManagedProcess]:
    return {
        name: process
        for name, process in (("server", tunnel.server), ("client", tunnel.client))
        if process is not None and process.poll() is None
    }


@pytest.mark.rule("FC-4", "HD-8")
def test_slow_reader_does_not_grow_memory(tunnel: Tunnel) -> None:
    """FC-4/HD-8: a caller that stops reading a 2 GiB download holds back the origin:
    the RSS of the server and of the client (the processes the suite started) stays
    within a fixed allowance while the caller pauses."""
    processes = _measured(tunnel)
    if not processes:
        pytest.skip("no local process to measure (remote server, no client started)")
    if tunnel.server is None:
        processes.pop("server", None)
    baseline = {name: group_rss(p.pid) for name, p in processes.items()}
    peak = dict(baseline)
    size = 2 * 1024 * 1024 * 1024
    with (
        httpx.Client(timeout=30.0) as client,
        client.stream("GET", f"{tunnel.public_url}/bytes/{size}") as response,
    ):
        assert response.status_code == 200
        stream = response.iter_raw(65536)
        read = 0
        for chunk in stream:
            read += len(chunk)
            if read >= 1024 * 1024:
                break
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline:
            for name, process in processes.items():
                peak[name] = max(peak[name], group_rss(process.pid))
            time.sleep(0.1)
        for _ in range(16):  # and a little more reading, slowly
            next(stream)
    growth = {name: peak[name] - baseline[name] for name in processes}
    for name, grown in growth.items():
        assert grown < _RSS_GROWTH_LIMIT, (
            f"{name} grew by {grown / 2**20:.0f} MiB while the caller paused (FC-4)"
        )


@pytest.mark.rule("HD-8", "ER-4")
def test_concurrent_streams_are_independent(tunnel: Tunnel) -> None:
    """Many concurrent requests of different sizes on one tunnel each get their own
    bytes (streams do not mix), and a caller going away mid-stream does not disturb
    the others (ER-4)."""
    sizes = [0, 1, 1000, 70_000, 300_000, 1_500_000, 4_000_000, 123]

    def fetch(size: int) -> tuple[int, str]:
        with httpx.Client(timeout=60.0) as client:
            response = client.get(f"{tunnel.public_url}/bytes/{size}?chunked=1")
            return response.status_code, hashlib.sha256(response.content).hexdigest()

    def abandon() -> None:
        with (
            httpx.Client(timeout=30.0) as client,
            client.stream("GET", f"{tunnel.public_url}/drip?interval=0.01") as response,
        ):
            next(response.iter_raw())

    with concurrent.futures.ThreadPoolExecutor(max_workers=len(sizes) + 2) as pool:
        abandoned = [pool.submit(abandon) for _ in range(2)]
        results = list(pool.map(fetch, sizes))
        for future in abandoned:
            future.result()
    assert results == [(200, pattern_sha256(size)) for size in sizes]


@pytest.mark.rule("ST-7", "LV-3")
def test_caller_gone_cancels_the_local_request(tunnel: Tunnel) -> None:
    """ST-7: a caller that disconnects mid-body makes the server reset the stream and
    the client cancel its request to the local app (the origin sees it go away)."""
    tag = f"gone-{time.monotonic_ns()}"
    with (
        httpx.Client(timeout=20.0) as client,
        client.stream("GET", f"{tunnel.public_url}/drip", params={"tag": tag}) as response,
    ):
        assert response.status_code == 200
        next(response.iter_raw())
    event = wait_for_origin_event(tunnel.origin_url, tag, "cancelled", timeout=15.0)
    assert event is not None, "the local request kept running after the caller left"


@pytest.mark.rule("ST-7", "LV-3")
def test_caller_gone_before_head_cancels_the_local_request(tunnel: Tunnel) -> None:
    """ST-7: a caller that gives up before any response head also cancels the local
    request (the origin's /stall sees its caller go away)."""
    tag = f"stall-{time.monotonic_ns()}"
    with pytest.raises(httpx.ReadTimeout):
        httpx.get(f"{tunnel.public_url}/stall", params={"tag": tag}, timeout=1.0)
    event = wait_for_origin_event(tunnel.origin_url, tag, "cancelled", timeout=15.0)
    assert event is not None, "the local request kept running after the caller left"
