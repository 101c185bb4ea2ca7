"""A small convolutional VAE for 32-64 px images (the role of the beta-VAE of Kong & Chaudhuri 2021).

Encoder: stride-2 4x4 convolutions, then one linear layer ``encoder.head`` to (mu, log sigma^2);
decoder: one linear layer, then transposed convolutions ending in ``decoder.out`` (the logits of
the Bernoulli-style means, squashed by a sigmoid). No BatchNorm, so per-sample gradients of the
ELBO do not depend on the rest of the batch. ``encoder.head`` and ``decoder.out`` are the "last
layers" VAE-TracIn uses by default (the reference's ``use_last_layer``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn


class Encoder(nn.Module):
    def __init__(self, channels: int, widths: Sequence[int], image_size: int, latent_dim: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = channels
        for w in widths:
            layers += [nn.Conv2d(cin, w, 4, 2, 1), nn.ReLU()]
            cin = w
        self.features = nn.Sequential(*layers)
        side = image_size // 2 ** len(widths)
        self.head = nn.Linear(cin * side * side, 2 * latent_dim)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        mu, logvar = self.head(self.features(x).flatten(1)).chunk(2, dim=1)
        return mu, logvar


class Decoder(nn.Module):
    def __init__(self, channels: int, widths: Sequence[int], image_size: int, latent_dim: int) -> None:
        super().__init__()
        self.side = image_size // 2 ** len(widths)
        rev = list(widths)[::-1]
        self.fc = nn.Linear(latent_dim, rev[0] * self.side * self.side)
        layers: list[nn.Module] = [nn.ReLU()]
        for cin, cout in zip(rev[:-1], rev[1:]):
            layers += [nn.ConvTranspose2d(cin, cout, 4, 2, 1), nn.ReLU()]
        self.features = nn.Sequential(*layers)
        self.out = nn.ConvTranspose2d(rev[-1], channels, 4, 2, 1)
        self.width = rev[0]

    def forward(self, z: Tensor) -> Tensor:
        h = self.fc(z).view(-1, self.width, self.side, self.side)
        return self.out(self.features(h))


class ConvVAE(nn.Module):
    """``forward(x, eps)`` -> (reconstruction logits (B, S, C, H, W), mu, logvar) for S noise draws
    ``eps`` (B, S, latent_dim); the noise is an input so that TracIn's gradients are reproducible."""

    def __init__(self, image_size: int = 32, channels: int = 3, latent_dim: int = 32,
                 widths: Sequence[int] = (32, 64, 128)) -> None:
        super().__init__()
        if image_size % 2 ** len(widths):
            raise ValueError(f"image_size {image_size} must be divisible by 2**{len(widths)} (one halving per width)")
        self.image_size, self.channels, self.latent_dim, self.widths = image_size, channels, latent_dim, tuple(widths)
        self.encoder = Encoder(channels, widths, image_size, latent_dim)
        self.decoder = Decoder(channels, widths, image_size, latent_dim)

    def forward(self, x: Tensor, eps: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        mu, logvar = self.encoder(x)
        if eps is None:
            eps = torch.randn(x.shape[0], 1, self.latent_dim, device=x.device, dtype=x.dtype)
        z = mu[:, None] + (0.5 * logvar[:, None]).exp() * eps  # (B, S, L)
        recon = self.decoder(z.flatten(0, 1)).unflatten(0, z.shape[:2])
        return recon, mu, logvar

    def config(self) -> dict:
        return {"image_size": self.image_size, "channels": self.channels, "latent_dim": self.latent_dim,
                "widths": list(self.widths)}


LAST_LAYERS = ("encoder.head", "decoder.out")
