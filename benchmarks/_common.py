"""Shared pieces of the on-demand benchmarks: memory sampling from ``/proc``, an
asyncio load generator with bounded count and time, percentiles, tables and the JSON
results file. Not collected by pytest (no ``test_`` names, outside the test paths)."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import platform
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import aiohttp

T = TypeVar("T")

RESULTS_DIR = Path(__file__).parent / "results"
MiB = 1024 * 1024
GiB = 1024 * MiB


def read_status_kib(pid: int, key: str) -> int | None:
    """A ``/proc/<pid>/status`` field in KiB (``VmRSS``, ``VmHWM``), None if gone."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time the process used so far (``/proc/<pid>/stat``)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    ticks = int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
    return ticks / os.sysconf("SC_CLK_TCK")


def rss_mib(pid: int) -> float | None:
    value = read_status_kib(pid, "VmRSS")
    return None if value is None else value / 1024


def hwm_mib(pid: int) -> float | None:
    value = read_status_kib(pid, "VmHWM")
    return None if value is None else value / 1024


class RssSampler:
    """Polls ``VmRSS`` of named processes every ``interval`` seconds in a thread and
    keeps the peak per phase; processes can be replaced (restarts) by name."""

    def __init__(self, interval: float = 0.02) -> None:
        self.interval = interval
        self.pids: dict[str, int] = {}
        self.peaks: dict[str, dict[str, float]] = {}
        self.phase = "start"
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def watch(self, name: str, pid: int) -> None:
        with self._lock:
            self.pids[name] = pid

    def start_phase(self, phase: str) -> None:
        with self._lock:
            self.phase = phase
            self.peaks.setdefault(phase, {})

    def peak(self, phase: str, name: str) -> float | None:
        with self._lock:
            return self.peaks.get(phase, {}).get(name)

    def overall_peak(self, name: str) -> float | None:
        with self._lock:
            values = [peaks[name] for peaks in self.peaks.values() if name in peaks]
        return max(values) if values else None

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            with self._lock:
                pids = dict(self.pids)
                phase = self.phase
            for name, pid in pids.items():
                value = rss_mib(pid)
                if value is None:
                    continue
                with self._lock:
                    peaks = self.peaks.setdefault(phase, {})
                    peaks[name] = max(peaks.get(name, 0.0), value)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=2)


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile (``fraction`` in 0..1); NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * len(ordered) + 0.5) - 1))
    return ordered[index]


@dataclass
class LoadResult:
    """What one load run measured; latencies in seconds."""

    label: str
    concurrency: int
    sent: int = 0
    ok: int = 0
    errors: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    elapsed: float = 0.0
    latencies: list[float] = field(default_factory=list, repr=False)

    @property
    def rps(self) -> float:
        return self.ok / self.elapsed if self.elapsed else 0.0

    def summary(self) -> dict[str, Any]:
        data = asdict(self)
        del data["latencies"]
        data["rps"] = round(self.rps, 1)
        data["p50_ms"] = round(percentile(self.latencies, 0.5) * 1000, 3)
        data["p90_ms"] = round(percentile(self.latencies, 0.9) * 1000, 3)
        data["p99_ms"] = round(percentile(self.latencies, 0.99) * 1000, 3)
        data["elapsed"] = round(self.elapsed, 3)
        return data


async def run_load(
    label: str,
    url: str | Sequence[str],
    *,
    concurrency: int,
    count: int,
    max_seconds: float,
    check: Callable[[int, bytes], bool] | None = None,
    headers: dict[str, str] | None = None,
) -> LoadResult:
    """GET ``url`` ``count`` times with ``concurrency`` workers over keep-alive
    connections, stopping early after ``max_seconds``; every request has a timeout.
    ``url`` may be several URLs, taken round-robin; ``headers`` go with every request."""
    result = LoadResult(label, concurrency)
    next_url = itertools.cycle([url] if isinstance(url, str) else list(url)).__next__
    remaining = count
    deadline = time.monotonic() + max_seconds
    timeout = aiohttp.ClientTimeout(total=30)
    connector = aiohttp.TCPConnector(limit=concurrency, force_close=False)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def worker() -> None:
            nonlocal remaining
            while remaining > 0 and time.monotonic() < deadline:
                remaining -= 1
                result.sent += 1
                started = time.perf_counter()
                try:
                    async with session.get(next_url(), headers=headers) as response:
                        body = await response.read()
                        status = response.status
                except (aiohttp.ClientError, TimeoutError) as exc:
                    result.errors += 1
                    key = type(exc).__name__
                    result.statuses[key] = result.statuses.get(key, 0) + 1
                    continue
                result.latencies.append(time.perf_counter() - started)
                result.statuses[str(status)] = result.statuses.get(str(status), 0) + 1
                if status == 200 and (check is None or check(status, body)):
                    result.ok += 1
                else:
                    result.errors += 1

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        result.elapsed = time.perf_counter() - started
    return result


def run_wrk(url: str, *, concurrency: int, seconds: int) -> float | None:
    """Requests per second measured by ``wrk`` if it is on PATH, else None."""
    wrk = shutil.which("wrk")
    if wrk is None:
        return None
    threads = str(min(2, concurrency))
    completed = subprocess.run(
        [wrk, "-t", threads, "-c", str(concurrency), "-d", f"{seconds}s", url],
        capture_output=True,
        text=True,
        timeout=seconds + 30,
        check=False,
    )
    for line in completed.stdout.splitlines():
        if line.startswith("Requests/sec:"):
            return float(line.split()[1])
    return None


def machine_info() -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "loadavg_at_start": os.getloadavg(),
    }


def write_results(name: str, data: dict[str, Any]) -> Path:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    path = RESULTS_DIR / f"{name}-{stamp}.json"
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    return path


def print_table(title: str, header: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    cells = [[str(cell) for cell in row] for row in [header, *rows]]
    widths = [max(len(row[index]) for row in cells) for index in range(len(header))]
    print(f"\n{title}")
    for position, row in enumerate(cells):
        print("  " + "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))
        if position == 0:
            print("  " + "  ".join("-" * width for width in widths))


def event_loop_runner() -> Callable[[Coroutine[Any, Any, T]], T]:
    """``asyncio.run`` on uvloop when installed: the load generator shares the CPUs with
    the processes it measures, so it should spend as little as it can."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run

    def run(main: Coroutine[Any, Any, T]) -> T:
        return uvloop.run(main)

    return run


def measure_rate(
    url: str, pids: dict[str, int], *, concurrency: int, seconds: int, label: str
) -> dict[str, Any]:
    """Requests per second at ``url`` (``wrk`` when on PATH, else the Python load
    generator) and the CPU microseconds per request of each process in ``pids``."""
    before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    started = time.perf_counter()
    rate = run_wrk(url, concurrency=concurrency, seconds=seconds)
    tool = "wrk"
    if rate is None:
        tool = "python"
        result = event_loop_runner()(
            run_load(
                label, url, concurrency=concurrency, count=seconds * 20_000, max_seconds=seconds
            )
        )
        rate = result.ok / result.elapsed if result.elapsed else 0.0
    elapsed = time.perf_counter() - started
    requests = max(1.0, rate * elapsed)
    cpu = {
        name: round(1e6 * (after - start) / requests, 1)
        for name, pid in pids.items()
        if (start := before[name]) is not None and (after := cpu_seconds(pid)) is not None
    }
    return {"rate": round(rate, 1), "tool": tool, "cpu_us": cpu}


def retry_once(label: str, start: Callable[[], T], *retry_on: type[BaseException]) -> T:
    """``start()``; when it raises one of ``retry_on`` (a start that failed, e.g. a free
    port taken meanwhile), say so and try once more."""
    try:
        return start()
    except retry_on as exc:
        print(f"round {label}: start failed ({exc}); retrying once", flush=True)
        return start()
