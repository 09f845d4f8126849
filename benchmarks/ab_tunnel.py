"""Compare the small-GET throughput of two builds of the tunnel, A against B.

On a shared 2-core machine one benchmark run says little about a change of 10%:
the load of the moment moves it more than that. This script alternates the builds
round by round (A, B, A, B, ...), each round measuring the origin directly too, and
reports medians, so both builds see the same machine::

    # a baseline build in a worktree with its own environment
    git worktree add /tmp/base HEAD~3 && (cd /tmp/base && uv sync --all-packages)
    uv run python benchmarks/ab_tunnel.py \\
        --a-server "/tmp/base/.venv/bin/pipegate-server --host 127.0.0.1 --port {port} \\
                    --client-token {token}" \\
        --a-client "/tmp/base/.venv/bin/pipegate-client --local-url {local_url} \\
                    --server-url {server_url} --client-token {token}"

A missing ``--a-*``/``--b-*`` template means this checkout's own command. Each round
starts a fresh origin, server and client, warms up, then measures ``GET /bytes/128``
at ``--concurrency`` with ``wrk`` when it is on PATH (else the Python load
generator), and the CPU time per request of server, client and origin. Bounded:
``--rounds`` x 3 runs of ``--seconds`` each.
"""

from __future__ import annotations

import argparse
import secrets
import statistics
import sys
from typing import Any

from _common import (
    event_loop_runner,
    machine_info,
    measure_rate,
    print_table,
    retry_once,
    run_load,
    write_results,
)
from pipegate_conformance.harness import HarnessError, ProcessGroup, start_tunnel

SMALL_PATH = "/bytes/128"


def _measure(url: str, pids: dict[str, int], args: argparse.Namespace) -> dict[str, Any]:
    """Requests per second at ``url`` and CPU microseconds per request of ``pids``."""
    return measure_rate(url, pids, concurrency=args.concurrency, seconds=args.seconds, label="ab")


def _round(label: str, server: str | None, client: str | None, args: argparse.Namespace) -> Any:
    """One round; a start that fails (e.g. a free port taken meanwhile) is retried once."""
    return retry_once(label, lambda: _round_once(label, server, client, args), HarnessError)


def _round_once(
    label: str, server: str | None, client: str | None, args: argparse.Namespace
) -> Any:
    with ProcessGroup() as group:
        tunnel = start_tunnel(
            group,
            token=secrets.token_urlsafe(16),
            connection_id="ab",
            server_template=server,
            client_template=client,
        )
        assert tunnel.server is not None
        assert tunnel.client is not None
        assert tunnel.origin is not None
        pids = {
            "server": tunnel.server.pid,
            "client": tunnel.client.pid,
            "origin": tunnel.origin.pid,
        }
        direct = f"{tunnel.origin_url}{SMALL_PATH}"
        public = f"{tunnel.public_url}{SMALL_PATH}"
        run = event_loop_runner()
        for url in (direct, public):
            run(run_load("warmup", url, concurrency=8, count=300, max_seconds=10))
        return {
            "direct": _measure(direct, {"origin": tunnel.origin.pid}, args),
            label: _measure(public, pids, args),
        }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    for side in ("a", "b"):
        parser.add_argument(f"--{side}-server", help="server command template ({port} {token})")
        parser.add_argument(
            f"--{side}-client",
            help="client command template ({local_url} {server_url} {token})",
        )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--concurrency", type=int, default=64)
    args = parser.parse_args(argv)

    rounds: list[dict[str, Any]] = []
    try:
        for number in range(args.rounds):
            for side in ("a", "b"):
                label = side.upper()
                outcome = _round(
                    label, getattr(args, f"{side}_server"), getattr(args, f"{side}_client"), args
                )
                outcome["round"] = number + 1
                rounds.append(outcome)
                direct, tunnel = outcome["direct"], outcome[label]
                print(
                    f"round {number + 1} {label}: {tunnel['rate']:.0f} req/s "
                    f"({tunnel['rate'] / direct['rate']:.3f}x direct {direct['rate']:.0f}), "
                    f"cpu us/request {tunnel['cpu_us']}",
                    flush=True,
                )
    except HarnessError as exc:
        print(f"ab_tunnel: could not start a tunnel: {exc}", file=sys.stderr)
        return 1

    rows = []
    summary: dict[str, Any] = {}
    for label in ("A", "B"):
        mine = [r for r in rounds if label in r]
        rates = [r[label]["rate"] for r in mine]
        ratios = [r[label]["rate"] / r["direct"]["rate"] for r in mine]
        cpu = {
            name: statistics.median(r[label]["cpu_us"].get(name, 0.0) for r in mine)
            for name in ("server", "client", "origin")
        }
        summary[label] = {"rate": statistics.median(rates), "ratio": statistics.median(ratios)}
        summary[label]["cpu_us"] = cpu
        rows.append(
            [
                label,
                f"{statistics.median(rates):.0f}",
                f"{statistics.median(ratios):.3f}x",
                f"{cpu['server']:.0f}",
                f"{cpu['client']:.0f}",
                f"{cpu['origin']:.0f}",
            ]
        )
    print_table(
        f"Small GET, concurrency {args.concurrency}, median of {args.rounds} rounds",
        ["build", "req/s", "vs direct", "server us", "client us", "origin us"],
        rows,
    )
    speedup = summary["B"]["rate"] / summary["A"]["rate"] if summary["A"]["rate"] else 0.0
    print(f"B/A throughput: {speedup:.3f}")
    path = write_results(
        "ab_tunnel",
        {
            "machine": machine_info(),
            "settings": vars(args),
            "rounds": rounds,
            "summary": summary,
            "b_over_a": speedup,
        },
    )
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
