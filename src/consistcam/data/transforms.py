"""Location-aware transforms (torchvision.transforms.v2): image, boxes and mask move together."""

from __future__ import annotations

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

AUGMENTATIONS = ("none", "flip", "crop_flip", "rrc_flip")


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
        v2.SanitizeBoundingBoxes(labels_getter=None, min_size=1.0),
    ]
    return v2.Compose(ops)
