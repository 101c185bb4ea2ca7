"""Interleaved timing: each repeat runs every contender once, in rotating order; medians and ratios."""

from __future__ import annotations

import argparse
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


def resnet50_setup(description: str):
    """Shared arguments and inputs: a random-weight torchvision resnet50 in eval mode, a batch of
    images in [0, 1] and random targets."""
    import torchvision

    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--size", type=int, default=160)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    torch.manual_seed(0)
    model = torchvision.models.resnet50().eval()
    x = torch.rand(args.batch, 3, args.size, args.size)
    targets = torch.randint(0, 1000, (args.batch,))
    return args, model, x, targets
