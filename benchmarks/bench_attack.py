"""Masked PGD-10 throughput (consistcam) vs torchattacks PGD-10 (unmasked), same model and batch.

torchvision resnet50 (random weights), batch 16, 160 px, ``--device`` (CPU by default), L-inf eps 8/255, step 2/255.
Our attack also applies a foreground mask (half the image), which costs a multiply per step.
Run: .venv/bin/python benchmarks/bench_attack.py
"""

from __future__ import annotations

import torch

from _common import bench, installed, machine, report, resnet50_setup, synchronized, throughput, write_json
from consistcam.attack import masked_pgd


def main() -> None:
    args, model, x, y = resnet50_setup(__doc__)
    fg = torch.zeros(args.batch, 1, args.size, args.size, device=x.device)
    fg[..., : args.size // 2, :] = 1
    ours = "consistcam masked PGD-10"
    contenders = {ours: lambda: masked_pgd(model, x, y, fg, eps=8 / 255, alpha=2 / 255, steps=10)}
    skipped = []
    if installed("torchattacks"):
        import torchattacks

        ta = torchattacks.PGD(model, eps=8 / 255, alpha=2 / 255, steps=10, random_start=True)
        contenders["torchattacks PGD-10"] = lambda: ta(x, y)
    else:
        skipped.append("torchattacks")
        print("note: skipped torchattacks: not installed")
    medians = bench({k: synchronized(fn, x.device) for k, fn in contenders.items()}, repeats=args.repeats)
    report(f"PGD-10, resnet50, batch {args.batch}, {args.size} px, {x.device}", medians, ours, args.batch)
    write_json(args.json, {"bench": "attack", "arch": "resnet50", "batch": args.batch, "size": args.size,
                           "repeats": args.repeats, **throughput(medians, args.batch, ours), "skipped": skipped,
                           "machine": machine(x.device)})


if __name__ == "__main__":
    main()
