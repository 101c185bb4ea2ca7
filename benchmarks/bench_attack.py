"""Masked PGD-10 throughput (consistcam) vs torchattacks PGD-10 (unmasked), same model and batch.

torchvision resnet50 (random weights), batch 16, 160 px, CPU, L-inf eps 8/255, step 2/255.
Our attack also applies a foreground mask (half the image), which costs a multiply per step.
Run: .venv/bin/python benchmarks/bench_attack.py
"""

from __future__ import annotations

import argparse

import torch
import torchvision

from _common import bench, report
from consistcam.attack import masked_pgd


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--size", type=int, default=160)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    torch.manual_seed(0)
    model = torchvision.models.resnet50().eval()
    x = torch.rand(args.batch, 3, args.size, args.size)
    y = torch.randint(0, 1000, (args.batch,))
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
