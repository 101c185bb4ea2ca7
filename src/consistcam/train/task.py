"""The task type picks the base loss: softmax cross-entropy for single-label data, BCE for multi-hot.

Methods never choose it; they receive per-sample losses from :meth:`Task.per_sample_loss` and
re-weight or add to them, so every method works for both kinds of labels.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from consistcam.consistency.ecl import multi_hot, per_sample_loss  # one loss for ECL's API and the trainer

TASKS = ("auto", "single", "multilabel")


def weighted_cross_entropy(logits: Tensor, labels: Tensor, weights: Tensor | None = None,
                           label_smoothing: float = 0.0) -> Tensor:
    """mean_i(v_i · CE_i): the loss of the paper, Loss = Σ v_i L_i, as a batch mean."""
    per_sample = F.cross_entropy(logits, labels, reduction="none", label_smoothing=label_smoothing)
    return per_sample.mean() if weights is None else (weights * per_sample).mean()


def resolve_task(name: str, data_multilabel: bool, data_name: str = "the data") -> bool:
    """Whether to train multi-label: ``auto`` follows the data (VOC, ``demo:objects=2``: yes);
    ``multilabel`` on single-label data trains one sigmoid per class on one-hot labels; ``single``
    on multi-hot labels is refused (softmax cross-entropy needs one class per image)."""
    if name not in TASKS:
        raise ValueError(f"task: unknown task {name!r}; expected one of {', '.join(TASKS)}")
    if name == "single" and data_multilabel:
        raise ValueError(f"task: 'single' needs one class per image, but {data_name} has multi-hot labels "
                         "(use --task multilabel or auto)")
    return data_multilabel if name == "auto" else name == "multilabel"


def multilabel_counts(logits: Tensor, labels: Tensor) -> Tensor:
    """(C, 3) counts of true positives, false positives and false negatives per class at logit 0
    (sigmoid 0.5): summed over batches and processes, they give the per-class F1 exactly."""
    pred, true = logits > 0, multi_hot(labels, logits.shape[1]) > 0.5
    return torch.stack([(pred & true).sum(0), (pred & ~true).sum(0), (~pred & true).sum(0)], 1)


def f1_from_counts(counts: Tensor) -> Tensor:
    """Per-class F1 = 2TP / (2TP + FP + FN) from :func:`multilabel_counts`; 0 for a class never
    predicted nor present (torchmetrics' convention)."""
    tp, fp, fn = counts.double().unbind(1)
    return torch.where(2 * tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn).clamp_min(1), torch.zeros_like(tp))


def mean_average_precision(logits: Tensor, labels: Tensor) -> float:
    """Macro mAP over the classes with at least one positive (VOC's protocol; NaN if none has one)."""
    from torchmetrics.functional.classification import binary_average_precision

    present = [c for c in range(labels.shape[1]) if labels[:, c].any()]
    if not present:
        return float("nan")
    aps = [binary_average_precision(logits[:, c].sigmoid(), labels[:, c].long()) for c in present]
    return torch.stack(aps).mean().item()


@dataclass(frozen=True)
class Task:
    """Single-label (``multilabel=False``: labels are class ids) or multi-label (multi-hot labels,
    sigmoid per class and binary cross-entropy; class ids are taken as one-hot)."""

    multilabel: bool = False
    label_smoothing: float = 0.0

    def per_sample_loss(self, logits: Tensor, labels: Tensor) -> Tensor:
        """(N,) losses: cross-entropy, or binary cross-entropy averaged over the classes."""
        return per_sample_loss(logits, labels, self.multilabel, self.label_smoothing)

    def loss(self, logits: Tensor, labels: Tensor, weights: Tensor | None = None) -> Tensor:
        per_sample = self.per_sample_loss(logits, labels)
        return per_sample.mean() if weights is None else (weights * per_sample).mean()

    def correct(self, logits: Tensor, labels: Tensor) -> Tensor:
        """Number of correct predictions (multi-label: exact match of the thresholded logits)."""
        if self.multilabel:
            return ((logits > 0) == (multi_hot(labels, logits.shape[1]) > 0.5)).all(1).sum()
        return (logits.argmax(1) == labels).sum()

    def targets_for_explanation(self, labels: Tensor) -> Tensor:
        """The class each image is explained for (single-label data: its label)."""
        if self.multilabel:
            raise ValueError("this method explains one class per image; multi-label training has several "
                             "(use erm or ecl, or --task single on single-label data)")
        return labels


__all__ = ["TASKS", "Task", "f1_from_counts", "mean_average_precision", "multilabel_counts", "resolve_task",
           "weighted_cross_entropy"]
