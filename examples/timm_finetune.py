"""Fine-tuning a timm model with ECL: a new head trained faster than the backbone, v from consistcam.ECL.

With ``--pretrained`` the backbone starts from timm's ImageNet weights (downloaded once by timm; the
default, random init, runs offline, as CI runs it). The loop is the plain one of plain_loop.py; what
fine-tuning adds is the model's own normalisation (consistcam.create wraps the timm model so it takes
images in [0, 1], which the background attack needs) and two learning rates.
Run ``python examples/timm_finetune.py --help`` for the options.
"""

from __future__ import annotations

import argparse

import torch
from torch.utils.data import DataLoader

import consistcam
from consistcam.data import DemoShapes, build_transform, collate


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet10t", help="any timm model name")
    parser.add_argument("--pretrained", action="store_true", help="start from timm's ImageNet weights")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--n", type=int, default=512, help="training images")
    parser.add_argument("--steps", type=int, default=2, help="PGD steps of the background attack")
    args = parser.parse_args(argv)
    torch.manual_seed(0)

    train_set = DemoShapes("train", n=args.n, size=64, transform=build_transform(None, "flip"))
    plain = DemoShapes("train", n=args.n, size=64, transform=build_transform(None, "none"))
    loader = DataLoader(train_set, batch_size=64, shuffle=True, collate_fn=collate)
    score_loader = DataLoader(plain, batch_size=128, collate_fn=collate)
    # Normalize(timm's mean/std) + the timm model, with a fresh head for the demo's classes
    model = consistcam.create(f"timm:{args.model}", len(plain.classes), pretrained=args.pretrained)
    head = set(model.model.get_classifier().parameters())
    backbone = [p for p in model.parameters() if p not in head]
    optimizer = torch.optim.AdamW([{"params": backbone, "lr": 1e-3 if args.pretrained else 3e-3},
                                   {"params": list(head), "lr": 3e-3}], weight_decay=0.05)
    ecl = consistcam.ECL(len(plain), consistcam.ECLConfig(
        warmup=1, update_every=1, consistency=consistcam.ConsistencyConfig(steps=args.steps)))
    for epoch in range(args.epochs):
        logs = ecl.on_epoch_start(model, score_loader, epoch)
        model.train()
        for batch in loader:
            loss = ecl.loss(model(batch["image"]), batch["label"], batch["id"])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        print(f"epoch {epoch}: loss {loss.item():.3f}" + (f", E_mean {logs['consistency/E_mean']:.3f}" if logs else ""))
    return {"model": model.state_dict(), "ecl": ecl.state_dict()}


if __name__ == "__main__":
    main()
