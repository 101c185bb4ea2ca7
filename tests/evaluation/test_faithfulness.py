"""The faithfulness protocol's forward passes (consistcam.evaluation.faithfulness): the batched
insertion/deletion against the straightforward per-step implementation it replaced, hand-computed
cases, reference loops and the peers' implementations (pytorch-grad-cam, Quantus)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.transforms.v2.functional import gaussian_blur

from consistcam.evaluation import confidence_change, insertion_deletion
from consistcam.evaluation.faithfulness import resize_maps
from consistcam.metrics import pixel_ranks, top_fraction_mask
from tests.helpers import square_images, trained_tiny_net


@torch.no_grad()
def per_step_reference(model, images, heatmaps, targets, steps):
    """The implementation before issue 24: two forwards of the whole batch per step."""
    ranks = pixel_ranks(resize_maps(heatmaps, images))
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
    the model's mode restored; the confidence change is two forwards (clean and masked images)."""
    model = trained_tiny_net().train()
    images, labels, _ = square_images(5, seed=2)
    sizes = []
    handle = model.register_forward_pre_hook(lambda _m, args: sizes.append(len(args[0])))
    try:
        insertion_deletion(model, images, torch.rand(5, 1, 16, 16), labels, steps=8, max_pixels=256 * 12)
        assert sum(sizes) == 2 * 8 * 5 + 1 and max(sizes) <= 12
        assert model.training
        confidence_change(model, images, torch.rand(5, 1, 16, 16), labels, top_fraction=0.15)
    finally:
        handle.remove()
    assert sizes[-2:] == [5, 5] and sum(sizes) == 2 * 8 * 5 + 1 + 2 * 5
    assert model.training


class MeanBrightness(nn.Module):
    """p(class 0) = mean of channel 0 exactly (logits are log-probabilities), so curves are hand-computable."""

    def forward(self, x):
        f = x[:, 0].flatten(1).mean(1).clamp(1e-6, 1 - 1e-6)
        return torch.stack([f.log(), (1 - f).log()], 1)


def _half_image():
    x = torch.zeros(1, 3, 8, 8)
    x[..., :4] = 1.0  # left half bright: 32 of 64 pixels
    return x


def test_deletion_hand_computed():
    x, t = _half_image(), torch.tensor([0])
    good = insertion_deletion(MeanBrightness(), x, x[:, :1], t, steps=4, return_curves=True)
    # 16 pixels per step: the bright ones go first -> p = .5, .25, 0, 0, 0
    assert good["deletion_curve"][0].tolist() == pytest.approx([0.5, 0.25, 0, 0, 0], abs=1e-6)
    assert good["deletion"].item() == pytest.approx((0.75 + 0.25) / 8, abs=1e-6)
    bad = insertion_deletion(MeanBrightness(), x, 1 - x[:, :1], t, steps=4)
    assert bad["deletion"].item() == pytest.approx((1 + 1 + 0.75 + 0.25) / 8, abs=1e-6)


def test_insertion_matches_reference_loop():
    torch.manual_seed(0)
    model = trained_tiny_net()
    images, labels, _ = square_images(3, seed=4)
    heat = torch.rand(3, 1, 4, 4)  # coarse map, upsampled inside
    steps = 8
    got = insertion_deletion(model, images, heat, labels, steps=steps, return_curves=True)
    up = F.interpolate(heat, size=(16, 16), mode="bilinear", align_corners=False)
    blurred = gaussian_blur(images, [11, 11], [5.0, 5.0])
    for i in range(3):
        order = torch.argsort(up[i].flatten(), descending=True, stable=True)
        ins, dele = [], []
        for k in range(steps + 1):
            m = torch.zeros(256)
            m[order[: round(k * 256 / steps)]] = 1
            m = m.view(1, 1, 16, 16)
            with torch.no_grad():
                ins.append(model(blurred[i:i + 1] * (1 - m) + images[i:i + 1] * m).softmax(1)[0, labels[i]])
                dele.append(model(images[i:i + 1] * (1 - m)).softmax(1)[0, labels[i]])
        assert torch.allclose(got["insertion_curve"][i], torch.stack(ins), atol=1e-5)
        assert torch.allclose(got["deletion_curve"][i], torch.stack(dele), atol=1e-5)
        assert got["insertion"][i].item() == pytest.approx(torch.trapezoid(torch.stack(ins), dx=1 / steps).item(),
                                                           abs=1e-5)


def test_confidence_change_hand_computed_and_top_fraction():
    x, t = torch.ones(2, 3, 4, 4), torch.tensor([0, 0])
    h = torch.stack([torch.full((1, 4, 4), 0.5), torch.ones(1, 4, 4)])
    out = confidence_change(MeanBrightness(), x, h, t)
    assert out["average_drop"].tolist() == pytest.approx([0.5, 0.0], abs=1e-5)  # o = 1, p = .5 and 1
    assert out["increase_in_confidence"].tolist() == [0.0, 0.0]
    mask = top_fraction_mask(torch.arange(16.0).view(1, 1, 4, 4), 0.25)
    assert mask.flatten().tolist() == [0.0] * 12 + [1.0] * 4
    top = confidence_change(MeanBrightness(), x[:1], torch.arange(16.0).view(1, 1, 4, 4), t[:1], top_fraction=0.25)
    assert top["average_drop"].item() == pytest.approx(0.75, abs=1e-5)


def test_average_drop_matches_pytorch_grad_cam():
    """pytorch-grad-cam's DropInConfidence is the absolute drop max(0, o - p); ours is relative to o."""
    from pytorch_grad_cam.metrics.cam_mult_image import DropInConfidence, IncreaseInConfidence
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget

    model = trained_tiny_net()
    images, labels, _ = square_images(6, seed=5)
    heat = torch.rand(6, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    targets = [ClassifierOutputSoftmaxTarget(int(c)) for c in labels]
    theirs_drop = DropInConfidence()(images, heat[:, 0].numpy(), targets, model)
    theirs_inc = IncreaseInConfidence()(images, heat[:, 0].numpy(), targets, model)
    ours = confidence_change(model, images, heat, labels)
    with torch.no_grad():
        o = model(images).softmax(1).gather(1, labels[:, None]).squeeze(1)
    assert torch.allclose(ours["average_drop"] * o, torch.from_numpy(theirs_drop).flatten(), atol=1e-6)
    assert ours["increase_in_confidence"].tolist() == torch.from_numpy(theirs_inc).flatten().tolist()


def test_deletion_curve_matches_quantus_pixel_flipping():
    quantus = pytest.importorskip("quantus")
    model = trained_tiny_net()
    images, labels, _ = square_images(4, size=12, seed=6)
    heat = torch.rand(4, 1, 12, 12, generator=torch.Generator().manual_seed(2))  # distinct values: no ties
    ours = insertion_deletion(model, images, heat, labels, steps=9, return_curves=True)["deletion_curve"]
    # Quantus ranks the map broadcast over channels: 16 pixels x 3 channels per step = 144 / 9 pixels
    metric = quantus.PixelFlipping(features_in_step=3 * 16, perturb_baseline=0.0, disable_warnings=True,
                                   display_progressbar=False)
    theirs = metric(model=model, x_batch=images.numpy(), y_batch=labels.numpy(), a_batch=heat.numpy(),
                    device="cpu", softmax=True)
    # Quantus records the curve after each step; ours also has the unperturbed start
    assert torch.allclose(ours[:, 1:], torch.tensor(theirs, dtype=torch.float32), atol=1e-5)
