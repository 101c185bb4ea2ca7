"""Tiny ImageNet in its native layout (works for the 200-class original and subsets of it).

train/<wnid>/images/<wnid>_<k>.JPEG with train/<wnid>/<wnid>_boxes.txt, val/images/val_<k>.JPEG
with val/val_annotations.txt. ``classes=`` / ``exclude=`` (a file of wnids, or a list) keep a subset
of the classes, labelled in wnids.txt order. Box files give inclusive pixel coordinates (x0 y0 x1 y1); we store
XYXY with exclusive x1/y1 (x1 + 1, y1 + 1), so a box covering the whole 64 px image is 0 0 64 64.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

from consistcam.data.base import (
    DataError,
    LocatedDataset,
    annotation_lines,
    check_classes,
    check_no_empty_class,
    select_classes,
)
from consistcam.data.images import read_rgb


class _BadLine(DataError):
    def __init__(self, where: str, message: str) -> None:
        super().__init__(message)
        self.where = where


class TinyImageNet(LocatedDataset):
    has_boxes = True

    def __init__(self, root: str | Path, split: str = "train", transform=None, skip_bad: bool = False,
                 preload: bool = True, classes: str | Path | Sequence[str] | None = None,
                 exclude: str | Path | Sequence[str] | None = None) -> None:
        super().__init__(transform)
        self.root = Path(root)
        if split not in ("train", "val"):
            raise ValueError(f"Tiny ImageNet split must be 'train' or 'val', got {split!r}")
        wnids_file = self.root / "wnids.txt"
        if not wnids_file.is_file():
            raise DataError(f"{wnids_file}: not found; is {self.root} a Tiny ImageNet folder?")
        all_wnids = [w.strip() for w in wnids_file.read_text().splitlines() if w.strip()]
        check_classes(all_wnids, str(wnids_file))
        # classes= / exclude= keep a subset; val lines of the dropped classes are left out, not errors
        self.wnids = select_classes(all_wnids, str(wnids_file), classes, exclude)
        self._dropped = set(all_wnids) - set(self.wnids)
        self._skip = self.skipped if skip_bad else None
        names = {}
        words = self.root / "words.txt"
        if words.is_file():
            for line in words.read_text().splitlines():
                wnid, _, name = line.partition("\t")
                names[wnid] = name.split(",")[0].strip()
        self.classes = [names.get(w, w) for w in self.wnids]
        index = {w: i for i, w in enumerate(self.wnids)}
        self.split = split
        entries = self._entries(self._train_entries(index) if split == "train" else self._val_entries(index))
        self.files: list[Path] = []
        self.labels: list[int] = []
        self.boxes: list[Tensor] = []
        images: list[Tensor] = []
        for path, label, box, where in entries:
            try:
                image = read_rgb(path) if preload else None
            except DataError as err:
                if not skip_bad:
                    raise
                self.skipped.add(str(path), str(err))
                continue
            if image is not None:
                h, w = image.shape[-2:]
                if box[0] < 0 or box[1] < 0 or box[2] > w or box[3] > h or box[0] >= box[2] or box[1] >= box[3]:
                    msg = f"{where}: box {box.tolist()} (exclusive x1/y1) lies outside the {w}x{h} image {path.name}"
                    if not skip_bad:
                        raise DataError(msg)
                    self.skipped.add(where, msg, "box")
                    continue
                images.append(image)
            self.files.append(path)
            self.labels.append(label)
            self.boxes.append(box)
        if not self.files:
            raise DataError(f"{self.root}/{split}: no images found")
        if split == "train":  # a class without training samples cannot be learned (val may be partial)
            check_no_empty_class(self.labels, self.classes, f"{self.root}/{split}", self.skipped)
        self.images = images if preload else None

    def _entries(self, entries):
        """The parsed lines; a malformed one is skipped (and logged) under ``skip_bad``, else an error."""
        while True:
            try:
                yield next(entries)
            except StopIteration:
                return
            except _BadLine as bad:
                if self._skip is None:
                    raise DataError(str(bad)) from None
                self._skip.add(bad.where, str(bad), "annotation")

    def _parse_box(self, parts: list[str], where: str) -> Tensor:
        try:
            x0, y0, x1, y1 = (int(p) for p in parts)
        except ValueError:
            raise _BadLine(where, f"{where}: expected four integer coordinates, got {' '.join(parts)!r}") from None
        return torch.tensor([x0, y0, x1 + 1, y1 + 1], dtype=torch.float32)

    def _train_entries(self, index: dict[str, int]):
        for wnid in self.wnids:
            folder = self.root / "train" / wnid
            box_file = folder / f"{wnid}_boxes.txt"
            if not box_file.is_file():
                raise DataError(f"{box_file}: not found (class {wnid} listed in wnids.txt)")
            if not box_file.read_text().strip():
                raise DataError(f"{box_file}: empty; class {wnid} has no images")
            for where, parts in annotation_lines(box_file, 5, "'file x0 y0 x1 y1'", skip=self._skip):
                yield folder / "images" / parts[0], index[wnid], self._parse_box(parts[1:], where), where

    def _val_entries(self, index: dict[str, int]):
        ann = self.root / "val" / "val_annotations.txt"
        if not ann.is_file():
            raise DataError(f"{ann}: not found")
        for where, parts in annotation_lines(ann, 6, "'file wnid x0 y0 x1 y1'", skip=self._skip):
            if parts[1] in self._dropped:
                continue
            if parts[1] not in index:
                raise _BadLine(where, f"{where}: class id {parts[1]!r} is not in wnids.txt")
            yield self.root / "val" / "images" / parts[0], index[parts[1]], self._parse_box(parts[2:], where), where

    def __len__(self) -> int:
        return len(self.files)

    def load(self, index: int):
        image = self.images[index] if self.images is not None else read_rgb(self.files[index])
        return image, self.labels[index], self.boxes[index], None

