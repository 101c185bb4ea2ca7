"""``reshape_transform``: explaining layers that emit tokens (vision transformers)."""

from __future__ import annotations

import functools
import math

import pytest
import torch
from torch import nn

from consistcam.explain import explain, list_explainers, vit_reshape_transform
from tests.explain.pgc_reference import TARGETS, assert_matches_reference


class ToTokens(nn.Module):
    """(N, C, h, w) -> (N, 1 + h·w, C): the map's pixels as tokens behind a learned class token."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.cls = nn.Parameter(torch.randn(1, 1, channels))

    def forward(self, x):
        tokens = x.flatten(2).transpose(1, 2)
        return torch.cat([self.cls.expand(len(tokens), -1, -1), tokens], 1)


class FromTokens(nn.Module):
    def forward(self, t):
        n, length, c = t.shape
        side = math.isqrt(length - 1)
        return t[:, 1:].transpose(1, 2).reshape(n, c, side, side)


class TokenNet(nn.Module):
    """A conv net whose ``to_tokens`` layer emits tokens that are exactly ``features``' map, re-gridded."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 12, 3, 2, 1), nn.ReLU())
        self.to_tokens = ToTokens(12)
        self.from_tokens = FromTokens()
        self.head = nn.Sequential(nn.Conv2d(12, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                  nn.Linear(16, classes))

    def forward(self, x):
        return self.head(self.from_tokens(self.to_tokens(self.features(x))))


@pytest.fixture
def token_net():
    torch.manual_seed(0)
    return TokenNet().eval()


@pytest.mark.parametrize("differentiable", [False, True])
@pytest.mark.parametrize("method", list_explainers())
def test_token_layer_equals_the_plain_conv_layer(token_net, method, differentiable):
    images = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    targets = torch.tensor(TARGETS)
    kw = dict(explainer=method, differentiable=differentiable, steps=3, batch_size=20)
    tokens = explain(token_net, images, targets, layer="to_tokens", reshape_transform=vit_reshape_transform, **kw)
    plain = explain(token_net, images, targets, layer="features", **kw)
    assert tokens.amax() > 0.99
    assert torch.allclose(tokens, plain, atol=1e-6), (tokens - plain).abs().max()
    assert tokens.requires_grad == differentiable


def test_reshape_transform_needs_an_explicit_layer(token_net):
    with pytest.raises(ValueError, match="reshape_transform needs layer="):
        explain(token_net, torch.rand(2, 3, 16, 16), reshape_transform=vit_reshape_transform)
    with pytest.raises(ValueError, match="pass reshape_transform="):
        explain(token_net, torch.rand(2, 3, 16, 16), layer="to_tokens")


def test_vit_reshape_transform_grids():
    tokens = torch.arange(2 * 7 * 3.0).view(2, 7, 3)  # 1 class token + a 2x3 grid
    out = vit_reshape_transform(tokens, grid=(2, 3))
    assert out.shape == (2, 3, 2, 3)
    assert torch.equal(out[1, :, 1, 2], tokens[1, 6])
    assert vit_reshape_transform(torch.rand(1, 4 + 9, 5), num_prefix_tokens=4).shape == (1, 5, 3, 3)
    with pytest.raises(ValueError, match="square grid"):
        vit_reshape_transform(tokens)
    with pytest.raises(ValueError, match="does not match"):
        vit_reshape_transform(tokens, grid=(2, 2))


def test_timm_vit_matches_pytorch_grad_cam():
    timm = pytest.importorskip("timm")
    torch.manual_seed(2)
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=10, img_size=32, patch_size=8)
    with torch.no_grad():  # timm's small init gives ~1e-4 maps, where the min-max epsilon would dominate
        vit.head.weight.mul_(100)
    transform = functools.partial(vit_reshape_transform, num_prefix_tokens=vit.num_prefix_tokens)
    assert_matches_reference(vit.eval(), torch.rand(4, 3, 32, 32), "gradcam", layer="blocks.11.norm1",
                             reshape_transform=transform)
