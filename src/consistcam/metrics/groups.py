"""Per-group accuracy and worst-group accuracy (Sagawa et al., ICLR 2020).

A group is a (class, attribute) cell: on the shortcut benchmarks the attribute says whether an
image's background group agrees with its class (``aligned``) or not (``conflicting``), so a model
that reads the background is right on the aligned cells and wrong on the conflicting ones; the
worst cell is what a shortcut costs.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torchmetrics import Metric

ALIGNMENT = ("aligned", "conflicting")


def alignment(labels: Tensor, groups: Tensor) -> Tensor:
    """Attribute index of each image: 0 when its background group is its class, 1 otherwise."""
    return (groups != labels).long()


def worst_cell_accuracy(correct: Tensor, total: Tensor, min_count: int = 1) -> Tensor:
    """The lowest ``correct / total`` over cells with at least ``min_count`` images (NaN when none):
    the one definition of worst-group accuracy, for counts gathered however the caller gathers them."""
    kept = total >= min_count
    if not bool(kept.any()):
        return torch.tensor(float("nan"), dtype=torch.float64, device=total.device)
    return (correct[kept].double() / total[kept].double()).min()


class GroupAccuracy(Metric):
    """Accuracy of every (class, attribute) cell and the worst of them.

    ``update(preds, target, attribute)`` takes logits (N, C) or classes (N,), labels (N,) and the
    attribute index (N,) in ``[0, num_attributes)``. ``compute`` returns ``group_acc`` (a
    (num_classes, num_attributes) tensor, NaN for empty cells) and ``worst_group_acc`` (the minimum
    over cells with at least ``min_count`` images; NaN when there is none).
    """

    full_state_update = False

    def __init__(self, num_classes: int, num_attributes: int = 2, min_count: int = 1, **kw) -> None:
        super().__init__(**kw)
        if num_classes < 1 or num_attributes < 1 or min_count < 1:
            raise ValueError(f"GroupAccuracy needs num_classes, num_attributes, min_count >= 1, got "
                             f"{num_classes}, {num_attributes}, {min_count}")
        self.num_classes, self.num_attributes, self.min_count = num_classes, num_attributes, min_count
        cells = num_classes * num_attributes
        self.add_state("correct", default=torch.zeros(cells, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("total", default=torch.zeros(cells, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, preds: Tensor, target: Tensor, attribute: Tensor) -> None:
        preds = preds.argmax(1) if preds.dim() == 2 else preds
        if not (preds.shape == target.shape == attribute.shape):
            raise ValueError(f"GroupAccuracy.update: preds, target and attribute must have the same shape, got "
                             f"{tuple(preds.shape)}, {tuple(target.shape)}, {tuple(attribute.shape)}")
        cell = target.long() * self.num_attributes + attribute.long()
        cells = self.num_classes * self.num_attributes
        self.total += torch.bincount(cell, minlength=cells)
        self.correct += torch.bincount(cell, weights=(preds == target).to(torch.float64), minlength=cells).long()

    def compute(self) -> dict[str, Tensor]:
        total = self.total.reshape(self.num_classes, self.num_attributes)
        acc = self.correct.reshape_as(total).double() / total.clamp(min=1)
        acc = torch.where(total > 0, acc, torch.full_like(acc, float("nan")))
        worst = worst_cell_accuracy(self.correct, self.total, self.min_count)
        return {"group_acc": acc.float(), "worst_group_acc": worst.float()}


def group_report(metric: GroupAccuracy, classes: Sequence[str], attributes: Sequence[str] = ALIGNMENT) -> dict:
    """``compute()`` as JSON-ready values: ``group_acc`` and ``group_count`` keyed ``class/attribute``
    (empty cells left out) and ``worst_group_acc`` (None when no cell is populated)."""
    out = metric.compute()
    acc = out["group_acc"].tolist()
    total = metric.total.reshape(metric.num_classes, metric.num_attributes).tolist()
    names = [(c, a) for c in range(metric.num_classes) for a in range(metric.num_attributes)]
    worst = out["worst_group_acc"].item()
    return {
        "group_acc": {f"{classes[c]}/{attributes[a]}": round(acc[c][a], 4) for c, a in names if total[c][a]},
        "group_count": {f"{classes[c]}/{attributes[a]}": total[c][a] for c, a in names if total[c][a]},
        "worst_group_acc": None if worst != worst else round(worst, 4),
    }
