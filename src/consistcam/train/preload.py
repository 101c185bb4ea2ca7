"""The training split in memory: decoded once into one uint8 tensor on the training device, and
augmented there, a whole batch at a time.

Why: a per-sample ``DataLoader`` pipeline (decode, composite, v2 transforms, collate, host-to-device
copy) caps a GPU at about 1,000 images/s on small images; with the images already on the device a
batch is one gather. The augmentations are the ones :func:`consistcam.data.build_transform` builds
for ``flip`` and ``crop_flip`` (zero-padded random crop of ``pad`` pixels, then a horizontal flip,
then uint8 -> float in [0, 1]), with the same distribution: the crop offset is uniform over
``0 .. 2 * pad`` on each axis and the flip has probability 1/2. Every random draw is a function of
(epoch seed, sample id) only, so neither the batch size of the loader nor the number of processes
changes the augmentation of a sample. ``rrc_flip`` and methods that need boxes or masks use the
DataLoader path.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from consistcam.data import collate

PRELOAD_AUGMENTATIONS = {"none": 0, "flip": 0, "crop_flip": 4}  # augmentation -> zero padding of the crop
MAX_PRELOAD_BYTES = 8 << 30  # never more than this, whatever the device has free
PRELOAD_FRACTION = 0.25  # of the device's (or host's) free memory


def free_memory(device: torch.device) -> int:
    """Bytes free on ``device`` (CUDA: the driver's figure; CPU: the host's available memory)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


def preload_problem(augment: str | None, image_size: int | None, needs_locations: bool, num_images: int,
                    device: torch.device, sample_side: int = 0) -> str | None:
    """Why the training split cannot be preloaded (None when it can); ``sample_side``: the larger
    side of one image, for the memory estimate when ``image_size`` is not set."""
    if augment not in PRELOAD_AUGMENTATIONS:
        return f"augment={augment!r} is not done on the device (only {', '.join(PRELOAD_AUGMENTATIONS)})"
    if needs_locations:
        return "the method reads boxes or masks, which the in-memory path does not carry"
    side = (image_size or sample_side) + 2 * PRELOAD_AUGMENTATIONS[augment]
    need = num_images * 3 * side * side
    budget = min(MAX_PRELOAD_BYTES, int(PRELOAD_FRACTION * free_memory(device)))
    if need > budget:
        return f"the images need {need / 2**20:.0f} MiB, more than the {budget / 2**20:.0f} MiB allowed on {device}"
    return None


def epoch_draws(num_samples: int, pad: int, seed: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """Crop offsets (N, 2) in 0..2*pad and flips (N,) of every sample id for one epoch seed."""
    g = torch.Generator().manual_seed(seed)
    offsets = torch.randint(0, 2 * pad + 1, (num_samples, 2), generator=g)
    flips = torch.rand(num_samples, generator=g) < 0.5
    return offsets.to(device), flips.to(device)


def crop_flip(images: Tensor, offsets: Tensor, flips: Tensor, height: int, width: int) -> Tensor:
    """``height`` x ``width`` windows of padded uint8 ``images`` (B, C, H+2p, W+2p) at ``offsets``
    (B, 2) = (top, left), mirrored where ``flips``: one gather for the whole batch."""
    rows = offsets[:, 0, None] + torch.arange(height, device=images.device)  # (B, H)
    ar = torch.arange(width, device=images.device)
    cols = torch.where(flips[:, None], offsets[:, 1, None] + (width - 1 - ar), offsets[:, 1, None] + ar)
    b = torch.arange(len(images), device=images.device)[:, None, None]
    return images[b, :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)  # (B, H, W, C) -> (B, C, H, W)


def decode_transform(image_size: int | None) -> v2.Transform:
    """Resize + CenterCrop on uint8, as :func:`consistcam.data.build_transform` does before its
    random ops and ToDtype: the preloaded pixels are the ones the DataLoader path augments."""
    if image_size is None:
        return v2.Identity()
    return v2.Compose([v2.Resize(image_size, antialias=True), v2.CenterCrop(image_size)])


class PreloadedImages:
    """Every training image (uint8, resized and centre-cropped as the eval transform does, zero-padded
    for the crop) with its label, id and group, on ``device``."""

    def __init__(self, dataset: Dataset, augment: str, device: torch.device, workers: int = 0,
                 batch_size: int = 256) -> None:
        """``dataset``: samples transformed by :func:`decode_transform` (uint8, one size; collate
        names the first image of another size)."""
        self.augment, self.device = augment, device
        self.pad = PRELOAD_AUGMENTATIONS[augment]
        images, labels, ids, groups = [], [], [], []
        for batch in DataLoader(dataset, batch_size=batch_size, collate_fn=collate, num_workers=workers):
            images.append(batch["image"])
            labels.append(batch["label"])
            ids.append(batch["id"])
            if "group" in batch:
                groups.append(batch["group"])
        images = torch.cat(images)
        self.height, self.width = images.shape[-2:]
        if self.pad:
            images = torch.nn.functional.pad(images, (self.pad,) * 4)  # v2.RandomCrop's constant 0 padding
        self.images = images.to(device)
        self.labels, self.ids = torch.cat(labels).to(device), torch.cat(ids).to(device)
        self.groups = torch.cat(groups).to(device) if groups else None
        self.num_ids = int(self.ids.max()) + 1 if len(self.ids) else 0

    def __len__(self) -> int:
        return len(self.ids)

    def batch(self, positions: Tensor, offsets: Tensor, flips: Tensor) -> dict:
        """The augmented batch of the rows ``positions`` (draws indexed by sample id)."""
        ids = self.ids[positions]
        images = self.images[positions]
        if self.augment == "none":
            out = images
        else:
            out = crop_flip(images, offsets[ids], flips[ids], self.height, self.width)
        # the same uint8 -> float conversion as the DataLoader path's v2.ToDtype(scale=True), bit for bit
        image = v2.functional.to_dtype(out, torch.float32, scale=True)
        batch = {"image": image, "label": self.labels[positions], "id": ids}
        if self.groups is not None:
            batch["group"] = self.groups[positions]
        return batch


class PreloadedLoader:
    """One epoch of batches of :class:`PreloadedImages`, in the order ``batch_sampler`` gives
    (positions); the augmentation draws come from ``seed``."""

    def __init__(self, data: PreloadedImages, batch_sampler, seed: int) -> None:
        self.data, self.batch_sampler, self.seed = data, batch_sampler, seed

    def __len__(self) -> int:
        return len(self.batch_sampler)

    def __iter__(self) -> Iterator[dict]:
        offsets, flips = epoch_draws(self.data.num_ids, self.data.pad, self.seed, self.data.device)
        batches = list(self.batch_sampler)  # the epoch's order goes to the device in one copy, not one per batch
        flat = torch.tensor([p for batch in batches for p in batch], dtype=torch.long, device=self.data.device)
        for positions in flat.split([len(batch) for batch in batches]):
            yield self.data.batch(positions, offsets, flips)
