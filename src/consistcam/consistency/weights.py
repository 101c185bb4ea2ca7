"""Sample weights from explanation consistency: v = 1 - E, normalised to mean 1."""

from __future__ import annotations

import torch
from torch import Tensor


def consistency_weights(
    consistency: Tensor,
    *,
    floor: float = 0.0,
    power: float = 1.0,
    previous: Tensor | None = None,
    ema: float = 0.0,
) -> Tensor:
    """Weights for the weighted loss from per-sample consistency E in [0, 1].

    ``v = (1 - E) ** power``, normalised to mean 1 over the data set (keeps the learning-rate
    scale). ``ema`` blends with the previous round's weights (``ema * previous + (1 - ema) * v``).
    ``floor`` guarantees every sample at least that fraction of the mean weight:
    ``v = floor + (1 - floor) * v`` (the mean stays 1). If every E is 1, all weights are 1.
    """
    if not 0.0 <= floor <= 1.0:
        raise ValueError(f"weight floor must be in [0, 1], got {floor}")
    if power <= 0:
        raise ValueError(f"weight power must be > 0, got {power}")
    if not 0.0 <= ema < 1.0:
        raise ValueError(f"weight ema must be in [0, 1), got {ema}")
    v = (1 - consistency.float()).clamp_min(0) ** power
    mean = v.mean()
    v = torch.where(mean > 0, v / mean.clamp_min(1e-12), torch.ones_like(v))
    if previous is not None and ema > 0:
        if previous.shape != v.shape:
            raise ValueError(f"previous weights {tuple(previous.shape)} do not match {tuple(v.shape)}")
        v = ema * previous.to(v) + (1 - ema) * v
        v = v / v.mean()
    return floor + (1 - floor) * v
