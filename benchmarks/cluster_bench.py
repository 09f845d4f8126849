"""Cluster mode (issue 17): small-GET throughput through HAProxy with 1, 2 and 3 nodes,
and what the balancer hop adds to latency.

Each configuration starts its own cluster on loopback (``tests/e2e/cluster_support``:
Debian's ``redis-server``, ``pipegate-server`` nodes with ``--redis-url`` and Debian's
``haproxy`` running ``deploy/haproxy/haproxy.cfg``), one origin app for the whole run,
and ``pipegate-client --config`` processes holding ``--tunnels`` tunnels through
HAProxy. The load goes to ``GET /<id>/bytes/128`` round-robin over the tunnel ids, so
every node gets traffic::

    uv run python benchmarks/cluster_bench.py              # 3 rounds, ~4 minutes
    uv run python benchmarks/cluster_bench.py --rounds 1 --seconds 3

Configurations ``<nodes>n<clients>c``: 1, 2 and 3 nodes with one client process (the
same client setup for each), and 2 and 3 nodes with one client process per node (the
tunnels split between them), to see whether the single client is what saturates. In
the 1-node cluster the same tunnel is also measured through HAProxy and directly at
its node (the order alternating from round to round): p50/p99 at concurrency 1 and
throughput at ``--concurrency``. Every configuration runs once per round, the order
reversed every other round, and the report gives medians and ratios of the same run,
with the CPU seconds each process used while measuring (``/proc/<pid>/stat``).
Bounded: every load loop stops after its count or its time, whichever comes first.
"""

from __future__ import annotations

import argparse
import functools
import os
import secrets
import shutil
import statistics
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _common import (
    cpu_seconds,
    event_loop_runner,
    machine_info,
    print_table,
    retry_once,
    run_load,
    write_results,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "e2e"))

from cluster_support import Cluster
from e2e_support import probe_status, wait_until
from pipegate_conformance.harness import (
    HarnessError,
    ManagedProcess,
    ProcessGroup,
    free_port,
    origin_command,
    wait_for_http,
)

SMALL_PATH = "/bytes/128"
SMALL_SIZE = 128


@dataclass(frozen=True)
class Config:
    nodes: int
    clients: int

    @property
    def label(self) -> str:
        return f"{self.nodes}n{self.clients}c"


CONFIGS = (Config(1, 1), Config(2, 1), Config(3, 1), Config(2, 2), Config(3, 3))


def _small_body(status: int, body: bytes) -> bool:
    return len(body) == SMALL_SIZE


def machine_ticks() -> tuple[int, int]:
    """Busy and total CPU ticks of the whole machine so far (``/proc/stat``, every
    process of every user: the machine is shared). Idle and iowait count as not busy."""
    with open("/proc/stat", encoding="ascii") as stat:
        values = [int(v) for v in stat.readline().split()[1:9]]
    return sum(values) - values[3] - values[4], sum(values)


def measure(
    label: str,
    urls: Sequence[str],
    pids: dict[str, int],
    *,
    concurrency: int,
    count: int,
    seconds: float,
) -> dict[str, Any]:
    """One bounded load run and the CPU seconds each process of ``pids`` (and this load
    generator, ``loadgen``) used during it."""
    pids = {**pids, "loadgen": os.getpid()}
    before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    busy_before, total_before = machine_ticks()
    result = event_loop_runner()(
        run_load(
            label,
            urls,
            concurrency=concurrency,
            count=count,
            max_seconds=seconds,
            check=_small_body,
        )
    )
    busy_after, total_after = machine_ticks()
    cpu = {
        name: round(after - start, 3)
        for name, pid in pids.items()
        if (start := before[name]) is not None and (after := cpu_seconds(pid)) is not None
    }
    summary = result.summary()
    summary["cpu_s"] = cpu
    # All CPUs, busy: what every process on the machine used, ours and others'.
    summary["machine_busy_cores"] = round(
        (os.cpu_count() or 1) * (busy_after - busy_before) / max(1, total_after - total_before), 3
    )
    return summary


def _stat_requests(cluster: Cluster) -> dict[str, int]:
    """Requests HAProxy sent to each node so far (``stot`` of ``show stat``)."""
    return {name: int(row.get("stot") or 0) for name, row in cluster.server_stats().items()}


def _wait_relaying(cluster: Cluster, ids: Sequence[str], clients: list[ManagedProcess]) -> None:
    def probe() -> bool | None:
        for client in clients:
            if client.poll() is not None:
                raise HarnessError(f"{client.name} exited:\n{client.output()[-3000:]}")
        ok = all(probe_status(f"{cluster.base}/{i}{SMALL_PATH}") == 200 for i in ids)
        return True if ok else None

    wait_until(probe, timeout=30.0, interval=0.2, what="every tunnel to relay")


@contextmanager
def running_cluster(
    config: Config, origin: str, ids: Sequence[str]
) -> Iterator[tuple[Cluster, list[ManagedProcess]]]:
    with tempfile.TemporaryDirectory(prefix="cluster-bench-") as tmp, ProcessGroup() as group:
        cluster = Cluster(group, "bench-" + secrets.token_urlsafe(18), Path(tmp), config.nodes)
        cluster.start()
        clients = cluster.start_clients(origin, ids, config.clients)
        _wait_relaying(cluster, ids, clients)
        yield cluster, clients


def _pids(cluster: Cluster, clients: list[ManagedProcess], origin_pid: int) -> dict[str, int]:
    assert cluster.haproxy is not None
    assert cluster.redis is not None
    pids = {"haproxy": cluster.haproxy.pid, "redis": cluster.redis.pid, "origin": origin_pid}
    pids.update({process.name: process.pid for process in cluster.node_processes})
    pids.update({process.name: process.pid for process in clients})
    return pids


def _config_round(
    config: Config, number: int, origin: str, origin_pid: int, args: argparse.Namespace
) -> dict[str, Any]:
    ids = [f"b{i:02d}" for i in range(args.tunnels)]
    outcome: dict[str, Any] = {"config": config.label, "round": number}
    with running_cluster(config, origin, ids) as (cluster, clients):
        pids = _pids(cluster, clients, origin_pid)
        urls = [f"{cluster.base}/{i}{SMALL_PATH}" for i in ids]
        run = event_loop_runner()
        run(run_load("warmup", urls, concurrency=16, count=600, max_seconds=10))
        counts = _stat_requests(cluster)
        outcome["throughput"] = measure(
            "lb",
            urls,
            pids,
            concurrency=args.concurrency,
            count=args.seconds * 20_000,
            seconds=args.seconds,
        )
        after = _stat_requests(cluster)
        outcome["node_requests"] = {name: after[name] - counts.get(name, 0) for name in after}
        if config.nodes == 1:
            outcome["hop"] = _hop(cluster, pids, ids[0], number, args)
    return outcome


def _hop(
    cluster: Cluster,
    pids: dict[str, int],
    connection_id: str,
    number: int,
    args: argparse.Namespace,
) -> dict[str, Any]:
    """The same tunnel through HAProxy and directly at its (only) node, the order
    alternating by round: latency at concurrency 1, then throughput."""
    paths = {
        "haproxy": [f"{cluster.base}/{connection_id}{SMALL_PATH}"],
        "direct": [f"{cluster.node_base(0)}/{connection_id}{SMALL_PATH}"],
    }
    order = ["haproxy", "direct"] if number % 2 else ["direct", "haproxy"]
    hop: dict[str, Any] = {"order": order}
    for route in order:
        hop[route] = {
            "latency": measure(
                route,
                paths[route],
                pids,
                concurrency=1,
                count=args.latency_requests,
                seconds=args.seconds * 2,
            ),
        }
    for route in order:
        hop[route]["throughput"] = measure(
            route,
            paths[route],
            pids,
            concurrency=args.concurrency,
            count=args.seconds * 20_000,
            seconds=args.seconds,
        )
    return hop


def _median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def _cores(entry: dict[str, Any], name: str) -> float:
    """CPU seconds of process ``name`` per wall second of the run: cores it kept busy."""
    elapsed = float(entry["elapsed"]) or float("nan")
    return float(entry["cpu_s"].get(name, 0.0)) / elapsed


def _summarise(rounds: list[dict[str, Any]], args: argparse.Namespace) -> dict[str, Any]:
    summary: dict[str, Any] = {"configs": {}, "hop": {}}
    base_by_round = {r["round"]: r["throughput"]["rps"] for r in rounds if r["config"] == "1n1c"}
    rows = []
    cpu_rows = []
    for config in CONFIGS:
        mine = [r for r in rounds if r["config"] == config.label]
        if not mine:
            continue
        rates = [r["throughput"]["rps"] for r in mine]
        ratios = [
            r["throughput"]["rps"] / base_by_round[r["round"]]
            for r in mine
            if base_by_round.get(r["round"])
        ]
        names = sorted({name for r in mine for name in r["throughput"]["cpu_s"]})
        cpu = {n: _median([r["throughput"]["cpu_s"].get(n, 0.0) for r in mine]) for n in names}
        cores = {n: _median([_cores(r["throughput"], n) for r in mine]) for n in names}
        us_per_request = {
            n: _median(
                [
                    1e6 * r["throughput"]["cpu_s"].get(n, 0.0) / max(1, r["throughput"]["ok"])
                    for r in mine
                ]
            )
            for n in names
        }
        total_cores = _median([sum(_cores(r["throughput"], n) for n in names) for r in mine])
        total_us = _median(
            [
                1e6 * sum(r["throughput"]["cpu_s"].values()) / max(1, r["throughput"]["ok"])
                for r in mine
            ]
        )
        errors = sum(r["throughput"]["errors"] for r in mine)
        share = {
            node: _median([r["node_requests"].get(node, 0) for r in mine])
            for node in sorted({node for r in mine for node in r["node_requests"]})
        }
        summary["configs"][config.label] = {
            "nodes": config.nodes,
            "client_processes": config.clients,
            "rps": _median(rates),
            "rps_rounds": rates,
            "ratio_to_1n1c": _median(ratios),
            "p50_ms": _median([r["throughput"]["p50_ms"] for r in mine]),
            "p99_ms": _median([r["throughput"]["p99_ms"] for r in mine]),
            "errors": errors,
            "cpu_s": cpu,
            "cores": cores,
            "cpu_us_per_request": us_per_request,
            "total_cores": total_cores,
            "total_cpu_us_per_request": total_us,
            "node_requests": share,
        }
        rows.append(
            [
                config.label,
                config.nodes,
                config.clients,
                f"{_median(rates):.0f}",
                " ".join(f"{rate:.0f}" for rate in rates),
                f"{_median(ratios):.3f}x",
                f"{_median([r['throughput']['p50_ms'] for r in mine]):.1f}",
                f"{_median([r['throughput']['p99_ms'] for r in mine]):.1f}",
                errors,
                "/".join(f"{share[node]:.0f}" for node in share),
            ]
        )
        groups = {
            "loadgen": ["loadgen"],
            "haproxy": ["haproxy"],
            "nodes": [n for n in names if n.startswith("node")],
            "clients": [n for n in names if n.startswith("client")],
            "origin": ["origin"],
            "redis": ["redis"],
        }
        cells = []
        for members in groups.values():
            seconds = sum(cpu.get(n, 0.0) for n in members)
            busiest = max((cores.get(n, 0.0) for n in members), default=0.0)
            cells.append(f"{seconds:.2f} ({busiest:.2f})")
        machine = _median([r["throughput"]["machine_busy_cores"] for r in mine])
        summary["configs"][config.label]["machine_busy_cores"] = machine
        cpu_rows.append(
            [config.label, *cells, f"{total_cores:.2f}", f"{machine:.2f}", f"{total_us:.0f}"]
        )
    print_table(
        f"Small GET through HAProxy, concurrency {args.concurrency}, {args.tunnels} tunnels, "
        f"median of {args.rounds} rounds",
        [
            "config",
            "nodes",
            "clients",
            "req/s",
            "rounds",
            "vs 1n1c",
            "p50 ms",
            "p99 ms",
            "errors",
            "requests per node",
        ],
        rows,
    )
    print_table(
        f"CPU seconds during the {args.seconds} s throughput run, median "
        "(in brackets: cores kept busy by the busiest process of the group)",
        [
            "config",
            "loadgen",
            "haproxy",
            "nodes",
            "clients",
            "origin",
            "redis",
            "ours cores",
            f"machine busy of {os.cpu_count()}",
            "ours us/req",
        ],
        cpu_rows,
    )

    hops = [r["hop"] for r in rounds if "hop" in r]
    hop_rows = []
    for route in ("direct", "haproxy"):
        latency = [h[route]["latency"] for h in hops]
        rate = [h[route]["throughput"]["rps"] for h in hops]
        summary["hop"][route] = {
            "p50_ms": _median([x["p50_ms"] for x in latency]),
            "p90_ms": _median([x["p90_ms"] for x in latency]),
            "p99_ms": _median([x["p99_ms"] for x in latency]),
            "rps_c1": _median([x["rps"] for x in latency]),
            "rps": _median(rate),
            "haproxy_cpu_us_per_request": _median(
                [
                    1e6
                    * h[route]["throughput"]["cpu_s"].get("haproxy", 0.0)
                    / max(1, h[route]["throughput"]["ok"])
                    for h in hops
                ]
            ),
        }
    if hops:
        added_p50 = _median(
            [h["haproxy"]["latency"]["p50_ms"] - h["direct"]["latency"]["p50_ms"] for h in hops]
        )
        added_p99 = _median(
            [h["haproxy"]["latency"]["p99_ms"] - h["direct"]["latency"]["p99_ms"] for h in hops]
        )
        rate_ratio = _median(
            [h["haproxy"]["throughput"]["rps"] / h["direct"]["throughput"]["rps"] for h in hops]
        )
        summary["hop"]["added_p50_ms"] = added_p50
        summary["hop"]["added_p99_ms"] = added_p99
        summary["hop"]["rps_ratio_haproxy_to_direct"] = rate_ratio
        for route in ("direct", "haproxy"):
            data = summary["hop"][route]
            hop_rows.append(
                [
                    route,
                    f"{data['p50_ms']:.3f}",
                    f"{data['p90_ms']:.3f}",
                    f"{data['p99_ms']:.3f}",
                    f"{data['rps_c1']:.0f}",
                    f"{data['rps']:.0f}",
                    f"{data['haproxy_cpu_us_per_request']:.0f}",
                ]
            )
        hop_rows.append(
            [
                "haproxy - direct (median of rounds)",
                f"{added_p50:+.3f}",
                "",
                f"{added_p99:+.3f}",
                "",
                f"{rate_ratio:.3f}x",
                "",
            ]
        )
        print_table(
            f"The balancer hop: one tunnel, 1-node cluster, median of {len(hops)} rounds",
            [
                "route",
                "p50 ms (c=1)",
                "p90 ms",
                "p99 ms",
                "req/s c=1",
                f"req/s c={args.concurrency}",
                "haproxy us/req",
            ],
            hop_rows,
        )
    return summary


def _report(outcome: dict[str, Any]) -> None:
    throughput = outcome["throughput"]
    print(
        f"round {outcome['round']} {outcome['config']}: {throughput['rps']:.0f} req/s, "
        f"{throughput['errors']} errors, per node {outcome['node_requests']}, "
        f"cpu s {throughput['cpu_s']}",
        flush=True,
    )
    if "hop" in outcome:
        hop = outcome["hop"]
        print(
            "  hop: "
            + ", ".join(
                f"{route} p50 {hop[route]['latency']['p50_ms']:.3f} ms "
                f"p99 {hop[route]['latency']['p99_ms']:.3f} ms "
                f"{hop[route]['throughput']['rps']:.0f} req/s"
                for route in ("direct", "haproxy")
            ),
            flush=True,
        )


def _start_origin(group: ProcessGroup) -> tuple[str, int]:
    port = free_port()
    process = group.start("origin", origin_command(port))
    url = f"http://127.0.0.1:{port}"
    wait_for_http(f"{url}/echo/ready", process=process)
    return url, process.pid


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=5, help="per throughput run")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--tunnels", type=int, default=12)
    parser.add_argument("--latency-requests", type=int, default=1000)
    parser.add_argument(
        "--configs",
        default=",".join(c.label for c in CONFIGS),
        help="which of the configurations to run (comma-separated labels)",
    )
    args = parser.parse_args(argv)
    missing = [p for p in ("redis-server", "haproxy") if shutil.which(p) is None]
    if missing:
        print(f"cluster_bench: needs {' and '.join(missing)} (apt-get install)", file=sys.stderr)
        return 1
    chosen = [c for c in CONFIGS if c.label in args.configs.split(",")]

    rounds: list[dict[str, Any]] = []
    loadavg = os.getloadavg()
    try:
        with ProcessGroup() as group:
            origin, origin_pid = _start_origin(group)
            for number in range(1, args.rounds + 1):
                order = chosen if number % 2 else list(reversed(chosen))
                for config in order:
                    outcome = retry_once(
                        f"{number} {config.label}",
                        functools.partial(_config_round, config, number, origin, origin_pid, args),
                        HarnessError,
                    )
                    rounds.append(outcome)
                    _report(outcome)
    except HarnessError as exc:
        print(f"cluster_bench: could not start a cluster: {exc}", file=sys.stderr)
        return 1

    summary = _summarise(rounds, args)
    machine = machine_info()
    machine["loadavg_at_start"] = loadavg
    machine["loadavg_at_end"] = os.getloadavg()
    path = write_results(
        "cluster_bench",
        {"machine": machine, "settings": vars(args), "rounds": rounds, "summary": summary},
    )
    print(f"\nload average at start {loadavg}, at end {machine['loadavg_at_end']}")
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
