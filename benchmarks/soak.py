"""Soak a PipeGate tunnel: mixed traffic while the client and the server are killed
and restarted at random.

Run from the repository root::

    uv run python benchmarks/soak.py                 # 5 minutes
    uv run python benchmarks/soak.py --duration 1    # 1 minute
    uv run python benchmarks/soak.py --no-chaos      # traffic only
    uv run python benchmarks/soak.py --no-chaos --attacks   # traffic beside attackers

Traffic (all at once, each operation with its own deadline): small GETs checked
against the echo, downloads and chunked uploads of 1-32 MiB checked by sha256,
server-sent events checked for order, and WebSocket echo sessions. Chaos: every
8-20 s the client or the server is killed (SIGKILL, or SIGTERM one time in four)
and started again after 0-3 s, the server on the same port.

Every operation ends as exactly one of: ``ok`` (answer verified), ``failed_status``
(a proper error status: 404/502/503/504, expected while a process is down),
``failed_connection`` (refused/reset/cut off with an error, expected when the server
dies), ``failed_other_status`` (any other status: a bug), ``hung`` (no end within
its deadline: a bug, must be 0) or ``corrupted`` (a success whose content is wrong,
e.g. a body cut short without an error: a bug, must be 0). With ``--attacks``,
hostile public callers (``_attacks.py``: ping floods, 16 MiB message bombs,
slowloris heads, header bombs, callers that never read) run beside the traffic, one
episode after another each; their rows say how the server treated them (``cut``,
``held`` by backpressure, or ``open``). At the end the tunnel
must relay again (``recovered``). Prints a table, writes JSON to
``benchmarks/results/`` and exits non-zero if hung, corrupted or not recovered.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import random
import secrets
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from _attacks import ATTACKS
from _common import (
    MiB,
    RssSampler,
    event_loop_runner,
    machine_info,
    print_table,
    rss_mib,
    write_results,
)
from pipegate_conformance.harness import (
    ManagedProcess,
    ProcessGroup,
    client_command,
    free_port,
    origin_command,
    server_command,
    wait_for_http,
    wait_for_port,
)
from pipegate_conformance.origin import pattern_chunks, pattern_sha256

PROPER_STATUSES = {404, 502, 503, 504}
CONNECTION_ERRORS = (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError)
CONNECTION_ID = "soak"


class Corrupted(Exception):
    """A response that claimed success but carried the wrong content."""


class BadStatus(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


@dataclass
class Tally:
    by_kind: dict[str, Counter[str]] = field(default_factory=dict)
    corrupted: list[str] = field(default_factory=list)
    hung: list[str] = field(default_factory=list)
    odd_statuses: Counter[int] = field(default_factory=Counter)

    def add(self, kind: str, outcome: str) -> None:
        self.by_kind.setdefault(kind, Counter())[outcome] += 1

    def total(self) -> Counter[str]:
        total: Counter[str] = Counter()
        for counter in self.by_kind.values():
            total.update(counter)
        return total


@dataclass
class Stack:
    """The processes under test; server and client are replaced on restart."""

    group: ProcessGroup
    token: str
    port: int
    origin_url: str
    server_args: list[str]
    client_args: list[str]
    sampler: RssSampler
    server: ManagedProcess | None = None
    client: ManagedProcess | None = None
    events: list[dict[str, Any]] = field(default_factory=list)

    @property
    def public_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/{CONNECTION_ID}"

    def start_server(self) -> None:
        argv = server_command(self.port, self.token, *self.server_args)
        self.server = self.group.start("server", argv)
        wait_for_port("127.0.0.1", self.port, timeout=30)
        self.sampler.watch("server", self.server.pid)

    def start_client(self) -> None:
        server_url = f"ws://127.0.0.1:{self.port}/{CONNECTION_ID}"
        argv = client_command(self.origin_url, server_url, self.token, *self.client_args)
        self.client = self.group.start("client", argv)
        self.sampler.watch("client", self.client.pid)

    def crash(self, which: str, graceful: bool) -> None:
        process = self.server if which == "server" else self.client
        assert process is not None
        started = time.monotonic()
        if graceful:
            code = process.stop(timeout=35)
        else:
            process.kill()
            code = process.poll()
        self.events.append(
            {
                "t": round(time.time(), 3),
                "what": which,
                "how": "SIGTERM" if graceful else "SIGKILL",
                "exit": code,
                "stop_seconds": round(time.monotonic() - started, 2),
            }
        )


async def _small(session: aiohttp.ClientSession, stack: Stack, index: int) -> None:
    async with session.get(f"{stack.public_url}/echo/soak-{index}?i={index}") as response:
        if response.status != 200:
            raise BadStatus(response.status)
        report = await response.json()
    if report["raw_path"] != f"/echo/soak-{index}" or report["query"] != f"i={index}":
        raise Corrupted(f"small {index}: got {report['raw_path']}?{report['query']}")


async def _download(session: aiohttp.ClientSession, stack: Stack, size: int) -> None:
    digest = hashlib.sha256()
    length = 0
    async with session.get(f"{stack.public_url}/bytes/{size}?chunked=1") as response:
        if response.status != 200:
            raise BadStatus(response.status)
        async for chunk in response.content.iter_chunked(256 * 1024):
            digest.update(chunk)
            length += len(chunk)
    if length != size or digest.hexdigest() != pattern_sha256_cached(size):
        raise Corrupted(f"download {size}: got {length} bytes, sha {digest.hexdigest()[:12]}")


async def _upload(session: aiohttp.ClientSession, stack: Stack, size: int) -> None:
    async def body() -> AsyncIterator[bytes]:
        for piece in pattern_chunks(size):
            yield piece

    async with session.post(f"{stack.public_url}/upload", data=body()) as response:
        if response.status != 200:
            raise BadStatus(response.status)
        answer = await response.json()
    if answer != {"length": size, "sha256": pattern_sha256_cached(size)}:
        raise Corrupted(f"upload {size}: origin got {answer}")


async def _sse(session: aiohttp.ClientSession, stack: Stack, _index: int) -> None:
    seen: list[int] = []
    async with session.get(f"{stack.public_url}/sse?n=5&interval=0.05") as response:
        if response.status != 200:
            raise BadStatus(response.status)
        async for line in response.content:
            if line.startswith(b"data: "):
                seen.append(json.loads(line[6:])["n"])
    if seen != list(range(5)):
        raise Corrupted(f"sse: events {seen}")


async def _websocket(session: aiohttp.ClientSession, stack: Stack, index: int) -> None:
    url = f"ws://127.0.0.1:{stack.port}/{CONNECTION_ID}/ws/echo"
    try:
        ws = await session.ws_connect(url, max_msg_size=0)
    except aiohttp.WSServerHandshakeError as refused:
        raise BadStatus(refused.status) from refused
    async with ws:
        for message in range(10):
            if message % 2:
                payload = os.urandom(random.randint(0, 70_000))
                await ws.send_bytes(payload)
                answer = await ws.receive()
                if answer.type != aiohttp.WSMsgType.BINARY or answer.data != payload:
                    raise _ws_failure(answer, f"ws {index}: binary echo differs")
            else:
                text = f"soak {index}.{message}"
                await ws.send_str(text)
                answer = await ws.receive()
                if answer.type != aiohttp.WSMsgType.TEXT or answer.data != text:
                    raise _ws_failure(answer, f"ws {index}: text echo differs")


def _ws_failure(answer: aiohttp.WSMessage, what: str) -> Exception:
    """A closed socket mid-session is a connection failure; a wrong echo is corruption."""
    if answer.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
        return aiohttp.ClientConnectionError(f"{what}: socket closed ({answer.data})")
    return Corrupted(f"{what}: {answer.type} {str(answer.data)[:80]}")


Operation = Callable[[aiohttp.ClientSession, Stack, int], Awaitable[None]]


async def _worker(
    kind: str,
    operation: Operation,
    stack: Stack,
    tally: Tally,
    deadline: float,
    op_timeout: float,
    argument: Callable[[int], int],
) -> None:
    index = 0
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=10)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        while time.monotonic() < deadline:
            index += 1
            tally.add(kind, "sent")
            try:
                async with asyncio.timeout(op_timeout):
                    await operation(session, stack, argument(index))
            except Corrupted as exc:
                tally.add(kind, "corrupted")
                tally.corrupted.append(str(exc))
            except BadStatus as exc:
                if exc.status in PROPER_STATUSES:
                    tally.add(kind, "failed_status")
                else:
                    tally.add(kind, "failed_other_status")
                    tally.odd_statuses[exc.status] += 1
                await asyncio.sleep(0.05)
            except TimeoutError:
                tally.add(kind, "hung")
                tally.hung.append(f"{kind} #{index} at {time.strftime('%H:%M:%S')}")
            except (*CONNECTION_ERRORS, ConnectionError):
                tally.add(kind, "failed_connection")
                await asyncio.sleep(0.05)
            else:
                tally.add(kind, "ok")


async def _chaos(stack: Stack, deadline: float, rng: random.Random) -> None:
    while True:
        pause = rng.uniform(8, 20)
        if time.monotonic() + pause > deadline - 5:
            return
        await asyncio.sleep(pause)
        which = rng.choice(["client", "server"])
        graceful = rng.random() < 0.25
        await asyncio.to_thread(stack.crash, which, graceful)
        await asyncio.sleep(rng.uniform(0, 3))
        starter = stack.start_server if which == "server" else stack.start_client
        await asyncio.to_thread(starter)


async def _recovered(stack: Stack, within: float = 60.0) -> bool:
    """The tunnel relays again: 20 small GETs and an 8 MiB download all succeed."""
    deadline = time.monotonic() + within
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        while time.monotonic() < deadline:
            try:
                for index in range(20):
                    await _small(session, stack, index)
                await _download(session, stack, 8 * MiB)
            except (BadStatus, *CONNECTION_ERRORS, ConnectionError, TimeoutError):
                await asyncio.sleep(0.5)
                continue
            return True
    return False


async def _attacker(
    name: str, stack: Stack, tally: Tally, deadline: float, op_timeout: float
) -> None:
    attack = ATTACKS[name]
    kind = f"attack:{name}"
    while time.monotonic() < deadline - 2:
        tally.add(kind, "sent")
        try:
            async with asyncio.timeout(op_timeout):
                outcome = await attack(stack.port, CONNECTION_ID)
        except TimeoutError:
            outcome = "open"
        except (ConnectionError, OSError, asyncio.IncompleteReadError):
            outcome = "cut"
        tally.add(kind, outcome)
        await asyncio.sleep(0.5)


async def _soak(
    stack: Stack, seconds: float, chaos: bool, rng: random.Random, attacks: bool = False
) -> Tally:
    tally = Tally()
    deadline = time.monotonic() + seconds
    big = [MiB, 4 * MiB, 16 * MiB, 32 * MiB]
    tasks = [
        *(_worker("small", _small, stack, tally, deadline, 15, lambda i: i) for _ in range(4)),
        _worker("download", _download, stack, tally, deadline, 60, lambda _i: rng.choice(big)),
        _worker("upload", _upload, stack, tally, deadline, 60, lambda _i: rng.choice(big)),
        _worker("sse", _sse, stack, tally, deadline, 20, lambda i: i),
        _worker("websocket", _websocket, stack, tally, deadline, 30, lambda i: i),
    ]
    if chaos:
        tasks.append(_chaos(stack, deadline, rng))
    if attacks:
        tasks.extend(_attacker(name, stack, tally, deadline, 40) for name in ATTACKS)
    await asyncio.gather(*tasks)
    return tally


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=5.0, help="minutes (default 5)")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--no-chaos", action="store_true", help="traffic without kills")
    parser.add_argument(
        "--attacks", action="store_true", help="hostile public callers beside the traffic"
    )
    parser.add_argument("--server-arg", action="append", default=[], help="extra server flag")
    parser.add_argument("--client-arg", action="append", default=[], help="extra client flag")
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else secrets.randbelow(2**32)
    rng = random.Random(seed)
    run = event_loop_runner()
    results: dict[str, Any] = {
        "machine": machine_info(),
        "settings": {
            "duration_minutes": args.duration,
            "seed": seed,
            "chaos": not args.no_chaos,
            "attacks": args.attacks,
            "server_args": args.server_arg,
            "client_args": args.client_arg,
        },
    }
    for size in (MiB, 4 * MiB, 16 * MiB, 32 * MiB, 8 * MiB):
        pattern_sha256_cached(size)

    with ProcessGroup() as group, RssSampler(interval=0.1) as sampler:
        origin_port = free_port()
        origin = group.start("origin", origin_command(origin_port))
        origin_url = f"http://127.0.0.1:{origin_port}"
        wait_for_http(f"{origin_url}/echo/ready", process=origin)
        stack = Stack(
            group,
            "soak-" + secrets.token_urlsafe(16),
            free_port(),
            origin_url,
            args.server_arg,
            args.client_arg,
            sampler,
        )
        stack.start_server()
        stack.start_client()
        if not run(_recovered(stack, within=30)):
            print("soak: the tunnel never came up", file=sys.stderr)
            return 1
        assert stack.server is not None
        assert stack.client is not None
        results["rss_start_mib"] = {
            "server": rss_mib(stack.server.pid),
            "client": rss_mib(stack.client.pid),
        }
        print(
            f"soak: {args.duration} min, seed {seed}, chaos {'on' if not args.no_chaos else 'off'}",
            flush=True,
        )
        sampler.start_phase("soak")
        started = time.monotonic()
        tally = run(_soak(stack, args.duration * 60, not args.no_chaos, rng, args.attacks))
        results["elapsed_seconds"] = round(time.monotonic() - started, 1)
        recovered = run(_recovered(stack))
        results["rss_end_mib"] = {
            "server": rss_mib(stack.server.pid),
            "client": rss_mib(stack.client.pid),
        }
        results["rss_peak_mib"] = {
            "server": sampler.overall_peak("server"),
            "client": sampler.overall_peak("client"),
        }
        results["restarts"] = stack.events
        with contextlib.suppress(Exception):
            results["server_log_tail"] = stack.server.output()[-4000:]
            results["client_log_tail"] = stack.client.output()[-4000:]

    total = tally.total()
    results["by_kind"] = {kind: dict(counter) for kind, counter in tally.by_kind.items()}
    results["total"] = dict(total)
    results["corrupted_examples"] = tally.corrupted[:20]
    results["hung_examples"] = tally.hung[:20]
    results["odd_statuses"] = {str(k): v for k, v in tally.odd_statuses.items()}
    results["recovered"] = recovered
    outcomes = ["sent", "ok", "failed_status", "failed_connection", "failed_other_status",
                "hung", "corrupted", "cut", "held", "open"]  # fmt: skip
    rows = [
        [kind, *(counter.get(o, 0) for o in outcomes)] for kind, counter in tally.by_kind.items()
    ]
    rows.append(["TOTAL", *(total.get(o, 0) for o in outcomes)])
    print_table("Soak outcomes", ["kind", *outcomes], rows)
    print_table(
        "Restarts", ["what", "how", "exit", "stop s"],
        [[e["what"], e["how"], e["exit"], e["stop_seconds"]] for e in stack.events],
    )  # fmt: skip
    start, end, peak = results["rss_start_mib"], results["rss_end_mib"], results["rss_peak_mib"]
    print_table(
        "RSS (MiB)",
        ["", "start", "end", "peak"],
        [[name, _fmt(start[name]), _fmt(end[name]), _fmt(peak[name])]
         for name in ("server", "client")],
    )  # fmt: skip
    if tally.corrupted:
        print("\ncorrupted:", *tally.corrupted[:10], sep="\n  ")
    if tally.odd_statuses:
        print(f"\nunexpected statuses: {dict(tally.odd_statuses)}")
    print(f"\nrecovered after the run: {recovered}")
    path = write_results("soak", results)
    print(f"results: {path}")
    bad = total.get("hung", 0) or total.get("corrupted", 0) or not recovered
    return 1 if bad else 0


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


_SHA_CACHE: dict[int, str] = {}


def pattern_sha256_cached(size: int) -> str:
    if size not in _SHA_CACHE:
        _SHA_CACHE[size] = pattern_sha256(size)
    return _SHA_CACHE[size]


if __name__ == "__main__":
    raise SystemExit(main())
