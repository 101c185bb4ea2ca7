"""Data sets with object locations, one sample format, location-aware transforms."""

from consistcam.data.base import DataError, LocatedDataset, collate
from consistcam.data.demo import DemoShapes, make_demo_split
from consistcam.data.images import read_rgb
from consistcam.data.registry import DATASETS, build_dataset, eval_splits, parse_spec
from consistcam.data.tinyimagenet import TinyImageNet
from consistcam.data.transforms import AUGMENTATIONS, build_transform

__all__ = [
    "AUGMENTATIONS",
    "DATASETS",
    "DataError",
    "DemoShapes",
    "LocatedDataset",
    "TinyImageNet",
    "build_dataset",
    "build_transform",
    "collate",
    "eval_splits",
    "make_demo_split",
    "parse_spec",
    "read_rgb",
]
