"""How well a per-sample score singles out a known subset (the bias-conflicting minority of a
shortcut training set): pure tensor helpers for ``consistcam diagnose``.

A re-weighting method can only remove a shortcut if its weights land on the samples that contradict
the shortcut. Given a score where higher means "more likely minority" (ECL's weight v, 1 - E, a
per-sample loss, JTT's error indicator) and the minority mask, these measure ranking quality (ROC
AUC), the precision of the top-k with k the minority's size, and the share of the total weight the
minority gets (the minority fraction itself under ERM's uniform weights).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def _check(scores: Tensor, positive: Tensor) -> Tensor:
    if scores.dim() != 1 or scores.shape != positive.shape:
        raise ValueError(f"scores and the minority mask must be 1-d of one length, got {tuple(scores.shape)} "
                         f"and {tuple(positive.shape)}")
    return positive.bool()


def roc_auc(scores: Tensor, positive: Tensor) -> float:
    """P(a random minority sample scores above a random other one), ties counting 1/2 (the area under
    the ROC curve; torchmetrics' trapezoidal curve); NaN when either side is empty."""
    from torchmetrics.functional.classification import binary_auroc

    positive = _check(scores, positive)
    n_pos = int(positive.sum())
    if n_pos == 0 or n_pos == len(positive):
        return math.nan
    return binary_auroc(scores.double(), positive.long()).item()


def precision_at_k(scores: Tensor, positive: Tensor, k: int | None = None) -> float:
    """Share of minority samples among the ``k`` highest scores (default k: the minority's size, where
    precision equals recall). Ties at the cut are broken at random in expectation: the places left at
    the cut go to the tied samples in proportion, so a binary score (an error set) is not favoured
    by the order of the ids."""
    positive = _check(scores, positive)
    k = int(positive.sum()) if k is None else k
    if not 0 < k <= len(scores):
        return math.nan
    cut = scores.double().sort(descending=True).values[k - 1]
    above, tied = scores > cut, scores == cut
    hits = positive[above].sum().item() + (k - int(above.sum())) * positive[tied].double().mean().item()
    return hits / k


def weight_share(weights: Tensor, positive: Tensor) -> float:
    """The minority's share of the total weight (its fraction of the data under uniform weights)."""
    positive = _check(weights, positive)
    total = weights.double().sum().item()
    return weights[positive].double().sum().item() / total if total > 0 else math.nan


def identification(scores: Tensor, positive: Tensor, weights: Tensor | None = None) -> dict[str, float]:
    """``auc``, ``precision_at_k`` (k = minority size), ``minority_fraction``, ``n`` and, for weights,
    ``weight_share``; for a boolean score (a set, e.g. JTT's error set) also the set's ``set_size``,
    ``set_precision`` and ``set_recall`` (what JTT's paper reports as its error set's quality)."""
    positive = _check(scores, positive)
    out = {"n": len(scores), "minority_fraction": positive.double().mean().item(),
           "auc": roc_auc(scores.double(), positive), "precision_at_k": precision_at_k(scores.double(), positive)}
    if weights is not None:
        out["weight_share"] = weight_share(weights, positive)
    if scores.dtype == torch.bool:
        size = int(scores.sum())
        out.update(set_size=size, set_precision=(positive & scores).sum().item() / size if size else math.nan,
                   set_recall=(positive & scores).sum().item() / max(int(positive.sum()), 1))
    return out
