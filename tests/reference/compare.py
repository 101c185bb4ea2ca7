"""Helpers of the reference-port tests: gradients of a loss and how close two of them are."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def flat_grad(loss: Tensor, params: Sequence[Tensor]) -> Tensor:
    """d loss / d params as one vector (zeros for parameters the loss does not reach)."""
    grads = torch.autograd.grad(loss, list(params), retain_graph=True, allow_unused=True)
    return torch.cat([(torch.zeros_like(p) if g is None else g).flatten() for p, g in zip(params, grads)])


def cosine(a: Tensor, b: Tensor) -> float:
    return torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=0).item()


def relative_error(a: Tensor, b: Tensor) -> float:
    """max |a - b| / max |b|: the worst entry, on the scale of the reference gradient."""
    return ((a - b).abs().max() / b.abs().max()).item()
