"""STL-10 binary release (``stl10_binary/{train,test,unlabeled}_X.bin``, ``*_y.bin``).

Images are 3 x 96 x 96 uint8, stored column-major (each channel transposed); labels are 1..10 in
the files and 0..9 here. The unlabeled split carries label -1. Read through a memory map, so the
100k unlabeled images cost no RAM up front.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from consistcam.data.base import DataError, LocatedDataset

STL10_CLASSES = ["airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck"]
_IMAGE_BYTES = 3 * 96 * 96


class STL10(LocatedDataset):
    def __init__(self, root: str | Path, split: str = "train", transform=None, skip_bad: bool = False) -> None:
        # ``skip_bad`` is accepted for a uniform interface; a binary file has no single bad image to skip
        super().__init__(transform)
        root = Path(root)
        if (root / "stl10_binary").is_dir():
            root = root / "stl10_binary"
        if split not in ("train", "test", "unlabeled"):
            raise ValueError(f"STL-10 split must be train, test or unlabeled, got {split!r}")
        self.root, self.split = root, split
        names = root / "class_names.txt"
        self.classes = [n.strip() for n in names.read_text().splitlines() if n.strip()] if names.is_file() \
            else list(STL10_CLASSES)
        x_path = root / f"{split}_X.bin"
        if not x_path.is_file():
            raise DataError(f"{x_path}: not found; is {root} the stl10_binary folder?")
        size = x_path.stat().st_size
        if size == 0 or size % _IMAGE_BYTES:
            raise DataError(f"{x_path}: {size} bytes is not a whole number of 96x96x3 images ({_IMAGE_BYTES} bytes)")
        self.images = np.memmap(x_path, dtype=np.uint8, mode="r").reshape(-1, 3, 96, 96)
        n = len(self.images)
        if split == "unlabeled":
            self.labels = np.full(n, -1, dtype=np.int64)
            return
        y_path = root / f"{split}_y.bin"
        if not y_path.is_file():
            raise DataError(f"{y_path}: not found (labels for {x_path.name})")
        labels = np.fromfile(y_path, dtype=np.uint8).astype(np.int64)
        if len(labels) != n:
            raise DataError(f"{y_path}: {len(labels)} labels for {n} images in {x_path.name}")
        bad = np.flatnonzero((labels < 1) | (labels > len(self.classes)))
        if len(bad):
            raise DataError(f"{y_path}: label {labels[bad[0]]} at position {bad[0]} is outside 1..{len(self.classes)}")
        self.labels = labels - 1

    def __len__(self) -> int:
        return len(self.images)

    def load(self, index: int):
        image = torch.from_numpy(np.ascontiguousarray(self.images[index].transpose(0, 2, 1)))
        return image, int(self.labels[index]), None, None
