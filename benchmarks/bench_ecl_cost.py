"""What an ECL run costs over ERM on the tiny-imagenet-10 CPU preset, from its parts, interleaved.

One process, 1 thread by default, CPU time (``time.process_time``) and wall time per contender:
an ERM training pass (SGD step on batches of 128, train mode), the epoch's val pass (500 images),
and one ECL scoring round with the preset's scorer (3 PGD steps, Grad-CAM, heatmap mask, batches of
250) on the exact path (``ExecutionConfig(fold_batchnorm=False, channels_last=False)``: the computation before the
fast path) and on the fast path (the defaults). cc_resnet10 at 32 px, 10 classes, images uniform in
[0, 1] (the cost does not depend on the pixels). Costs are measured on ``--train-images`` /
``--score-images`` and scaled to the preset's 5,000 training images; the projected run ratio is

    ECL / ERM = (6 E + 2 S) / (6 E),   E = train pass + val pass,   S = scoring round,

the preset's 6 epochs with scoring at epochs 2 and 4 (data loading and checkpoint writing, the same
in both runs, are left out, which only raises the ratio). CPU time is the figure to read on a
shared machine: contention inflates wall time but hardly the CPU time of a single-thread process.

Run: .venv/bin/python benchmarks/bench_ecl_cost.py [--repeats 3] [--profile]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from consistcam.consistency import ConsistencyConfig, ExecutionConfig, score_dataset
from consistcam.models import create

PRESET = ConsistencyConfig(steps=3)  # the preset's scorer (its weights v cost nothing measurable)
EXACT, FAST = ExecutionConfig(fold_batchnorm=False, channels_last=False), ExecutionConfig()
TRAIN_N, VAL_N, EPOCHS, ROUNDS = 5000, 500, 6, 2


def _batches(x: torch.Tensor, y: torch.Tensor, size: int) -> list[dict[str, torch.Tensor]]:
    return [{"image": x[i:i + size], "label": y[i:i + size], "id": torch.arange(i, min(i + size, len(x)))}
            for i in range(0, len(x), size)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train-images", type=int, default=1024)
    ap.add_argument("--score-images", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--profile", action="store_true", help="also print the op breakdown of one scoring batch")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = create("cc_resnet10", 10)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4)
    g = torch.Generator().manual_seed(0)
    nt, ns = args.train_images, args.score_images
    xt, yt = torch.rand(nt, 3, 32, 32, generator=g), torch.randint(0, 10, (nt,), generator=g)
    xs, ys = torch.rand(ns, 3, 32, 32, generator=g), torch.randint(0, 10, (ns,), generator=g)
    xv = torch.rand(VAL_N, 3, 32, 32, generator=g)
    scoring = _batches(xs, ys, 250)
    steps2 = ConsistencyConfig(steps=2)  # an option that changes the attack: 2 PGD steps

    def train_pass() -> None:
        model.train()
        for i in range(0, len(xt), 128):
            loss = F.cross_entropy(model(xt[i:i + 128]), yt[i:i + 128])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    def val_pass() -> None:
        model.eval()
        with torch.no_grad():
            for i in range(0, VAL_N, 500):
                model(xv[i:i + 500])
        model.train()

    results: dict[str, object] = {}
    contenders: dict[str, Callable[[], object]] = {
        "erm train pass": train_pass,
        "val pass": val_pass,
        "scoring, exact": lambda: results.__setitem__("exact", score_dataset(model, scoring, PRESET, execution=EXACT)),
        "scoring, fast": lambda: results.__setitem__("fast", score_dataset(model, scoring, PRESET, execution=FAST)),
        "scoring, fast, steps=2": lambda: score_dataset(model, scoring, steps2, execution=FAST),
    }
    scale = {k: TRAIN_N / (args.train_images if k.startswith("erm") else args.score_images) for k in contenders}
    scale["val pass"] = 1.0
    cpu: dict[str, list[float]] = {k: [] for k in contenders}
    wall: dict[str, list[float]] = {k: [] for k in contenders}
    names = list(contenders)
    val_pass()
    for r in range(args.repeats):
        for name in names[r % len(names):] + names[: r % len(names)]:
            c, w = time.process_time(), time.perf_counter()
            contenders[name]()
            cpu[name].append((time.process_time() - c) * scale[name])
            wall[name].append((time.perf_counter() - w) * scale[name])
            if name.startswith("scoring") and "exact" in results and "fast" in results:
                d = (results["fast"].E - results["exact"].E).abs()
                print(f"repeat {r}: fast vs exact |dE| mean {d.mean():.2e} max {d.max():.2e}, "
                      f"predictions equal {bool((results['fast'].pred == results['exact'].pred).all())}")
                results.clear()
    med = {k: statistics.median(v) for k, v in cpu.items()}
    medw = {k: statistics.median(v) for k, v in wall.items()}
    print(f"\n## ECL cost parts, cc_resnet10 32 px, {args.threads} thread(s), {args.repeats} interleaved repeats, "
          f"scaled to {TRAIN_N} training images, torch {torch.__version__}")
    print("| part | CPU s (median) | wall s (median) | all CPU s |")
    print("|---|---|---|---|")
    for k in names:
        print(f"| {k} | {med[k]:.1f} | {medw[k]:.1f} | {', '.join(f'{t:.1f}' for t in cpu[k])} |")
    epoch = med["erm train pass"] + med["val pass"]
    for k in (n for n in names if n.startswith("scoring")):
        per_round = [s / (t + v) for s, t, v in zip(cpu[k], cpu["erm train pass"], cpu["val pass"])]
        ratio = [1 + ROUNDS * x / EPOCHS for x in per_round]
        print(f"{k}: round / ERM epoch = {med[k] / epoch:.2f} (per repeat {', '.join(f'{x:.2f}' for x in per_round)}); "
              f"projected ECL/ERM run = {1 + ROUNDS * med[k] / (EPOCHS * epoch):.2f} "
              f"(per repeat {', '.join(f'{x:.2f}' for x in ratio)})")
    print(f"fast / exact scoring: {med['scoring, fast'] / med['scoring, exact']:.2f}")
    if args.profile:
        _profile(model, scoring[0])


def _stages(model, batch, cfg: ConsistencyConfig, run: ExecutionConfig) -> dict[str, float]:
    """CPU seconds of each step of one scoring batch, as explanation_consistency runs them."""
    from consistcam.attack import foreground_mask, masked_attack
    from consistcam.consistency.score import scoring_model
    from consistcam.explain import explain

    x, y = batch["image"], batch["label"]
    net, cfg = scoring_model(model, cfg, x, run)
    if run.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    out, t = {}, time.process_time()

    def lap(name: str) -> None:
        nonlocal t
        out[name] = out.get(name, 0.0) + time.process_time() - t
        t = time.process_time()

    lap("copy the model (fold, layout)")
    heat, _ = explain(net, x, y, layer=cfg.layer, return_logits=True, channels_last=run.channels_last)
    lap("Grad-CAM of x (forward + head gradient)")
    fg = foreground_mask("heatmap", x, heatmaps=heat, tau=cfg.tau)
    lap("foreground mask")
    adv = masked_attack(net, x, y, fg, eps=cfg.eps, alpha=cfg.alpha, steps=cfg.steps,
                        generator=torch.Generator().manual_seed(0))
    lap(f"masked PGD, {cfg.steps} steps (forward + input gradient each)")
    explain(net, adv, y, layer=cfg.layer, return_logits=True, channels_last=run.channels_last)
    lap("Grad-CAM of x_adv")
    return out


def _profile(model, batch) -> None:
    from torch.profiler import ProfilerActivity, profile

    model.eval()
    paths = (("exact", EXACT), ("fast", FAST))
    parts = {name: _stages(model, batch, PRESET, run) for name, run in paths}
    print(f"\n### steps of one scoring batch of {len(batch['id'])} (CPU s)")
    print("| step | exact | fast |")
    print("|---|---|---|")
    for step in parts["exact"]:
        print(f"| {step} | {parts['exact'][step]:.2f} | {parts['fast'][step]:.2f} |")

    for name, run in paths:
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            score_dataset(model, [batch], PRESET, execution=run)
        print(f"\n### op breakdown, one scoring batch of {len(batch['id'])}, {name} path")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=10))


if __name__ == "__main__":
    main()
