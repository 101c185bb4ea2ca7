"""Training configuration: a dataclass, loadable from YAML and overridable from flags."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from consistcam.consistency import ConsistencyConfig


@dataclass
class TrainConfig:
    data: str = "demo"
    arch: str = "cc_resnet10"
    pretrained: bool = False
    small_input: bool = False
    image_size: int | None = None
    augment: str = "flip"
    method: str = "erm"
    epochs: int = 10
    batch_size: int = 128
    eval_batch_size: int = 256
    optimizer: str = "sgd"  # sgd | adamw
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "cosine"  # cosine | step | constant
    warmup_epochs: float = 0.0
    step_size: int = 30
    gamma: float = 0.1
    label_smoothing: float = 0.0
    amp: bool = False  # CUDA only
    channels_last: bool = False
    seed: int = 0
    workers: int = 0
    device: str = "auto"
    subset: int | None = None  # first N training samples (quick looks)
    skip_bad: bool = False  # skip unreadable images / bad annotations (listed in RUN/skipped.txt) instead of failing
    out: str = "runs/run"
    # ecl
    ecl_warmup: int = 2  # epochs trained with v = 1 before the first scoring pass
    update_every: int = 2  # epochs between scoring passes
    score_batch_size: int = 250
    consistency: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.optimizer not in ("sgd", "adamw"):
            raise ValueError(f"optimizer must be 'sgd' or 'adamw', got {self.optimizer!r}")
        if self.schedule not in ("cosine", "step", "constant"):
            raise ValueError(f"schedule must be cosine, step or constant, got {self.schedule!r}")
        for name in ("epochs", "batch_size", "update_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        ConsistencyConfig.from_dict(self.consistency)  # validate early, with a clear message

    def consistency_config(self, **overrides) -> ConsistencyConfig:
        return ConsistencyConfig.from_dict({**self.consistency, **overrides})

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown training option(s) {unknown}; known: {sorted(known)}")
        return cls(**d)

    @classmethod
    def from_yaml(cls, path: str | Path, **overrides) -> TrainConfig:
        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except FileNotFoundError:
            raise FileNotFoundError(f"config file {path} not found") from None
        except yaml.YAMLError as err:
            raise ValueError(f"{path}: not valid YAML ({err})") from None
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a mapping of options, got {type(data).__name__}")
        try:
            return cls.from_dict({**data, **overrides})
        except (TypeError, ValueError) as err:
            raise ValueError(f"{path}: {err}") from None

    def save_yaml(self, path: str | Path) -> None:
        from consistcam.utils import atomic_write

        atomic_write(path, lambda tmp: Path(tmp).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False)))
