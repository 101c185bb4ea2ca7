"""Equivariance of heatmaps under random resized crops and flips (CGC, Pillai et al. CVPR 2022):
cosine(T(H(x)), H(T(x))). A heatmap that follows the object moves with it; one tied to fixed
image positions (or to the background layout) does not. Batched with one affine grid per image.

Both maps are min-max normalised over the view before the cosine, as :func:`explain` normalises
every map. This makes the score independent of how H(x) was scaled or offset, so the evaluation
pass reuses the consistency pass's (normalised) clean heatmap instead of explaining x again; and a
constant floor shared by all pixels no longer inflates it (on raw maps without zero pixels, e.g.
LayerCAM or Grad-CAM++, the cosine of two unrelated maps is close to 1). A perfectly equivariant
map still scores 1 under crops, because both sides are normalised over the same cropped view.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from consistcam.consistency.similarity import cosine_similarity
from consistcam.explain import explain, normalize_maps


def random_crop_flip(n: int, generator: torch.Generator | None = None, scale: tuple[float, float] = (0.3, 1.0),
                     ratio: tuple[float, float] = (3 / 4, 4 / 3), flip_p: float = 0.5, device=None) -> Tensor:
    """(n, 5) transforms: crop box x0, y0, x1, y1 in [0, 1] image fractions and a flip flag, drawn
    as in RandomResizedCrop (area fraction in ``scale``, log-uniform aspect ``ratio``, clipped)."""
    u = torch.rand(n, 5, generator=generator, device=device)
    area = scale[0] + (scale[1] - scale[0]) * u[:, 0]
    log_r = math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * u[:, 1]
    w = (area * log_r.exp()).sqrt().clamp(max=1.0)
    h = (area / log_r.exp()).sqrt().clamp(max=1.0)
    x0, y0 = (1 - w) * u[:, 2], (1 - h) * u[:, 3]
    return torch.stack([x0, y0, x0 + w, y0 + h, (u[:, 4] < flip_p).float()], 1)


def apply_crop_flip(images: Tensor, transforms: Tensor, mode: str = "bilinear") -> Tensor:
    """Crop each image to its box, resize back to the input size, flip where flagged."""
    x0, y0, x1, y1, flip = transforms.to(images.device, images.dtype).unbind(1)
    sx = (x1 - x0) * (1 - 2 * flip)  # a flip mirrors the sampling grid
    theta = torch.zeros(len(images), 2, 3, device=images.device, dtype=images.dtype)
    theta[:, 0, 0], theta[:, 0, 2] = sx, x0 + x1 - 1
    theta[:, 1, 1], theta[:, 1, 2] = y1 - y0, y0 + y1 - 1
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode=mode, padding_mode="border", align_corners=False)


def heatmap_equivariance(model: nn.Module, images: Tensor, targets: Tensor, method: str = "gradcam",
                         layer=None, transforms: Tensor | None = None, generator: torch.Generator | None = None,
                         heatmaps: Tensor | None = None, **options) -> Tensor:
    """Per-image cosine(N(T(H(x))), N(H(T(x)))) in [0, 1], N = min-max normalisation over the view.

    ``heatmaps``: H(x) when the caller already has it (raw or normalised: any per-map positive
    scale and offset gives the same score), so only the transformed images are explained."""
    if transforms is None:
        transforms = random_crop_flip(len(images), generator, device=images.device)
    if heatmaps is None:
        heatmaps = explain(model, images, targets, method=method, layer=layer, **options)
    moved = explain(model, apply_crop_flip(images, transforms), targets, method=method, layer=layer, **options)
    return cosine_similarity(normalize_maps(apply_crop_flip(heatmaps, transforms)), moved)
