"""Evaluation wall time, old code against new (issue 24): ``evaluate_run`` of one trained run with the
protocols localization, faithfulness (16 steps), consistency and the BG-gap variants, each
contender in its own subprocess with its own ``src`` first on the path, interleaved in rotating
order, median of the repeats. The time is that of the ``evaluate_run`` call (no interpreter start,
no imports, no report.html: rendering is the report's, not the evaluation's). The metrics of the
two contenders are compared at the end (largest difference per key).

    # CPU (the old code from a commit; the run trained by the CPU preset, 32 px)
    .venv/bin/python benchmarks/bench_evaluation.py --run RUN --old-commit f33ef16 --n 400 --repeats 3
    # GPU: 1,000 images (test + test_correlated) at 64 px
    .venv/bin/python benchmarks/bench_evaluation.py --run RUN --old-commit f33ef16 --device cuda --size 64 --n 1000

Without ``--run`` a run is trained first (1 epoch of the CPU preset). ``--size`` evaluates a copy
of the run at another input size (the model is convolutional; only its recorded size changes).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PRESET = "configs/compare/shortcut_tinyimagenet_cpu.yaml"

# run in the contender's subprocess: time evaluate_run only
CHILD = """
import json, sys, time, torch
from consistcam.evaluation.run import evaluate_run
a = json.loads(sys.argv[1])
if a["threads"]:
    torch.set_num_threads(a["threads"])
t = time.perf_counter()
evaluate_run(a["run"], splits=a["splits"], protocols=("localization", "faithfulness", "consistency"),
             faithfulness_steps=16, subset=a["subset"], batch_size=a["batch"], workers=a["workers"],
             device=a["device"], out=a["out"], report=False, progress=False)
if a["device"].startswith("cuda"):
    torch.cuda.synchronize()
print(json.dumps({"seconds": time.perf_counter() - t}))
"""


def run_child(src: Path, args: dict) -> float:
    env = {**os.environ, "PYTHONPATH": str(src)}
    out = subprocess.run([sys.executable, "-c", CHILD, json.dumps(args)], cwd=ROOT, env=env, check=True,
                         capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])["seconds"]


def resized_run(run: Path, size: int, where: Path) -> Path:
    """A copy of ``run`` whose model records ``size`` as its input size (evaluate resizes to it)."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    copy = where / f"run{size}"
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("eval", "tb", "checkpoint*"))
    with safe_open(str(run / "model.safetensors"), "pt") as f:
        meta = dict(f.metadata())
    meta["image_size"] = json.dumps(size)
    save_file(load_file(str(run / "model.safetensors")), str(copy / "model.safetensors"), metadata=meta)
    return copy


def metric_differences(a: Path, b: Path) -> dict[str, float]:
    """Largest |difference| of each numeric metric between two metrics.json files, over splits."""
    ra, rb = (json.loads((p / "metrics.json").read_text())["splits"] for p in (a, b))
    diff: dict[str, float] = {}
    for split, values in ra.items():
        for key, value in values.items():
            other = rb.get(split, {}).get(key)
            if isinstance(value, (int, float)) and isinstance(other, (int, float)):
                d = abs(value - other) if not (math.isnan(value) and math.isnan(other)) else 0.0
                diff[key] = max(diff.get(key, 0.0), d)
    return diff


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, help="trained run folder (default: train one, 1 epoch of the CPU preset)")
    ap.add_argument("--old-src", type=Path, help="src folder of the old code")
    ap.add_argument("--old-commit", help="or: a commit whose src/ is extracted with git archive")
    ap.add_argument("--new-src", type=Path, default=ROOT / "src")
    ap.add_argument("--splits", default="test,test_correlated")
    ap.add_argument("--n", type=int, default=400, help="images in all, split evenly over --splits")
    ap.add_argument("--size", type=int, help="input size (default: the run's)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch", type=int, default=200)
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0, help="torch threads in the children (0: torch's default)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--only-new", action="store_true", help="time the new code only (no old code at hand)")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench_eval_"))
    try:
        contenders = {"new": args.new_src}
        if not args.only_new:
            if args.old_src is None:
                if args.old_commit is None:
                    ap.error("give --old-src or --old-commit (or --only-new)")
                archive = subprocess.run(["git", "archive", args.old_commit, "src"], cwd=ROOT, check=True,
                                         capture_output=True).stdout
                subprocess.run(["tar", "-x", "-C", str(tmp)], input=archive, check=True)
                args.old_src = tmp / "src"
            contenders = {"old": args.old_src, **contenders}
        run = args.run
        if run is None:
            run = tmp / "trained"
            subprocess.run([sys.executable, "-m", "consistcam", "train", "--config", PRESET, "--epochs", "1",
                            "--device", args.device, "--out", str(run), "--quiet"], cwd=ROOT, check=True,
                           env={**os.environ, "PYTHONPATH": str(args.new_src)})
        if args.size:
            run = resized_run(run.resolve(), args.size, tmp)
        splits = args.splits.split(",")
        base = {"run": str(Path(run).resolve()), "splits": splits, "subset": args.n // len(splits),
                "batch": args.batch, "workers": args.workers, "device": args.device, "threads": args.threads}
        times: dict[str, list[float]] = {name: [] for name in contenders}
        names = list(contenders)
        for r in range(args.repeats):
            for name in names[r % len(names):] + names[: r % len(names)]:
                seconds = run_child(contenders[name], {**base, "out": str(tmp / f"eval_{name}")})
                times[name].append(seconds)
                print(f"repeat {r}: {name} {seconds:.1f} s", flush=True)
        medians = {name: statistics.median(ts) for name, ts in times.items()}
        print(f"\n## evaluate_run, {args.n} images ({'+'.join(splits)}), size {args.size or 'of the run'}, "
              f"device {args.device}, batch {args.batch}, workers {args.workers}")
        print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
              f"threads {args.threads or 'default'}, {args.repeats} repeats interleaved")
        print("| code | median s | all s | images/s |")
        print("|---|---|---|---|")
        for name, ts in times.items():
            listed = ", ".join(f"{t:.1f}" for t in ts)
            print(f"| {name} | {medians[name]:.1f} | {listed} | {args.n / medians[name]:.1f} |")
        if "old" in medians:
            paired = statistics.median(o / n for o, n in zip(times["old"], times["new"]))
            print(f"\nspeed-up old / new: {medians['old'] / medians['new']:.2f}x (ratio of the medians), "
                  f"{paired:.2f}x (median of the per-repeat ratios: neighbours in time share the machine's load)")
            diff = metric_differences(tmp / "eval_old", tmp / "eval_new")
            worst = sorted(diff.items(), key=lambda kv: -kv[1])[:6]
            print("largest metric differences old vs new:", ", ".join(f"{k} {v:.2g}" for k, v in worst))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
