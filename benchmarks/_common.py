"""Interleaved timing: each repeat runs every contender once, in rotating order; medians and ratios."""

from __future__ import annotations

import platform
import statistics
import time
from collections.abc import Callable

import torch


def bench(contenders: dict[str, Callable[[], object]], repeats: int = 5, warmup: int = 1) -> dict[str, float]:
    for fn in contenders.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in contenders}
    names = list(contenders)
    for r in range(repeats):
        for name in names[r % len(names):] + names[: r % len(names)]:
            t = time.perf_counter()
            contenders[name]()
            times[name].append(time.perf_counter() - t)
    return {name: statistics.median(ts) for name, ts in times.items()}


def report(title: str, medians: dict[str, float], ours: str, items: int) -> None:
    print(f"## {title}")
    print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}")
    print("| implementation | median s/call | items/s | ours is x faster |")
    print("|---|---|---|---|")
    for name, t in sorted(medians.items(), key=lambda kv: kv[1]):
        ratio = t / medians[ours]
        print(f"| {name} | {t:.3f} | {items / t:.1f} | {ratio:.2f} |")
