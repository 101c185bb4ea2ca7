"""Masked PGD-10 throughput (consistcam) vs torchattacks PGD-10 (unmasked), same model and batch.

torchvision resnet50 (random weights), batch 16, 160 px, CPU, L-inf eps 8/255, step 2/255.
Our attack also applies a foreground mask (half the image), which costs a multiply per step.
Run: .venv/bin/python benchmarks/bench_attack.py
"""

from __future__ import annotations

import torch

from _common import bench, report, resnet50_setup
from consistcam.attack import masked_pgd


def main() -> None:
    args, model, x, y = resnet50_setup(__doc__)
    fg = torch.zeros(args.batch, 1, args.size, args.size)
    fg[..., : args.size // 2, :] = 1

    import torchattacks

    ta = torchattacks.PGD(model, eps=8 / 255, alpha=2 / 255, steps=10, random_start=True)
    contenders = {
        "consistcam masked PGD-10": lambda: masked_pgd(model, x, y, fg, eps=8 / 255, alpha=2 / 255, steps=10),
        "torchattacks PGD-10": lambda: ta(x, y),
    }
    medians = bench(contenders, repeats=args.repeats)
    report(f"PGD-10, resnet50, batch {args.batch}, {args.size} px, CPU", medians, "consistcam masked PGD-10",
           args.batch)


if __name__ == "__main__":
    main()
