"""Adversarial robustness: accuracy under full-image FGSM and PGD-10 (L-inf), inputs in [0, 1].

The attacks are the project's masked attacks with no mask (the whole image may change), so they
are the same code the consistency score uses; a test checks them against torchattacks.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torchmetrics import Metric

from consistcam.attack import masked_attack

DEFAULT_EPSILONS = (1 / 255, 2 / 255, 4 / 255)
ATTACKS = ("fgsm", "pgd10")


def attack_images(model: nn.Module, images: Tensor, labels: Tensor, attack: str, eps: float,
                  generator: torch.Generator | None = None) -> Tensor:
    """FGSM: one step of eps. PGD-10: random start, 10 steps of eps / 4 (Madry et al.; torchattacks'
    8/255 with 2/255 ratio)."""
    if attack == "fgsm":
        return masked_attack(model, images, labels, None, eps=eps, alpha=eps, steps=1, random_start=False)
    if attack == "pgd10":
        return masked_attack(model, images, labels, None, eps=eps, alpha=eps / 4, steps=10, random_start=True,
                             generator=generator)
    raise ValueError(f"unknown attack {attack!r}; known: {', '.join(ATTACKS)}")


def _key(attack: str, eps: float) -> str:
    return f"{attack}@{round(eps * 255, 3):g}/255"


class AdversarialAccuracy(Metric):
    """Accuracy under each attack and epsilon; ``compute`` returns {"fgsm@1/255": acc, ...}."""

    full_state_update = False

    def __init__(self, attacks: tuple[str, ...] = ATTACKS, epsilons: tuple[float, ...] = DEFAULT_EPSILONS,
                 **kw) -> None:
        super().__init__(**kw)
        for a in attacks:
            if a not in ATTACKS:
                raise ValueError(f"unknown attack {a!r}; known: {', '.join(ATTACKS)}")
        self.keys = [(a, e) for a in attacks for e in epsilons]
        self.add_state("correct", default=torch.zeros(len(self.keys), dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("total", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, model: nn.Module, images: Tensor, labels: Tensor, generator: torch.Generator | None = None):
        hits = []
        for attack, eps in self.keys:
            adv = attack_images(model, images, labels, attack, eps, generator)
            with torch.no_grad():
                hits.append((model(adv).argmax(1) == labels).sum())
        self.correct += torch.stack(hits)
        self.total += len(labels)

    def compute(self) -> dict[str, Tensor]:
        acc = self.correct.double() / self.total.clamp(min=1)
        return {_key(a, e): acc[i].float() for i, (a, e) in enumerate(self.keys)}
