"""Interleaved timing: each repeat runs every contender once, in rotating order; medians and ratios."""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

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


def add_device_args(ap: argparse.ArgumentParser) -> None:
    """``--device`` and ``--json``: every benchmark runs on the CPU or a CUDA GPU and can append its
    results as one JSON line to a file, so that a GPU session collects them in one place."""
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--json", metavar="PATH", help="append the results as one JSON line to PATH")


def check_device(device: str) -> torch.device:
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA GPU here (torch.cuda.is_available() is False)")
    return torch.device(device)


def synchronized(fn: Callable[[], object], device: torch.device) -> Callable[[], object]:
    """``fn`` that returns only when the device has finished its work: CUDA kernels run asynchronously,
    so a timer around an unsynchronised call measures the launches, not the computation."""
    if device.type != "cuda":
        return fn

    def call() -> object:
        out = fn()
        torch.cuda.synchronize(device)
        return out
    return call


def installed(module: str) -> bool:
    """Whether a peer is importable; a benchmark skips a missing one with a note instead of crashing."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def machine(device: torch.device) -> dict[str, object]:
    info: dict[str, object] = {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
                               "torch": torch.__version__, "device": str(device)}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def write_json(path: str | None, record: dict) -> None:
    """Print ``record`` as one JSON line and, with ``path``, append it there."""
    line = json.dumps(record)
    print(line)
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a") as f:
            f.write(line + "\n")


def throughput(medians: dict[str, float], items: int, ours: str | None = None) -> dict[str, dict[str, float]]:
    """The JSON form of a :func:`bench` result: median seconds per call, items/s and (with ``ours``) how many
    times faster ours is than each contender."""
    out = {"median_s": {k: round(v, 6) for k, v in medians.items()},
           "items_per_s": {k: round(items / v, 2) for k, v in medians.items()}}
    if ours is not None:
        out["ours_x_faster"] = {k: round(v / medians[ours], 3) for k, v in medians.items()}
    return out


def resnet50_setup(description: str):
    """Shared arguments and inputs: a random-weight torchvision resnet50 in eval mode, a batch of
    images in [0, 1] and random targets, on ``--device``."""
    import torchvision

    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--size", type=int, default=160)
    ap.add_argument("--repeats", type=int, default=5)
    add_device_args(ap)
    args = ap.parse_args()
    device = check_device(args.device)
    torch.manual_seed(0)
    model = torchvision.models.resnet50().eval().to(device)
    x = torch.rand(args.batch, 3, args.size, args.size).to(device)
    targets = torch.randint(0, 1000, (args.batch,)).to(device)
    return args, model, x, targets
