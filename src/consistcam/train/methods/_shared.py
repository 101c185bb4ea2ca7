"""Helpers that more than one method uses, so that no method module imports another one (a
method can then be read, copied or dropped on its own; crop sampling lives in ``crops.py``)."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
from torch import Tensor, nn
from torchvision.transforms.v2.functional import gaussian_blur

from consistcam.models import Normalize

__all__ = ["FILLS", "classifier_inputs", "classifier_layer", "masked_count", "normalization", "occlude"]

FILLS = ("mean", "zero", "blur")


def masked_count(fraction: float, units: int) -> int:
    """k = floor(fraction * units), at least 1 when fraction > 0 (SGT reference ``get_SingleMask``)."""
    return 0 if fraction <= 0 else max(1, math.floor(fraction * units + 1e-9))


def occlude(images: Tensor, mask: Tensor, fill: str = "mean") -> Tensor:
    """Replace the pixels where ``mask`` (N, 1, H, W) is set, in every channel, by ``fill``."""
    if fill == "zero":
        values = torch.zeros((), dtype=images.dtype, device=images.device)
    elif fill == "mean":
        values = images.mean((2, 3), keepdim=True)
    elif fill == "blur":
        values = gaussian_blur(images, [11, 11], [5.0, 5.0])
    else:
        raise ValueError(f"unknown fill {fill!r}; expected one of {', '.join(FILLS)}")
    return torch.where(mask, values, images)


def normalization(model: nn.Module) -> Normalize | None:
    """The model's input :class:`Normalize` (its mean and std), or None when it takes inputs as they come."""
    return next((m for m in model.modules() if isinstance(m, Normalize)), None)


def classifier_layer(model: nn.Module) -> nn.Linear:
    """The model's last ``nn.Linear``: its input is the pooled feature vector, its output the logits."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(f"this method needs a classifier ending in nn.Linear; {type(model).__name__} has none")
    return linears[-1]


@contextlib.contextmanager
def classifier_inputs(layer: nn.Module) -> Iterator[list[Tensor]]:
    """Collect what ``layer`` receives in the forwards inside the block (as (N, D) tensors, graph kept);
    the first is the clean forward's (explainers such as Score-CAM run more forwards after it)."""
    seen: list[Tensor] = []

    def hook(_module: nn.Module, args: tuple) -> None:
        seen.append(args[0].flatten(1))

    handle = layer.register_forward_pre_hook(hook)
    try:
        yield seen
    finally:
        handle.remove()
