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

import torch
from torch import Tensor, nn

from consistcam.consistency.similarity import cosine_similarity
from consistcam.data.geometry import apply_crop_flip, random_crop_flip
from consistcam.explain import explain, normalize_maps


def heatmap_equivariance(model: nn.Module, images: Tensor, targets: Tensor, explainer: str = "gradcam",
                         layer=None, transforms: Tensor | None = None, generator: torch.Generator | None = None,
                         heatmaps: Tensor | None = None, **options) -> Tensor:
    """Per-image cosine(N(T(H(x))), N(H(T(x)))) in [0, 1], N = min-max normalisation over the view.

    ``heatmaps``: H(x) when the caller already has it (raw or normalised: any per-map positive
    scale and offset gives the same score), so only the transformed images are explained."""
    if transforms is None:
        transforms = random_crop_flip(len(images), generator, device=images.device)
    if heatmaps is None:
        heatmaps = explain(model, images, targets, explainer=explainer, layer=layer, **options)
    moved = explain(model, apply_crop_flip(images, transforms), targets, explainer=explainer, layer=layer, **options)
    return cosine_similarity(normalize_maps(apply_crop_flip(heatmaps, transforms)), moved)
