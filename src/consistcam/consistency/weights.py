"""Sample weights from explanation consistency: v = 1 - E, normalised to mean 1."""

from __future__ import annotations

import torch
from torch import Tensor

WEIGHT_SCHEMES = ("value", "rank")


def _mean_rank(x: Tensor) -> Tensor:
    """1-based ranks of a 1-d tensor, ties given their mean rank (on x's device, no sync)."""
    s = x.sort().values
    low = torch.searchsorted(s, x, right=False)
    high = torch.searchsorted(s, x, right=True)
    return (low + high + 1).to(x.dtype) / 2


def consistency_weights(
    consistency: Tensor,
    *,
    floor: float = 0.0,
    power: float = 1.0,
    previous: Tensor | None = None,
    ema: float = 0.0,
    scheme: str = "value",
) -> Tensor:
    """Weights for the weighted loss from per-sample consistency E in [0, 1].

    ``v = (1 - E) ** power``, normalised to mean 1 over the data set (keeps the learning-rate
    scale). ``ema`` blends with the previous round's weights (``ema * previous + (1 - ema) * v``).
    ``floor`` guarantees every sample at least that fraction of the mean weight:
    ``v = floor + (1 - floor) * v`` (the mean stays 1). If every E is 1, all weights are 1.
    ``scheme="rank"`` replaces ``1 - E`` by its rank over the data set scaled to (0, 1] (ties share
    their mean rank): the weights then depend only on the order of E, not on how tightly E bunches
    near 1, which is what made the literal weights degenerate (docs/results.md).
    """
    if scheme not in WEIGHT_SCHEMES:
        raise ValueError(f"weight scheme must be one of {', '.join(WEIGHT_SCHEMES)}, got {scheme!r}")
    if not 0.0 <= floor <= 1.0:
        raise ValueError(f"weight floor must be in [0, 1], got {floor}")
    if power <= 0:
        raise ValueError(f"weight power must be > 0, got {power}")
    if not 0.0 <= ema < 1.0:
        raise ValueError(f"weight ema must be in [0, 1), got {ema}")
    v = (1 - consistency.float()).clamp_min(0)
    if scheme == "rank":
        v = _mean_rank(v) / v.numel()
    v = v ** power
    mean = v.mean()
    v = torch.where(mean > 0, v / mean.clamp_min(1e-12), torch.ones_like(v))
    if previous is not None and ema > 0:
        if previous.shape != v.shape:
            raise ValueError(f"previous weights {tuple(previous.shape)} do not match {tuple(v.shape)}")
        v = ema * previous.to(v) + (1 - ema) * v
        v = v / v.mean()
    return floor + (1 - floor) * v
