"""Fooling losses of Heo, Joo, Moon (NeurIPS 2019; seed 002), per sample.

All maps are (N, 1, H, W) in [0, 1] (min-max normalised, as the reference normalises before every
loss). Passive foolings make the explanation uninformative for every class; active fooling swaps
the explanations of two classes. Each function returns the (N,) per-sample value: the training
loss is its mean, and the same value on held-out images is the "test loss" that the fooling
success rate thresholds (:mod:`consistcam.fool.metrics`).
"""

from __future__ import annotations

import torch
from torch import Tensor

REGIONS = ("frame", "top-left")


def location_target(shape: tuple[int, ...], region: str = "top-left", device: torch.device | str = "cpu",
                    dtype: torch.dtype = torch.float32) -> Tensor:
    """The (1, 1, H, W) 0/1 map the location fooling drives explanations to.

    ``top-left``: a square of side 2·⌊H/7⌋ in the top-left corner (the reference's ``corner``);
    ``frame``: a border ⌊H/7⌋ wide around an empty centre (the reference's ``frame``, the paper's figure).
    """
    h, w = shape[-2:]
    mask = torch.zeros(1, 1, h, w, device=device, dtype=dtype)
    if region == "top-left":
        k = max(1, 2 * (h // 7)), max(1, 2 * (w // 7))
        mask[..., : k[0], : k[1]] = 1
    elif region == "frame":
        kh, kw = max(1, h // 7), max(1, w // 7)
        mask[:] = 1
        mask[..., kh : h - kh, kw : w - kw] = 0
    else:
        raise ValueError(f"region must be one of {', '.join(REGIONS)}, got {region!r}")
    return mask


def location_loss(maps: Tensor, region: str = "top-left") -> Tensor:
    """Mean squared difference between each map and the region's 0/1 target: (N,)."""
    target = location_target(maps.shape, region, maps.device, maps.dtype)
    return (maps - target).pow(2).flatten(1).mean(1)


def topk_indices(original: Tensor, fraction: float = 0.1) -> Tensor:
    """Flat indices (N, k) of the original maps' top ``fraction`` of pixels (k ≥ 1)."""
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    flat = original.flatten(1)
    k = max(1, int(flat.shape[1] * fraction))
    return flat.topk(k, dim=1).indices


def topk_loss(maps: Tensor, original: Tensor, fraction: float = 0.1) -> Tensor:
    """Mean squared value of the fooled map on the original map's top-``fraction`` pixels: (N,).
    Driving it to 0 removes the explanation from where it was."""
    idx = topk_indices(original.detach(), fraction)
    return maps.flatten(1).gather(1, idx).pow(2).mean(1)


def center_of_mass(maps: Tensor, eps: float = 1e-8) -> Tensor:
    """(N, 2) centre of mass (row, column) in pixel coordinates 0..H-1, 0..W-1."""
    h, w = maps.shape[-2:]
    m = maps.reshape(maps.shape[0], h, w)
    total = m.sum((1, 2)) + eps
    rows = torch.arange(h, device=maps.device, dtype=maps.dtype)
    cols = torch.arange(w, device=maps.device, dtype=maps.dtype)
    return torch.stack([(m.sum(2) * rows).sum(1) / total, (m.sum(1) * cols).sum(1) / total], dim=1)


def center_mass_distance(maps: Tensor, original: Tensor) -> Tensor:
    """Euclidean distance between the centres of mass, divided by that of opposite corners (√2·(W−1)
    for square maps): (N,) in [0, 1] (the reference's test loss)."""
    h, w = maps.shape[-2:]
    d = (center_of_mass(maps) - center_of_mass(original.detach())).pow(2).sum(1).sqrt()
    return d / max(((h - 1) ** 2 + (w - 1) ** 2) ** 0.5, 1.0)


def center_mass_loss(maps: Tensor, original: Tensor) -> Tensor:
    """Negative L1 distance of the centres of mass (minimised = pushed apart), as the reference
    trains, but divided by H + W − 2 (the largest L1 distance) so that λ means the same at any
    image size: (N,) in [−1, 0]."""
    h, w = maps.shape[-2:]
    return -(center_of_mass(maps) - center_of_mass(original.detach())).abs().sum(1) / max(h + w - 2, 1)


def active_loss(map_a: Tensor, map_b: Tensor, original_a: Tensor, original_b: Tensor) -> Tensor:
    """Swap two classes' explanations: the map for class a should become the original map for
    class b and vice versa; mean squared error of both, halved: (N,)."""
    a = (map_a - original_b.detach()).pow(2).flatten(1).mean(1)
    b = (map_b - original_a.detach()).pow(2).flatten(1).mean(1)
    return (a + b) / 2
