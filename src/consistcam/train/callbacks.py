"""Callbacks: what happens around the loop (logging, checkpoints, console) without touching it.

Lightning-style hooks; the trainer calls them in order. Only the main process writes files.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from consistcam.train.checkpoint import save_checkpoint, save_model
from consistcam.utils import fault_point

if TYPE_CHECKING:
    from consistcam.train.trainer import Trainer


class Callback:
    def on_fit_start(self, trainer: Trainer) -> None:
        pass

    def on_epoch_end(self, trainer: Trainer, record: dict) -> None:
        pass

    def on_fit_end(self, trainer: Trainer) -> None:
        pass


class JsonlLogger(Callback):
    """One JSON line per epoch in RUN/metrics.jsonl (resume truncates epochs after the checkpoint)."""

    def on_epoch_end(self, trainer: Trainer, record: dict) -> None:
        if trainer.is_main and trainer.run_dir is not None:
            line = json.dumps(record) + "\n"
            with open(trainer.run_dir / "metrics.jsonl", "a") as f:
                f.write(line[: len(line) // 2])
                f.flush()
                fault_point("write:metrics.jsonl")  # a kill here leaves a torn line (the crash tests)
                f.write(line[len(line) // 2:])


class TensorBoardLogger(Callback):
    """Every numeric entry of the epoch record as a scalar in RUN/tb."""

    def __init__(self) -> None:
        self.writer = None

    def on_epoch_end(self, trainer: Trainer, record: dict) -> None:
        if not trainer.is_main or trainer.run_dir is None:
            return
        if self.writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(trainer.run_dir / "tb"))
        for k, v in record.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "epoch":
                self.writer.add_scalar(k, v, record["epoch"])
        self.writer.flush()

    def on_fit_end(self, trainer: Trainer) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


class Checkpointer(Callback):
    """RUN/checkpoint.safetensors (exact resume) and RUN/model.safetensors (the model alone), both
    rewritten atomically after every epoch."""

    def on_epoch_end(self, trainer: Trainer, record: dict) -> None:
        if not trainer.is_main or trainer.run_dir is None:
            return
        cfg = trainer.config
        # the model first: a kill between the two writes leaves the previous checkpoint, so resume
        # redoes the epoch and rewrites both (the other order could leave a stale model.safetensors)
        if cfg is not None:
            save_model(trainer.run_dir / "model.safetensors", trainer.module, cfg.arch, len(trainer.data.classes),
                       cfg.small_input, trainer.data.classes, cfg.image_size)
        save_checkpoint(trainer.run_dir / "checkpoint.safetensors", trainer.module, trainer.optimizer,
                        trainer.strategy.state_dict(), record["epoch"], trainer.config_dict)


class ConsolePrinter(Callback):
    """The epoch record as one JSON line on stdout."""

    def on_epoch_end(self, trainer: Trainer, record: dict) -> None:
        if trainer.is_main and trainer.progress:
            shown = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in record.items()}
            print(json.dumps(shown), flush=True)


def default_callbacks() -> list[Callback]:
    return [JsonlLogger(), TensorBoardLogger(), Checkpointer(), ConsolePrinter()]
