"""The (negative) ELBO of :class:`ConvVAE`, per sample, as in the VAE-TracIn reference code:
(sum of squared errors of sigmoid(recon) + beta * KL(q(z|x) || N(0, I))) / pixels, averaged over
the S reparameterisation draws (the reference's ``reconstruct_num``)."""

from __future__ import annotations

import torch
from torch import Tensor


def kl_divergence(mu: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)) per sample, (B,)."""
    return -0.5 * (1 + logvar - mu.square() - logvar.exp()).sum(1)


def elbo_loss(recon: Tensor, x: Tensor, mu: Tensor, logvar: Tensor, beta: float = 1.0) -> Tensor:
    """Per-sample loss (B,) from a forward pass: ``recon`` (B, S, C, H, W) logits, ``x`` (B, C, H, W)."""
    squared = (torch.sigmoid(recon) - x[:, None]).square().flatten(2).sum(2).mean(1)
    return (squared + beta * kl_divergence(mu, logvar)) / x[0].numel()
