"""The best and worst examples of an evaluation, kept while streaming.

The report's heatmap grids must show the very tensors whose scores ranked them (re-explaining or
re-attacking later, with another random stream, would show a different E). So the pass keeps, per
ranking key, the k best and k worst samples with their images and heatmaps: at most 2k rows per
side at any time, whatever the size of the data set.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

# energy gain (energy minus the object's area fraction), not raw energy: an object filling the
# image scores 1 with any heatmap
RANKINGS = ("energy_gain", "E")
SIDES = {"best": True, "worst": False}  # side -> descending


def rank(values: Tensor, ids: Tensor, descending: bool) -> Tensor:
    """Order by value, ties by ascending id, so the choice does not depend on how batches fell."""
    order = torch.argsort(ids, stable=True)
    return order[torch.argsort(values[order], descending=descending, stable=True)]


def _take(rows: Mapping[str, Tensor], index: Tensor) -> dict[str, Tensor]:
    return {k: v[index] for k, v in rows.items()}


class ExtremeExamples:
    """The ``k`` largest (best) and smallest (worst) samples by one per-sample value, with their rows."""

    def __init__(self, k: int) -> None:
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        self.k = k
        self.kept: dict[str, dict[str, Tensor]] = {}

    def update(self, values: Tensor, ids: Tensor, rows: Mapping[str, Tensor]) -> None:
        """``rows``: per-sample tensors of the batch (first dimension = sample), kept with the value."""
        new = {"value": values.detach(), "id": ids, **{k: v.detach() for k, v in rows.items()}}
        for side, descending in SIDES.items():
            pool = _take(new, rank(new["value"], new["id"], descending)[: self.k])
            if side in self.kept:
                pool = {k: torch.cat([self.kept[side][k], v]) for k, v in pool.items()}
            self.kept[side] = _take(pool, rank(pool["value"], pool["id"], descending)[: self.k])

    def tensors(self, key: str) -> dict[str, Tensor]:
        """``{"<key>/<side>/<field>": tensor}`` on the CPU (the layout of the examples file)."""
        return {f"{key}/{side}/{field}": v.cpu() for side, rows in self.kept.items() for field, v in rows.items()}
