"""Summarise py-spy ``--format raw`` (folded stacks) files: where the samples went.

    uv run python benchmarks/profile_summary.py benchmarks/results/profile/*.folded.txt

For each file: total samples, the top functions by self time (the leaf frame) and by
inclusive time (anywhere on the stack, counted once per sample), and the share of
samples under a few buckets (JSON/pydantic, websockets, HTTP parsing, event loop).
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path

BUCKETS = {
    "pydantic / JSON codec": re.compile(r"pydantic|json|_models|_frames\.py|encode|decode"),
    "websockets library": re.compile(r"websockets/"),
    "uvicorn / h11 / httptools": re.compile(r"uvicorn/|h11/|httptools"),
    "aiohttp": re.compile(r"aiohttp/"),
    "asyncio event loop": re.compile(r"asyncio/|uvloop"),
    "logging": re.compile(r"logging/"),
    "pipegate code": re.compile(r"pipegate_"),
}


def _frames(stack: str) -> list[str]:
    return [frame for frame in stack.split(";") if frame and not frame.startswith("process ")]


def summarise(path: Path, top: int) -> None:
    self_time: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    buckets: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = _frames(stack)
        if not frames:
            continue
        total += count
        self_time[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count
        leaf = frames[-1]
        for name, pattern in BUCKETS.items():
            if pattern.search(leaf):
                buckets[name] += count
                break
        else:
            buckets["other (leaf)"] += count
    print(f"\n== {path.name}: {total} samples")
    if not total:
        return
    print("  self time (leaf frame):")
    for frame, count in self_time.most_common(top):
        print(f"    {100 * count / total:5.1f}%  {frame}")
    print("  inclusive time:")
    for frame, count in inclusive.most_common(top):
        print(f"    {100 * count / total:5.1f}%  {frame}")
    print("  leaf buckets:")
    for name, count in buckets.most_common():
        print(f"    {100 * count / total:5.1f}%  {name}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="+", type=Path)
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args(argv)
    for path in args.files:
        summarise(path, args.top)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
