"""SISE vs Ada-SISE vs Grad-CAM vs Score-CAM on trained runs: time, masked forward passes, insertion/deletion AUC
and energy inside the object mask, mean ± std over the runs (one per seed).

Each run's model explains the first ``--images`` test images of its data set (the label's class), in batches of
``--batch``; the explainers run in rotating order so machine load hits all of them alike. The number of masked
forward passes is counted by a hook (independent of machine load); wall time is not, on a shared CPU.

Run: .venv/bin/python benchmarks/bench_sise.py RUN [RUN ...] [--images 32] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from consistcam.data import build_dataset, build_transform, collate
from consistcam.evaluation import insertion_deletion
from consistcam.evaluation.run import run_data
from consistcam.explain import explain
from consistcam.metrics import energy_inside
from consistcam.train import load_model

EXPLAINERS = ("gradcam", "scorecam", "sise", "ada-sise")


def _count_forwards(model: torch.nn.Module) -> tuple[list[int], object]:
    seen: list[int] = []
    handle = model.register_forward_pre_hook(lambda _m, args: seen.append(args[0].shape[0]))
    return seen, handle


def bench_run(run: str, n_images: int, batch: int, steps: int, rotate: int = 0) -> dict[str, dict[str, float]]:
    model, _info = load_model(run)
    model.eval()
    data = run_data(Path(run))
    ds = build_dataset(data, "test", build_transform(None, "none"))
    samples = collate([ds[i] for i in range(min(n_images, len(ds)))])
    images, labels, masks = samples["image"], samples["label"], samples["mask"].float()
    out: dict[str, dict[str, float]] = {}
    for name in (EXPLAINERS[(k + rotate) % len(EXPLAINERS)] for k in range(len(EXPLAINERS))):
        seen, handle = _count_forwards(model)
        start = time.perf_counter()
        try:
            maps = torch.cat([explain(model, images[i:i + batch], labels[i:i + batch], explainer=name, batch_size=128)
                              for i in range(0, len(images), batch)])
        finally:
            handle.remove()
        seconds = time.perf_counter() - start
        # minus explain()'s own forward (and SISE's second one); one-image dry runs that find layers stay in
        masked = sum(seen) - len(images) * (2 if name in ("sise", "ada-sise") else 1)
        faith = insertion_deletion(model, images, maps, labels, steps=steps)
        out[name] = {"seconds_per_image": seconds / len(images), "masked_forwards_per_image": masked / len(images),
                     "insertion": float(faith["insertion"].mean()), "deletion": float(faith["deletion"].mean()),
                     "energy_in_mask": float(energy_inside(maps, masks).mean())}
        print(run, name, json.dumps(out[name]), flush=True)
    return out


def table(results: dict[str, dict[str, dict[str, float]]]) -> str:
    keys = ("seconds_per_image", "masked_forwards_per_image", "insertion", "deletion", "energy_in_mask")
    heads = ("s / image", "masked forwards / image", "insertion AUC ↑", "deletion AUC ↓", "energy in mask ↑")
    lines = ["| explainer | " + " | ".join(heads) + " |", "|---" * (len(keys) + 1) + "|"]
    for name in EXPLAINERS:
        cells = []
        for key in keys:
            values = [r[name][key] for r in results.values()]
            sd = statistics.stdev(values) if len(values) > 1 else 0.0
            fmt = ".1f" if key == "masked_forwards_per_image" else ".3f"
            cells.append(f"{statistics.mean(values):{fmt}} ± {sd:{fmt}}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", help="run folders (model.safetensors + config.yaml)")
    ap.add_argument("--images", type=int, default=32, help="test images per run")
    ap.add_argument("--batch", type=int, default=16, help="images per explain() call")
    ap.add_argument("--steps", type=int, default=16, help="insertion/deletion steps")
    ap.add_argument("--threads", type=int, default=1, help="torch threads")
    ap.add_argument("--json", help="write the per-run results here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    results = {run: bench_run(run, args.images, args.batch, args.steps, i) for i, run in enumerate(args.runs)}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} thread(s), "
          f"torch {torch.__version__}; {len(results)} run(s) x {args.images} images")
    print(table(results))


if __name__ == "__main__":
    main()
