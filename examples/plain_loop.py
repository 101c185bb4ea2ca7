"""ECL in a plain PyTorch loop: a torchvision ResNet-18 on consistcam's demo set, in seconds on a CPU.

The demo's shapes sit on backgrounds that agree with the label 90% of the time in training and never
at test time, so a model can cheat with the background; ECL up-weights the images whose explanation
a background-only attack moves. Run ``python examples/plain_loop.py --help`` for the options.
"""

from __future__ import annotations

import argparse

import torch
import torchvision
from torch.utils.data import DataLoader, TensorDataset

import consistcam
from consistcam.data import DemoShapes


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--n", type=int, default=512, help="training images")
    parser.add_argument("--steps", type=int, default=2, help="PGD steps of the background attack")
    args = parser.parse_args(argv)
    torch.manual_seed(0)

    # -- ECL in your own loop: a data set of (image in [0, 1], label) pairs, ids added by WithIds ----
    demo = DemoShapes("train", n=args.n, size=64)
    train_set = consistcam.WithIds(TensorDataset(demo.images.float() / 255, torch.tensor(demo.labels)))
    loader = DataLoader(train_set, batch_size=64, shuffle=True)  # yields (images, labels, ids)
    score_loader = DataLoader(train_set, batch_size=256)  # the same images un-augmented, for scoring
    model = torchvision.models.resnet18(num_classes=len(demo.classes))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    ecl = consistcam.ECL(num_samples=len(train_set), config=consistcam.ECLConfig(
        warmup=1, update_every=1, consistency=consistcam.ConsistencyConfig(steps=args.steps)))
    for epoch in range(args.epochs):
        logs = ecl.on_epoch_start(model, score_loader, epoch)  # scores the training set when a round is due
        model.train()
        for images, labels, ids in loader:
            loss = ecl.loss(model(images), labels, ids)  # mean_i(v_i * CE_i), v matched by sample id
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        print(f"epoch {epoch}: loss {loss.item():.3f}" + (f", E_mean {logs['consistency/E_mean']:.3f}, "
                                                          f"v in [{logs['consistency/v_min']:.2f}, "
                                                          f"{logs['consistency/v_max']:.2f}]" if logs else ""))
    checkpoint = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "ecl": ecl.state_dict()}
    # -------------------------------------------------------------------------------------------------
    return checkpoint


if __name__ == "__main__":
    main()
