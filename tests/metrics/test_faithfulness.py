"""The batched insertion/deletion against the straightforward per-step implementation it replaced."""

from __future__ import annotations

import pytest
import torch
from torchvision.transforms.v2.functional import gaussian_blur

from consistcam.metrics import insertion_deletion
from consistcam.metrics.faithfulness import _resize, pixel_ranks
from tests.helpers import square_images, trained_tiny_net


@torch.no_grad()
def per_step_reference(model, images, heatmaps, targets, steps):
    """The implementation before issue 24: two forwards of the whole batch per step."""
    ranks = pixel_ranks(_resize(heatmaps, images))
    counts = torch.linspace(0, ranks[0].numel(), steps + 1).round().long()
    blurred = gaussian_blur(images, [11, 11], [5.0, 5.0])
    ins, dele = [], []
    for count in counts:
        taken = (ranks < count).to(images.dtype)
        dele.append(model(images * (1 - taken)).softmax(1).gather(1, targets[:, None]).squeeze(1))
        ins.append(model(blurred * (1 - taken) + images * taken).softmax(1).gather(1, targets[:, None]).squeeze(1))
    return torch.stack(ins, 1), torch.stack(dele, 1)


@pytest.mark.parametrize("steps,max_pixels", [(16, None), (5, 256 * 3), (1, None), (300, 256 * 40)])
def test_batched_curves_equal_the_per_step_reference(steps, max_pixels):
    """Any chunking (one forward per image at 256 * 3 pixels; steps > pixels repeats counts)."""
    model = trained_tiny_net()
    images, labels, _ = square_images(6, seed=11)
    heat = torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    got = insertion_deletion(model, images, heat, labels, steps=steps, return_curves=True, max_pixels=max_pixels)
    ins, dele = per_step_reference(model, images, heat, labels, steps)
    assert got["insertion_curve"].shape == (6, steps + 1)
    assert torch.allclose(got["insertion_curve"], ins, atol=1e-6)
    assert torch.allclose(got["deletion_curve"], dele, atol=1e-6)
    assert torch.allclose(got["insertion"], torch.trapezoid(ins, dx=1 / steps), atol=1e-6)
    assert torch.allclose(got["deletion"], torch.trapezoid(dele, dx=1 / steps), atol=1e-6)


def test_forward_count_and_size_are_bounded():
    """2 * steps * B + 1 images in all (the curves' ends shared), no forward above the budget, and
    the model's mode restored."""
    model = trained_tiny_net().train()
    images, labels, _ = square_images(5, seed=2)
    sizes = []
    handle = model.register_forward_pre_hook(lambda _m, args: sizes.append(len(args[0])))
    try:
        insertion_deletion(model, images, torch.rand(5, 1, 16, 16), labels, steps=8, max_pixels=256 * 12)
    finally:
        handle.remove()
    assert sum(sizes) == 2 * 8 * 5 + 1 and max(sizes) <= 12
    assert model.training
