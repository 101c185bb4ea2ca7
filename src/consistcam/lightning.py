"""ECL in a Lightning training run: :class:`ECLCallback` (``pip install consistcam[lightning]``).

The callback scores the training set on ECL's schedule at the start of each training epoch, and
the LightningModule's ``training_step`` gets the weighted loss through one call::

    from consistcam.lightning import ECLCallback, ecl_loss

    class Module(lightning.LightningModule):
        def training_step(self, batch, batch_idx):
            images, labels, ids = batch                     # e.g. consistcam.WithIds(train_set)
            return ecl_loss(self, self(images), labels, ids)  # mean_i(v_i * CE_i)

    trainer = lightning.Trainer(callbacks=[ECLCallback(score_loader, num_samples=len(train_set))])

The schedule is :class:`consistcam.ECL` itself (one implementation with ``consistcam train``); its
state is the callback's, so it goes into Lightning's checkpoints and comes back on
``trainer.fit(..., ckpt_path=...)``. Under DDP, ``score_loader`` yields this rank's shard (see
consistcam.consistency.ecl) and the scores are gathered over the default process group.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
from torch import Tensor

from consistcam.consistency.ecl import ECL, ECLConfig, ScoreLoader


class ECLCallback(pl.Callback):
    """Runs :class:`consistcam.ECL`'s schedule in a ``lightning.Trainer``; its ``ecl`` attribute is
    the object (weights, rounds, last round's fields).

    Args:
        score_loader: the un-augmented training images with their sample ids (dict batches or
            ``(images, labels, ids)``), or a function ``ids -> batches`` (``score_fraction`` < 1).
        num_samples: the training set's size (ids are 0 .. num_samples - 1).
        config: :class:`consistcam.ECLConfig` (schedule, scorer, weights, execution).
        seed, multilabel, process_group: as for :class:`consistcam.ECL`.
        log: log each round's summary (``consistency/E_mean``, ...) through the module's ``log_dict``.
    """

    def __init__(self, score_loader: ScoreLoader, num_samples: int, config: ECLConfig | None = None, *,
                 seed: int = 0, multilabel: bool = False, process_group: Any = None, log: bool = True) -> None:
        super().__init__()
        self.score_loader, self.log_rounds = score_loader, log
        self.ecl = ECL(num_samples, config, seed=seed, multilabel=multilabel, process_group=process_group)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.ecl.progress = trainer.is_global_zero and trainer.progress_bar_callback is not None
        logs = self.ecl.on_epoch_start(pl_module, self.score_loader, trainer.current_epoch)
        if logs and self.log_rounds:
            pl_module.log_dict(logs, on_step=False, on_epoch=True)

    def state_dict(self) -> dict[str, Any]:
        return self.ecl.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.ecl.load_state_dict(state_dict)


def ecl_callback(module: pl.LightningModule) -> ECLCallback:
    """The :class:`ECLCallback` of the trainer running ``module`` (exactly one must be attached)."""
    try:
        callbacks = module.trainer.callbacks
    except RuntimeError as err:  # Lightning: the module is not attached to a Trainer
        raise RuntimeError(f"ecl_loss: {type(module).__name__} is not attached to a lightning.Trainer") from err
    found = [cb for cb in callbacks if isinstance(cb, ECLCallback)]
    if len(found) != 1:
        raise RuntimeError(f"ecl_loss: the trainer has {len(found)} ECLCallback(s); pass exactly one to "
                           "lightning.Trainer(callbacks=[ECLCallback(score_loader, num_samples=...)])")
    return found[0]


def ecl_weights(module: pl.LightningModule, ids: Tensor) -> Tensor:
    """v of the batch's samples (1 before the first round), for a loss of your own: ``(v * L).mean()``."""
    return ecl_callback(module).ecl.weights_for(ids)


def ecl_loss(module: pl.LightningModule, logits: Tensor, labels: Tensor, ids: Tensor) -> Tensor:
    """The training step's loss under ECL: mean_i(v_i · CE_i) (BCE with ``multilabel``), v by sample id."""
    return ecl_callback(module).ecl.loss(logits, labels, ids)


__all__ = ["ECLCallback", "ecl_callback", "ecl_loss", "ecl_weights"]
