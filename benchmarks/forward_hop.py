"""What a forwarded request costs in cluster mode (issue 17).

A 2-node cluster (Redis, HAProxy, ``--node-url`` on each node) and one tunnel with a
custom hostname. The same small GET, with ``Host: <the custom hostname>``, sent
directly to the node that holds the tunnel and to the other node, which forwards it
to the holder (``pipegate_server._forward``): latency at concurrency 1, then
throughput at concurrency 64, the order alternating by round so that noise on this
shared machine hits both. Reports medians and the forwarded/direct ratios.

    uv run python benchmarks/forward_hop.py --rounds 3
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

from _common import (
    event_loop_runner,
    machine_info,
    percentile,
    print_table,
    run_load,
    write_results,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "e2e"))

from cluster_support import Cluster
from e2e_support import probe_status, wait_until
from pipegate_conformance.harness import (
    ProcessGroup,
    client_command,
    free_port,
    origin_command,
    wait_for_http,
)

HOSTNAME = "app.example.org"
TOKEN = "forward-bench-" + secrets.token_urlsafe(12)
PATH = "/bytes/128"


def _round(cluster: Cluster, holder: int, number: int, args: argparse.Namespace) -> dict[str, Any]:
    urls = {
        "direct": f"{cluster.node_base(holder)}{PATH}",
        "forwarded": f"{cluster.node_base(1 - holder)}{PATH}",
    }
    order = ["direct", "forwarded"] if number % 2 else ["forwarded", "direct"]
    run = event_loop_runner()
    headers = {"Host": HOSTNAME}
    outcome: dict[str, Any] = {"order": order}
    for route in order:
        latency = run(
            run_load(
                route,
                urls[route],
                concurrency=1,
                count=args.latency_requests,
                max_seconds=30,
                headers=headers,
            )
        )
        outcome[route] = {
            "p50_ms": percentile(latency.latencies, 0.5) * 1000,
            "p99_ms": percentile(latency.latencies, 0.99) * 1000,
            "errors": latency.errors,
        }
    for route in order:
        load = run(
            run_load(
                route,
                urls[route],
                concurrency=64,
                count=args.seconds * 20_000,
                max_seconds=args.seconds,
                headers=headers,
            )
        )
        outcome[route]["req_s"] = load.ok / load.elapsed if load.elapsed else 0.0
        outcome[route]["errors"] += load.errors
    return outcome


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--latency-requests", type=int, default=1000)
    args = parser.parse_args(argv)
    missing = [p for p in ("redis-server", "haproxy") if shutil.which(p) is None]
    if missing:
        print(f"forward_hop: needs {' and '.join(missing)} (apt-get install)", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="forward-hop-") as tmp, ProcessGroup() as group:
        port = free_port()
        origin = f"http://127.0.0.1:{port}"
        wait_for_http(f"{origin}/echo/ready", process=group.start("origin", origin_command(port)))
        tokens = Path(tmp) / "tokens.toml"
        tokens.write_text(
            f'[[tokens]]\nname = "web"\ntoken = "{TOKEN}"\nids = ["web"]\n'
            'hostnames = ["*.example.org"]\n'
        )
        cluster = Cluster(
            group,
            "unused-" + secrets.token_urlsafe(12),
            Path(tmp),
            nodes=2,
            node_args=("--tokens-file", str(tokens)),
        ).start()
        argv_ = client_command(origin, f"{cluster.ws_base}/web", TOKEN, "--no-inspect")
        group.start("client", [*argv_, "--hostname", HOSTNAME])
        wait_until(
            lambda: (
                True
                if probe_status(f"{cluster.node_base(0)}/echo/ready") != -1
                and all(_status_with_host(cluster.node_base(i)) == 200 for i in range(2))
                else None
            ),
            timeout=30.0,
            interval=0.2,
            what="the custom hostname to relay through both nodes",
        )
        holder = _holder(cluster)
        rounds = [_round(cluster, holder, n, args) for n in range(1, args.rounds + 1)]

    def med(route: str, key: str) -> float:
        return float(statistics.median(r[route][key] for r in rounds))

    def diff(key: str) -> float:
        return float(statistics.median(r["forwarded"][key] - r["direct"][key] for r in rounds))

    ratio = statistics.median(
        r["forwarded"]["req_s"] / r["direct"]["req_s"] for r in rounds if r["direct"]["req_s"]
    )
    rows: list[list[object]] = []
    for route in ("direct", "forwarded"):
        p50, p99, rate = med(route, "p50_ms"), med(route, "p99_ms"), med(route, "req_s")
        rows.append([route, f"{p50:.3f}", f"{p99:.3f}", f"{rate:.0f}"])
    rows.append(["forwarded - direct", f"{diff('p50_ms'):+.3f}", f"{diff('p99_ms'):+.3f}"])
    rows[-1].append(f"{ratio:.3f}x")
    print_table(
        "Forwarded request (custom hostname via the other node) vs direct to the holder",
        ["route", "p50 ms (c=1)", "p99 ms (c=1)", "req/s (c=64)"],
        rows,
    )
    path = write_results(
        "forward_hop",
        {
            "machine": machine_info(),
            "settings": vars(args),
            "rounds": rounds,
            "loadavg": os.getloadavg(),
        },
    )
    print(f"results: {path}")
    return 0


def _status_with_host(base: str) -> int:
    import httpx

    try:
        return httpx.get(f"{base}{PATH}", headers={"Host": HOSTNAME}, timeout=3.0).status_code
    except httpx.HTTPError:
        return -1


def _holder(cluster: Cluster) -> int:
    import httpx

    for index in range(2):
        health = httpx.get(f"{cluster.node_base(index)}/_pipegate/health", timeout=3.0).json()
        if health.get("tunnels"):
            return index
    raise RuntimeError("no node holds the tunnel")


if __name__ == "__main__":
    sys.exit(main())
