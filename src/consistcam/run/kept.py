"""Kept checkpoints: the weights of every N-th epoch (and the last) in
``RUN/checkpoints/epoch_XXX.safetensors``, each with the learning rate and the number of epochs it
stands for, which TracIn weighs its gradient products by. One format and one option
(``keep_checkpoints: every=N`` or ``N``) for the classifier trainer and the VAE."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from consistcam.config import ConfigError
from consistcam.run.checkpoint import read_metadata
from consistcam.run.layout import KEPT_DIR, epoch_file, file_epoch
from consistcam.utils import atomic_save_tensors

KEPT_FORMAT = "consistcam-kept-checkpoint-1"  # a classifier's kept weights (a VAE's name its own format)


def keep_every(value: int | str | None) -> int:
    """Epochs between kept checkpoints from ``N``, ``"N"`` or ``"every=N"`` (0 or None: none kept)."""
    if value is None:
        return 0
    if isinstance(value, int):
        return value
    text = value.strip()
    every = text.startswith("every=")
    try:
        n = int(text[len("every="):] if every else text)
    except ValueError:
        raise ConfigError(f"keep_checkpoints: expected every=N or an integer N >= 0, got {value!r}") from None
    if every and n < 1:  # "every=0" is not "none": say so instead of keeping nothing
        raise ConfigError(f"keep_checkpoints: every=N needs N >= 1, got {value!r} (leave the option out to keep none)")
    return n


def keep_check(minimum: int = 0):
    """The ``check`` of a ``keep_checkpoints`` option (see :func:`consistcam.config.option`):
    ``minimum`` 1 where a run exists for TracIn and must keep some."""

    def check(value: int | str) -> str | None:
        try:
            n = keep_every(value)
        except ConfigError as err:
            return str(err).removeprefix("keep_checkpoints: ").split(", got")[0]
        return None if n >= minimum else f"must be >= {minimum}"

    return check


def is_kept_epoch(epoch: int, every: int, epochs: int) -> bool:
    """Whether epoch ``epoch`` (0-based) of an ``epochs``-epoch run is kept: every ``every``-th and the last."""
    return bool(every) and ((epoch + 1) % every == 0 or epoch + 1 == epochs)


def kept_path(run_dir: str | Path, epoch: int) -> Path:
    return Path(run_dir) / KEPT_DIR / epoch_file(epoch)


def kept_checkpoints(run_dir: str | Path) -> dict[int, Path]:
    """The kept checkpoints of a run, by epoch, in epoch order."""
    folder = Path(run_dir) / KEPT_DIR
    if not folder.is_dir():
        return {}
    found = {epoch: p for p in folder.iterdir() if (epoch := file_epoch(p.name)) is not None}
    return dict(sorted(found.items()))


def write_kept(run_dir: str | Path, epoch: int, model: nn.Module, lr: float, interval_epochs: int,
               meta: Mapping[str, str]) -> Path:
    """Write epoch ``epoch``'s weights with ``lr`` (the mean over the ``interval_epochs`` epochs
    since the previous kept checkpoint) and ``meta`` (the format and what rebuilds the model)."""
    path = kept_path(run_dir, epoch)
    info = {**meta, "epoch": str(epoch), "lr": repr(float(lr)), "interval_epochs": str(interval_epochs)}
    atomic_save_tensors({k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}, path, info)
    return path


@dataclass(frozen=True)
class KeptInfo:
    """What a kept checkpoint says about itself: TracIn weighs it by ``lr * interval_epochs``."""

    epoch: int
    lr: float
    interval_epochs: float
    meta: dict[str, str]


def read_kept(path: str | Path) -> KeptInfo:
    meta = read_metadata(path)
    try:
        return KeptInfo(int(meta["epoch"]), float(meta["lr"]), float(meta.get("interval_epochs", 1)), meta)
    except (KeyError, ValueError) as err:
        raise ValueError(f"{path}: not a kept checkpoint (no valid {err} in its metadata)") from None
