"""Background-challenge variants (ImageNet-9, Xiao et al. 2021) of any data set with boxes or masks.

``original``: the image; ``only_fg``: background set to black; ``no_fg``: object set to black;
``mixed_same`` / ``mixed_rand`` / ``mixed_next``: the object pasted, in place, on the background of
another image of the same class / of any other image / of an image of the next class (label + 1
mod K). The foreground is the pixel mask when the data set has one, else the union of its boxes.
A borrowed background has its own object blacked out (IN-9 instead fills it with tiles of the
background, which needs a background-only crop this generic builder does not assume). The
partner of each image is drawn once from ``seed``, so a variant is the same set on every run.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from consistcam.data.base import DataError, LocatedDataset
from consistcam.data.masks import object_mask

VARIANTS = ("original", "only_fg", "no_fg", "mixed_same", "mixed_rand", "mixed_next")


def _foreground(image: Tensor, boxes: Tensor | None, mask: Tensor | None) -> Tensor:
    return object_mask(tuple(image.shape[-2:]), boxes, mask)


def compose_variant(variant: str, image: Tensor, fg: Tensor, bg_image: Tensor | None = None,
                    bg_fg: Tensor | None = None) -> Tensor:
    """The ``variant`` of uint8 images (..., C, H, W) with bool object masks ``fg`` (..., H, W)
    broadcast over channels; mixed variants paste the objects on ``bg_image`` (same size) with its
    own objects ``bg_fg`` blacked out. One sample or a whole batch on any device."""
    if variant == "original":
        return image
    fg = fg.unsqueeze(-3)
    if variant == "only_fg":
        return image * fg
    if variant == "no_fg":
        return image * ~fg
    return torch.where(fg, image, bg_image * ~bg_fg.unsqueeze(-3))


def fit_background(bg: Tensor | None, bg_fg: Tensor | None, size: tuple[int, int]) -> tuple:
    """A partner's (C, H, W) uint8 image and object mask for a canvas of ``size``: unchanged when
    the sizes agree, else the image with its objects blacked out, resized (mask then empty)."""
    if bg is None or tuple(bg.shape[-2:]) == tuple(size):
        return bg, bg_fg
    bg = F.interpolate((bg * ~bg_fg)[None].float(), size=size, mode="bilinear", antialias=True,
                       align_corners=False)[0].round().clamp(0, 255).to(torch.uint8)
    return bg, torch.zeros(size, dtype=torch.bool)


class BackgroundVariant(LocatedDataset):
    """A variant of ``base`` (its untransformed ``load``) as a data set in the common sample format."""

    def __init__(self, base: LocatedDataset, variant: str, seed: int = 0, transform=None) -> None:
        super().__init__(transform)
        if variant not in VARIANTS:
            raise ValueError(f"unknown background variant {variant!r}; known: {', '.join(VARIANTS)}")
        if variant != "original" and not (base.has_boxes or base.has_masks):
            raise ValueError(f"variant {variant!r} needs object boxes or masks; {type(base).__name__} has neither")
        if variant.startswith("mixed") and base.multilabel:
            raise ValueError(f"variant {variant!r} needs single-label data; {type(base).__name__} is multi-label")
        self.base, self.variant, self.seed = base, variant, seed
        self.classes, self.has_boxes, self.has_masks = base.classes, base.has_boxes, base.has_masks
        self.partner = self._partners() if variant.startswith("mixed") else None

    def _partners(self) -> list[int]:
        labels = torch.tensor(self.base.all_labels())
        n, k = len(labels), len(self.classes)
        g = torch.Generator().manual_seed(self.seed)
        by_class = [torch.nonzero(labels == c).flatten() for c in range(k)]
        partner = torch.empty(n, dtype=torch.long)
        for i in range(n):
            if self.variant == "mixed_rand":
                pool = torch.arange(n)
            else:
                pool = by_class[int(labels[i]) if self.variant == "mixed_same" else (int(labels[i]) + 1) % k]
            pool = pool[pool != i]
            if len(pool) == 0:
                raise DataError(f"{self.variant}: no other image of class {self.classes[int(labels[i])]!r} "
                                f"to take a background from (image {i})")
            partner[i] = pool[torch.randint(len(pool), (1,), generator=g)]
        return partner.tolist()

    def __len__(self) -> int:
        return len(self.base)

    def load(self, index: int):
        image, label, boxes, mask = self.base.load(index)
        if self.variant == "original":
            return image, label, boxes, mask
        bg, bg_fg = None, None
        if self.partner is not None:
            bg, _, bg_boxes, bg_mask = self.base.load(self.partner[index])
            bg, bg_fg = fit_background(bg, _foreground(bg, bg_boxes, bg_mask), tuple(image.shape[-2:]))
        out = compose_variant(self.variant, image, _foreground(image, boxes, mask), bg, bg_fg)
        return out.to(torch.uint8), label, boxes, mask

    def box_labels(self, index: int) -> Tensor | None:
        return self.base.box_labels(index)


def export_variants(base: LocatedDataset, out: str | Path, variants: tuple[str, ...] = VARIANTS,
                    split: str = "val", seed: int = 0, progress: bool = False) -> dict[str, int]:
    """Write the variants to disk in the ImageNet-9 layout (``<out>/<variant>/<split>/<NN_class>/``
    PNG files plus ``fg_mask/<split>/<NN_class>/<name>.npy``), readable by ``ImageNet9``."""
    from PIL import Image

    from consistcam.utils import progress_bar

    out = Path(out)
    folders = [f"{i:02d}_{''.join(ch if ch.isalnum() or ch in '-_' else '_' for ch in c)}"
               for i, c in enumerate(base.classes)]
    counts = {}
    for variant in variants:
        ds = BackgroundVariant(base, variant, seed)
        for i in progress_bar(range(len(ds)), desc=variant, enabled=progress):
            image, label, boxes, mask = ds.load(i)
            folder = out / variant / split / folders[int(label)]
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image.permute(1, 2, 0).numpy()).save(folder / f"{i:06d}.png")
            if variant == "original":
                mask_dir = out / "fg_mask" / split / folders[int(label)]
                mask_dir.mkdir(parents=True, exist_ok=True)
                np.save(mask_dir / f"{i:06d}.npy", _foreground(image, boxes, mask).numpy())
        counts[variant] = len(ds)
    return counts
