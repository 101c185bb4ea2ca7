"""ERM training throughput: images/s of the Trainer's training epoch, at steady state.

ResNet-18 with the small-input stem, batch 256, on Tiny ImageNet-10 (64 px, 5,000 training images) by
default, or any data spec (``--data demo:n=2048,size=64``); on a GPU with bfloat16 autocast and
channels-last (``--amp``/``--channels-last`` default to on there, off on the CPU). The real loop runs
(``Trainer.from_config(...).fit()``: data, augmentation, strategy loss, backward, optimizer step), and
only ``train_epoch`` is timed (ended by ``torch.cuda.synchronize`` on a GPU), not the per-epoch
evaluation nor the set-up (data decoding, model, an in-memory copy of the images where the trainer
makes one). The first epoch (cuDNN autotuning, allocator warm-up, lazy initialisation) is left out:
the figure is the median over the later epochs.

Options of TrainConfig that may or may not exist in this version go through ``--set key=value``
(parsed as the CLI's ``--set``) or ``--preload {auto,on,off}``, which is applied only when TrainConfig
has a ``preload`` option (else a note is printed), so the script runs before and after that change.

Issue 24's target: at least 10,000 images/s on one H200 (Tiny ImageNet-10 in memory, bf16). Run (repo root):

    PYTHONPATH=src python benchmarks/bench_train_throughput.py --device cuda --preload on [--json out.jsonl]
    PYTHONPATH=src python benchmarks/bench_train_throughput.py --data demo:n=64,size=32 --batch 32 --epochs 2
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import tempfile
import time
from pathlib import Path

import torch

from _common import add_device_args, check_device, machine, write_json
from consistcam.arguments import parse_set
from consistcam.train import TrainConfig, Trainer
from consistcam.train.config import merge

ROOT = Path(__file__).resolve().parents[1]


def tiny_imagenet() -> Path:
    """../shared beside the repo (where the tests look for it), else shared/ inside a copy of the repo."""
    for shared in (ROOT.parent / "shared", ROOT / "shared"):
        if (shared / "data" / "tiny-imagenet-10" / "wnids.txt").is_file():
            return shared / "data" / "tiny-imagenet-10"
    return ROOT.parent / "shared" / "data" / "tiny-imagenet-10"


def on_off(value: str, device: torch.device) -> bool:
    return device.type == "cuda" if value == "auto" else value == "on"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=f"tinyimagenet:{tiny_imagenet()}")
    ap.add_argument("--arch", default="resnet18")
    ap.add_argument("--no-small-input", dest="small_input", action="store_false",
                    help="keep the ImageNet stem (default: the 3x3 stride-1 small-input stem)")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--epochs", type=int, default=4, help="epochs run; the first is warm-up and not counted")
    ap.add_argument("--amp", choices=("auto", "on", "off"), default="auto", help="bf16 autocast (auto: on CUDA)")
    ap.add_argument("--channels-last", choices=("auto", "on", "off"), default="auto", help="auto: on CUDA")
    ap.add_argument("--preload", choices=("auto", "on", "off"),
                    help="TrainConfig.preload, if this version has it (default: the config's default)")
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--subset", type=int, help="train on the first N images only")
    ap.add_argument("--set", action="append", metavar="KEY=VALUE", help="any TrainConfig option (as the CLI's)")
    add_device_args(ap)
    args = ap.parse_args()
    if args.epochs < 2:
        ap.error("--epochs must be at least 2 (the first is warm-up)")
    device = check_device(args.device)
    options = {"data": args.data, "arch": args.arch, "small_input": args.small_input, "method": "erm",
               "epochs": args.epochs, "batch_size": args.batch, "eval_batch_size": 512, "device": device.type,
               "amp": on_off(args.amp, device), "channels_last": on_off(args.channels_last, device),
               "workers": args.workers, "subset": args.subset, "seed": 0}
    notes = []
    if args.preload is not None:
        if "preload" in {f.name for f in dataclasses.fields(TrainConfig)}:
            options["preload"] = args.preload
        else:
            notes.append(f"--preload {args.preload} ignored: this TrainConfig has no preload option")
    options = merge(options, parse_set(args.set))
    for note in notes:
        print("note:", note)

    with tempfile.TemporaryDirectory(prefix="bench_train_") as out:
        cfg = TrainConfig.from_dict({**options, "out": str(Path(out) / "run")})
        t = time.perf_counter()
        trainer = Trainer.from_config(cfg, progress=False, callbacks=[])
        setup_s = time.perf_counter() - t
        times, counts = [], []
        train_epoch, loss = trainer.train_epoch, trainer.method.loss

        def counted_loss(batch):
            counts[-1] += len(batch["label"])
            return loss(batch)

        def timed_epoch(epoch: int, seed: int) -> dict:
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            counts.append(0)
            start = time.perf_counter()
            record = train_epoch(epoch, seed)  # ends with .item() of the epoch's loss: a device sync
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times.append(time.perf_counter() - start)
            return record

        trainer.method.loss = counted_loss
        trainer.train_epoch = timed_epoch
        history = trainer.fit()
        preloaded = getattr(trainer.data, "preloaded", None) is not None

    rates = [n / s for n, s in zip(counts, times)]
    steady = statistics.median(rates[1:])
    print(f"## ERM training throughput, {args.arch}{' small-input' if args.small_input else ''}, {cfg.data}, "
          f"batch {args.batch}, {device}, amp {cfg.amp}, channels-last {cfg.channels_last}, "
          f"input {'preloaded' if preloaded else 'DataLoader'}")
    print(f"set-up {setup_s:.1f} s; per epoch: " + ", ".join(
        f"{n} images in {s:.2f} s = {r:,.0f}/s" for n, s, r in zip(counts, times, rates)))
    print(f"steady state (median of epochs 2..{args.epochs}): {steady:,.0f} images/s; "
          f"final train loss {history[-1]['train/loss']:.3f}")
    write_json(args.json, {"bench": "train_throughput", "arch": args.arch, "small_input": args.small_input,
                           "data": cfg.data, "batch": args.batch, "epochs": args.epochs, "amp": cfg.amp,
                           "channels_last": cfg.channels_last, "preloaded": preloaded,
                           "options": {k: v for k, v in cfg.to_dict().items() if k not in ("out", "data")},
                           "setup_s": round(setup_s, 2), "epoch_s": [round(s, 4) for s in times],
                           "images_per_epoch": counts, "images_per_s_per_epoch": [round(r, 1) for r in rates],
                           "images_per_s": round(steady, 1), "notes": notes, "machine": machine(device)})


if __name__ == "__main__":
    main()
