"""Options of ``consistcam vae train`` (validated before any data is read)."""

from __future__ import annotations

from dataclasses import dataclass

from consistcam.config import option, validate
from consistcam.run.kept import keep_check, keep_every


def _widths_check(value: list) -> str | None:
    return None if value and all(isinstance(w, int) and w >= 1 for w in value) else "expected positive integers"


@dataclass
class VAEConfig:
    data: str = option("demo", "data spec (as for consistcam train): demo, tinyimagenet:PATH, ...")
    image_size: int = option(32, "images are resized to this size", ge=8)
    latent_dim: int = option(32, "latent dimensions", ge=1)
    widths: list[int] = option(help="channels of the encoder's stride-2 convolutions", check=_widths_check,
                               default_factory=lambda: [32, 64, 128])
    beta: float = option(1.0, "weight of the KL term (beta-VAE)", ge=0.0)
    epochs: int = option(10, "number of epochs", ge=1)
    batch_size: int = option(64, "training batch size", ge=1)
    optimizer: str = option("adam", "optimizer", choices=("adam", "sgd"))
    lr: float = option(1e-3, "learning rate (constant)", gt=0.0)
    momentum: float = option(0.0, "SGD momentum", ge=0.0, lt=1.0)
    keep_checkpoints: int | str = option(1, "keep the weights of every N-th epoch (and the last) for TracIn: every=N "
                                         "or N (as consistcam train --keep-checkpoints)", check=keep_check(1))
    subset: int | None = option(None, "train on the first N images only", ge=1)
    extra: str | None = option(None, "data spec whose first extra_n training images are appended (outliers: "
                                     "VAE-TracIn's unsupervised data-cleaning check)")
    extra_n: int = option(0, "images taken from --extra", ge=0)
    exclude: list[int] = option(help="sample ids left out of training (removal-and-retraining checks)",
                                default_factory=list)
    seed: int = option(0, "seed of initialisation, shuffling and the reparameterisation noise", ge=0)
    device: str = option("auto", "device: auto (cuda when available, else cpu), cpu, cuda, cuda:N or mps")
    out: str = option("runs/vae", "run folder")

    def __post_init__(self) -> None:
        validate(self)
        self.keep_checkpoints = keep_every(self.keep_checkpoints)  # one spelling in config.yaml: an integer
        if self.extra_n and not self.extra:
            from consistcam.config import ConfigError

            raise ConfigError("extra_n: needs --extra (the data spec the extra images come from)")
        if self.image_size % 2 ** len(self.widths):
            from consistcam.config import ConfigError

            raise ConfigError(f"image_size: {self.image_size} must be divisible by 2**{len(self.widths)} "
                              f"(one halving per entry of widths)")
