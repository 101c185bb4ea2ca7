"""Class-per-folder layouts: torchvision-style ImageFolder and the ImageNet-9 Backgrounds Challenge.

Both read ``<root>/<class>/<image>``; ImageNet-9 adds one such tree per background variant and
optional foreground masks (``fg_mask/<split>/<class>/<stem>.npy``, boolean H x W arrays).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from consistcam.data.base import DataError, LocatedDataset, select_classes
from consistcam.data.images import read_rgb

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
IN9_VARIANTS = ("original", "only_fg", "no_fg", "only_bg_b", "only_bg_t", "mixed_same", "mixed_rand", "mixed_next")


def scan_class_folders(root: Path, classes: str | Path | Sequence[str] | None = None,
                       exclude: str | Path | Sequence[str] | None = None) -> tuple[list[str], list[Path], list[int]]:
    """Sorted class folders (those kept by ``classes`` / ``exclude``, see ``select_classes``) and their
    image files; an empty class folder is an error, not a silent gap in the label space (every later
    class would be shifted by one)."""
    if not root.is_dir():
        raise DataError(f"{root}: not a folder")
    found_classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not found_classes:
        raise DataError(f"{root}: no class folders found")
    classes = select_classes(found_classes, f"{root} (its class folders)", classes, exclude)
    files: list[Path] = []
    labels: list[int] = []
    for label, name in enumerate(classes):
        found = sorted(p for p in (root / name).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not found:
            raise DataError(f"{root / name}: class folder has no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
        files += found
        labels += [label] * len(found)
    return classes, files, labels


class _FolderDataset(LocatedDataset):
    """Images read lazily from a scanned class-folder tree; unreadable ones skipped under ``skip_bad``."""

    def _init_files(self, root: Path, skip_bad: bool, classes=None, exclude=None) -> None:
        self.root = root
        self.classes, self.files, self.labels = scan_class_folders(root, classes, exclude)
        self._skip_bad = skip_bad

    def __len__(self) -> int:
        return len(self.files)

    def _read(self, index: int) -> Tensor:
        # Lazy decoding cannot drop a sample after len() was taken, so a bad file fails loudly here
        # (naming it); ``check()`` finds them all up front and drops them when skip_bad is set.
        return read_rgb(self.files[index])

    def check(self) -> int:
        """Decode every image once; drop bad ones (``skip_bad``) or raise on the first. Returns #skipped."""
        keep = []
        for i, path in enumerate(self.files):
            try:
                read_rgb(path)
                keep.append(i)
            except DataError as err:
                if not self._skip_bad:
                    raise
                self.skipped.add(str(path), str(err))
        self.files = [self.files[i] for i in keep]
        self.labels = [self.labels[i] for i in keep]
        empty = sorted(set(range(len(self.classes))) - set(self.labels))
        if empty:
            raise DataError(f"{self.root / self.classes[empty[0]]}: class folder has no readable images left")
        return len(self.skipped)


class ImageFolder(_FolderDataset):
    """``root/<split>/<class>/*.jpg`` when ``root/<split>`` exists, else ``root/<class>/*.jpg``. No locations.
    ``classes=`` / ``exclude=`` (a file of folder names, or a list) keep a subset of the classes."""

    def __init__(self, root: str | Path, split: str = "train", transform=None, skip_bad: bool = False,
                 classes: str | Path | Sequence[str] | None = None,
                 exclude: str | Path | Sequence[str] | None = None) -> None:
        super().__init__(transform)
        root = Path(root)
        self.split = split
        self._init_files(root / split if (root / split).is_dir() else root, skip_bad, classes, exclude)
        if skip_bad:
            self.check()

    def load(self, index: int):
        return self._read(index), self.labels[index], None, None


class ImageNet9(_FolderDataset):
    """ImageNet-9 Backgrounds Challenge (Xiao et al. 2021): ``root/<variant>/<split>/<class>/``.

    ``split`` names the variant (``original``, ``only_fg``, ``mixed_same``, ``mixed_rand``,
    ``mixed_next``, ...), optionally with the folder split after a slash (``original/train``);
    the default folder split is ``val``. Masks come from ``fg_mask`` when it is there; they belong to
    the foreground object, which every variant keeps in place."""

    def __init__(self, root: str | Path, split: str = "original", transform=None, skip_bad: bool = False) -> None:
        super().__init__(transform)
        root = Path(root)
        variant, _, sub = split.partition("/")
        if variant in ("train", "val", "test") and not sub:
            variant, sub = "original", variant
        sub = sub or "val"
        if variant not in IN9_VARIANTS and variant != "fg_mask":
            raise ValueError(f"unknown ImageNet-9 variant {variant!r}; known: {', '.join(IN9_VARIANTS)}")
        folder = root / variant / sub
        if not folder.is_dir():
            present = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
            raise DataError(f"{folder}: not found (variants present in {root}: {', '.join(present) or 'none'})")
        self.variant, self.split = variant, sub
        self._init_files(folder, skip_bad)
        if skip_bad:
            self.check()
        mask_root = root / "fg_mask" / sub
        self.mask_files = [mask_root / f.parent.relative_to(folder) / (f.stem + ".npy") for f in self.files] \
            if mask_root.is_dir() else None
        if self.mask_files is not None:
            missing = [m for m in self.mask_files if not m.is_file()]
            if missing:
                raise DataError(f"{missing[0]}: foreground mask missing ({len(missing)} of {len(self.files)} are)")
            self.has_masks = True

    def load(self, index: int):
        image = self._read(index)
        mask = None
        if self.mask_files is not None:
            path = self.mask_files[index]
            try:
                arr = np.load(path, allow_pickle=False)
            except (OSError, ValueError) as err:
                raise DataError(f"{path}: unreadable mask ({err})") from None
            arr = np.squeeze(arr)
            if arr.shape != tuple(image.shape[-2:]):
                raise DataError(f"{path}: mask shape {arr.shape} does not match image {tuple(image.shape[-2:])}")
            mask = torch.from_numpy(arr > 0).to(torch.uint8)
        return image, self.labels[index], None, mask
