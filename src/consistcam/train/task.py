"""The task type picks the base loss: softmax cross-entropy for single-label data, BCE for multi-hot.

Strategies never choose it; they receive per-sample losses from :meth:`Task.per_sample_loss` and
re-weight or add to them, so every method works for both kinds of labels.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor


def weighted_cross_entropy(logits: Tensor, labels: Tensor, weights: Tensor | None = None,
                           label_smoothing: float = 0.0) -> Tensor:
    """mean_i(v_i · CE_i): the loss of the paper, Loss = Σ v_i L_i, as a batch mean."""
    per_sample = F.cross_entropy(logits, labels, reduction="none", label_smoothing=label_smoothing)
    return per_sample.mean() if weights is None else (weights * per_sample).mean()


@dataclass(frozen=True)
class Task:
    """Single-label (``multilabel=False``: labels are class ids) or multi-label (multi-hot labels)."""

    multilabel: bool = False
    label_smoothing: float = 0.0

    def per_sample_loss(self, logits: Tensor, labels: Tensor) -> Tensor:
        """(N,) losses: cross-entropy, or binary cross-entropy averaged over the classes."""
        if self.multilabel:
            target = labels.to(logits.dtype)
            if self.label_smoothing:
                target = target * (1 - self.label_smoothing) + 0.5 * self.label_smoothing
            return F.binary_cross_entropy_with_logits(logits, target, reduction="none").mean(1)
        return F.cross_entropy(logits, labels, reduction="none", label_smoothing=self.label_smoothing)

    def loss(self, logits: Tensor, labels: Tensor, weights: Tensor | None = None) -> Tensor:
        per_sample = self.per_sample_loss(logits, labels)
        return per_sample.mean() if weights is None else (weights * per_sample).mean()

    def correct(self, logits: Tensor, labels: Tensor) -> Tensor:
        """Number of correct predictions (multi-label: exact match of the thresholded logits)."""
        if self.multilabel:
            return ((logits > 0) == (labels > 0.5)).all(1).sum()
        return (logits.argmax(1) == labels).sum()

    def targets_for_explanation(self, labels: Tensor) -> Tensor:
        """The class each image is explained for (single-label data: its label)."""
        if self.multilabel:
            raise ValueError("explanation-based strategies need one class per image; multi-label data has several")
        return labels


__all__ = ["Task", "weighted_cross_entropy"]
