"""Data sets with object locations, one sample format, location-aware transforms."""

from consistcam.data.base import DataError, LocatedDataset, check_same_classes, collate
from consistcam.data.cub import CUB200
from consistcam.data.demo import DemoShapes, make_demo_split
from consistcam.data.folders import ImageFolder, ImageNet9
from consistcam.data.ids import WithIds
from consistcam.data.images import read_rgb
from consistcam.data.masks import dilate, mask_from_boxes, mask_from_pixels, object_mask
from consistcam.data.registry import DATASETS, build_dataset, eval_splits, parse_spec
from consistcam.data.stl10 import STL10
from consistcam.data.tinyimagenet import TinyImageNet
from consistcam.data.transforms import AUGMENTATIONS, build_transform
from consistcam.data.variants import VARIANTS, BackgroundVariant, export_variants
from consistcam.data.voc import VOCDetectionLabels

__all__ = [
    "AUGMENTATIONS",
    "CUB200",
    "DATASETS",
    "STL10",
    "VARIANTS",
    "BackgroundVariant",
    "DataError",
    "DemoShapes",
    "ImageFolder",
    "ImageNet9",
    "LocatedDataset",
    "TinyImageNet",
    "VOCDetectionLabels",
    "WithIds",
    "build_dataset",
    "build_transform",
    "check_same_classes",
    "collate",
    "dilate",
    "eval_splits",
    "export_variants",
    "make_demo_split",
    "mask_from_boxes",
    "mask_from_pixels",
    "object_mask",
    "parse_spec",
    "read_rgb",
]
