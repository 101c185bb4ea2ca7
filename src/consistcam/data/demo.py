"""The embedded demo data set: shapes on backgrounds that give the class away (a shortcut).

K classes of foreground shapes (disk, square, triangle, cross, ring, diamond) in a random colour,
with pixel-exact masks. The background is a striped texture whose colour and orientation belong to
one class: in the training split it matches the object's class with probability ``rho`` (default
0.9), in ``test`` it is drawn independently of the class (decorrelated), and ``test_correlated``
uses the training ``rho``. A classifier that reads the background does well on
``test_correlated`` and poorly on ``test``. Generated deterministically from the seed, no files.

``objects=k`` (k >= 2) makes a multi-label set: k shapes of k distinct classes per image, each in
its own cell of a grid, with multi-hot labels, one box per object (``box_labels`` names its class)
and the union of the objects as the pixel mask; the background belongs to one of the image's
classes with probability ``rho`` in ``train``/``test_correlated`` and to any class in ``test``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from consistcam.data.base import LocatedDataset

SHAPES = ("disk", "square", "triangle", "cross", "ring", "diamond")
# one background colour per class (RGB), well separated
BACKGROUND_COLOURS = torch.tensor([
    [0.20, 0.35, 0.75], [0.75, 0.25, 0.20], [0.25, 0.65, 0.25],
    [0.75, 0.65, 0.15], [0.55, 0.25, 0.65], [0.15, 0.60, 0.65],
])
# val is drawn like test (decorrelated) but from its own seed: picking on val and reporting on test
# must not see the same images (val was an alias of test until 2026-12-03)
SPLITS = {"train": 0, "test": 1, "test_correlated": 2, "val": 3}


def _shape_masks(kind: Tensor, cy: Tensor, cx: Tensor, r: Tensor, size: int) -> Tensor:
    ys = torch.arange(size, dtype=torch.float32)[None, :, None] + 0.5
    xs = torch.arange(size, dtype=torch.float32)[None, None, :] + 0.5
    dy, dx = ys - cy[:, None, None], xs - cx[:, None, None]
    r = r[:, None, None]
    ady, adx = dy.abs(), dx.abs()
    masks = torch.stack([
        dx**2 + dy**2 <= r**2,  # disk
        (adx <= 0.8 * r) & (ady <= 0.8 * r),  # square
        (dy <= r) & (dy >= -r) & (adx <= (dy + r) / 2),  # triangle, apex up
        ((adx <= r / 3) & (ady <= r)) | ((ady <= r / 3) & (adx <= r)),  # cross
        (dx**2 + dy**2 <= r**2) & (dx**2 + dy**2 >= (0.55 * r) ** 2),  # ring
        adx + ady <= r,  # diamond
    ], 1)
    return masks[torch.arange(len(kind)), kind]


def _striped_background(bg_class: Tensor, num_classes: int, size: int, g: torch.Generator) -> Tensor:
    """(N, 3, H, W) float backgrounds: the group's colour x stripes at the group's orientation, random
    period and phase, plus pixel noise (draws period, phase, noise from ``g`` in that order)."""
    n = len(bg_class)
    ys = torch.arange(size, dtype=torch.float32)[None, :, None]
    xs = torch.arange(size, dtype=torch.float32)[None, None, :]
    angle = (bg_class.float() * math.pi / num_classes)[:, None, None]
    period = (4 + 3 * torch.rand(n, generator=g))[:, None, None]
    phase = (2 * math.pi * torch.rand(n, generator=g))[:, None, None]
    stripes = torch.sin(2 * math.pi * (xs * torch.cos(angle) + ys * torch.sin(angle)) / period + phase)
    background = BACKGROUND_COLOURS[bg_class][:, :, None, None] * (0.75 + 0.25 * stripes[:, None])
    return background + 0.06 * torch.randn(n, 3, size, size, generator=g)


def make_demo_split(n: int, num_classes: int = 4, size: int = 32, rho: float = 0.9, seed: int = 0,
                    split: str = "train") -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(uint8 images N x 3 x H x W, labels, masks N x H x W bool, background class per image)."""
    if not 2 <= num_classes <= len(SHAPES):
        raise ValueError(f"demo num_classes must be in [2, {len(SHAPES)}], got {num_classes}")
    if split not in SPLITS:
        raise ValueError(f"unknown demo split {split!r}; known: {', '.join(SPLITS)}")
    g = torch.Generator().manual_seed(seed * 7919 + SPLITS[split])
    labels = torch.randint(0, num_classes, (n,), generator=g)
    p_match = 1.0 / num_classes if split in ("test", "val") else rho
    match = torch.rand(n, generator=g) < p_match
    other = (labels + torch.randint(1, num_classes, (n,), generator=g)) % num_classes
    if split in ("test", "val"):  # fully independent of the label
        bg_class = torch.randint(0, num_classes, (n,), generator=g)
    else:
        bg_class = torch.where(match, labels, other)
    r = size * (0.22 + 0.1 * torch.rand(n, generator=g))
    cy = r + (size - 2 * r) * torch.rand(n, generator=g)
    cx = r + (size - 2 * r) * torch.rand(n, generator=g)
    masks = _shape_masks(labels, cy, cx, r, size)
    background = _striped_background(bg_class, num_classes, size, g)
    fg_colour = 0.35 + 0.6 * torch.rand(n, 3, 1, 1, generator=g)
    fg = fg_colour + 0.04 * torch.randn(n, 3, size, size, generator=g)
    images = torch.where(masks[:, None], fg, background).clamp(0, 1)
    return (images * 255).round().to(torch.uint8), labels, masks, bg_class


def _boxes_of(masks: Tensor) -> Tensor:
    """(N, 4) XYXY boxes (x1/y1 exclusive) around non-empty (N, H, W) masks."""
    ys, xs = masks.any(2), masks.any(1)
    first = lambda m: m.float().argmax(1)  # noqa: E731
    last = lambda m: m.shape[1] - m.flip(1).float().argmax(1)  # noqa: E731
    return torch.stack([first(xs), first(ys), last(xs), last(ys)], 1).float()


def make_multilabel_demo_split(n: int, num_classes: int = 4, size: int = 32, rho: float = 0.9, seed: int = 0,
                               split: str = "train", objects: int = 2) -> dict[str, Tensor]:
    """``objects`` shapes of distinct classes per image, each in its own grid cell (no overlap).

    Returns uint8 ``images`` (N, 3, H, W), multi-hot ``labels`` (N, C), the union ``mask`` (N, H, W),
    ``boxes`` (N, k, 4), ``box_classes`` (N, k) and ``background_class`` (N,)."""
    if not 2 <= num_classes <= len(SHAPES):
        raise ValueError(f"demo num_classes must be in [2, {len(SHAPES)}], got {num_classes}")
    if not 2 <= objects <= num_classes:
        raise ValueError(f"demo option objects must be in [1, num_classes={num_classes}], got {objects}")
    if split not in SPLITS:
        raise ValueError(f"unknown demo split {split!r}; known: {', '.join(SPLITS)}")
    g = torch.Generator().manual_seed(seed * 7919 + SPLITS[split] + 104729 * objects)
    classes = torch.rand(n, num_classes, generator=g).argsort(1)[:, :objects]  # k distinct classes, random order
    labels = torch.zeros(n, num_classes).scatter_(1, classes, 1.0)
    if split in ("test", "val"):  # independent of the labels
        bg_class = torch.randint(0, num_classes, (n,), generator=g)
    else:  # with probability rho one of the image's classes (the first, a random one), else another class
        match = torch.rand(n, generator=g) < rho
        absent = torch.rand(n, num_classes, generator=g).masked_fill(labels > 0, -1.0).argmax(1)
        bg_class = torch.where(match | (objects == num_classes), classes[:, 0], absent)
    grid = math.ceil(math.sqrt(objects))
    cell_size = size / grid
    cells = torch.rand(n, grid * grid, generator=g).argsort(1)[:, :objects]  # distinct cells
    r = cell_size * (0.3 + 0.15 * torch.rand(n, objects, generator=g))
    cy = (cells // grid) * cell_size + r + (cell_size - 2 * r) * torch.rand(n, objects, generator=g)
    cx = (cells % grid) * cell_size + r + (cell_size - 2 * r) * torch.rand(n, objects, generator=g)
    masks = _shape_masks(classes.flatten(), cy.flatten(), cx.flatten(), r.flatten(), size).view(n, objects, size, size)
    images = _striped_background(bg_class, num_classes, size, g)
    for k in range(objects):
        colour = 0.35 + 0.6 * torch.rand(n, 3, 1, 1, generator=g)
        fg = colour + 0.04 * torch.randn(n, 3, size, size, generator=g)
        images = torch.where(masks[:, k, None], fg, images)
    images = (images.clamp(0, 1) * 255).round().to(torch.uint8)
    boxes = _boxes_of(masks.flatten(0, 1)).view(n, objects, 4)
    return {"images": images, "labels": labels, "mask": masks.any(1), "boxes": boxes, "box_classes": classes,
            "background_class": bg_class}


class DemoShapes(LocatedDataset):
    """The demo set through the common interface (pixel masks and the boxes around them);
    ``objects`` >= 2 makes it multi-label (see the module docstring)."""

    has_boxes = True
    has_masks = True

    def __init__(self, split: str = "train", n: int | None = None, num_classes: int = 4, size: int = 32,
                 rho: float = 0.9, seed: int = 0, transform=None, objects: int = 1) -> None:
        super().__init__(transform)
        n = n if n is not None else (2000 if split == "train" else 1000)
        self.classes = list(SHAPES[:num_classes])
        self.box_classes: Tensor | None = None
        if objects != 1:
            d = make_multilabel_demo_split(n, num_classes, size, rho, seed, split, objects)
            self.multilabel = True
            self.images, self.masks, self.boxes = d["images"], d["mask"], d["boxes"]
            self.labels, self.box_classes = list(d["labels"].unbind()), d["box_classes"]
            self.background_class = d["background_class"]
            self.groups = self.background_class.tolist()
            return
        self.images, labels, self.masks, self.background_class = make_demo_split(n, num_classes, size, rho, seed, split)
        self.groups = self.background_class.tolist()  # background group of each image (per-group accuracy)
        self.labels = labels.tolist()
        self.boxes = _boxes_of(self.masks)

    def __len__(self) -> int:
        return len(self.labels)

    def load(self, index: int):
        return self.images[index], self.labels[index], self.boxes[index], self.masks[index]

    def box_labels(self, index: int) -> Tensor | None:
        """Class of each box (multi-label demo only)."""
        return None if self.box_classes is None else self.box_classes[index]
