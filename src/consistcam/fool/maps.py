"""The explanations a fooling loss is computed on: Grad-CAM-family maps through
:func:`consistcam.explain.explain` and the simple input gradient (Simonyan et al. 2014), which the
CAM family lacks and which seed 002 fools as well ("SimpleGrad")."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from consistcam.explain import explain, list_explainers, normalize_maps
from consistcam.explain.inputs import check_inputs
from consistcam.models.state import preserved_state

GRADIENT = "gradient"


def fool_explainers() -> list[str]:
    """Explainers a fooling loss can be computed on: the CAM family and ``gradient``."""
    return [*list_explainers(), GRADIENT]


def input_gradient(model: nn.Module, images: Tensor, targets: Tensor, differentiable: bool = False) -> Tensor:
    """|dS_c/dx| summed over colour channels, min-max normalised per image: (N, 1, H, W).

    ``differentiable`` keeps the graph (double back-propagation), so a loss on the map trains the
    parameters; otherwise parameter gradients are off and the map is detached. Mode, flags and
    BatchNorm buffers are restored by :func:`preserved_state`.
    """
    checked = check_inputs(model, images, targets, ids_only=True)
    images, targets = checked.images, checked.targets
    with preserved_state(model, freeze_params=not differentiable), torch.enable_grad():
        x = images.detach().requires_grad_(True)
        logits = model(x)
        score = logits.gather(1, targets.long().view(-1, 1).to(logits.device)).sum()
        (grad,) = torch.autograd.grad(score, x, create_graph=differentiable)
    maps = normalize_maps(grad.abs().sum(1, keepdim=True))
    return maps if differentiable else maps.detach()


def fool_maps(model: nn.Module, images: Tensor, targets: Tensor, explainer: str = "gradcam",
              differentiable: bool = False) -> Tensor:
    """(N, 1, H, W) maps in [0, 1] of ``explainer`` (a CAM method or ``gradient``) for ``targets``."""
    if explainer == GRADIENT:
        return input_gradient(model, images, targets, differentiable)
    if explainer not in list_explainers():
        raise ValueError(f"unknown explainer {explainer!r}; known: {', '.join(fool_explainers())}")
    return explain(model, images, targets, explainer=explainer, differentiable=differentiable)
