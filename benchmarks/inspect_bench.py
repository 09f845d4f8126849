"""What the request inspector costs: the client with ``--inspect`` against ``--no-inspect``.

Issue 13 asks that with the inspector on, small-GET throughput at concurrency 64 and a
1 GiB download stay within 10% of off, and the client's RSS within the same 64 MiB.
On a shared machine one run says little about 10%, so, as ``ab_tunnel.py`` does, the
two settings alternate round by round (off, on, off, on, ...), each round on a fresh
origin, server and client, and the medians are reported::

    uv run python benchmarks/inspect_bench.py                 # 3 rounds, 1 GiB
    uv run python benchmarks/inspect_bench.py --rounds 1 --big 268435456 --seconds 3

Each round: warm up; ``GET /bytes/128`` at ``--concurrency`` for ``--seconds`` (``wrk``
when on PATH, else the Python load generator) with the client's CPU per request; fill
the ring buffer (``--fill`` requests of 256 KiB, so the inspector keeps 200 bodies of
64 KiB: its largest steady state for HTTP); then one download of ``--big`` bytes, its
MiB/s and the client's peak RSS over the whole round (sampled every 20 ms).
"""

from __future__ import annotations

import argparse
import hashlib
import secrets
import statistics
import sys
import time
from typing import Any

import aiohttp
from _common import (
    GiB,
    MiB,
    RssSampler,
    event_loop_runner,
    hwm_mib,
    machine_info,
    measure_rate,
    print_table,
    retry_once,
    rss_mib,
    run_load,
    write_results,
)
from pipegate_conformance.harness import HarnessError, ProcessGroup, start_tunnel
from pipegate_conformance.origin import pattern_sha256

SMALL_PATH = "/bytes/128"
SETTINGS = {"off": ["--no-inspect"], "on": ["--inspect", "127.0.0.1:0"]}


async def _download(url: str, size: int) -> dict[str, Any]:
    digest = hashlib.sha256()
    length = 0
    started = time.perf_counter()
    timeout = aiohttp.ClientTimeout(total=None, sock_read=60)
    async with aiohttp.ClientSession(timeout=timeout) as session, session.get(url) as response:
        status = response.status
        async for chunk in response.content.iter_chunked(256 * 1024):
            digest.update(chunk)
            length += len(chunk)
    elapsed = time.perf_counter() - started
    return {
        "status": status,
        "seconds": round(elapsed, 2),
        "mib_per_s": round(length / MiB / elapsed, 1),
        "ok": status == 200 and length == size and digest.hexdigest() == pattern_sha256(size),
    }


def _throughput(url: str, client_pid: int, args: argparse.Namespace) -> dict[str, Any]:
    measured = measure_rate(
        url,
        {"client": client_pid},
        concurrency=args.concurrency,
        seconds=args.seconds,
        label="inspect",
    )
    cpu = measured["cpu_us"].get("client")
    return {"rate": measured["rate"], "tool": measured["tool"], "client_cpu_us": cpu}


def _round(setting: str, args: argparse.Namespace) -> dict[str, Any]:
    """One round; a start that fails (e.g. a free port taken meanwhile) is retried once."""
    return retry_once(setting, lambda: _round_once(setting, args), HarnessError)


def _round_once(setting: str, args: argparse.Namespace) -> dict[str, Any]:
    run = event_loop_runner()
    with ProcessGroup() as group, RssSampler() as sampler:
        tunnel = start_tunnel(
            group,
            token=secrets.token_urlsafe(16),
            connection_id="inspect",
            client_args=SETTINGS[setting],
        )
        assert tunnel.client is not None
        pid = tunnel.client.pid
        sampler.watch("client", pid)
        sampler.start_phase("round")
        idle = rss_mib(pid)
        small = f"{tunnel.public_url}{SMALL_PATH}"
        run(run_load("warmup", small, concurrency=8, count=300, max_seconds=10))
        throughput = _throughput(small, pid, args)
        fill = run(
            run_load(
                "fill",
                f"{tunnel.public_url}/bytes/{256 * 1024}",
                concurrency=8,
                count=args.fill,
                max_seconds=60,
            )
        )
        after_fill = rss_mib(pid)
        download = run(_download(f"{tunnel.public_url}/bytes/{args.big}", args.big))
        return {
            "setting": setting,
            "throughput": throughput,
            "fill_ok": fill.ok,
            "download": download,
            "client_rss_mib": {
                "idle": idle,
                "after_fill": after_fill,
                "peak": sampler.overall_peak("client"),
                "hwm": hwm_mib(pid),
            },
        }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--big", type=int, default=GiB, help="bytes of the download")
    parser.add_argument("--fill", type=int, default=250, help="256 KiB requests before it")
    args = parser.parse_args(argv)

    rounds: list[dict[str, Any]] = []
    try:
        for number in range(args.rounds):
            for setting in ("off", "on"):
                outcome = _round(setting, args)
                outcome["round"] = number + 1
                rounds.append(outcome)
                rss = outcome["client_rss_mib"]
                print(
                    f"round {number + 1} {setting}: {outcome['throughput']['rate']:.0f} req/s "
                    f"(client {outcome['throughput']['client_cpu_us']} us/req), download "
                    f"{outcome['download']['mib_per_s']} MiB/s ok={outcome['download']['ok']}, "
                    f"client RSS idle {rss['idle']:.1f} after fill {rss['after_fill']:.1f} "
                    f"peak {rss['peak']:.1f} MiB",
                    flush=True,
                )
    except HarnessError as exc:
        print(f"inspect_bench: could not start a tunnel: {exc}", file=sys.stderr)
        return 1

    summary: dict[str, Any] = {}
    rows = []
    for setting in ("off", "on"):
        mine = [r for r in rounds if r["setting"] == setting]
        summary[setting] = {
            "rate": statistics.median(r["throughput"]["rate"] for r in mine),
            "client_cpu_us": statistics.median(
                r["throughput"]["client_cpu_us"] or 0.0 for r in mine
            ),
            "download_mib_per_s": statistics.median(r["download"]["mib_per_s"] for r in mine),
            "downloads_ok": all(r["download"]["ok"] for r in mine),
            "rss_peak_mib": max(r["client_rss_mib"]["peak"] or 0.0 for r in mine),
            "rss_after_fill_mib": statistics.median(
                r["client_rss_mib"]["after_fill"] or 0.0 for r in mine
            ),
        }
        s = summary[setting]
        rows.append(
            [
                setting,
                f"{s['rate']:.0f}",
                f"{s['client_cpu_us']:.0f}",
                f"{s['download_mib_per_s']:.0f}",
                "yes" if s["downloads_ok"] else "NO",
                f"{s['rss_after_fill_mib']:.1f}",
                f"{s['rss_peak_mib']:.1f}",
            ]
        )
    print_table(
        f"Inspector off/on: small GET at concurrency {args.concurrency}, "
        f"{args.big / MiB:.0f} MiB download; median of {args.rounds} rounds (RSS: max)",
        ["inspector", "req/s", "client us/req", "MiB/s", "intact", "RSS filled", "RSS peak"],
        rows,
    )
    off, on = summary["off"], summary["on"]
    ratios = {
        "throughput_on_over_off": round(on["rate"] / off["rate"], 3) if off["rate"] else None,
        "download_on_over_off": round(on["download_mib_per_s"] / off["download_mib_per_s"], 3)
        if off["download_mib_per_s"]
        else None,
        "rss_peak_growth_mib": round(on["rss_peak_mib"] - off["rss_peak_mib"], 1),
    }
    print(
        f"on/off: throughput {ratios['throughput_on_over_off']}, download "
        f"{ratios['download_on_over_off']}, peak RSS {ratios['rss_peak_growth_mib']:+} MiB"
    )
    path = write_results(
        "inspect_bench",
        {
            "machine": machine_info(),
            "settings": vars(args),
            "rounds": rounds,
            "summary": summary,
            "ratios": ratios,
        },
    )
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
