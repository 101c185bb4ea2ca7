"""Loading throughput on Tiny ImageNet (train split, JPEG decode + crop/flip to 32 px + batching):
consistcam's TinyImageNet (lazy decode; preloaded; preloaded without boxes, as the trainer's
training loader runs) against torchvision's ImageFolder on the same folder tree with the
equivalent image-only transform, for 0, 1 and 2 worker processes. One epoch per call.

    .venv/bin/python benchmarks/bench_loading.py --root ../shared/data/tiny-imagenet-10
"""

from __future__ import annotations

import argparse

import torch
import torchvision
from torch.utils.data import DataLoader
from torchvision.transforms import v2

from _common import bench, report
from consistcam.data import TinyImageNet, build_transform, collate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--root", default="../shared/data/tiny-imagenet-10")
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--workers", default="0,1,2")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.manual_seed(0)
    tf = build_transform(args.size, "crop_flip")
    lazy = TinyImageNet(args.root, "train", transform=tf, preload=False)
    pre = TinyImageNet(args.root, "train", transform=tf, preload=True)
    bare = TinyImageNet(args.root, "train", transform=tf, preload=True)
    bare.keep_locations = False  # what the trainer's training loader does: the loss never reads boxes
    ref_tf = v2.Compose([v2.ToImage(), v2.Resize(args.size, antialias=True), v2.CenterCrop(args.size),
                         v2.RandomCrop(args.size, padding=4), v2.RandomHorizontalFlip(),
                         v2.ToDtype(torch.float32, scale=True)])
    folder = torchvision.datasets.ImageFolder(f"{args.root}/train", transform=ref_tf)
    n = len(lazy)

    def epoch(ds, workers, collate_fn=None):
        loader = DataLoader(ds, batch_size=args.batch, shuffle=True, num_workers=workers, collate_fn=collate_fn,
                            persistent_workers=False)
        return lambda: sum(len(b["image"] if isinstance(b, dict) else b[0]) for b in loader)

    for w in (int(x) for x in args.workers.split(",")):
        medians = bench({
            f"consistcam lazy, {w} workers": epoch(lazy, w, collate),
            f"consistcam preloaded, {w} workers": epoch(pre, w, collate),
            f"consistcam preloaded, no boxes, {w} workers": epoch(bare, w, collate),
            f"torchvision ImageFolder, {w} workers": epoch(folder, w),
        }, repeats=args.repeats, warmup=0)
        report(f"Tiny ImageNet train ({n} images) -> {args.size}px crop/flip batches, {w} workers", medians,
               f"consistcam lazy, {w} workers", n)


if __name__ == "__main__":
    main()
