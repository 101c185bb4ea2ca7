"""How well a fooling worked, as Heo, Joo, Moon (NeurIPS 2019) measure it.

* Fooling success rate (FSR): the fraction of held-out images whose per-sample test loss lies in
  the paper's range: location loss in [0, 0.2], top-k loss in [0, 0.3], centre-of-mass distance in
  [0.1, 1]. Active fooling has no threshold in the paper; we count an image as fooled when its
  fooled map for class a correlates (Spearman) more with the original map for class b than with
  the original map for class a.
* Rank correlation: Spearman's ρ between the original and the fooled map of each image (ties get
  their average rank, as scipy's ``spearmanr``), averaged over images; low = fooled.
"""

from __future__ import annotations

import torch
from torch import Tensor

# kind -> (low, high): a test loss inside [low, high] counts as fooled
FSR_RANGES: dict[str, tuple[float, float]] = {"location": (0.0, 0.2), "topk": (0.0, 0.3), "center-mass": (0.1, 1.0)}


def fooling_success(kind: str, test_loss: Tensor) -> Tensor:
    """(N,) bool: the test loss inside the kind's range (see :data:`FSR_RANGES`)."""
    if kind not in FSR_RANGES:
        raise ValueError(f"no FSR threshold for kind {kind!r}; known: {', '.join(FSR_RANGES)}")
    low, high = FSR_RANGES[kind]
    return (test_loss >= low) & (test_loss <= high)


def fooling_success_rate(kind: str, test_loss: Tensor) -> float:
    """Fraction of images counted as fooled (nan for none)."""
    if test_loss.numel() == 0:
        return float("nan")
    return fooling_success(kind, test_loss).float().mean().item()


def average_ranks(x: Tensor) -> Tensor:
    """Ranks 1..D along the last dimension of (N, D), tied values sharing their average rank."""
    n, d = x.shape
    values, order = x.sort(dim=1, stable=True)
    ranks = torch.empty_like(x, dtype=torch.float64)
    position = torch.arange(1, d + 1, device=x.device, dtype=torch.float64).expand(n, d)
    # a new group starts where the sorted value changes; average the positions of each group
    starts = torch.ones(n, d, dtype=torch.bool, device=x.device)
    starts[:, 1:] = values[:, 1:] != values[:, :-1]
    group = starts.cumsum(1) - 1
    sums = torch.zeros(n, d, dtype=torch.float64, device=x.device).scatter_add_(1, group, position)
    counts = torch.zeros(n, d, dtype=torch.float64, device=x.device).scatter_add_(1, group, torch.ones_like(position))
    mean_rank = sums.gather(1, group) / counts.gather(1, group)
    ranks.scatter_(1, order, mean_rank)
    return ranks


def spearman(a: Tensor, b: Tensor) -> Tensor:
    """Spearman's ρ between the flattened maps of each image: (N,) (nan where a map is constant)."""
    if a.shape != b.shape:
        raise ValueError(f"maps to correlate differ in shape: {tuple(a.shape)} vs {tuple(b.shape)}")
    ra, rb = average_ranks(a.detach().flatten(1)), average_ranks(b.detach().flatten(1))
    ra, rb = ra - ra.mean(1, keepdim=True), rb - rb.mean(1, keepdim=True)
    return ((ra * rb).sum(1) / (ra.pow(2).sum(1) * rb.pow(2).sum(1)).sqrt()).float()
