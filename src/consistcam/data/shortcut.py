"""A real-image background shortcut: the Waterbirds protocol (Sagawa et al., ICLR 2020) on any
single-label data set with boxes or masks.

Each image's object (its box, or its pixel mask when the data set has one) is pasted onto a real
background cut from *another* image, outside that image's boxes: the largest box-free strip (left,
right, above or below the boxes) resized to the canvas. Background *groups* are the classes of the
images the backgrounds come from (group g = backgrounds of class-g images), so a background carries
the context of its class (water for goldfish, roads for cars) without its object.

Splits (``shortcut:<spec>``): ``train`` takes the group of the image's own class with probability
``rho`` (default 0.9) and one of the other groups otherwise; ``val`` (a held-out ``val_fraction`` of
each class of the base training split) and ``test`` (the base evaluation split) are decorrelated
(group uniform over all groups); ``test_correlated`` is the base evaluation split with ``rho``.
Backgrounds come from the same base split as the objects, so no test background is seen in training
(unless ``scenes``, below).

``scenes=K`` (default 0: off) makes the shortcut a *scene* shortcut, as Waterbirds' Places
categories are: each group's backgrounds are the strips of K fixed images of its class, drawn once
from ``seed`` out of the base training split's ``train`` share and used by every split (the objects
of val and test stay unseen). A group's background is then a few recurring scenes, easy to learn and
recognised again at test time, instead of a fresh image of the class each time.

Objects larger than ``area`` (fraction of the canvas, default 0.5) are scaled down about their
centre, so that enough background shows for a shortcut to exist; the pasted object's box (and
mask) are the sample's ground truth. Every choice (groups, partners, scales) is drawn once from
``seed``: a split is the same set on every run, built on the fly (no files). Each sample carries its
background group (``sample["group"]``), for per-group accuracy (:class:`consistcam.metrics.GroupAccuracy`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from consistcam.data.base import DataError, LocatedDataset

SPLITS = ("train", "val", "test", "test_correlated")
_SPLIT_SEED = {"train": 0, "val": 1, "test": 2, "test_correlated": 3}


def _resize(image: Tensor, size: tuple[int, int], mode: str = "bilinear") -> Tensor:
    """Resize a (C, H, W) uint8/bool image (``nearest`` for masks)."""
    x = image[None].float()
    if mode == "nearest":
        return F.interpolate(x, size=size, mode="nearest")[0] > 0.5
    out = F.interpolate(x, size=size, mode=mode, antialias=True, align_corners=False)[0]
    return out.round().clamp(0, 255).to(torch.uint8)


def _union_box(boxes: Tensor, h: int, w: int) -> tuple[int, int, int, int]:
    """Integer (x0, y0, x1, y1) pixel bounds of the union of (K, 4) XYXY boxes (x1/y1 exclusive)."""
    b = boxes.reshape(-1, 4).float()
    x0, y0 = int(math.floor(b[:, 0].min().clamp(0, w))), int(math.floor(b[:, 1].min().clamp(0, h)))
    x1, y1 = int(math.ceil(b[:, 2].max().clamp(0, w))), int(math.ceil(b[:, 3].max().clamp(0, h)))
    return x0, y0, max(x1, x0 + 1), max(y1, y0 + 1)


def background_strip(box: tuple[int, int, int, int], h: int, w: int) -> tuple[int, int, int, int]:
    """The largest of the four box-free strips of an H x W image (left, right, above, below the box),
    as (x0, y0, x1, y1); its area is 0 when the box covers the image."""
    x0, y0, x1, y1 = box
    strips = [(0, 0, x0, h), (x1, 0, w, h), (0, 0, w, y0), (0, y1, w, h)]
    return max(strips, key=lambda s: (s[2] - s[0]) * (s[3] - s[1]))


class ShortcutBackgrounds(LocatedDataset):
    """One split of the shortcut benchmark built from base data sets (their un-transformed ``load``).

    Args:
        base: the base split the objects and backgrounds come from (training split for ``train``
            and ``val``, evaluation split for ``test`` and ``test_correlated``).
        split: one of ``train``, ``val``, ``test``, ``test_correlated``.
        rho: probability that a ``train``/``test_correlated`` image gets its own class's background group.
        area: objects whose box covers more than this fraction of the canvas are scaled down to it.
        min_strip: a base image lends backgrounds only if its box-free strip covers at least this
            fraction of it (smaller strips would be blown up into blur).
        val_fraction: share of each class of the base training split held out as ``val``.
        seed: seed of the held-out split, the groups, the partners (and the scenes).
        scenes: K > 0: every split's backgrounds come from K fixed images per class of the base
            training split's train share (``scene_base``); 0: from the split's own images.
        scene_base: the base training split, where ``scenes`` are taken from for ``test`` and
            ``test_correlated`` (``train`` and ``val`` use ``base``).
        cache_bytes: composites are deterministic, so each is kept in memory after its first load
            (up to this many bytes; 0 = never): later epochs then cost an index, not two image
            reads and a resize.
    """

    has_boxes = True

    def __init__(self, base: LocatedDataset, split: str, rho: float = 0.9, area: float = 0.5,
                 min_strip: float = 0.15, val_fraction: float = 0.1, seed: int = 0, transform=None,
                 cache_bytes: int = 1 << 30, scenes: int = 0, scene_base: LocatedDataset | None = None) -> None:
        super().__init__(transform)
        if split not in SPLITS:
            raise ValueError(f"unknown shortcut split {split!r}; known: {', '.join(SPLITS)}")
        if not (base.has_boxes or base.has_masks):
            raise ValueError(f"the shortcut benchmark needs object boxes or masks; {type(base).__name__} has neither")
        if base.multilabel:
            raise ValueError(f"the shortcut benchmark needs single-label data; {type(base).__name__} is multi-label")
        for name, value, lo, hi in (("rho", rho, 0.0, 1.0), ("area", area, 0.0, 1.0),
                                    ("min_strip", min_strip, 0.0, 1.0), ("val_fraction", val_fraction, 0.0, 1.0)):
            if not lo <= value <= hi or (name in ("area", "val_fraction") and value == 0.0):
                raise ValueError(f"shortcut option {name} must be in {'(' if name in ('area', 'val_fraction') else '['}"
                                 f"{lo}, {hi}], got {value}")
        if isinstance(scenes, bool) or not isinstance(scenes, int) or scenes < 0:
            raise ValueError(f"shortcut option scenes must be an integer >= 0, got {scenes!r}")
        if scenes and split in ("test", "test_correlated") and scene_base is None:
            raise ValueError(f"shortcut scenes={scenes}: the {split} split needs the base training split (scene_base) "
                             "to take the scenes from")
        self.base, self.split, self.rho, self.area, self.seed = base, split, rho, area, seed
        self.lender_base = scene_base if scenes and split in ("test", "test_correlated") else base
        self.classes, self.has_masks = base.classes, base.has_masks
        g = torch.Generator().manual_seed(seed * 1009 + _SPLIT_SEED[split])
        labels = torch.tensor(base.all_labels())
        k = len(self.classes)
        if k < 2:  # a minority background is another class's: one class has none
            raise DataError(f"shortcut needs at least 2 classes, the base data set has {k} ({', '.join(self.classes)})")
        members = self._members(labels, split, val_fraction, seed)
        self.index = members.tolist()  # base indices of this split's samples
        self.labels = labels[members].tolist()
        if scenes:
            lenders = self._scenes(scenes, min_strip, val_fraction, seed)
        else:  # lenders: base images of the same member set with a usable background strip
            self.strips = {i: strip for i in self.index if (strip := self._strip(base, i, min_strip)) is not None}
            lenders = [torch.tensor([i for i in self.index if i in self.strips and int(labels[i]) == c],
                                    dtype=torch.long) for c in range(k)]
            for c, pool in enumerate(lenders):
                if len(pool) < 2:
                    raise DataError(f"shortcut {split}: class {self.classes[c]!r} has {len(pool)} images with a "
                                    f"box-free strip of at least {min_strip:.0%} of the image to lend as background; "
                                    "lower min_strip")
        y = labels[members]
        n = len(y)
        if split in ("val", "test"):
            group = torch.randint(0, k, (n,), generator=g)
        else:
            other = (y + torch.randint(1, k, (n,), generator=g)) % k
            group = torch.where(torch.rand(n, generator=g) < rho, y, other)
        self.groups = group.tolist()
        partner = []
        for j, i in enumerate(self.index):
            pool = lenders[self.groups[j]]
            if not scenes:  # scenes: an image may sit on its own background (one of few fixed scenes)
                pool = pool[pool != i]
            partner.append(int(pool[torch.randint(len(pool), (1,), generator=g)]))
        self.partner = partner
        self._cache: dict[int, tuple] = {}
        self._cache_left = cache_bytes

    def _strip(self, data: LocatedDataset, i: int, min_strip: float) -> tuple[int, int, int, int] | None:
        """Image ``i``'s largest box-free strip, or None when it covers less than ``min_strip``."""
        image, _, boxes, mask = data.load(i)
        h, w = image.shape[-2:]
        strip = background_strip(self._object_box(boxes, mask, h, w), h, w)
        return strip if (strip[2] - strip[0]) * (strip[3] - strip[1]) >= min_strip * h * w else None

    def _scenes(self, scenes: int, min_strip: float, val_fraction: float, seed: int) -> list[Tensor]:
        """K lenders per class from the train share of the base training split, the same for every
        split (drawn from ``seed`` alone): the first K of a seeded order whose strip is usable."""
        data = self.lender_base
        labels = torch.tensor(data.all_labels())
        train = self._members(labels, "train", val_fraction, seed)
        order = train[torch.randperm(len(train), generator=torch.Generator().manual_seed(seed * 1009 + 97))]
        self.strips, lenders = {}, []
        for c, name in enumerate(self.classes):
            pool = []
            for i in order[labels[order] == c].tolist():
                strip = self._strip(data, i, min_strip)
                if strip is not None:
                    self.strips[i] = strip
                    pool.append(i)
                    if len(pool) == scenes:
                        break
            if len(pool) < scenes:
                raise DataError(f"shortcut scenes={scenes}: class {name!r} has only {len(pool)} training images "
                                f"with a box-free strip of at least {min_strip:.0%} of the image; lower scenes or "
                                "min_strip")
            lenders.append(torch.tensor(pool, dtype=torch.long))
        return lenders

    @staticmethod
    def _members(labels: Tensor, split: str, val_fraction: float, seed: int) -> Tensor:
        """Base indices of the split: a fixed per-class share of the base training split is ``val``."""
        if split not in ("train", "val"):
            return torch.arange(len(labels))
        g = torch.Generator().manual_seed(seed * 1009 + 17)
        held = []
        for c in labels.unique().tolist():
            idx = torch.nonzero(labels == c).flatten()
            idx = idx[torch.randperm(len(idx), generator=g)]
            held.append(idx[: max(1, round(val_fraction * len(idx)))])
        val = torch.cat(held)
        in_val = torch.zeros(len(labels), dtype=torch.bool)
        in_val[val] = True
        return torch.nonzero(in_val if split == "val" else ~in_val).flatten()

    @staticmethod
    def _object_box(boxes: Tensor | None, mask: Tensor | None, h: int, w: int) -> tuple[int, int, int, int]:
        if boxes is not None and boxes.numel():
            return _union_box(boxes, h, w)
        ys, xs = torch.nonzero(mask, as_tuple=True)
        if len(ys) == 0:
            raise DataError("an image has an empty object mask and no box")
        return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1

    def __len__(self) -> int:
        return len(self.index)

    def load(self, index: int):
        hit = self._cache.get(index)
        if hit is not None:
            return hit
        out = self._composite(index)
        size = out[0].numel() + (out[3].numel() if out[3] is not None else 0)
        if size <= self._cache_left:
            self._cache[index] = out
            self._cache_left -= size
        return out

    def _composite(self, index: int):
        i = self.index[index]
        image, label, boxes, mask = self.base.load(i)
        h, w = image.shape[-2:]
        lender, _, _, _ = self.lender_base.load(self.partner[index])
        sx0, sy0, sx1, sy1 = self.strips[self.partner[index]]
        canvas = _resize(lender[:, sy0:sy1, sx0:sx1], (h, w))
        x0, y0, x1, y1 = self._object_box(boxes, mask, h, w)
        obj = image[:, y0:y1, x0:x1]
        fg = (mask[y0:y1, x0:x1] > 0)[None] if mask is not None else torch.ones_like(obj[:1], dtype=torch.bool)
        bw, bh = x1 - x0, y1 - y0
        scale = min(1.0, math.sqrt(self.area * h * w / (bw * bh)))
        if scale < 1.0:  # shrink about the box centre, kept inside the canvas
            nw, nh = max(1, round(bw * scale)), max(1, round(bh * scale))
            obj, fg = _resize(obj, (nh, nw)), _resize(fg, (nh, nw), "nearest")
            x0 = min(max(0, round((x0 + x1) / 2 - nw / 2)), w - nw)
            y0 = min(max(0, round((y0 + y1) / 2 - nh / 2)), h - nh)
            bw, bh = nw, nh
        region = canvas[:, y0:y0 + bh, x0:x0 + bw]
        canvas[:, y0:y0 + bh, x0:x0 + bw] = torch.where(fg, obj, region)
        box = torch.tensor([[x0, y0, x0 + bw, y0 + bh]], dtype=torch.float32)
        out_mask = None
        if mask is not None:
            out_mask = torch.zeros(h, w, dtype=mask.dtype)
            out_mask[y0:y0 + bh, x0:x0 + bw] = fg[0].to(mask.dtype)
        return canvas, label, box, out_mask


SHORTCUT_OPTIONS = {"rho": float, "area": float, "min_strip": float, "val_fraction": float, "seed": int,
                    "scenes": int}


def parse_shortcut_arg(arg: str) -> tuple[dict, str]:
    """``[opt=v,...:]<inner spec>`` → (options, inner spec)."""
    head, sep, rest = arg.partition(":")
    opts: dict = {}
    if "=" in head and sep:
        for item in filter(None, head.split(",")):
            key, eq, value = item.partition("=")
            if not eq or key not in SHORTCUT_OPTIONS:
                raise ValueError(f"bad shortcut option {item!r}; use e.g. "
                                 "shortcut:rho=0.9,area=0.5,min_strip=0.15,val_fraction=0.1,seed=0:tinyimagenet:PATH")
            try:
                opts[key] = SHORTCUT_OPTIONS[key](value)
            except ValueError:
                raise ValueError(f"shortcut option {key}: expected a number, got {value!r}") from None
        arg = rest
    if not arg:
        raise ValueError("shortcut needs a data spec with boxes or masks: shortcut:tinyimagenet:PATH")
    if arg.split(":", 1)[0] == "shortcut":
        raise ValueError("shortcut:shortcut:... is not a data set")
    return opts, arg
