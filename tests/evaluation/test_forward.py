"""The forward copy the faithfulness and background protocols run on."""

from __future__ import annotations

import torch
from torch import nn

from consistcam.evaluation.forward import ChannelsLastInput, forward_model
from tests.helpers import square_images, trained_tiny_net


class ViewsItsMaps(nn.Module):
    """``view``s its feature map as flat: fine on contiguous maps, an error on channels-last ones."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 16 * 16, 2)

    def forward(self, x):
        return self.fc(self.conv(x).view(len(x), -1))


def test_forward_copy_is_folded_and_equal_up_to_rounding():
    model = trained_tiny_net()
    images, _, _ = square_images(8, seed=1)
    fast = forward_model(model, images)
    assert isinstance(fast, ChannelsLastInput) and fast is not model
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fast.modules())
    with torch.no_grad():
        assert torch.allclose(fast(images).softmax(1), model(images).softmax(1), atol=1e-5)
    assert all(p.requires_grad for p in model.parameters())  # the model itself is not touched


def test_a_model_the_layout_breaks_is_run_as_it_is():
    model = ViewsItsMaps().eval()
    images = torch.rand(2, 3, 16, 16)
    assert forward_model(model, images) is model
