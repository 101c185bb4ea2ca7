from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

import consistcam.attack.pgd as pgd
from consistcam.attack import (
    background_noise,
    foreground_mask,
    mask_from_boxes,
    mask_from_heatmap,
    masked_fgsm,
    masked_pgd,
)
from tests.helpers import TinyNet, square_images, trained_tiny_net


@pytest.fixture(scope="module")
def data():
    return square_images(128, seed=7)


@pytest.mark.parametrize("norm,eps", [("linf", 8 / 255), ("l2", 0.5)])
@pytest.mark.parametrize("objective", ["ce", "explanation"])
def test_pgd_invariants(data, norm, eps, objective):
    model = trained_tiny_net()
    images, labels, masks = (t[:16] for t in data)
    g = torch.Generator().manual_seed(0)
    adv = masked_pgd(model, images, labels, masks, eps=eps, alpha=eps / 4, steps=3, norm=norm,
                     objective=objective, generator=g)
    delta = adv - images
    assert torch.equal(delta * masks, torch.zeros_like(delta))  # exactly zero on the foreground
    assert adv.min() >= 0 and adv.max() <= 1
    if norm == "linf":
        assert delta.abs().max() <= eps + 1e-6
    else:
        assert delta.flatten(1).norm(dim=1).max() <= eps + 1e-5
    if objective == "ce":
        with torch.no_grad():
            assert F.cross_entropy(model(adv), labels) > F.cross_entropy(model(images), labels)


def test_masked_pgd_beats_noise_of_same_norm(data):
    model = trained_tiny_net()
    images, labels, masks = data
    with torch.no_grad():
        clean = (model(images).argmax(1) == labels).float().mean()
    eps = 16 / 255
    adv = masked_pgd(model, images, labels, masks, eps=eps, alpha=4 / 255, steps=10,
                     generator=torch.Generator().manual_seed(0))
    noisy = background_noise(images, masks, eps, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        acc_adv = (model(adv).argmax(1) == labels).float().mean()
        acc_noise = (model(noisy).argmax(1) == labels).float().mean()
    assert clean > 0.9
    assert acc_adv < acc_noise - 0.2, (clean, acc_adv, acc_noise)
    assert (noisy - images).abs().max() <= eps + 1e-6


def test_fgsm_is_one_signed_step(data):
    model = trained_tiny_net()
    images, labels, masks = (t[:8] for t in data)
    adv = masked_fgsm(model, images, labels, masks, eps=4 / 255)
    x = images.clone().requires_grad_(True)
    grad = torch.autograd.grad(F.cross_entropy(model(x), labels, reduction="sum"), x)[0]
    expected = (images + 4 / 255 * grad.sign() * (1 - masks)).clamp(0, 1)
    assert torch.allclose(adv, expected, atol=1e-6)


def test_attack_restores_model_and_leaves_no_grads(data):
    model = trained_tiny_net().train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    images, labels, masks = (t[:8] for t in data)
    masked_pgd(model, images, labels, masks, steps=2)
    assert model.training and all(p.requires_grad and p.grad is None for p in model.parameters())
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


def test_bad_inputs_are_clear_errors(data):
    model = trained_tiny_net()
    images, labels, masks = (t[:4] for t in data)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        masked_pgd(model, images * 2, labels, masks)
    with pytest.raises(ValueError, match="unknown norm"):
        masked_pgd(model, images, labels, masks, norm="l3")
    with pytest.raises(ValueError, match="does not match"):
        masked_pgd(model, images, labels, masks[:, :, :8])


@pytest.mark.parametrize("kwargs,message", [
    ({"eps": float("nan")}, "eps must be a finite number >= 0, got nan"),  # was: an all-NaN image
    ({"eps": -0.1}, "eps must be a finite number >= 0, got -0.1"),  # was: the background moved by 0.1
    ({"alpha": float("inf")}, "alpha must be a finite number >= 0, got inf"),
    ({"alpha": -2 / 255}, "alpha must be a finite number >= 0"),
])
def test_attack_budgets_are_checked_at_the_boundary(data, kwargs, message):
    model = TinyNet().eval()  # refused before the model runs: no need to train it
    images, labels, masks = (t[:2] for t in data)
    with pytest.raises(ValueError, match=message):
        masked_pgd(model, images, labels, masks, **kwargs)
    if "eps" in kwargs:
        with pytest.raises(ValueError, match=message):
            background_noise(images, masks, eps=kwargs["eps"])


@pytest.mark.parametrize("boxes,message", [
    ([torch.tensor([[2.0, 2.0, 9.0, 9.0]])], r"boxes: 1 entries for 2 images"),  # was: a 1-image mask
    ([torch.tensor([[9.0, 2.0, 2.0, 9.0]]), torch.zeros(0, 4)], r"boxes: \[9.0, 2.0, 2.0, 9.0\] is not a box"),
    ([torch.tensor([[float("nan"), 2.0, 9.0, 9.0]]), torch.zeros(0, 4)], r"is not a box .* finite coordinates"),
    ([torch.tensor([[2.0, 2.0, 9.0]]), torch.zeros(0, 4)], r"boxes\[0\]: expected \(K, 4\) rows .* shape \(1, 3\)"),
    (torch.zeros(2, 1, 3), r"boxes must be \(N, K, 4\)"),
])
def test_foreground_mask_checks_the_boxes(boxes, message):
    with pytest.raises(ValueError, match=message):
        foreground_mask("boxes", torch.zeros(2, 3, 16, 16), boxes=boxes)


def test_valid_and_padded_boxes_still_rasterise():
    padded = torch.tensor([[[2.0, 2.0, 6.0, 6.0], [float("nan")] * 4], [[0.0, 0.0, 16.0, 16.0], [1.0, 1.0, 1.0, 1.0]]])
    mask = foreground_mask("boxes", torch.zeros(2, 3, 16, 16), boxes=padded)
    assert mask.shape == (2, 1, 16, 16) and mask[0].sum() == 16 and mask[1].sum() == 256
    assert torch.equal(foreground_mask("boxes", torch.zeros(2, 3, 16, 16), boxes=list(padded[:, :1])), mask)


def test_mask_builders():
    h = torch.arange(16.0).view(1, 1, 4, 4) / 15
    assert mask_from_heatmap(h, tau=0.5).sum() == 8
    assert mask_from_heatmap(h, top_q=0.25).sum() == 4
    assert mask_from_heatmap(h, top_q=0.25)[0, 0, 3].sum() == 4  # the largest values are the last row
    one = torch.zeros(1, 1, 5, 5)
    one[0, 0, 2, 2] = 1
    assert mask_from_heatmap(one, tau=1.0, dilation=1).sum() == 9
    # box x0=1,y0=0,x1=3,y1=2 (x1/y1 exclusive): columns 1-2 of rows 0-1
    m = mask_from_boxes([torch.tensor([[1.0, 0.0, 3.0, 2.0]]), torch.zeros(0, 4)], (4, 5))
    assert m.shape == (2, 1, 4, 5)
    assert m[0, 0].nonzero().tolist() == [[0, 1], [0, 2], [1, 1], [1, 2]]
    assert m[1].sum() == 0
    images = torch.zeros(2, 3, 4, 5)
    assert foreground_mask("none", images).sum() == 0
    with pytest.raises(ValueError, match="needs ground-truth boxes"):
        foreground_mask("boxes", images)


def _images_touching_0_and_1(images: torch.Tensor) -> torch.Tensor:
    u = torch.rand(images.shape, generator=torch.Generator().manual_seed(5))
    return torch.where(u < 0.2, 0.0, torch.where(u > 0.8, 1.0, images))


@pytest.mark.parametrize("norm,eps", [("linf", 0.3), ("l2", 3.0)])
@pytest.mark.parametrize("kind", ["pgd", "noise"])
def test_foreground_exactly_unchanged_at_the_range_limits(data, norm, eps, kind):
    model = trained_tiny_net()
    images, labels, masks = (t[:16] for t in data)
    images = _images_touching_0_and_1(images)
    g = torch.Generator().manual_seed(0)
    if kind == "pgd":
        adv = masked_pgd(model, images, labels, masks, eps=eps, alpha=eps / 2, steps=3, norm=norm, generator=g)
    else:
        adv = background_noise(images, masks, eps, norm, generator=g)
    fg = masks.expand_as(images) > 0.5
    assert torch.equal(adv[fg], images[fg])
    assert not torch.equal(adv[~fg], images[~fg])
    assert adv.min() >= 0 and adv.max() <= 1


class _CountHostSyncs(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.syncs = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.syncs += func is torch.ops.aten._local_scalar_dense.default
        return func(*args, **(kwargs or {}))


def test_range_check_is_one_host_sync_per_call(data):
    model = trained_tiny_net()
    images, labels, masks = (t[:4] for t in data)
    with _CountHostSyncs() as counter:
        masked_pgd(model, images, labels, masks, steps=3, generator=torch.Generator().manual_seed(0))
    assert counter.syncs == 1  # the [0, 1] check; none per step
    with _CountHostSyncs() as counter:
        background_noise(images, masks)
    assert counter.syncs == 1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_range_is_checked_on_gpu(data):
    model = trained_tiny_net().cuda()
    images, labels, masks = (t[:4].cuda() for t in data)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        masked_pgd(model, images * 2, labels, masks)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        background_noise(images - 0.5, masks)


def test_explanation_objective_explains_the_attacked_classes_with_the_options(data, monkeypatch):
    model = trained_tiny_net()
    images, labels, masks = (t[:4] for t in data)
    calls = []

    def spy(model, checked, targets=None, **kwargs):  # the attack's inputs travel checked, with their targets
        calls.append((checked.targets, kwargs))
        return real(model, checked, targets, **kwargs)

    real = pgd.explain
    monkeypatch.setattr(pgd, "explain", spy)
    masked_pgd(model, images, labels, masks, steps=2, objective="explanation", explainer="integrated-gradcam",
               explainer_options={"steps": 2})
    assert len(calls) == 3  # the reference maps, then one differentiable map per step
    assert all(torch.equal(t, labels) and kw["steps"] == 2 for t, kw in calls)
    assert [kw.get("differentiable", False) for _, kw in calls] == [False, True, True]
