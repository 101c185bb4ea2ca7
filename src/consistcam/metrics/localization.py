"""Localisation and consistency metrics as torchmetrics ``Metric``s: streaming sums that merge
across processes (``dist_reduce_fx='sum'``), so the distributed run needs no new code."""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric

from consistcam.data.masks import dilate


def energy_inside(heatmaps: Tensor, masks: Tensor) -> Tensor:
    """Per-image share of heatmap energy inside the mask; an all-zero heatmap counts as uniform."""
    h = heatmaps.flatten(1).double()
    m = masks.flatten(1).double()
    total = h.sum(1)
    return torch.where(total > 0, (h * m).sum(1) / total.clamp_min(1e-12), m.mean(1))


class EnergyPointingGame(Metric):
    """Share of heatmap energy inside the object (Σ_{p∈B} h(p) / Σ_p h(p)), mean over images, in [0, 1].

    Also accumulates the uniform-heatmap baseline (the object's area fraction) and the score on
    images whose object covers less than ``small_area`` of the image (large boxes flatter it)."""

    full_state_update = False

    def __init__(self, small_area: float = 0.5, **kw) -> None:
        super().__init__(**kw)
        self.small_area = small_area
        for name in ("energy", "baseline", "count", "energy_small", "count_small"):
            self.add_state(name, default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, heatmaps: Tensor, masks: Tensor) -> None:
        inside = energy_inside(heatmaps, masks)
        area = masks.flatten(1).double().mean(1)
        small = area < self.small_area
        self.energy += inside.sum()
        self.baseline += area.sum()
        self.count += len(inside)
        self.energy_small += inside[small].sum()
        self.count_small += small.sum()

    def compute(self) -> dict[str, Tensor]:
        return {"energy": self.energy / self.count, "energy_uniform_baseline": self.baseline / self.count,
                "energy_small_objects": self.energy_small / self.count_small.clamp_min(1),
                "n_small_objects": self.count_small}


class PointingGame(Metric):
    """Hit if the heatmap's maximum lies within ``tolerance`` pixels of the object mask (15 px at
    224 px in the protocol; pass the value scaled to your input size). With ``num_classes`` and
    labels it also reports the mean over classes of the per-class hit rate."""

    full_state_update = False

    def __init__(self, tolerance: int = 0, num_classes: int | None = None, **kw) -> None:
        super().__init__(**kw)
        self.tolerance, self.num_classes = tolerance, num_classes
        self.add_state("hits", default=torch.zeros(num_classes or 1, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.zeros(num_classes or 1, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, heatmaps: Tensor, masks: Tensor, labels: Tensor | None = None) -> None:
        m = dilate(masks.float(), self.tolerance) if self.tolerance > 0 else masks.float()
        idx = heatmaps.flatten(1).argmax(1)
        hit = (m.flatten(1).gather(1, idx[:, None]).squeeze(1) > 0.5).double()
        if self.num_classes is None or labels is None:
            if self.num_classes is not None:
                raise ValueError("PointingGame(num_classes=...) needs the labels in update()")
            self.hits += hit.sum()
            self.count += len(hit)
        else:
            self.hits.index_add_(0, labels, hit)
            self.count.index_add_(0, labels, torch.ones_like(hit))

    def compute(self) -> dict[str, Tensor]:
        out = {"pointing_game": self.hits.sum() / self.count.sum()}
        if self.num_classes is not None:
            seen = self.count > 0
            out["pointing_game_class_mean"] = (self.hits[seen] / self.count[seen]).mean()
        return out


class MaskIoU(Metric):
    """IoU of the thresholded heatmap (h >= threshold) with the object mask, mean over images."""

    full_state_update = False

    def __init__(self, threshold: float = 0.5, **kw) -> None:
        super().__init__(**kw)
        self.threshold = threshold
        self.add_state("iou", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, heatmaps: Tensor, masks: Tensor) -> None:
        a = (heatmaps >= self.threshold).flatten(1)
        b = masks.flatten(1) > 0.5
        inter = (a & b).sum(1).double()
        union = (a | b).sum(1).double()
        self.iou += torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(inter)).sum()
        self.count += len(inter)

    def compute(self) -> Tensor:
        return self.iou / self.count


class MeanMetric(Metric):
    """Streaming mean of per-sample values (used for the model's own consistency E on test data)."""

    full_state_update = False

    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        self.add_state("total", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, values: Tensor) -> None:
        self.total += values.double().sum()
        self.count += values.numel()

    def compute(self) -> Tensor:
        return self.total / self.count
