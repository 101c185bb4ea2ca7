"""Sample ids for any map-style data set: what ECL needs to match scores to training samples."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch.utils.data import Dataset


class WithIds(Dataset):
    """``dataset`` with each sample's index as its id: an ``(image, label)`` pair becomes
    ``(image, label, id)`` and a dict sample gains ``"id"``, so a DataLoader over it (default
    collate) yields the batches :class:`consistcam.ECL` scores and weights by. The index is the id
    because it is what the training and the un-augmented scoring views of one data set share."""

    def __init__(self, dataset: Dataset) -> None:
        if not hasattr(dataset, "__getitem__") or not hasattr(dataset, "__len__"):
            raise TypeError(f"WithIds: dataset must be map-style (__getitem__ and __len__), got "
                            f"{type(dataset).__name__}")
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Any:
        sample = self.dataset[index]
        if isinstance(sample, Mapping):
            return {**sample, "id": index}
        if isinstance(sample, (tuple, list)) and len(sample) == 2:
            return (*sample, index)
        raise TypeError(f"WithIds: sample {index} of {type(self.dataset).__name__} is a {type(sample).__name__}; "
                        "expected an (image, label) pair or a dict")
