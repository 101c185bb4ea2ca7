"""Helpers of the reference-port tests: the authors' resized crops, gradients of a loss and how close two
of them are."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor


def ref_resized_crop_flip(images: Tensor, i: Tensor, j: Tensor, h: Tensor, w: Tensor, flip: Tensor) -> Tensor:
    """The views as CGC's and ExCon's authors make them, one image at a time: torchvision's
    ``resized_crop`` (slice rows i:i+h, columns j:j+w, resize bilinearly to the input size), then
    ``hflip`` where flagged (on tensors; theirs run on PIL images, the same bilinear weights when enlarging)."""
    size = images.shape[-2:]
    out = []
    for b in range(len(images)):
        crop = images[b:b + 1, :, i[b]:i[b] + h[b], j[b]:j[b] + w[b]]
        crop = F.interpolate(crop, size=size, mode="bilinear", align_corners=False)
        out.append(crop.flip(-1) if flip[b] else crop)
    return torch.cat(out)


def pixel_boxes(transforms: Tensor, size: tuple[int, int]) -> tuple[Tensor, ...]:
    """The (n, 5) whole-pixel transforms of ``resized_crop_flip`` as torchvision's (i, j, h, w) and flip flags."""
    height, width = size
    j, i = (transforms[:, 0] * width).round().long(), (transforms[:, 1] * height).round().long()
    w, h = (transforms[:, 2] * width).round().long() - j, (transforms[:, 3] * height).round().long() - i
    return i, j, h, w, transforms[:, 4].bool()


def flat_grad(loss: Tensor, params: Sequence[Tensor]) -> Tensor:
    """d loss / d params as one vector (zeros for parameters the loss does not reach)."""
    grads = torch.autograd.grad(loss, list(params), retain_graph=True, allow_unused=True)
    return torch.cat([(torch.zeros_like(p) if g is None else g).flatten() for p, g in zip(params, grads)])


def cosine(a: Tensor, b: Tensor) -> float:
    return torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=0).item()


def relative_error(a: Tensor, b: Tensor) -> float:
    """max |a - b| / max |b|: the worst entry, on the scale of the reference gradient."""
    return ((a - b).abs().max() / b.abs().max()).item()
