"""The one sample format every loader returns, and the collate function that batches it.

A sample is a dict: ``image`` (uint8 ``tv_tensors.Image`` until the transform converts it to float
in [0, 1]), ``label`` (int, or a multi-hot float tensor), ``id`` (stable int, unique in the data
set), and when the data set has them ``boxes`` (``tv_tensors.BoundingBoxes``, XYXY pixels, x1/y1
exclusive) and ``mask`` (``tv_tensors.Mask``, H x W, 1 on the object); multi-label sets add ``box_labels``
(class of each box); data sets with a known spurious attribute (the background group of the demo and
shortcut sets) add ``group`` (int). Transforms from
``torchvision.transforms.v2`` move boxes and masks with the image.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import Dataset
from torchvision import tv_tensors

log = logging.getLogger("consistcam.data")


class DataError(ValueError):
    """Bad input data; the message names the file (and line) at fault."""


@dataclass
class SkipLog:
    """Files and annotation lines skipped under ``skip_bad=True``, with the reason and kind of each
    (``image``: unreadable image; ``annotation``: malformed line or unknown class; ``box``: a box
    outside its image)."""

    items: list[tuple[str, str]] = field(default_factory=list)
    kinds: list[str] = field(default_factory=list)

    def add(self, where: str, why: str, kind: str = "image") -> None:
        self.items.append((where, why))
        self.kinds.append(kind)
        log.warning("skipped %s: %s", where, why)

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for kind in self.kinds:
            out[kind] = out.get(kind, 0) + 1
        return out

    def __len__(self) -> int:
        return len(self.items)


def check_classes(ids: Sequence[str], source: str) -> None:
    """Duplicated class ids would silently add classes (and shift every later label)."""
    seen: dict[str, int] = {}
    for n, cid in enumerate(ids, 1):
        if cid in seen:
            raise DataError(f"{source}:{n}: class id {cid!r} appears twice (first on line {seen[cid]})")
        seen[cid] = n


def read_class_list(path: str | Path) -> list[str]:
    """Class ids from a text file, one a line; blank lines and ``#`` comments are ignored."""
    path = Path(path).expanduser()
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise DataError(f"{path}: class list not found") from None
    except (IsADirectoryError, PermissionError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: class list unreadable ({type(err).__name__})") from None
    ids = [line.split("#", 1)[0].strip() for line in text.splitlines()]
    ids = [i for i in ids if i]
    check_classes(ids, str(path))
    if not ids:
        raise DataError(f"{path}: class list is empty")
    return ids


def select_classes(ids: Sequence[str], source: str, classes: str | Path | Sequence[str] | None = None,
                   exclude: str | Path | Sequence[str] | None = None) -> list[str]:
    """The ids of ``ids`` kept by ``classes`` (keep only these) and ``exclude`` (drop these), in the
    data set's own order, so labels follow the data set and not the list. Each is a file (one id a
    line) or a sequence of ids. An id the data set does not have is an error naming it: a typo would
    otherwise silently keep a class that a benchmark reserves."""
    known = set(ids)
    kept = list(ids)
    for name, chosen in (("classes", classes), ("exclude", exclude)):
        if chosen is None:
            continue
        where = str(chosen) if isinstance(chosen, (str, Path)) else f"{name}="
        wanted = read_class_list(chosen) if isinstance(chosen, (str, Path)) else list(chosen)
        unknown = [c for c in wanted if c not in known]
        if unknown:
            more = f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else ""
            raise DataError(f"{where}: class id {unknown[0]!r}{more} is not a class of {source}")
        wanted_set = set(wanted)
        kept = [c for c in kept if (c in wanted_set) == (name == "classes")]
    if not kept:
        raise DataError(f"{source}: no class left after classes={classes} exclude={exclude}")
    return kept


def check_same_classes(expected: Sequence[str], got: Sequence[str], expected_what: str, got_what: str) -> None:
    """Labels are class indices, so two label spaces agree only when their class names agree in
    order: {a, b} and {a, c} both have two classes, and "c" would be scored as "b"."""
    if list(expected) != list(got):
        raise DataError(f"class names differ: {expected_what} has {list(expected)}, {got_what} has {list(got)} "
                        "(labels are class indices: the names and their order must match)")


def check_no_empty_class(labels: Sequence[int], classes: Sequence[str], source: str, skipped: SkipLog) -> None:
    """A class left without samples (missing, or emptied by skipping) is an error, not a silent gap."""
    present = set(labels)
    empty = [c for c in range(len(classes)) if c not in present]
    if empty:
        why = f" after skipping {len(skipped)} bad entries" if len(skipped) else ""
        raise DataError(f"{source}: class {classes[empty[0]]!r} has no samples{why}"
                        + (f" ({len(empty)} classes are empty)" if len(empty) > 1 else ""))


def annotation_lines(path: Path, fields: int, expected: str, maxsplit: int = -1,
                     skip: SkipLog | None = None) -> Iterator[tuple[str, list[str]]]:
    """(``file:line``, fields) for every non-blank line of a whitespace-separated annotation file;
    a line with the wrong number of fields is a DataError naming the file, the line and ``expected``
    (with ``skip``, it is logged there and left out)."""
    try:
        text = path.read_text()
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not a text file ({err})") from None
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split(maxsplit=maxsplit)
        where = f"{path}:{n}"
        if len(parts) != fields:
            msg = f"{where}: expected {expected}, got {line!r}"
            if skip is None:
                raise DataError(msg)
            skip.add(where, msg, "annotation")
            continue
        yield where, parts


class LocatedDataset(Dataset):
    """Base class: subclasses fill ``self.classes`` and implement ``__len__`` and ``load``."""

    classes: list[str]
    has_boxes: bool = False
    has_masks: bool = False
    multilabel: bool = False
    # False drops boxes and masks from the samples: box-aware v2 transforms cost about 3x the time
    # of image-only ones, a waste when the consumer (e.g. the training loop) never reads them.
    keep_locations: bool = True
    # background group of each sample where the data set defines one (per-group accuracy), else None
    groups: list[int] | None = None

    def __init__(self, transform: Callable | None = None) -> None:
        self.transform = transform
        self.skipped = SkipLog()

    def load(self, index: int) -> tuple[Tensor, int | Tensor, Tensor | None, Tensor | None]:
        """(uint8 image C x H x W, label, boxes (K, 4) XYXY or None, mask H x W or None)."""
        raise NotImplementedError

    def box_labels(self, index: int) -> Tensor | None:
        """Class of each box (multi-label data sets), kept in step with the boxes by the transforms."""
        return None

    def all_labels(self) -> list[int]:
        """Every sample's (single) label, without decoding images where the subclass keeps ``labels``."""
        labels = getattr(self, "labels", None)
        return [int(v) for v in (labels if labels is not None else (self.load(i)[1] for i in range(len(self))))]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def view(self, transform: Callable | None, keep_locations: bool | None = None) -> LocatedDataset:
        """The same samples under another transform, without re-reading or re-parsing anything
        (a shallow copy shares the loaded images and annotations): the trainer builds the data set
        once and takes an augmented view for training and a plain one for scoring."""
        other = copy.copy(self)
        other.transform = transform
        if keep_locations is not None:
            other.keep_locations = keep_locations
        return other

    def __getitem__(self, index: int) -> dict:
        image, label, boxes, mask = self.load(index)
        size = tuple(image.shape[-2:])
        sample: dict = {"image": tv_tensors.Image(image), "label": label, "id": index}
        if self.groups is not None:
            sample["group"] = self.groups[index]
        if not self.keep_locations:
            boxes = mask = None
        if boxes is not None:
            sample["boxes"] = tv_tensors.BoundingBoxes(boxes.reshape(-1, 4), format="XYXY", canvas_size=size)
            box_labels = self.box_labels(index)
            if box_labels is not None:
                sample["box_labels"] = box_labels
        if mask is not None:
            sample["mask"] = tv_tensors.Mask(mask)
        if self.transform is not None:
            sample = self.transform(sample)
        return sample


def collate(samples: Sequence[dict]) -> dict:
    """Stack images, labels, ids and masks; keep boxes as a list of plain (K_i, 4) tensors."""
    if not samples:
        raise ValueError("cannot collate an empty batch")
    first = samples[0]
    sizes = {tuple(s["image"].shape[-2:]) for s in samples}
    if len(sizes) > 1:
        (h0, w0), (h1, w1) = sorted(sizes)[:2]
        raise DataError(f"images of different sizes in one batch ({w0}x{h0} and {w1}x{h1}, e.g. sample id "
                        f"{next(s['id'] for s in samples if tuple(s['image'].shape[-2:]) == (h1, w1))}); "
                        "set --image-size (image_size) to resize them all")
    out: dict = {
        "image": torch.stack([s["image"].as_subclass(Tensor) for s in samples]),
        "id": torch.tensor([s["id"] for s in samples], dtype=torch.long),
    }
    labels = [s["label"] for s in samples]
    out["label"] = torch.stack(labels) if isinstance(labels[0], Tensor) and labels[0].dim() > 0 else torch.tensor(
        [int(label) for label in labels], dtype=torch.long)
    if "group" in first:
        out["group"] = torch.tensor([s["group"] for s in samples], dtype=torch.long)
    if "boxes" in first:
        out["boxes"] = [s["boxes"].as_subclass(Tensor).float() for s in samples]
    if "box_labels" in first:
        out["box_labels"] = [s["box_labels"] for s in samples]
    if "mask" in first:
        out["mask"] = torch.stack([s["mask"].as_subclass(Tensor) for s in samples])[:, None].float()
    return out
