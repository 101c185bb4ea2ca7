"""Adversarial robustness: accuracy under full-image FGSM and PGD-10 (L-inf), inputs in [0, 1].

The metric only counts: the evaluation pipeline (:func:`consistcam.evaluation.attack_images`) runs
the attacks and hands over the predictions on the attacked images, so ``metrics`` stays free of
attack code and the same states merge across processes.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor
from torchmetrics import Metric

DEFAULT_EPSILONS = (1 / 255, 2 / 255, 4 / 255)
ATTACKS = ("fgsm", "pgd10")


def attack_key(attack: str, eps: float) -> str:
    """The result name of one attack and budget, e.g. ``pgd10@4/255``."""
    return f"{attack}@{round(eps * 255, 3):g}/255"


class AdversarialAccuracy(Metric):
    """Accuracy under each attack and epsilon; ``compute`` returns {"fgsm@1/255": acc, ...}.

    ``update(outputs, labels)`` takes, for every (attack, eps) of :attr:`keys`, the logits (N, C) or
    predicted classes (N,) of the attacked images."""

    full_state_update = False

    def __init__(self, attacks: tuple[str, ...] = ATTACKS, epsilons: tuple[float, ...] = DEFAULT_EPSILONS,
                 **kw) -> None:
        super().__init__(**kw)
        for a in attacks:
            if a not in ATTACKS:
                raise ValueError(f"unknown attack {a!r}; known: {', '.join(ATTACKS)}")
        self.keys: list[tuple[str, float]] = [(a, e) for a in attacks for e in epsilons]
        self.add_state("correct", default=torch.zeros(len(self.keys), dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("total", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, outputs: Mapping[tuple[str, float], Tensor], labels: Tensor) -> None:
        missing = [attack_key(*k) for k in self.keys if k not in outputs]
        if missing:  # a partial update would count these images for some keys only
            raise ValueError(f"AdversarialAccuracy.update needs outputs for every key; missing {', '.join(missing)}")
        hits = []
        for key in self.keys:
            pred = outputs[key]
            pred = pred.argmax(1) if pred.dim() == 2 else pred
            hits.append((pred == labels).sum())
        self.correct += torch.stack(hits)
        self.total += len(labels)

    def compute(self) -> dict[str, Tensor]:
        acc = self.correct.double() / self.total.clamp(min=1)
        return {attack_key(a, e): acc[i].float() for i, (a, e) in enumerate(self.keys)}
