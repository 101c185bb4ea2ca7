"""Faithfulness of heatmaps from what the model answered: insertion / deletion AUC (RISE, Petsiuk
et al. 2018) and Average Drop / Increase in Confidence (Grad-CAM++, Chattopadhyay et al. 2018).

Tensors only: the curves and class probabilities come from the forward passes of
:mod:`consistcam.evaluation.faithfulness`; the functions here turn them into per-image values and
the ``Metric`` classes accumulate those so that results merge across processes. Also the pixel
orders those passes use (:func:`pixel_ranks`, :func:`top_fraction_mask`).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric


def pixel_ranks(heatmaps: Tensor) -> Tensor:
    """(B, 1, H, W) -> rank of each pixel in descending heatmap order (0 = most salient); ties are
    broken by pixel index (stable sort), so the order is deterministic."""
    flat = heatmaps.flatten(1)
    order = torch.sort(flat, dim=1, descending=True, stable=True).indices
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(flat.shape[1], device=flat.device).expand_as(order))
    return ranks.view(heatmaps.shape)


def top_fraction_mask(heatmaps: Tensor, fraction: float) -> Tensor:
    """Binary mask keeping the ``fraction`` most salient pixels of each heatmap (ties by index)."""
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    ranks = pixel_ranks(heatmaps)
    keep = max(1, round(fraction * ranks[0].numel()))
    return (ranks < keep).to(heatmaps.dtype)


def curve_auc(curves: Tensor) -> Tensor:
    """(B,) area under (B, steps + 1) curves sampled at equal fractions 0, 1/steps, ..., 1 of the
    pixels (trapezoid rule), so a curve of probabilities gives an AUC in [0, 1]."""
    if curves.dim() != 2 or curves.shape[1] < 2:
        raise ValueError(f"curves must be (B, steps + 1) with steps >= 1, got {tuple(curves.shape)}")
    return (curves[:, 1:] + curves[:, :-1]).sum(1) / (2 * (curves.shape[1] - 1))


def drop_and_increase(clean_probs: Tensor, masked_probs: Tensor) -> dict[str, Tensor]:
    """Per-image Average Drop term max(0, o - p) / o and Increase in Confidence 1[p > o], with o the
    class probability on the image and p on the image multiplied by its heatmap (or a mask of it)."""
    o, p = clean_probs, masked_probs
    return {"average_drop": (o - p).clamp(min=0) / o.clamp(min=1e-12), "increase_in_confidence": (p > o).float()}


class _MeanOf(Metric):
    """Streaming means of several per-image values (sums and a count: exact under DDP merging)."""

    keys: tuple[str, ...] = ()
    full_state_update = False

    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        for key in self.keys:
            self.add_state(key, default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("n", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def _add(self, values: dict[str, Tensor]) -> None:
        for key in self.keys:
            setattr(self, key, getattr(self, key) + values[key].double().sum())
        self.n += len(values[self.keys[0]])

    def compute(self) -> dict[str, Tensor]:
        return {key: (getattr(self, key) / self.n.clamp(min=1)).float() for key in self.keys}


class InsertionDeletion(_MeanOf):
    """Mean insertion and deletion AUC and their difference (higher insertion, lower deletion = better),
    from the curves of :func:`consistcam.evaluation.insertion_deletion_curves`."""

    keys = ("insertion", "deletion")

    def update(self, insertion_curves: Tensor, deletion_curves: Tensor) -> None:
        self._add({"insertion": curve_auc(insertion_curves), "deletion": curve_auc(deletion_curves)})

    def compute(self) -> dict[str, Tensor]:
        out = super().compute()
        out["ins_minus_del"] = out["insertion"] - out["deletion"]
        return out


class ConfidenceChange(_MeanOf):
    """Average Drop (x100 in the papers; a fraction here) and Increase in Confidence, from the class
    probabilities on the clean and on the masked images (:func:`consistcam.evaluation.masked_probability`).
    ``suffix`` is appended to the result's keys (``"_top15"`` for the top-15 % mask)."""

    keys = ("average_drop", "increase_in_confidence")

    def __init__(self, suffix: str = "", **kw) -> None:
        super().__init__(**kw)
        self.suffix = suffix

    def update(self, clean_probs: Tensor, masked_probs: Tensor) -> None:
        self._add(drop_and_increase(clean_probs, masked_probs))

    def compute(self) -> dict[str, Tensor]:
        return {key + self.suffix: value for key, value in super().compute().items()}
