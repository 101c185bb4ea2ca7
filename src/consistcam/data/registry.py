"""Selecting data with one string: ``demo``, ``demo:rho=0.8,n=4000``, ``tinyimagenet:PATH``, ..."""

from __future__ import annotations

from pathlib import Path

from consistcam._registry import Registry
from consistcam.data.base import LocatedDataset
from consistcam.data.demo import DemoShapes
from consistcam.data.tinyimagenet import TinyImageNet

DATASETS: Registry = Registry("data set")
EVAL_SPLITS = {"demo": ("test", "test_correlated"), "tinyimagenet": ("val",)}


def _demo(arg: str, split: str, transform, **kw) -> LocatedDataset:
    opts: dict = {}
    for item in filter(None, arg.split(",")):
        key, sep, value = item.partition("=")
        if not sep or key not in ("n", "num_classes", "size", "rho", "seed"):
            raise ValueError(f"bad demo option {item!r}; use e.g. demo:rho=0.9,n=2000,num_classes=4,size=32,seed=0")
        opts[key] = float(value) if key == "rho" else int(value)
    if split != "train":
        opts.pop("n", None)
    return DemoShapes(split=split, transform=transform, **opts)


def _tiny(arg: str, split: str, transform, **kw) -> LocatedDataset:
    if not arg:
        raise ValueError("tinyimagenet needs a path: tinyimagenet:/path/to/tiny-imagenet-200")
    return TinyImageNet(Path(arg).expanduser(), split=split, transform=transform, **kw)


DATASETS.add("demo", _demo)
DATASETS.add("tinyimagenet", _tiny, "tiny-imagenet")


def parse_spec(spec: str) -> tuple[str, str]:
    kind, _, arg = spec.partition(":")
    return DATASETS.canonical(kind), arg


def build_dataset(spec: str, split: str = "train", transform=None, **kwargs) -> LocatedDataset:
    """Build a data set from its spec string (``kind`` or ``kind:argument``)."""
    kind, arg = parse_spec(spec)
    return DATASETS.get(kind)(arg, split, transform, **kwargs)


def eval_splits(spec: str) -> tuple[str, ...]:
    return EVAL_SPLITS.get(parse_spec(spec)[0], ("val",))
