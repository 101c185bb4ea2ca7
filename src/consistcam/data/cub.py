"""CUB-200-2011 in its native layout (``images.txt``, ``train_test_split.txt``,
``image_class_labels.txt``, ``bounding_boxes.txt``, ``classes.txt``, ``images/``).

Boxes are given as x y width height in pixels (floats); we store XYXY with exclusive x1/y1
(x + width, y + height). Class ids in the files are 1-based; labels here are 0-based. Pass the
``CUB_200_2011`` folder or its parent.
"""

from __future__ import annotations

from pathlib import Path

import torch

from consistcam.data.base import DataError, LocatedDataset, annotation_lines
from consistcam.data.images import read_rgb


def read_table(path: Path, columns: int) -> dict[int, list[str]]:
    """``<image id> <value>...`` lines keyed by id; names file:line on any malformed line."""
    if not path.is_file():
        raise DataError(f"{path}: not found; is this a CUB-200-2011 folder?")
    out: dict[int, list[str]] = {}
    maxsplit = 1 if columns == 2 else -1  # two-column files end in a free-form value (a path or name)
    for where, parts in annotation_lines(path, columns, f"{columns} fields", maxsplit):
        try:
            key = int(parts[0])
        except ValueError:
            raise DataError(f"{where}: expected an integer id first, got {' '.join(parts)!r}") from None
        if key in out:
            raise DataError(f"{where}: id {key} appears twice")
        out[key] = parts[1:]
    return out


class CUB200(LocatedDataset):
    has_boxes = True

    def __init__(self, root: str | Path, split: str = "train", transform=None, skip_bad: bool = False) -> None:
        super().__init__(transform)
        root = Path(root)
        if (root / "CUB_200_2011" / "images.txt").is_file():
            root = root / "CUB_200_2011"
        if split not in ("train", "test"):
            raise ValueError(f"CUB split must be 'train' or 'test', got {split!r}")
        self.root, self.split = root, split
        names = read_table(root / "classes.txt", 2)
        self.classes = [names[k][0].split(".", 1)[-1].replace("_", " ") for k in sorted(names)]
        images = read_table(root / "images.txt", 2)
        is_train = read_table(root / "train_test_split.txt", 2)
        labels = read_table(root / "image_class_labels.txt", 2)
        boxes = read_table(root / "bounding_boxes.txt", 5)
        self.files, self.labels, self.boxes, self.image_ids = [], [], [], []
        for image_id in sorted(images):
            for table, fname in ((is_train, "train_test_split.txt"), (labels, "image_class_labels.txt"),
                                 (boxes, "bounding_boxes.txt")):
                if image_id not in table:
                    raise DataError(f"{root / fname}: image id {image_id} ({images[image_id][0]}) is missing")
            if (is_train[image_id][0] == "1") != (split == "train"):
                continue
            where = f"{root / 'image_class_labels.txt'} (image id {image_id})"
            try:
                label = int(labels[image_id][0]) - 1
            except ValueError:
                raise DataError(f"{where}: class id {labels[image_id][0]!r} is not an integer") from None
            if not 0 <= label < len(self.classes):
                raise DataError(f"{where}: class id {label + 1} is not in classes.txt (1..{len(self.classes)})")
            try:
                x, y, w, h = (float(v) for v in boxes[image_id])
            except ValueError:
                raise DataError(f"{root / 'bounding_boxes.txt'} (image id {image_id}): non-numeric box") from None
            if w <= 0 or h <= 0 or x < 0 or y < 0:
                msg = f"{root / 'bounding_boxes.txt'} (image id {image_id}): bad box x={x} y={y} w={w} h={h}"
                if not skip_bad:
                    raise DataError(msg)
                self.skipped.add(images[image_id][0], msg)
                continue
            self.files.append(root / "images" / images[image_id][0])
            self.labels.append(label)
            self.boxes.append(torch.tensor([x, y, x + w, y + h]))
            self.image_ids.append(image_id)
        if not self.files:
            raise DataError(f"{root}: no {split} images")

    def __len__(self) -> int:
        return len(self.files)

    def load(self, index: int):
        image = read_rgb(self.files[index])
        h, w = image.shape[-2:]
        box = self.boxes[index]
        if box[2] > w + 1 or box[3] > h + 1:  # CUB boxes are floats; allow sub-pixel overshoot
            raise DataError(f"{self.files[index]}: box {box.tolist()} lies outside the {w}x{h} image "
                            f"(bounding_boxes.txt, image id {self.image_ids[index]})")
        box = box.clone()
        box[2:] = torch.minimum(box[2:], torch.tensor([float(w), float(h)]))
        return image, self.labels[index], box, None
