"""ECL in a Lightning run: a LightningModule whose ``training_step`` takes its loss from ECLCallback.

Needs ``pip install consistcam[lightning]``. The callback scores the training set on ECL's schedule
(at the start of the due epochs) and keeps v in Lightning's checkpoints; ``ecl_loss`` is the one
call the module makes. Run ``python examples/lightning_module.py --help`` for the options.
"""

from __future__ import annotations

import argparse

import lightning
import torch
from torch.utils.data import DataLoader

import consistcam
from consistcam.data import DemoShapes, build_transform, collate
from consistcam.lightning import ECLCallback, ecl_loss


class Classifier(lightning.LightningModule):
    def __init__(self, num_classes: int, lr: float = 0.05) -> None:
        super().__init__()
        self.model = consistcam.create("cc_resnet10", num_classes)  # any classifier taking images in [0, 1]
        self.lr = lr

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss = ecl_loss(self, self(batch["image"]), batch["label"], batch["id"])  # mean_i(v_i * CE_i)
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9)


def main(argv: list[str] | None = None, **trainer_options) -> lightning.Trainer:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--n", type=int, default=512, help="training images")
    parser.add_argument("--steps", type=int, default=2, help="PGD steps of the background attack")
    parser.add_argument("--resume", help="a Lightning checkpoint to continue from (ECL's state included)")
    args = parser.parse_args(argv)
    lightning.seed_everything(0, verbose=False)
    # consistcam's data sets yield dicts with "image", "label" and "id"; any other: consistcam.WithIds
    train_set = DemoShapes("train", n=args.n, size=32, transform=build_transform(None, "flip"))
    plain = DemoShapes("train", n=args.n, size=32, transform=build_transform(None, "none"))  # scoring: no flips
    ecl = ECLCallback(DataLoader(plain, batch_size=256, collate_fn=collate), num_samples=len(plain),
                      config=consistcam.ECLConfig(warmup=1, update_every=1,
                                                  consistency=consistcam.ConsistencyConfig(steps=args.steps)))
    trainer = lightning.Trainer(max_epochs=args.epochs, accelerator="cpu", callbacks=[ecl], logger=False,
                                enable_model_summary=False, **trainer_options)
    trainer.fit(Classifier(len(train_set.classes)),
                DataLoader(train_set, batch_size=64, shuffle=True, collate_fn=collate), ckpt_path=args.resume)
    return trainer


if __name__ == "__main__":
    main()
