"""Benchmark a PipeGate tunnel against the same origin app called directly.

Run from the repository root (it starts its own origin, server and client on free
loopback ports and stops them at the end)::

    uv run python benchmarks/bench_tunnel.py            # full run, a few minutes
    uv run python benchmarks/bench_tunnel.py --quick    # smoke run, ~30 s

Measures, in one run:

1. small-GET throughput at concurrency 64 (``/bytes/128``), tunnel vs direct;
   target: tunnel >= 0.25x direct;
2. latency at concurrency 1, p50/p99, tunnel vs direct; target: added p50 < 1 ms;
3. a 1 GiB upload and a 1 GiB download through the tunnel, sha256 checked, with the
   peak RSS of the server and of the client (``VmRSS`` polled every 20 ms, and
   ``VmHWM``); target: each < 100 MiB.

Prints a table and writes JSON to ``benchmarks/results/``. The load generator is an
asyncio/aiohttp client (on uvloop when installed) with bounded request counts and
time; if ``wrk`` is on PATH, its throughput figures are added too.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
from _common import (
    GiB,
    MiB,
    RssSampler,
    cpu_seconds,
    event_loop_runner,
    hwm_mib,
    machine_info,
    print_table,
    rss_mib,
    run_load,
    run_wrk,
    write_results,
)
from pipegate_conformance.harness import HarnessError, ProcessGroup, start_tunnel
from pipegate_conformance.origin import pattern_chunks, pattern_sha256

SMALL_PATH = "/bytes/128"
TARGET_RATIO = 0.25
TARGET_ADDED_P50_MS = 1.0
TARGET_RSS_MIB = 100.0


async def _upload(url: str, size: int) -> dict[str, Any]:
    digest = hashlib.sha256()

    async def body() -> AsyncIterator[bytes]:
        for piece in pattern_chunks(size):
            digest.update(piece)
            yield piece

    started = time.perf_counter()
    timeout = aiohttp.ClientTimeout(total=None, sock_read=60)
    async with (
        aiohttp.ClientSession(timeout=timeout) as session,
        session.post(url, data=body(), headers={"content-type": "application/octet-stream"}) as r,
    ):
        text = await r.text()
        status = r.status
    elapsed = time.perf_counter() - started
    result: dict[str, Any] = {"status": status, "seconds": round(elapsed, 2)}
    result["mib_per_s"] = round(size / MiB / elapsed, 1)
    ok = False
    if status == 200:
        answer = json.loads(text)
        ok = answer == {"length": size, "sha256": digest.hexdigest()}
        result["answer"] = answer
    else:
        result["answer"] = text[:300]
    result["ok"] = ok
    return result


async def _download(url: str, size: int, expected: str) -> dict[str, Any]:
    digest = hashlib.sha256()
    length = 0
    started = time.perf_counter()
    timeout = aiohttp.ClientTimeout(total=None, sock_read=60)
    error = None
    status = 0
    try:
        async with aiohttp.ClientSession(timeout=timeout) as session, session.get(url) as r:
            status = r.status
            async for chunk in r.content.iter_chunked(256 * 1024):
                digest.update(chunk)
                length += len(chunk)
    except (aiohttp.ClientError, TimeoutError) as exc:
        error = repr(exc)
    elapsed = time.perf_counter() - started
    return {
        "status": status,
        "seconds": round(elapsed, 2),
        "mib_per_s": round(length / MiB / elapsed, 1),
        "length": length,
        "error": error,
        "ok": status == 200 and length == size and digest.hexdigest() == expected,
    }


def _mib(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short smoke run")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--requests", type=int, help="requests per throughput run")
    parser.add_argument("--latency-requests", type=int, help="requests per latency run")
    parser.add_argument("--big", type=int, help="bytes of the big upload/download")
    parser.add_argument("--server-arg", action="append", default=[], help="extra server flag")
    parser.add_argument("--client-arg", action="append", default=[], help="extra client flag")
    parser.add_argument(
        "--server-template",
        help="command template of another server ({port} {token}), e.g. to compare builds",
    )
    parser.add_argument(
        "--client-template",
        help="command template of another client ({local_url} {server_url} {token})",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        help="record py-spy flame graphs of server and client during the throughput run "
        "into this folder (py-spy must be on PATH)",
    )
    args = parser.parse_args(argv)
    requests = args.requests or (2_000 if args.quick else 20_000)
    latency_requests = args.latency_requests or (300 if args.quick else 3_000)
    big = args.big or (64 * MiB if args.quick else GiB)
    max_seconds = 20.0 if args.quick else 90.0
    run = event_loop_runner()

    results: dict[str, Any] = {
        "machine": machine_info(),
        "settings": {
            "quick": args.quick,
            "concurrency": args.concurrency,
            "requests": requests,
            "latency_requests": latency_requests,
            "big_bytes": big,
            "server_args": args.server_arg,
            "client_args": args.client_arg,
            "server_template": args.server_template,
            "client_template": args.client_template,
            "small_path": SMALL_PATH,
        },
    }
    expected_small = b"".join(pattern_chunks(128))

    def check(_status: int, body: bytes) -> bool:
        return body == expected_small

    with ProcessGroup() as group, RssSampler() as sampler:
        try:
            tunnel = start_tunnel(
                group,
                token=secrets.token_urlsafe(16),
                connection_id="bench",
                server_args=args.server_arg,
                client_args=args.client_arg,
                server_template=args.server_template,
                client_template=args.client_template,
            )
        except HarnessError as exc:
            print(f"bench_tunnel: could not start the tunnel: {exc}", file=sys.stderr)
            return 1
        assert tunnel.server is not None
        assert tunnel.client is not None
        sampler.watch("server", tunnel.server.pid)
        sampler.watch("client", tunnel.client.pid)
        results["rss_idle_mib"] = {
            "server": rss_mib(tunnel.server.pid),
            "client": rss_mib(tunnel.client.pid),
        }
        direct = f"{tunnel.origin_url}{SMALL_PATH}"
        tunneled = f"{tunnel.public_url}{SMALL_PATH}"

        # 1. throughput at concurrency N
        sampler.start_phase("throughput")
        for url in (direct, tunneled):  # warm-up: connections, caches, JIT-free but lazy imports
            run(run_load("warmup", url, concurrency=8, count=200, max_seconds=10))

        pids = {"server": tunnel.server.pid, "client": tunnel.client.pid}
        if tunnel.origin is not None:
            pids["origin"] = tunnel.origin.pid
        cpu_us: dict[str, dict[str, float]] = {}
        results["cpu_us_per_request"] = cpu_us

        def measure(phase: str, label: str, url: str, concurrency: int, count: int) -> Any:
            profiling = args.profile is not None and label == "tunnel"
            profilers = (
                _start_profilers(args.profile, tunnel, max_seconds, phase) if profiling else []
            )
            before = {name: cpu_seconds(pid) for name, pid in pids.items()}
            result = run(
                run_load(
                    label,
                    url,
                    concurrency=concurrency,
                    count=count,
                    max_seconds=max_seconds,
                    check=check,
                )
            )
            cpu_us[f"{phase}/{label}"] = {
                name: round(1e6 * (after - start) / max(1, result.sent), 1)
                for name, pid in pids.items()
                if (start := before[name]) is not None and (after := cpu_seconds(pid)) is not None
            }
            for profiler in profilers:
                profiler.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
                profiler.wait(timeout=60)
            return result

        through = {
            label: measure("throughput", label, url, args.concurrency, requests)
            for label, url in (("direct", direct), ("tunnel", tunneled))
        }
        ratio = through["tunnel"].rps / through["direct"].rps if through["direct"].rps else 0.0
        results["throughput"] = {k: v.summary() for k, v in through.items()}
        results["throughput"]["ratio"] = round(ratio, 3)
        wrk_seconds = 5 if args.quick else 15
        wrk = {
            label: run_wrk(url, concurrency=args.concurrency, seconds=wrk_seconds)
            for label, url in (("direct", direct), ("tunnel", tunneled))
        }
        wrk_ratio: float | None = None
        if wrk["direct"] and wrk["tunnel"] is not None:
            wrk_ratio = wrk["tunnel"] / wrk["direct"]
            results["throughput"]["wrk_rps"] = wrk
            results["throughput"]["wrk_ratio"] = round(wrk_ratio, 3)

        # 2. latency at concurrency 1
        sampler.start_phase("latency")
        latency = {
            label: measure("latency", label, url, 1, latency_requests)
            for label, url in (("direct", direct), ("tunnel", tunneled))
        }
        results["latency"] = {k: v.summary() for k, v in latency.items()}
        added_p50 = results["latency"]["tunnel"]["p50_ms"] - results["latency"]["direct"]["p50_ms"]
        added_p99 = results["latency"]["tunnel"]["p99_ms"] - results["latency"]["direct"]["p99_ms"]
        results["latency"]["added_p50_ms"] = round(added_p50, 3)
        results["latency"]["added_p99_ms"] = round(added_p99, 3)

        # 3. big bodies
        expected_big = pattern_sha256(big)
        sampler.start_phase("upload")
        upload = run(_upload(f"{tunnel.public_url}/upload", big))
        upload["peak_rss_mib"] = {
            "server": sampler.peak("upload", "server"),
            "client": sampler.peak("upload", "client"),
        }
        sampler.start_phase("download")
        download = run(_download(f"{tunnel.public_url}/bytes/{big}", big, expected_big))
        download["peak_rss_mib"] = {
            "server": sampler.peak("download", "server"),
            "client": sampler.peak("download", "client"),
        }
        results["upload"] = upload
        results["download"] = download
        results["vm_hwm_mib"] = {
            "server": hwm_mib(tunnel.server.pid),
            "client": hwm_mib(tunnel.client.pid),
        }
        results["peak_rss_mib"] = {
            "server": sampler.overall_peak("server"),
            "client": sampler.overall_peak("client"),
        }
        results["processes_alive"] = {
            "server": tunnel.server.poll() is None,
            "client": tunnel.client.poll() is None,
        }

    peak = results["peak_rss_mib"]
    hwm = results["vm_hwm_mib"]
    rss_ok = all(
        value is not None and value < TARGET_RSS_MIB for value in (*peak.values(), *hwm.values())
    )
    results["targets"] = {
        "throughput_ratio>=0.25": ratio >= TARGET_RATIO,
        "wrk_throughput_ratio>=0.25": None if wrk_ratio is None else wrk_ratio >= TARGET_RATIO,
        "added_p50<1ms": added_p50 < TARGET_ADDED_P50_MS,
        "upload_ok": bool(upload["ok"]),
        "download_ok": bool(download["ok"]),
        "peak_rss<100MiB": rss_ok,
    }
    tp = results["throughput"]
    lat = results["latency"]
    print_table(
        f"Throughput, GET {SMALL_PATH}, concurrency {args.concurrency}",
        ["", "req/s", "ok", "errors", "p50 ms", "p99 ms", "target"],
        [
            ["direct", tp["direct"]["rps"], tp["direct"]["ok"], tp["direct"]["errors"],
             tp["direct"]["p50_ms"], tp["direct"]["p99_ms"], ""],
            ["tunnel", tp["tunnel"]["rps"], tp["tunnel"]["ok"], tp["tunnel"]["errors"],
             tp["tunnel"]["p50_ms"], tp["tunnel"]["p99_ms"], ""],
            ["ratio", f"{ratio:.3f}x", "", "", "", "",
             f">= {TARGET_RATIO}x {_verdict(ratio >= TARGET_RATIO)}"],
        ] + ([["wrk direct", round(wrk["direct"] or 0, 1), "", "", "", "", ""],
              ["wrk tunnel", round(wrk["tunnel"] or 0, 1), "", "", "", "", ""],
              ["wrk ratio", f"{wrk_ratio:.3f}x", "", "", "", "",
               f">= {TARGET_RATIO}x {_verdict(wrk_ratio >= TARGET_RATIO)}"]]
             if wrk_ratio is not None else []),
    )  # fmt: skip
    print_table(
        "Latency, concurrency 1",
        ["", "p50 ms", "p90 ms", "p99 ms", "errors", "target"],
        [
            ["direct", lat["direct"]["p50_ms"], lat["direct"]["p90_ms"], lat["direct"]["p99_ms"],
             lat["direct"]["errors"], ""],
            ["tunnel", lat["tunnel"]["p50_ms"], lat["tunnel"]["p90_ms"], lat["tunnel"]["p99_ms"],
             lat["tunnel"]["errors"], ""],
            ["added", f"{added_p50:.3f}", "", f"{added_p99:.3f}", "",
             f"p50 < {TARGET_ADDED_P50_MS} ms {_verdict(added_p50 < TARGET_ADDED_P50_MS)}"],
        ],
    )  # fmt: skip
    print_table(
        f"Big bodies through the tunnel ({big / MiB:.0f} MiB), peak RSS in MiB",
        ["", "ok", "seconds", "MiB/s", "server peak", "client peak", "target"],
        [
            ["upload", upload["ok"], upload["seconds"], upload["mib_per_s"],
             _mib(upload["peak_rss_mib"]["server"]), _mib(upload["peak_rss_mib"]["client"]), ""],
            ["download", download["ok"], download["seconds"], download["mib_per_s"],
             _mib(download["peak_rss_mib"]["server"]), _mib(download["peak_rss_mib"]["client"]),
             ""],
            ["whole run", "", "", "", _mib(peak["server"]), _mib(peak["client"]),
             f"< {TARGET_RSS_MIB:.0f} MiB {_verdict(rss_ok)}"],
            ["VmHWM", "", "", "", _mib(hwm["server"]), _mib(hwm["client"]), ""],
        ],
    )  # fmt: skip
    print_table(
        "CPU time per request (microseconds, from /proc/<pid>/stat)",
        ["run", "server", "client", "origin"],
        [
            [run_name, *(str(usage.get(name, "-")) for name in ("server", "client", "origin"))]
            for run_name, usage in results["cpu_us_per_request"].items()
        ],
    )
    path = write_results("bench_tunnel", results)
    print(f"\nresults: {path}")
    return 0 if all(value is not False for value in results["targets"].values()) else 1


def _start_profilers(
    folder: Path, tunnel: Any, seconds: float, phase: str
) -> list[subprocess.Popen[bytes]]:
    py_spy = shutil.which("py-spy")
    if py_spy is None:
        print("bench_tunnel: py-spy not on PATH, not profiling", file=sys.stderr)
        return []
    folder.mkdir(parents=True, exist_ok=True)
    return [
        subprocess.Popen(
            [py_spy, "record", "--pid", str(process.pid), "--duration", str(int(seconds) + 5),
             "--rate", "200", "--format", fmt, "--output", str(folder / f"{phase}-{name}.{ext}")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for name, process in (("server", tunnel.server), ("client", tunnel.client))
        for fmt, ext in (("raw", "folded.txt"),)
    ]  # fmt: skip


if __name__ == "__main__":
    raise SystemExit(main())
