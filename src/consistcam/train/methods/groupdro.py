"""``groupdro``: online Group DRO (Sagawa, Koh, Hashimoto, Liang, ICLR 2020; reference code
kohpangwei/group_DRO, ``loss.py::LossComputer``, MIT licence).

Each step: the mean loss L_g of every group in the batch (0 for a group the batch lacks), an
exponentiated-gradient step on the group weights q (``q_g <- q_g · exp(eta · (L_g + C / sqrt(n_g)))``,
then ``q <- q / sum(q)``), and the loss ``sum_g q_g · L_g`` with the updated q. ``adjustment`` C > 0
is the paper's group adjustment: small groups (n_g training samples) are assumed to generalise
worse by C / sqrt(n_g). As in the reference, the adjustment enters the update of q only (in the
loss it is a constant) and is added for every group, in the batch or not.

Batches: ``sampler=group_balanced`` draws every epoch with replacement, each group equally often,
as the reference's commands do (``--reweight_groups``, a ``WeightedRandomSampler`` with weights
1 / n_g). The default ``uniform`` keeps the trainer's shuffled batches (the reference without that
flag): a small group is then often missing from a batch, and its q moves only through the
adjustment and the renormalisation, so a rare group's weight drifts down while it is absent.
Groups are oracle annotations of the data (consistcam.train.methods.groups).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from consistcam.config import option, validate
from consistcam.train.methods.base import Method, MethodContext, StepOutput, register_method
from consistcam.train.methods.groups import (
    GROUPINGS,
    conflicting_groups,
    group_counts,
    inverse_frequency_weights,
    num_groups,
    training_groups,
)
from consistcam.utils import all_reduce_sum


@dataclass
class GroupDROConfig:
    """Options of ``groupdro``; defaults are the reference's (``--robust_step_size 0.01``,
    ``--generalization_adjustment 0``)."""

    eta: float = option(0.01, "step size of the exponentiated-gradient update of the group weights q", gt=0.0)
    adjustment: float = option(0.0, "group adjustment C: groups are up-ranked by C / sqrt(n_g) in the update of q "
                               "(the paper tunes C in 0..5 on validation; 0 = plain Group DRO)", ge=0.0)
    grouping: str = option("class_alignment", "the groups: class x (background agrees / conflicts), as the "
                           "worst-group accuracy counts them, or class x background group", choices=GROUPINGS)
    score_batch_size: int = option(250, "batch size of the one pass that reads every training image's group", ge=1)
    sampler: str = option("uniform", "uniform: every sample once per epoch, shuffled; group_balanced: draw with "
                          "replacement, every group equally often (the reference's --reweight_groups)",
                          choices=("uniform", "group_balanced"))

    def __post_init__(self) -> None:
        validate(self)


def update_group_weights(q: Tensor, group_loss: Tensor, eta: float, adjustment: Tensor | None = None) -> Tensor:
    """One exponentiated-gradient step: ``q · exp(eta · (L + adjustment))``, renormalised to sum 1.
    Groups with q = 0 (no training samples) stay at 0."""
    adjusted = group_loss if adjustment is None else group_loss + adjustment
    q = q * torch.exp(eta * adjusted)
    return q / q.sum()


def group_mean_losses(per_sample: Tensor, groups: Tensor, num: int, dist=None) -> tuple[Tensor, Tensor]:
    """(mean loss of each group over the global batch, detached; this process's share of it, with
    gradients): ``share`` sums to the global mean over the processes, so DDP's gradient averaging
    recovers the gradient of the global group means."""
    sums = torch.zeros(num, device=per_sample.device, dtype=per_sample.dtype).index_add(0, groups, per_sample)
    counts = torch.bincount(groups, minlength=num).to(per_sample.dtype)
    world = 1
    if dist is not None and dist.enabled:
        world = dist.world_size
        packed = all_reduce_sum(torch.cat([sums.detach(), counts]), dist)
        total, counts = packed[:num], packed[num:]
    else:
        total = sums.detach()
    denom = counts.clamp_min(1)
    return total / denom, sums * world / denom


@register_method("groupdro")
class GroupDRO(Method):
    """Minimises the worst group's loss: online exponentiated-gradient group weights (oracle group labels)."""

    Config = GroupDROConfig
    config: GroupDROConfig
    single_label = True

    def setup(self, ctx: MethodContext) -> None:
        super().setup(ctx)
        cfg = self.config
        self.table, classes = training_groups(ctx, self.name, cfg.grouping, cfg.score_batch_size)
        self.num_groups = num_groups(classes, cfg.grouping)
        counts = group_counts(self.table, self.num_groups)
        present = counts > 0
        self.q = present.float() / present.sum()  # uniform over the groups that have training samples
        self.adjustment = torch.where(present, cfg.adjustment / counts.clamp_min(1).sqrt(),
                                      torch.zeros_like(counts)) if cfg.adjustment > 0 else None
        self.conflicting = conflicting_groups(classes, cfg.grouping).to(ctx.device)
        self.balanced = inverse_frequency_weights(self.table, self.num_groups) if cfg.sampler == "group_balanced" \
            else None

    def sampling_weights(self) -> Tensor | None:
        return self.balanced

    def loss(self, batch: dict) -> StepOutput:
        ctx = self.ctx
        logits = ctx.model(batch["image"])
        per_sample = ctx.task.per_sample_loss(logits, batch["label"]).float()
        groups = self.table[batch["id"]]
        mean, share = group_mean_losses(per_sample, groups, self.num_groups, ctx.dist)
        self.q = update_group_weights(self.q, mean, self.config.eta, self.adjustment)
        loss = (self.q * share).sum()
        logs = {"ce": per_sample.detach().mean(), "q_max": self.q.max(),
                "q_conflicting": self.q[self.conflicting].sum()}
        return StepOutput(loss, logits, logs)

    def state_dict(self) -> dict[str, Tensor]:
        return {"q": self.q}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        q = state["q"]
        if q.shape != self.q.shape:
            raise ValueError(f"groupdro: the checkpoint has {len(q)} group weights, this data has {len(self.q)} groups")
        self.q = q.to(self.q)
