"""PASCAL VOC 2007/2012 classification with boxes: multi-hot labels from the XML annotations.

Layout: ``VOCdevkit/VOC2007/{Annotations,ImageSets/Main,JPEGImages}`` (pass any of the three
levels). VOC boxes are 1-based inclusive pixel coordinates; we store 0-based XYXY with exclusive
x1/y1 (xmin - 1, ymin - 1, xmax, ymax). Objects flagged ``difficult`` are left out of labels and
boxes unless ``keep_difficult=True`` (the VOC classification protocol ignores them); a class
present only through difficult objects is therefore negative, as in the devkit's ground truth.
Each box carries its class in ``box_labels``, so per-class localisation can select its boxes.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import torch

from consistcam.data.base import DataError, LocatedDataset
from consistcam.data.images import read_rgb

VOC_CLASSES = ["aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "diningtable",
               "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor"]


def _find_year_folder(root: Path, year: str | None) -> Path:
    if (root / "Annotations").is_dir():
        return root
    for base in (root, root / "VOCdevkit"):
        cands = sorted(base.glob("VOC20*")) if year is None else [base / f"VOC{year}"]
        cands = [c for c in cands if (c / "Annotations").is_dir()]
        if cands:
            return cands[0]
    raise DataError(f"{root}: no VOC folder with Annotations/ found (looked for VOCdevkit/VOC{year or '20xx'})")


class VOCDetectionLabels(LocatedDataset):
    has_boxes = True
    multilabel = True

    def __init__(self, root: str | Path, split: str = "trainval", transform=None, year: str | None = None,
                 keep_difficult: bool = False, skip_bad: bool = False) -> None:
        super().__init__(transform)
        self.root = _find_year_folder(Path(root), year)
        self.split = split
        self.classes = list(VOC_CLASSES)
        index = {c: i for i, c in enumerate(self.classes)}
        list_file = self.root / "ImageSets" / "Main" / f"{split}.txt"
        if not list_file.is_file():
            raise DataError(f"{list_file}: not found (split {split!r})")
        names = [line.split()[0] for line in list_file.read_text().splitlines() if line.strip()]
        self.files, self.labels, self.boxes, self.box_classes = [], [], [], []
        for name in names:
            xml = self.root / "Annotations" / f"{name}.xml"
            try:
                boxes, classes = self._parse(xml, index, keep_difficult)
            except DataError as err:
                if not skip_bad:
                    raise
                self.skipped.add(str(xml), str(err))
                continue
            label = torch.zeros(len(self.classes))
            label[classes] = 1.0
            self.files.append(self.root / "JPEGImages" / f"{name}.jpg")
            self.labels.append(label)
            self.boxes.append(boxes)
            self.box_classes.append(classes)
        if not self.files:
            raise DataError(f"{list_file}: no usable images")

    @staticmethod
    def _parse(xml: Path, index: dict[str, int], keep_difficult: bool) -> tuple[torch.Tensor, torch.Tensor]:
        try:
            tree = ET.parse(xml).getroot()
        except FileNotFoundError:
            raise DataError(f"{xml}: annotation file not found") from None
        except ET.ParseError as err:
            raise DataError(f"{xml}: malformed XML ({err})") from None
        size = tree.find("size")
        try:
            width, height = int(size.findtext("width")), int(size.findtext("height"))
        except (AttributeError, TypeError, ValueError):
            raise DataError(f"{xml}: missing or bad <size>") from None
        boxes, classes = [], []
        for k, obj in enumerate(tree.iter("object")):
            name = (obj.findtext("name") or "").strip()
            if name not in index:
                raise DataError(f"{xml}: object {k} has unknown class {name!r}")
            if not keep_difficult and (obj.findtext("difficult") or "0").strip() == "1":
                continue
            bb = obj.find("bndbox")
            try:
                x0, y0, x1, y1 = (float(bb.findtext(t)) for t in ("xmin", "ymin", "xmax", "ymax"))
            except (AttributeError, TypeError, ValueError):
                raise DataError(f"{xml}: object {k} ({name}) has a missing or non-numeric <bndbox>") from None
            box = [x0 - 1, y0 - 1, x1, y1]
            if box[0] < 0 or box[1] < 0 or box[2] > width or box[3] > height or box[0] >= box[2] or box[1] >= box[3]:
                raise DataError(f"{xml}: object {k} ({name}) box {[x0, y0, x1, y1]} lies outside the "
                                f"{width}x{height} image")
            boxes.append(box)
            classes.append(index[name])
        return torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4), torch.tensor(classes, dtype=torch.long)

    def __len__(self) -> int:
        return len(self.files)

    def load(self, index: int):
        return read_rgb(self.files[index]), self.labels[index], self.boxes[index], None

    def box_labels(self, index: int) -> torch.Tensor:
        return self.box_classes[index]
