from __future__ import annotations

import pytest
import torch
from torchvision.transforms import RandomResizedCrop

from consistcam.data.geometry import apply_crop_flip
from consistcam.train.methods.crops import resized_crop_flip
from tests.reference.compare import pixel_boxes, ref_resized_crop_flip


def _summary(area: torch.Tensor, aspect: torch.Tensor, full: torch.Tensor) -> dict[str, float]:
    q = torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)
    out = {"mean_area": area.mean().item(), "full": full.double().mean().item()}
    out.update({f"area_q{int(p * 100)}": v for p, v in zip(q.tolist(), area.quantile(q).tolist())})
    out.update({f"log_aspect_q{int(p * 100)}": v for p, v in zip(q.tolist(), aspect.log().quantile(q).tolist())})
    return out


@pytest.mark.parametrize(("size", "scale"), [((64, 64), (0.08, 1.0)), ((48, 80), (0.2, 1.0))])
def test_sampled_boxes_have_the_distribution_of_torchvision_random_resized_crop(size, scale):
    """Many seeded draws of torchvision's ``get_params`` and of ours: the same area and aspect quantiles,
    the same share of full-width / full-height crops (which clamping inflates 14-fold) and of fallbacks."""
    n, (height, width) = 20000, size
    torch.manual_seed(0)
    image = torch.zeros(1, height, width)
    ref = torch.tensor([RandomResizedCrop.get_params(image, scale, (3 / 4, 4 / 3)) for _ in range(n)],
                       dtype=torch.float64)
    i, j, h, w = ref.unbind(1)
    expected = _summary(h * w / (height * width), w / h,
                        (w == width) | (h == height))
    boxes = resized_crop_flip(n, size, scale, generator=torch.Generator().manual_seed(1)).double()
    bw, bh = (boxes[:, 2] - boxes[:, 0]) * width, (boxes[:, 3] - boxes[:, 1]) * height
    assert torch.allclose(bw, bw.round(), atol=1e-3) and torch.allclose(bh, bh.round(), atol=1e-3)  # whole pixels
    assert (boxes[:, :4] >= 0).all() and (boxes[:, 2] <= 1 + 1e-6).all() and (boxes[:, 3] <= 1 + 1e-6).all()
    got = _summary(bw * bh / (height * width), bw / bh, (bw.round() == width) | (bh.round() == height))
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, abs=0.015), key  # ~3 standard errors of 20k draws
    # offsets uniform over the free room: the mean left edge as torchvision's
    assert (boxes[:, 0] * width).mean().item() == pytest.approx(j.mean().item(), abs=0.3)
    assert boxes[:, 4].mean().item() == pytest.approx(0.5, abs=0.015)  # flip_p 0.5


def test_fallback_is_the_centred_box_and_flip_flags_follow_flip_p():
    # every try rejected: scale (1, 1) with an aspect range that excludes 1 cannot fit a 10x10 image
    boxes = resized_crop_flip(5, (10, 10), (1.0, 1.0), ratio=(2.0, 3.0), flip_p=0.0)
    # torchvision's fallback for in_ratio 1 < min(ratio) 2: w = 10, h = round(10 / 2) = 5, centred
    assert torch.allclose(boxes, torch.tensor([[0.0, 0.2, 1.0, 0.7, 0.0]]).expand(5, 5))
    assert torch.equal(resized_crop_flip(5, (10, 10), flip_p=1.0)[:, 4], torch.ones(5))
    # a whole-pixel box replays exactly: cropping a ramp to columns 2..6 and resizing keeps the ramp's ends
    ramp = torch.arange(10.0).expand(1, 1, 10, 10)
    crop = apply_crop_flip(ramp, torch.tensor([[0.2, 0.0, 0.6, 1.0, 0.0]]), mode="nearest")
    assert crop[0, 0, 0, 0].item() == 2.0 and crop[0, 0, 0, -1].item() == 5.0
    with pytest.raises(ValueError, match="size must be positive"):
        resized_crop_flip(2, (0, 10))


def test_clamped_edges_equal_slicing_and_resizing_each_image():
    """CGC's and ExCon's authors make their views with torchvision's resized_crop: slice the box, resize it.
    ``edges="clamp"`` gives the same for the whole batch; ``"blend"`` mixes in the pixels around the box."""
    g = torch.Generator().manual_seed(0)
    images = torch.rand(16, 3, 24, 20, generator=g)
    boxes = resized_crop_flip(16, (24, 20), generator=g)
    sliced = ref_resized_crop_flip(images, *pixel_boxes(boxes, (24, 20)))
    assert torch.allclose(apply_crop_flip(images, boxes, edges="clamp"), sliced, atol=1e-5)
    assert (apply_crop_flip(images, boxes) - sliced).abs().max() > 0.1
    with pytest.raises(ValueError, match="edges must be 'blend' or 'clamp', got 'cut'"):
        apply_crop_flip(images, boxes, edges="cut")
