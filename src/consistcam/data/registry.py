"""Selecting data with one string: ``demo``, ``demo:rho=0.8,n=4000``, ``tinyimagenet:PATH``, ``cub:PATH``,
``voc:PATH``, ``stl10:PATH``, ``imagefolder:PATH``, ``in9:PATH`` (Tiny ImageNet and ImageFolder take
``classes=FILE`` / ``exclude=FILE`` before the path: ``tinyimagenet:exclude=FILE:PATH``), and the background-shortcut benchmark
over any of those with boxes or masks: ``shortcut:tinyimagenet:PATH``, ``shortcut:rho=0.8:cub:PATH``."""

from __future__ import annotations

import functools
import re
from pathlib import Path

from consistcam._registry import Registry
from consistcam.data.base import LocatedDataset
from consistcam.data.cub import CUB200
from consistcam.data.demo import DemoShapes
from consistcam.data.folders import ImageFolder, ImageNet9
from consistcam.data.images import check_image_size
from consistcam.data.shortcut import ShortcutBackgrounds, parse_shortcut_arg
from consistcam.data.stl10 import STL10
from consistcam.data.tinyimagenet import TinyImageNet
from consistcam.data.voc import VOCDetectionLabels

DATASETS: Registry = Registry("data set")
EVAL_SPLITS = {"demo": ("test", "test_correlated"), "tinyimagenet": ("val",), "cub": ("test",), "voc": ("val",),
               "stl10": ("test",), "imagefolder": ("val",),
               "in9": ("original", "only_fg", "mixed_same", "mixed_rand", "mixed_next"),
               "shortcut": ("val", "test", "test_correlated")}


def _demo(arg: str, split: str, transform, **kw) -> LocatedDataset:
    opts: dict = {}
    for item in filter(None, arg.split(",")):
        key, sep, value = item.partition("=")
        if not sep or key not in ("n", "n_test", "num_classes", "size", "rho", "seed", "objects"):
            raise ValueError(f"bad demo option {item!r}; use e.g. "
                             "demo:rho=0.9,n=2000,n_test=1000,num_classes=4,size=32,seed=0,objects=1")
        try:
            opts[key] = float(value) if key == "rho" else int(value)
        except ValueError:
            raise ValueError(f"demo option {key}: expected {'a number' if key == 'rho' else 'an integer'}, "
                             f"got {value!r}") from None
    rho = opts.get("rho", 0.0)
    if not 0.0 <= rho <= 1.0:  # also rejects nan
        raise ValueError(f"demo option rho must be in [0, 1], got {rho}")
    for key in ("n", "n_test", "num_classes", "size"):
        if key in opts and opts[key] < (2 if key == "num_classes" else 1):
            raise ValueError(f"demo option {key} must be >= {2 if key == 'num_classes' else 1}, got {opts[key]}")
    n = opts.get("n" if split == "train" else "n_test", 2000 if split == "train" else 1000)
    check_image_size(opts.get("size", 32), n, "demo option size")  # generated in memory at once
    n_test = opts.pop("n_test", None)
    if split != "train":
        opts.pop("n", None)
        if n_test is not None:
            opts["n"] = n_test
    return DemoShapes(split=split, transform=transform, **opts)


_OPTION_PREFIX = re.compile(r"^[a-z_]+=")


def parse_path_options(arg: str, kind: str, known: tuple[str, ...], example: str) -> tuple[dict[str, str], str]:
    """``key=value[,key=value]:PATH`` -> (options, PATH); a bare ``PATH`` has no options. A first
    segment that looks like options but names an unknown one is an error, not a path."""
    head, sep, rest = arg.partition(":")
    if not sep or not _OPTION_PREFIX.match(head):
        return {}, arg
    opts: dict[str, str] = {}
    for item in filter(None, head.split(",")):
        key, eq, value = item.partition("=")
        if key not in known or not eq or not value:
            raise ValueError(f"bad {kind} option {item!r}; known: {', '.join(known) or 'none'} "
                             f"(e.g. {kind}:{example})")
        opts[key] = value
    return opts, rest


def _path_loader(cls, kind: str, example: str, options: tuple[str, ...] = ()):
    def build(arg: str, split: str, transform, **kw) -> LocatedDataset:
        opts, path = parse_path_options(arg, kind, options, f"{options[0]}=FILE:{example}" if options else example)
        if not path:
            raise ValueError(f"{kind} needs a path: {kind}:{example}")
        return cls(Path(path).expanduser(), split=split, transform=transform, **opts, **kw)
    return build


@functools.lru_cache(maxsize=4)
def _shortcut_base(inner: str, split: str, options: tuple) -> LocatedDataset:
    """The base split of a shortcut set, read once for all the splits built on it (train and val
    share the base training split; test and test_correlated its evaluation split). Read-only."""
    return build_dataset(inner, split, None, **dict(options))


def _shortcut(arg: str, split: str, transform, **kw) -> LocatedDataset:
    opts, inner = parse_shortcut_arg(arg)
    base_split = "train" if split in ("train", "val") else eval_splits(inner)[0]
    base = _shortcut_base(inner, base_split, tuple(sorted(kw.items())))
    if opts.get("scenes") and base_split != "train":  # scenes come from the training split
        opts["scene_base"] = _shortcut_base(inner, "train", tuple(sorted(kw.items())))
    return ShortcutBackgrounds(base, split, transform=transform, **opts)


DATASETS.add("demo", _demo)
# classes=FILE / exclude=FILE (one class id a line) keep a subset, e.g. a pretraining set that never
# shares a class with a benchmark: tinyimagenet:exclude=reserved_classes.txt:/data/tiny-imagenet-200
_SELECT = ("classes", "exclude")
DATASETS.add("tinyimagenet", _path_loader(TinyImageNet, "tinyimagenet", "/data/tiny-imagenet-200", _SELECT),
             "tiny-imagenet")
DATASETS.add("cub", _path_loader(CUB200, "cub", "/data/CUB_200_2011"), "cub200")
DATASETS.add("voc", _path_loader(VOCDetectionLabels, "voc", "/data/VOCdevkit/VOC2007"), "pascal-voc")
DATASETS.add("stl10", _path_loader(STL10, "stl10", "/data/stl10_binary"), "stl-10")
DATASETS.add("imagefolder", _path_loader(ImageFolder, "imagefolder", "/data/my-images", _SELECT), "folder")
DATASETS.add("in9", _path_loader(ImageNet9, "in9", "/data/bg_challenge"), "imagenet9", "bg_challenge")
DATASETS.add("shortcut", _shortcut, "waterbirds-protocol")


def parse_spec(spec: str) -> tuple[str, str]:
    kind, _, arg = spec.partition(":")
    return DATASETS.canonical(kind), arg


def build_dataset(spec: str, split: str = "train", transform=None, **kwargs) -> LocatedDataset:
    """Build a data set from its spec string (``kind`` or ``kind:argument``)."""
    kind, arg = parse_spec(spec)
    return DATASETS.get(kind)(arg, split, transform, **kwargs)


def eval_splits(spec: str) -> tuple[str, ...]:
    return EVAL_SPLITS.get(parse_spec(spec)[0], ("val",))
