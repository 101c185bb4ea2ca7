"""The attacks of the robustness protocol: full-image FGSM and PGD-10 (L-inf), inputs in [0, 1].

They are the project's masked attacks with no mask (the whole image may change), so they are the
same code the consistency score uses; a test checks them against torchattacks. The counting lives
in :class:`consistcam.metrics.AdversarialAccuracy`.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from consistcam.attack import masked_attack
from consistcam.metrics.robustness import ATTACKS


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
