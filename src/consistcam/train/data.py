"""The data of a training run, built once: one parse and one decode of every image.

The training split is read a single time; the augmented training view and the plain scoring view
(consistency passes, methods that need un-augmented images) are views of that one data set.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset, Sampler, Subset

from consistcam.config import ConfigError
from consistcam.data import (
    DataError,
    LocatedDataset,
    build_dataset,
    build_transform,
    check_same_classes,
    collate,
    eval_splits,
)
from consistcam.run.layout import SKIPPED_FILE
from consistcam.train.preload import PreloadedImages, PreloadedLoader, decode_transform, preload_problem


class GlobalBatchSampler(Sampler[list[int]]):
    """This rank's share of every global batch: one permutation of the data set per epoch (drawn
    from ``seed`` exactly as a shuffling DataLoader with that generator draws it, so one process
    sees the batches it always saw), cut into global batches of ``batch_size``, each split
    ``rank::world_size``. Any world size sees the same global batches; a last batch shorter than
    the world is padded from the start of the permutation (as DistributedSampler pads).

    With ``weights`` (one non-negative number per position, on the CPU) an epoch is instead ``n``
    positions drawn with replacement in proportion to them, as ``WeightedRandomSampler(weights, n)``
    draws them: the group-balanced sampling of Sagawa et al.'s ``--reweight_groups``."""

    def __init__(self, n: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1,
                 weights: torch.Tensor | None = None) -> None:
        if batch_size < world_size:
            raise ValueError(f"batch_size {batch_size} is smaller than the {world_size} processes")
        if weights is not None and (weights.shape != (n,) or not bool((weights >= 0).all()) or weights.sum() <= 0):
            raise ValueError(f"sampling weights must be {n} non-negative numbers with a positive sum, "
                             f"got shape {tuple(weights.shape)}")
        self.n, self.batch_size, self.seed, self.rank, self.world_size = n, batch_size, seed, rank, world_size
        self.weights = None if weights is None else weights.double()

    def _permutation(self) -> list[int]:
        g = torch.Generator().manual_seed(self.seed)
        torch.empty((), dtype=torch.int64).random_(generator=g)  # the DataLoader's base-seed draw comes first
        if self.weights is not None:
            return torch.multinomial(self.weights, self.n, replacement=True, generator=g).tolist()
        return torch.randperm(self.n, generator=g).tolist()

    def __iter__(self):
        perm = self._permutation()
        for start in range(0, self.n, self.batch_size):
            batch = perm[start:start + self.batch_size]
            if len(batch) % self.world_size:
                batch = batch + perm[: self.world_size - len(batch) % self.world_size]
            yield batch[self.rank::self.world_size]

    def __len__(self) -> int:
        return (self.n + self.batch_size - 1) // self.batch_size


def _mix(seed: int, sample_id: int) -> int:
    """A 63-bit seed from (epoch seed, sample id): neighbouring ids get unrelated streams."""
    return (seed * 0x9E3779B97F4A7C15 + (sample_id + 1) * 0xBF58476D1CE4E5B9) % (1 << 63)


class PerSampleSeed:
    """Apply ``transform`` with the random stream of (``seed``, the sample's id): the augmentation of
    a sample depends on the epoch seed and its id only, not on which worker process loads it or in
    what order, so ``workers`` never changes a result. The caller's random state is left untouched."""

    def __init__(self, transform, seed: int) -> None:
        self.transform, self.seed = transform, seed

    def __call__(self, sample: dict) -> dict:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(_mix(self.seed, int(sample["id"])))
            return self.transform(sample)


@dataclass
class TrainData:
    """Training set (un-transformed base), its eval splits, and the two transforms."""

    train: LocatedDataset
    eval_sets: dict[str, LocatedDataset]
    train_transform: object
    eval_transform: object
    subset: int | None = None
    workers: int = 0
    pin_memory: bool = False
    augment: str | None = None  # the name train_transform was built from (None: a custom transform)
    image_size: int | None = None
    indices: list[int] = field(init=False)
    preloaded: PreloadedImages | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        n = len(self.train)
        if n == 0:
            raise ValueError("the training set is empty")
        self.indices = list(range(min(self.subset, n))) if self.subset else list(range(n))

    @classmethod
    def from_spec(cls, spec: str, image_size: int | None = None, augment: str = "flip", *, subset: int | None = None,
                  skip_bad: bool = False, workers: int = 0, pin_memory: bool = False) -> TrainData:
        kw = {"skip_bad": True} if skip_bad else {}
        eval_tf = build_transform(image_size, "none")
        train = build_dataset(spec, "train", None, **kw)
        eval_sets = {split: build_dataset(spec, split, eval_tf, **kw) for split in eval_splits(spec)}
        for split, ds in eval_sets.items():
            check_same_classes(train.classes, ds.classes, f"{spec} split 'train'", f"split {split!r}")
        return cls(train, eval_sets, build_transform(image_size, augment), eval_tf, subset, workers, pin_memory,
                   augment, image_size)

    def preload(self, mode: str, device: torch.device, needs_locations: bool = False) -> str | None:
        """Decode the training images once onto ``device`` (``mode`` on/auto) and train from there;
        returns why not (``auto`` falls back to the DataLoader path; ``on`` makes that an error)."""
        if mode == "off":
            return "preload is off"
        view = self.train.view(decode_transform(self.image_size), keep_locations=False)
        view = Subset(view, self.indices) if len(self.indices) < len(self.train) else view
        side = max(view[0]["image"].shape[-2:])
        problem = preload_problem(self.augment, self.image_size, needs_locations, len(self.indices), device, side)
        if problem is None:
            try:
                self.preloaded = PreloadedImages(view, self.augment, device, self.workers)
            except DataError as err:  # images of several sizes without image_size
                problem = str(err)
        if problem is not None and mode == "on":
            raise ConfigError(f"preload=on: {problem}; use preload=auto or off")
        return problem

    @property
    def classes(self) -> list[str]:
        return self.train.classes

    @property
    def num_samples(self) -> int:
        return len(self.train)

    @property
    def multilabel(self) -> bool:
        return self.train.multilabel

    def _view(self, transform, keep_locations: bool) -> Dataset:
        view = self.train.view(transform, keep_locations)
        return Subset(view, self.indices) if len(self.indices) < len(self.train) else view

    def loader(self, dataset: Dataset, batch_size: int, shuffle: bool = False, seed: int | None = None,
               sampler=None) -> DataLoader:
        g = torch.Generator().manual_seed(seed) if seed is not None else None
        return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle and sampler is None, sampler=sampler,
                          collate_fn=collate, generator=g, num_workers=self.workers, pin_memory=self.pin_memory)

    def train_loader(self, batch_size: int, seed: int, keep_locations: bool = False, rank: int = 0,
                     world_size: int = 1, weights: torch.Tensor | None = None) -> DataLoader:
        """Augmented, shuffled by ``seed``; boxes/masks dropped unless asked for (they cost ~3x).
        ``batch_size`` is the global batch; under DDP each rank loads its share of it. ``weights``
        (one per sample id, see :meth:`Method.sampling_weights`) draws the epoch with replacement
        in proportion to them instead of shuffling."""
        if weights is not None:
            if weights.shape != (self.num_samples,):
                raise ValueError(f"sampling weights: expected one per training sample ({self.num_samples}), "
                                 f"got shape {tuple(weights.shape)}")
            weights = weights.detach().cpu()[torch.tensor(self.indices)]  # by id -> by position
        if self.preloaded is not None and not keep_locations:
            sampler = GlobalBatchSampler(len(self.preloaded), batch_size, seed, rank, world_size, weights)
            return PreloadedLoader(self.preloaded, sampler, seed)
        view = self._view(PerSampleSeed(self.train_transform, seed), keep_locations)
        if world_size == 1 and weights is None:
            return self.loader(view, batch_size, shuffle=True, seed=seed)
        sampler = GlobalBatchSampler(len(view), batch_size, seed, rank, world_size, weights)
        return DataLoader(view, batch_sampler=sampler, collate_fn=collate, num_workers=self.workers,
                          pin_memory=self.pin_memory)

    def scoring_loader(self, batch_size: int, keep_locations: bool = False, rank: int = 0,
                       world_size: int = 1, ids: list[int] | None = None) -> DataLoader:
        """The training images without augmentation, in id order (under DDP: this rank's shard);
        only the samples ``ids`` (sorted sample ids) if given."""
        if ids is None:
            view = self._view(self.eval_transform, keep_locations)
        else:
            view = Subset(self.train.view(self.eval_transform, keep_locations), list(ids))
        return self.loader(shard(view, rank, world_size), batch_size)

    def eval_loader(self, split: str, batch_size: int, rank: int = 0, world_size: int = 1) -> DataLoader:
        return self.loader(shard(self.eval_sets[split], rank, world_size), batch_size)


    def record_skipped(self, run_dir: Path) -> None:
        """List every file skipped under ``skip_bad`` in RUN/skipped.txt (split, file, reason)."""
        rows = [(split, kind, where, why) for split, ds in (("train", self.train), *self.eval_sets.items())
                for kind, (where, why) in zip(ds.skipped.kinds, ds.skipped.items)]
        if rows:
            counts: dict[str, int] = {}
            for _, kind, _, _ in rows:
                counts[kind] = counts.get(kind, 0) + 1
            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / SKIPPED_FILE).write_text("".join("\t".join(row) + "\n" for row in rows))
            summary = ", ".join(f"{n} {kind}" + ("s" if n > 1 else "") for kind, n in sorted(counts.items()))
            print(f"warning: skipped {len(rows)} bad entries ({summary}); listed in {run_dir / SKIPPED_FILE}",
                  file=sys.stderr)


def shard(dataset: Dataset, rank: int, world_size: int) -> Dataset:
    """A contiguous 1/world_size slice (sharded passes are gathered or reduced afterwards)."""
    if world_size == 1:
        return dataset
    n = len(dataset)
    lo, hi = n * rank // world_size, n * (rank + 1) // world_size
    return Subset(dataset, range(lo, hi))
