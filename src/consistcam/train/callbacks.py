"""Callbacks: what happens around the loop (logging, checkpoints, console) without touching it.

Lightning-style hooks; the trainer calls them in order. Only the main process writes files.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from consistcam.run.checkpoint import save_checkpoint, save_model
from consistcam.run.kept import KEPT_FORMAT, is_kept_epoch, kept_checkpoints, write_kept
from consistcam.run.layout import CHECKPOINT_FILE, MODEL_FILE, TENSORBOARD_DIR, TRAIN_METRICS_FILE
from consistcam.utils import fault_point


class TrainerView(Protocol):
    """What a callback reads of the trainer (:class:`consistcam.train.Trainer` is one): described
    here rather than imported, so that the trainer, which calls the callbacks, and this module do
    not import each other."""

    config: Any
    data: Any
    is_main: bool
    loop: Any
    method: Any
    model_recipe: dict | None
    module: nn.Module
    optimizer: torch.optim.Optimizer
    run_dir: Path | None
    schedule: Any

    @property
    def config_dict(self) -> dict: ...


class Callback:
    def on_fit_start(self, trainer: TrainerView) -> None:
        pass

    def on_epoch_end(self, trainer: TrainerView, record: dict) -> None:
        pass

    def on_fit_end(self, trainer: TrainerView) -> None:
        pass


class JsonlLogger(Callback):
    """One JSON line per epoch in RUN/metrics.jsonl (resume truncates epochs after the checkpoint)."""

    def on_epoch_end(self, trainer: TrainerView, record: dict) -> None:
        if trainer.is_main and trainer.run_dir is not None:
            line = json.dumps(record) + "\n"
            with open(trainer.run_dir / TRAIN_METRICS_FILE, "a") as f:
                f.write(line[: len(line) // 2])
                f.flush()
                fault_point(f"write:{TRAIN_METRICS_FILE}")  # a kill here leaves a torn line (the crash tests)
                f.write(line[len(line) // 2:])


class TensorBoardLogger(Callback):
    """Every numeric entry of the epoch record as a scalar in RUN/tb."""

    def __init__(self) -> None:
        self.writer = None

    def on_epoch_end(self, trainer: TrainerView, record: dict) -> None:
        if not trainer.is_main or trainer.run_dir is None:
            return
        if self.writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(trainer.run_dir / TENSORBOARD_DIR))
        for k, v in record.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "epoch":
                self.writer.add_scalar(k, v, record["epoch"])
        self.writer.flush()

    def on_fit_end(self, trainer: TrainerView) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


class Checkpointer(Callback):
    """RUN/checkpoint.safetensors (exact resume) and RUN/model.safetensors (the model alone), both
    rewritten atomically after every epoch, so a complete run always has a model ``load_model``
    rebuilds; with ``keep_checkpoints: N``, also the weights of every N-th epoch and of the last one
    in RUN/checkpoints/ (what TracIn sums over)."""

    def on_epoch_end(self, trainer: TrainerView, record: dict) -> None:
        if not trainer.is_main or trainer.run_dir is None:
            return
        recipe = trainer.model_recipe
        if recipe is None:  # the Trainer refuses this at construction; a Checkpointer added later cannot
            raise ValueError(_NO_RECIPE)
        # the model first: a kill between the two writes leaves the previous checkpoint, so resume
        # redoes the epoch and rewrites both (the other order could leave a stale model.safetensors)
        save_model(trainer.run_dir / MODEL_FILE, trainer.module, recipe["arch"], len(trainer.data.classes),
                   recipe["small_input"], trainer.data.classes, recipe["image_size"])
        cfg = trainer.config
        if cfg is not None and is_kept_epoch(record["epoch"], cfg.keep_checkpoints or 0, trainer.loop.epochs):
            # before checkpoint.safetensors: a kill in between makes resume redo (and rewrite) this epoch
            self.keep(trainer, record["epoch"])
        save_checkpoint(trainer.run_dir / CHECKPOINT_FILE, trainer.module, trainer.optimizer,
                        trainer.method.state_dict(), record["epoch"], trainer.config_dict)

    @staticmethod
    def keep(trainer: TrainerView, epoch: int) -> Path:
        """Write RUN/checkpoints/epoch_XXX.safetensors: the weights plus, in the metadata, the mean
        learning rate over the epochs since the previous kept checkpoint and how many epochs that is
        (TracIn weighs each checkpoint's gradient products by lr x epochs). The interval is read from
        the files on disk, so a resumed or extended run counts each epoch once."""
        cfg, recipe = trainer.config, trainer.model_recipe
        earlier = [e for e in kept_checkpoints(trainer.run_dir) if e < epoch]
        first = earlier[-1] + 1 if earlier else 0
        steps = max(1, math.ceil(len(trainer.data.indices) / trainer.loop.batch_size))
        lrs = [float(trainer.schedule(s, steps)) for s in range(first * steps, (epoch + 1) * steps)]
        meta = {"format": KEPT_FORMAT, "arch": recipe["arch"], "num_classes": str(len(trainer.data.classes)),
                "small_input": str(bool(recipe["small_input"])), "classes": json.dumps(trainer.data.classes),
                "image_size": json.dumps(recipe["image_size"]), "lr_last": repr(lrs[-1]),
                "steps_per_epoch": str(steps), "method": cfg.method, "data": cfg.data}
        return write_kept(trainer.run_dir, epoch, trainer.module, sum(lrs) / len(lrs), epoch + 1 - first, meta)


_NO_RECIPE = (f"the Checkpointer writes {MODEL_FILE}, which names the model's architecture: build the "
              "model with consistcam.models.create (it records the name) or pass output=RunOutput(config=...) "
              "to the Trainer")


class ConsolePrinter(Callback):
    """The epoch record as one JSON line on stdout."""

    def on_epoch_end(self, trainer: TrainerView, record: dict) -> None:
        if trainer.is_main and trainer.loop.progress:
            shown = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in record.items()}
            print(json.dumps(shown), flush=True)


def default_callbacks() -> list[Callback]:
    return [JsonlLogger(), TensorBoardLogger(), Checkpointer(), ConsolePrinter()]
