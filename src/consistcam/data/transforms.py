"""Location-aware transforms (torchvision.transforms.v2): image, boxes and mask move together."""

from __future__ import annotations

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

AUGMENTATIONS = ("none", "flip", "crop_flip", "rrc_flip")


def box_labels_of(sample):
    """The per-box classes that must be dropped with their boxes (not the image-level ``label``)."""
    return sample.get("box_labels") if isinstance(sample, dict) else None


class SanitizeBoxes(v2.Transform):
    """Drop boxes cropped away entirely (and their ``box_labels``) but never touch the object mask:
    torchvision's SanitizeBoundingBoxes also indexes any Mask whose first dimension happens to equal
    the number of boxes, which would corrupt an H x W mask when H equals that number."""

    def __init__(self, min_size: float = 1.0) -> None:
        super().__init__()
        self.inner = v2.SanitizeBoundingBoxes(labels_getter=box_labels_of, min_size=min_size)

    def forward(self, sample):
        if not isinstance(sample, dict) or "boxes" not in sample:
            return sample
        mask = sample.pop("mask", None)
        out = self.inner(sample)
        if mask is not None:
            out["mask"] = mask
        return out


def build_transform(size: int | None = None, augment: str = "none") -> v2.Compose:
    """Eval (``augment='none'``) or train transform producing float images in [0, 1].

    ``flip``: horizontal flip; ``crop_flip``: 4-pixel zero-padded random crop + flip (CIFAR/Tiny ImageNet
    style); ``rrc_flip``: random resized crop (scale 0.35-1) + flip. Boxes cropped away entirely
    are dropped (SanitizeBoundingBoxes), partly cropped ones are clipped to the image.
    """
    if augment not in AUGMENTATIONS:
        raise ValueError(f"unknown augmentation {augment!r}; known: {', '.join(AUGMENTATIONS)}")
    ops: list = []
    if augment == "rrc_flip":
        if size is None:
            raise ValueError("augment='rrc_flip' needs an image size")
        ops.append(v2.RandomResizedCrop(size, scale=(0.35, 1.0), antialias=True))
    elif size is not None:
        ops.append(v2.Resize(size, antialias=True))
        ops.append(v2.CenterCrop(size))
    if augment == "crop_flip":
        if size is None:
            raise ValueError("augment='crop_flip' needs an image size")
        ops.append(v2.RandomCrop(size, padding=4))  # constant padding: boxes support no reflect
    if augment in ("flip", "crop_flip", "rrc_flip"):
        ops.append(v2.RandomHorizontalFlip())
    ops += [
        v2.ToDtype({tv_tensors.Image: torch.float32, "others": None}, scale=True),
        v2.ClampBoundingBoxes(),
        SanitizeBoxes(),
    ]
    return v2.Compose(ops)
