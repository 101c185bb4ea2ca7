"""ECL scoring throughput: ``explanation_consistency`` images/s, the work of one ECL scoring round.

ResNet-18 with the small-input stem (3x3 stride 1, no max-pool), 10 classes, random weights, images
uniform in [0, 1] (the cost does not depend on the pixels), batch 512 at 64 px, the preset's scorer
(Grad-CAM, heatmap mask, masked PGD with 3 steps and a random start). Three arms, interleaved
(``_common.bench``), each call scoring ``--batches`` batches already on the device and, on a GPU,
ending with ``torch.cuda.synchronize``:

- ``fp32``: the model as it is (``ExecutionConfig(fold_batchnorm=False, channels_last=False, amp="off")``);
- ``fp32 fast``: the copy ``score_dataset`` scores with (BatchNorm folded, channels-last; float rounding only);
- ``bf16 fast``: that copy under bfloat16 autocast, as ``score_dataset`` runs it with
  ``ExecutionConfig(amp="bf16")`` (``explain()`` accepts float32 images under autocast); the
  mean |E difference| to ``fp32`` is printed, since a faster E is only useful if it is the same E.

Issue 24's target: at least 8,000 images/s on one H200 (measured before: 3,127). Run (repo root):

    PYTHONPATH=src python benchmarks/bench_ecl_scoring.py --device cuda [--json out.jsonl]
    PYTHONPATH=src python benchmarks/bench_ecl_scoring.py --batch 8 --size 32 --batches 1 --repeats 1  # CPU smoke
"""

from __future__ import annotations

import argparse
import dataclasses

import torch

from _common import add_device_args, bench, check_device, machine, report, synchronized, throughput, write_json
from consistcam.consistency import ConsistencyConfig, ExecutionConfig, explanation_consistency
from consistcam.consistency.score import scoring_autocast, scoring_model
from consistcam.models import create

OURS = "fp32"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="resnet18")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--batches", type=int, default=4, help="batches scored per timed call")
    ap.add_argument("--steps", type=int, default=3, help="PGD steps")
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=5)
    add_device_args(ap)
    args = ap.parse_args()
    device = check_device(args.device)
    torch.manual_seed(0)
    model = create(args.arch, args.classes, small_input=True).to(device).eval()
    g = torch.Generator(device=device).manual_seed(0)
    batches = [(torch.rand(args.batch, 3, args.size, args.size, device=device, generator=g),
                torch.randint(0, args.classes, (args.batch,), device=device, generator=g))
               for _ in range(args.batches)]
    exact = ConsistencyConfig(steps=args.steps)
    scorer, fast = scoring_model(model, exact, batches[0][0])  # made once per round by score_dataset
    fast_batches = [(x.contiguous(memory_format=torch.channels_last), y) for x, y in batches]
    # score_dataset's own autocast (ExecutionConfig.amp; auto = bf16 on CUDA, the default there)
    bf16_via = "ExecutionConfig(amp='bf16'): score_dataset's scoring_autocast"
    arms = {OURS: (model, exact, ExecutionConfig(fold_batchnorm=False, channels_last=False, amp="off"), batches),
            "fp32 fast": (scorer, fast, ExecutionConfig(amp="off"), fast_batches),
            "bf16 fast": (scorer, fast, ExecutionConfig(amp="bf16"), fast_batches)}
    generator = torch.Generator(device=device).manual_seed(1)

    def score(arm: str) -> list[torch.Tensor]:
        net, cfg, run, data = arms[arm]
        with torch.no_grad(), scoring_autocast(run, device):
            return [explanation_consistency(net, x, y, cfg, generator=generator, channels_last=run.channels_last)["E"]
                    for x, y in data]

    contenders = {arm: synchronized(lambda arm=arm: score(arm), device) for arm in arms}
    medians = bench(contenders, repeats=args.repeats)
    images = args.batch * args.batches
    report(f"ECL scoring (explanation_consistency), {args.arch} small-input, {args.size} px, batch {args.batch}, "
           f"{args.steps} PGD steps, {device}", medians, OURS, images)
    # the same E? without a random start the arms differ by rounding only
    same = {arm: dataclasses.replace(cfg, random_start=False) for arm, (_, cfg, _, _) in arms.items()}
    e = {}
    for arm, (net, _, run, data) in arms.items():
        with torch.no_grad(), scoring_autocast(run, device):
            e[arm] = explanation_consistency(net, *data[0], same[arm], channels_last=run.channels_last)["E"].float()
    diff = {arm: round((e[arm] - e[OURS]).abs().mean().item(), 6) for arm in arms if arm != OURS}
    print("mean |E - E_fp32| (no random start): " + ", ".join(f"{k} {v:.2e}" for k, v in diff.items()))
    write_json(args.json, {"bench": "ecl_scoring", "arch": args.arch, "small_input": True, "size": args.size,
                           "batch": args.batch, "batches": args.batches, "steps": args.steps,
                           "repeats": args.repeats, **throughput(medians, images), "bf16_via": bf16_via,
                           "mean_abs_dE_vs_fp32": diff, "machine": machine(device)})


if __name__ == "__main__":
    main()
