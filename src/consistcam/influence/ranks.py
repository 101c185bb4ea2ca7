"""Rank statistics of the TracIn sanity checks (scripts/influence_checks.py and scripts/vae_checks.py)."""

from __future__ import annotations

from torch import Tensor


def spearman(a: Tensor, b: Tensor) -> float:
    """Spearman rank correlation (no ties expected for continuous scores)."""
    ra = a.double().argsort().argsort().double()
    rb = b.double().argsort().argsort().double()
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return float((ra * rb).sum() / (ra.norm() * rb.norm()))


def auc(scores: Tensor, positive: Tensor) -> float:
    """Area under the ROC curve of ``scores`` for the boolean ``positive`` (Mann-Whitney U)."""
    ranks = scores.double().argsort().argsort().double() + 1
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))
