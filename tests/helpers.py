"""Tiny trained models and data shared by tests (seconds to build, deterministic)."""

from __future__ import annotations

import functools

import torch
from torch import nn


def square_images(n: int, size: int = 16, seed: int = 0):
    """Two classes: a reddish (0) or greenish (1) low-contrast 6x6 square on a random grey-noise background.
    Returns images in [0, 1], labels, and the square's pixel mask."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 2, (n,), generator=g)
    images = 0.3 + 0.4 * torch.rand(n, 3, size, size, generator=g)
    masks = torch.zeros(n, 1, size, size)
    pos = torch.randint(0, size - 6, (n, 2), generator=g)
    for i in range(n):
        y, x = pos[i].tolist()
        colour = torch.tensor([0.6, 0.45, 0.5]) if labels[i] == 0 else torch.tensor([0.45, 0.6, 0.5])
        images[i, :, y : y + 6, x : x + 6] = colour[:, None, None]
        masks[i, :, y : y + 6, x : x + 6] = 1
    return images, labels, masks


class TinyNet(nn.Module):
    def __init__(self, classes: int = 2) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(inplace=True),
            nn.Conv2d(16, 32, 3, padding=1, stride=2), nn.BatchNorm2d(32), nn.ReLU(inplace=True),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(32, classes)

    def forward(self, x):
        return self.fc(self.pool(self.features(x)).flatten(1))


@functools.lru_cache(maxsize=1)
def _trained_state():
    torch.manual_seed(0)
    model = TinyNet()
    images, labels, _ = square_images(512, seed=1)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(120):
        idx = torch.randint(0, 512, (64,))
        loss = nn.functional.cross_entropy(model(images[idx]), labels[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return {k: v.clone() for k, v in model.state_dict().items()}


def trained_tiny_net() -> TinyNet:
    model = TinyNet()
    model.load_state_dict(_trained_state())
    return model.eval()
