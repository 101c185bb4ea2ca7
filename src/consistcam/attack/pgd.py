"""Background-only adversarial attacks (semantic-preserving: the foreground is never touched).

Inputs are images in [0, 1]; normalisation belongs inside the model (see
:class:`consistcam.models.Normalize`). The attack runs the model in eval mode with parameter
gradients off, one forward and one ``autograd.grad`` per step, and restores the model after.
Inputs are checked once per call by :func:`consistcam.explain.inputs.check_inputs` (one host sync,
none per step); a caller that checked them already passes the ``CheckedInputs`` as ``images``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from consistcam.explain import explain
from consistcam.explain.inputs import CheckedInputs, check_inputs
from consistcam.models.state import preserved_state

NORMS = ("linf", "l2")
OBJECTIVES = ("ce", "explanation")


def _background(images: Tensor, foreground: Tensor | None, norm: str) -> Tensor:
    """The 0/1 background mask (1 = may change) from a foreground mask; metadata checks only."""
    if norm not in NORMS:
        raise ValueError(f"unknown norm {norm!r}; known: {', '.join(NORMS)}")
    if foreground is None:
        return torch.ones_like(images[:, :1])
    if foreground.dim() == 3:
        foreground = foreground[:, None]
    if foreground.shape[0] != images.shape[0] or foreground.shape[-2:] != images.shape[-2:]:
        raise ValueError(f"foreground mask {tuple(foreground.shape)} does not match images {tuple(images.shape)}")
    return 1.0 - (foreground > 0.5).to(images.dtype)


def check_step_size(name: str, value: float) -> None:
    """``eps`` and ``alpha`` are finite numbers >= 0: NaN makes every pixel NaN (the foreground too) and a
    negative budget still perturbs by its magnitude."""
    try:
        ok = math.isfinite(float(value)) and float(value) >= 0
    except (TypeError, ValueError, RuntimeError):
        ok = False
    if not ok:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")


def _per_sample_norm(t: Tensor) -> Tensor:
    return t.flatten(1).norm(dim=1).clamp_min(1e-12)[:, None, None, None]


def _project(delta: Tensor, images: Tensor, background: Tensor, eps: float, norm: str) -> Tensor:
    """Into the eps-ball, inside the valid image range, and onto the background. The mask comes last
    so nothing (not the clamp, not rounding) can move a foreground pixel."""
    if norm == "linf":
        delta = delta.clamp(-eps, eps)
    else:
        delta = delta * (eps / _per_sample_norm(delta)).clamp(max=1.0)
    return ((images + delta).clamp(0, 1) - images) * background


def background_noise(
    images: Tensor | CheckedInputs, foreground: Tensor | None, eps: float = 8 / 255, norm: str = "linf",
    generator: torch.Generator | None = None,
) -> Tensor:
    """Random background perturbation of the attack's size (the ablation 'noise instead of attack'):
    L-inf: ±eps signs on the background; L2: a random direction of norm eps on the background."""
    check_step_size("eps", eps)
    images = check_inputs(None, images).images
    background = _background(images, foreground, norm)
    noise = torch.randn(images.shape, generator=generator, device=images.device, dtype=images.dtype)
    if norm == "linf":
        delta = eps * noise.sign()
    else:
        noise = noise * background
        delta = eps * noise / _per_sample_norm(noise)
    return images + _project(delta, images, background, eps, norm)


def masked_attack(
    model: nn.Module,
    images: Tensor | CheckedInputs,
    labels: Tensor | None,
    foreground: Tensor | None = None,
    *,
    eps: float = 8 / 255,
    alpha: float = 2 / 255,
    steps: int = 5,
    norm: str = "linf",
    random_start: bool = True,
    objective: str = "ce",
    explainer: str = "gradcam",
    layer: nn.Module | str | None = None,
    reference_maps: Tensor | None = None,
    generator: torch.Generator | None = None,
    explainer_options: Mapping | None = None,
) -> Tensor:
    """PGD restricted to the background (``foreground`` = 1 is never changed).

    ``labels`` are the classes attacked *and* explained: ``ce`` maximises their cross-entropy;
    ``explanation`` maximises ``1 - cosine(H_c(x_adv), H_c(x))`` for c = ``labels`` through the
    differentiable explainer (``reference_maps`` = H_c(x) for the same classes, computed here when
    not given; ``explainer_options`` go to :func:`consistcam.explain.explain`, e.g. ``steps``,
    ``reshape_transform``). Returns x_adv in [0, 1], exactly equal to ``images`` on the foreground,
    with ``||x_adv - x|| <= eps`` in the chosen norm. Images must be floats in [0, 1] in the model's
    dtype and ``labels`` integer class ids (any integer dtype); see :func:`consistcam.explain.explain`
    (``images`` may also be its ``CheckedInputs``, with ``labels=None``, to skip the check).
    """
    if objective not in OBJECTIVES:
        raise ValueError(f"unknown attack objective {objective!r}; known: {', '.join(OBJECTIVES)}")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    check_step_size("eps", eps)
    check_step_size("alpha", alpha)
    checked = check_inputs(model, images, labels, name="labels", ids_only=True)
    images, labels = checked.images.detach(), checked.targets
    background = _background(images, foreground, norm)
    opts = dict(explainer_options or {})
    with preserved_state(model, freeze_params=True, eval_mode=True):
        if objective == "explanation" and reference_maps is None:
            reference_maps = explain(model, checked.replace(images=images), explainer=explainer, layer=layer, **opts)
        if random_start:  # uniform in the L-inf box / uniform radius in the L2 ball, on the background
            shape, dev = images.shape, images.device
            noise = torch.rand(shape, generator=generator, device=dev, dtype=images.dtype)
            if norm == "linf":
                delta = eps * (2 * noise - 1)
            else:
                direction = torch.randn(shape, generator=generator, device=dev, dtype=images.dtype) * background
                radius = eps * noise[:, :1, :1, :1]
                delta = radius * direction / _per_sample_norm(direction)
            delta = _project(delta, images, background, eps, norm)
        else:
            delta = torch.zeros_like(images)
        for _ in range(steps):
            delta.requires_grad_(True)
            with torch.enable_grad():
                x = images + delta
                if objective == "ce":
                    logits = model(x)
                    checked.check_classes(logits.shape[-1])  # host values: no sync
                    loss = F.cross_entropy(logits, labels, reduction="sum")
                else:
                    maps = explain(model, checked.replace(images=x), explainer=explainer, layer=layer,
                                   differentiable=True, **opts)
                    loss = (1 - F.cosine_similarity(maps.flatten(1), reference_maps.flatten(1), dim=1)).sum()
                (grad,) = torch.autograd.grad(loss, delta)
            delta = delta.detach()
            grad = grad * background
            if norm == "linf":
                step = alpha * grad.sign()
            else:
                step = alpha * grad / _per_sample_norm(grad)
            delta = _project(delta + step, images, background, eps, norm)
    return images + delta


def masked_pgd(model: nn.Module, images: Tensor, labels: Tensor, foreground: Tensor | None = None,
               **kwargs) -> Tensor:
    """PGD (default 5 steps of 2/255 inside 8/255, L-inf, random start) on the background only."""
    return masked_attack(model, images, labels, foreground, **kwargs)


def masked_fgsm(model: nn.Module, images: Tensor, labels: Tensor, foreground: Tensor | None = None,
                eps: float = 8 / 255, norm: str = "linf", **kwargs) -> Tensor:
    """One step of size eps from the clean image (no random start), on the background only."""
    return masked_attack(model, images, labels, foreground, eps=eps, alpha=eps, steps=1, norm=norm,
                         random_start=False, **kwargs)
