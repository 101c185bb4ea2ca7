"""Object locations as pixel masks: the one box rasteriser, pixel-mask binarisation, dilation.

Every consumer (foreground masks of the attack, localisation metrics, background variants) goes
through :func:`mask_from_boxes`, so a box covers the same pixels everywhere: pixel (row i, col j)
is inside box (x0, y0, x1, y1) when its centre (j + 0.5, i + 0.5) satisfies x0 <= x < x1 and
y0 <= y < y1 (XYXY pixels, x1/y1 exclusive).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor


def dilate(mask: Tensor, pixels: int) -> Tensor:
    """Grow the foreground of (N, 1, H, W) masks by ``pixels`` in every direction (square element)."""
    if pixels <= 0:
        return mask
    return F.max_pool2d(mask, kernel_size=2 * pixels + 1, stride=1, padding=pixels)


def mask_from_boxes(boxes: Sequence[Tensor] | Tensor, size: tuple[int, int], device=None) -> Tensor:
    """Union of each image's boxes as a float (N, 1, H, W) mask (1 inside).

    ``boxes`` is a list of (K_i, 4) tensors, or a padded (N, K, 4) tensor whose padding rows are NaN.
    Note the axis order: x indexes columns (width), y rows (height).
    """
    h, w = size
    if isinstance(boxes, Tensor):
        if boxes.dim() != 3 or boxes.shape[-1] != 4:
            raise ValueError(f"boxes must be (N, K, 4) or a list of (K, 4), got {tuple(boxes.shape)}")
        padded = boxes.float() if device is None else boxes.float().to(device)
    else:
        n_max = max((len(b) for b in boxes), default=0)
        dev = device if device is not None else (boxes[0].device if len(boxes) else None)
        padded = torch.full((len(boxes), max(n_max, 1), 4), float("nan"), device=dev)
        for i, b in enumerate(boxes):
            b = torch.as_tensor(b, dtype=torch.float32, device=dev).reshape(-1, 4)
            padded[i, : len(b)] = b
    dev = padded.device
    ys = torch.arange(h, device=dev, dtype=torch.float32)[None, None, :, None] + 0.5
    xs = torch.arange(w, device=dev, dtype=torch.float32)[None, None, None, :] + 0.5
    x0, y0, x1, y1 = (padded[..., i][..., None, None] for i in range(4))
    inside = (xs >= x0) & (xs < x1) & (ys >= y0) & (ys < y1)  # NaN rows compare False
    return inside.any(1, keepdim=True).float()


def check_boxes(boxes: Sequence[Tensor] | Tensor, n: int) -> None:
    """Boxes at an API boundary: one entry per image, rows (x0, y0, x1, y1) with finite coordinates,
    x0 <= x1 and y0 <= y1 (NaN rows of a padded tensor are padding). A wrong shape, an inverted or NaN
    box would otherwise rasterise to an empty or wrong-size mask without a word. One host sync."""
    if isinstance(boxes, Tensor):
        if boxes.dim() != 3 or boxes.shape[-1] != 4:
            raise ValueError(f"boxes must be (N, K, 4) or a list of N (K, 4) tensors, got {tuple(boxes.shape)}")
        rows = boxes.reshape(-1, 4).float()
        rows, count = rows[~rows.isnan().all(1)], len(boxes)
    else:
        parts = []
        for i, b in enumerate(boxes):
            b = torch.as_tensor(b, dtype=torch.float32)
            if b.numel() and (b.dim() not in (1, 2) or b.shape[-1] != 4):
                raise ValueError(f"boxes[{i}]: expected (K, 4) rows x0, y0, x1, y1, got shape {tuple(b.shape)}")
            parts.append(b.reshape(-1, 4).to(parts[0].device if parts else b.device))
        rows, count = (torch.cat(parts) if parts else torch.zeros(0, 4)), len(parts)
    if count != n:
        raise ValueError(f"boxes: {count} entries for {n} images (one (K, 4) tensor of boxes per image)")
    bad = ~torch.isfinite(rows).all(1) | (rows[:, 2] < rows[:, 0]) | (rows[:, 3] < rows[:, 1])
    if rows.numel() and bool(bad.any()):
        raise ValueError(f"boxes: {rows[bad][0].tolist()} is not a box (x0, y0, x1, y1) with finite coordinates, "
                         "x0 <= x1 and y0 <= y1")


def mask_from_pixels(mask: Tensor) -> Tensor:
    """Binarise a pixel mask given as (N, H, W) or (N, 1, H, W), bool or {0, 1}/[0, 1] values."""
    if mask.dim() == 3:
        mask = mask[:, None]
    if mask.dim() != 4 or mask.shape[1] != 1:
        raise ValueError(f"mask must be (N, H, W) or (N, 1, H, W), got {tuple(mask.shape)}")
    return (mask > 0.5).float() if mask.dtype.is_floating_point else (mask != 0).float()


def object_mask(size: tuple[int, int], boxes: Tensor | None = None, mask: Tensor | None = None) -> Tensor:
    """H x W bool object mask of one sample: its pixel mask if it has one, else the union of its boxes."""
    h, w = size
    if mask is not None:
        return mask.reshape(h, w) > 0
    if boxes is None:
        raise ValueError("object_mask needs boxes or a pixel mask")
    return mask_from_boxes([boxes.reshape(-1, 4)], (h, w))[0, 0] > 0.5
