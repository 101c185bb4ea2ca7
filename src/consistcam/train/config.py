"""Training configuration: typed options shared by every method, plus the method's own section.

In YAML (and in ``--set``), a method's options live under its name::

    method: ecl
    epochs: 6
    ecl:
      warmup: 2
      consistency: {steps: 3}
      weights: {power: 0.5}

Everything is validated when the config is built (:mod:`consistcam.config`): unknown keys name
their near matches, wrong types and out-of-range values name the option, before any data is read.
Options a method has renamed since a config was written load under their current names
(:func:`consistcam.config.upgrade`).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from consistcam.config import ConfigError, from_dict, load_yaml, option, registered, to_dict, upgrade, validate
from consistcam.data.images import MAX_SIDE
from consistcam.data.transforms import AUGMENTATIONS
from consistcam.run.kept import keep_check, keep_every
from consistcam.run.layout import EPOCH_FILES, KEPT_DIR, MODEL_FILE, SKIPPED_FILE
from consistcam.train.methods import METHODS, method_config

_DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def _data_check(value: str) -> str | None:
    from consistcam.data import DATASETS

    kind = value.partition(":")[0]
    return None if kind in DATASETS else registered(DATASETS)(kind)


def _arch_check(value: str) -> str | None:
    """Known names only: ours, torchvision's, or ``timm:NAME`` (timm's list is checked when building)."""
    from consistcam.models import list_models

    if value.startswith("timm:") or value in list_models():
        return None
    import torchvision

    if value in torchvision.models.list_models():
        return None
    near = difflib.get_close_matches(value, [*list_models(), *torchvision.models.list_models()], n=3)
    return "unknown model" + (f" (did you mean {', '.join(near)}?)" if near else
                              "; ours: consistcam list models, any torchvision name, or timm:NAME")


def _device_check(value: str) -> str | None:
    return None if _DEVICE.match(value) else "expected auto, cpu, cuda, cuda:N or mps"


@dataclass
class TrainConfig:
    data: str = option("demo", "data spec: demo[:opts], tinyimagenet:PATH, cub:PATH, imagefolder:PATH, ...",
                       check=_data_check)
    arch: str = option("cc_resnet10", "model name: ours (consistcam list models), torchvision, or timm:NAME",
                       check=_arch_check)
    pretrained: bool = option(False, "load pretrained weights (torchvision/timm caches; no download here)")
    small_input: bool = option(False, "3x3 stride-1 stem for 32-64 px images (ResNet-style models)")
    init: str | None = option(None, f"fine-tune from these weights: a run folder or its {MODEL_FILE}, or a "
                              "torchvision/timm state dict (.safetensors, or .pth/.pt/.bin/.ckpt read with "
                              "weights_only=True); the classifier head is re-initialised when the class count "
                              "differs, any other missing or unexpected key is an error")
    init_sha256: str | None = option(None, "sha256 of the init file: recorded when training starts; a value given "
                                     "here must match the file", check=lambda v: None if _SHA256.match(v) else
                                     "expected 64 hexadecimal digits")
    freeze: str = option("none", "backbone: train the classifier head alone (a linear probe; the frozen part "
                         "stays in eval mode)", choices=("none", "backbone"))
    backbone_lr_scale: float = option(1.0, "the backbone's learning rate is lr times this (fine-tuning)", ge=0.0)
    head_lr_scale: float = option(1.0, "the classifier head's learning rate is lr times this (fine-tuning)", gt=0.0)
    image_size: int | None = option(None, "resize images to this size (default: native size)", ge=1, le=MAX_SIDE)
    augment: str = option("flip", "training augmentation", choices=AUGMENTATIONS)
    method: str = option("erm", "training method (consistcam list methods)", check=registered(METHODS))
    epochs: int = option(10, "number of epochs", ge=1)
    batch_size: int = option(128, "training batch size", ge=1)
    eval_batch_size: int = option(256, "batch size of the per-epoch evaluation", ge=1)
    optimizer: str = option("sgd", "optimizer", choices=("sgd", "adamw"))
    lr: float = option(0.05, "peak learning rate", gt=0.0)
    momentum: float = option(0.9, "SGD momentum (Nesterov when > 0)", ge=0.0, lt=1.0)
    weight_decay: float = option(5e-4, "weight decay", ge=0.0)
    schedule: str = option("cosine", "learning-rate schedule after warm-up", choices=("cosine", "step", "constant"))
    warmup_epochs: float = option(0.0, "linear learning-rate warm-up (epochs, may be fractional)", ge=0.0)
    step_size: int = option(30, "epochs between decays of the step schedule", ge=1)
    gamma: float = option(0.1, "decay factor of the step schedule", gt=0.0)
    label_smoothing: float = option(0.0, "label smoothing of the base loss", ge=0.0, lt=1.0)
    task: str = option("auto", "loss: auto (from the data: multilabel for VOC, demo:objects=2), single (softmax "
                       "cross-entropy) or multilabel (sigmoid + BCE)", choices=("auto", "single", "multilabel"))
    amp: bool = option(False, "bfloat16 autocast (CUDA only)")
    sync_bn: bool = option(False, "SyncBatchNorm across processes under torchrun (CUDA only)")
    channels_last: bool = option(False, "channels-last memory format")
    seed: int = option(0, "seed of initialisation, shuffling, augmentation and attacks", ge=0)
    workers: int = option(0, "data loader worker processes", ge=0)
    preload: str = option("auto", "decode the training images once into memory on the training device and augment "
                          "them there (flip, crop_flip): auto = when they fit (a quarter of the free memory, at most "
                          "8 GiB) and the method needs no boxes/masks; on = required; off = the DataLoader path",
                          choices=("auto", "on", "off"))
    deterministic: bool = option(False, "bit-identical reruns on CUDA: cuDNN deterministic kernels, no cuDNN "
                                 "autotuning, torch.use_deterministic_algorithms (warn-only); slower convolutions")
    device: str = option("auto", "device: auto, cpu, cuda, cuda:N or mps", check=_device_check)
    subset: int | None = option(None, "train on the first N samples only (quick looks)", ge=1)
    skip_bad: bool = option(False, f"skip unreadable images and bad annotations (listed in RUN/{SKIPPED_FILE})")
    out: str = option("runs/run", "run folder")
    keep_checkpoints: int | str | None = option(
        None, "keep the weights of every N-th epoch (and the last) with their learning rate, as TracIn needs "
        f"(consistcam influence): every=N or N; RUN/{KEPT_DIR}/{EPOCH_FILES}", check=keep_check())
    # the method's own options (a dataclass instance, e.g. ECLConfig); a mapping is validated into one
    method_options: Any = field(default=None, metadata={"help": "options of the chosen method"})

    def __post_init__(self) -> None:
        validate(self)
        # one spelling in config.yaml (an integer, None when off), so resume compares like with like
        self.keep_checkpoints = keep_every(self.keep_checkpoints) or None
        try:
            self.method_options = method_config(self.method, self.method_options)
        except ConfigError:
            raise
        except (TypeError, ValueError) as err:
            raise ConfigError(f"{self.method}: {err}") from None

    def to_dict(self) -> dict:
        d = to_dict(self)
        d.pop("method_options")  # written under the method's name, as it is read
        d[METHODS.canonical(self.method)] = to_dict(self.method_options)
        return d

    @classmethod
    def from_dict(cls, d: Mapping, where: str = "") -> TrainConfig:
        """Build from a flat mapping whose method sections sit under the methods' names.

        Sections of other methods are validated too (a typo there is still a typo) and dropped."""
        d = dict(d)
        method = d.get("method", "erm")
        sections = {k: d.pop(k) for k in list(d) if k in METHODS and k not in ("method",)}
        for name, section in sections.items():
            if not isinstance(section, Mapping):
                raise ConfigError(f"{name}: expected a mapping of options, got {section!r}")
            method_config(name, section)
        chosen = None
        if isinstance(method, str) and method in METHODS:
            chosen = sections.get(METHODS.canonical(method))
        if "method_options" in d:
            raise ConfigError(f"unknown option 'method_options'; put the method's options under its name ({method}:)")
        cfg = from_dict(cls, d, where)
        if chosen:
            cfg.method_options = method_config(cfg.method, chosen)
        return cfg

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: Mapping | None = None) -> TrainConfig:
        """Load a YAML file; ``overrides`` (flags, ``--set``) are merged in, method sections deeply."""
        path = Path(path)
        try:
            data = load_yaml(path.read_text()) or {}
        except FileNotFoundError:
            raise FileNotFoundError(f"config file {path} not found") from None
        except (IsADirectoryError, PermissionError, UnicodeDecodeError) as err:
            why = "a folder, not a YAML file" if path.is_dir() else f"unreadable ({type(err).__name__})"
            raise ConfigError(f"config file {path}: {why}") from None
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: not valid YAML ({err})") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping of options, got {type(data).__name__}")
        try:  # renamed options under their current names first: an override wins whichever name each side uses
            return cls.from_dict(merge(_upgraded(data), _upgraded(overrides or {})))
        except ConfigError as err:
            raise ConfigError(f"{path}: {err}") from None

    def save_yaml(self, path: str | Path) -> None:
        from consistcam.utils import atomic_write

        atomic_write(path, lambda tmp: Path(tmp).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False)))


def _upgraded(d: Mapping) -> dict:
    """``d`` with the renamed options of its method sections under their current names."""
    return {k: upgrade(METHODS.get(k).Config, v, k) if k in METHODS and isinstance(v, Mapping) else v
            for k, v in d.items()}


def merge(base: dict, overrides: Mapping) -> dict:
    """Deep merge of nested mappings (overrides win)."""
    out = dict(base)
    for k, v in overrides.items():
        out[k] = merge(out[k], v) if isinstance(v, Mapping) and isinstance(out.get(k), Mapping) else v
    return out

