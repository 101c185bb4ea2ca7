"""SGT against a port of its authors' training step.

Origin: ayaabdelsalam91/saliency_guided_training at commit 925ad6f (``Scripts/interpretable.py::train``,
its RGB branch, and ``Scripts/Helper.py::get_SingleMask`` / ``fill_SingleMask`` with ``randomMask``).
The repository carries no licence file; the port below restates those few steps for this test only
(CPU, numpy's ``uniform(low, high)`` written as low + (high - low) * u with the draws u passed in, so
both sides can share them). The reference works on *normalised* inputs (its data loader normalises);
our models normalise inside, so the port runs the inner network on (x - mean) / std.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from consistcam.models import create
from consistcam.train.methods import MethodContext, build_method
from consistcam.train.task import Task
from tests.reference.compare import cosine, flat_grad, relative_error

SIZE, N, FRACTION = 32, 8, 0.1


# ---- port of the reference (ayaabdelsalam91/saliency_guided_training 925ad6f; no licence file) ----
def ref_get_single_mask(percentage, fattr):
    k = max(1, int(len(fattr) * len(fattr) * percentage))
    _, i = torch.topk(fattr.flatten(), k, largest=False)
    mask = torch.zeros_like(fattr.flatten(), dtype=torch.bool)
    mask[i] = True
    return mask.reshape(fattr.shape)


def ref_fill_single_mask(input_image, mask, uniform):
    """``randomMask``: per channel, uniform values in that channel's [min, max] at the masked pixels."""
    for c in range(input_image.shape[0]):
        low, high = input_image[c].min().item(), input_image[c].max().item()
        input_image[c, mask] = low + (high - low) * uniform[c][mask]
    return input_image


def ref_sgt_loss(model, data, target, featuresDroped, use_abs, uniform):
    """One step of ``train`` (RGB path): the masked inputs from an eval-mode saliency pass, then
    CE(f(x)) + KLDivLoss(batchmean)(log_softmax(f(x_masked)), softmax(f(x))). The model's mode is
    restored after the saliency pass (theirs: ``model.train()``, the mode it trains in)."""
    was_training = model.training
    model.eval()
    x = data.detach().clone().requires_grad_(True)
    output = model(x)
    (grads,) = torch.autograd.grad(output.gather(1, target[:, None]).sum(), x)  # captum Saliency, abs=False
    grads = grads.mean(1)
    if use_abs:
        grads = grads.abs()
    temp = data.clone().detach()
    for idx in range(temp.shape[0]):
        single_mask = ref_get_single_mask(featuresDroped, grads[idx])
        temp[idx] = ref_fill_single_mask(temp[idx], single_mask, uniform[idx])
    masked = temp.detach()
    model.train(was_training)
    output = model(data)
    kl = F.kl_div(F.log_softmax(model(masked), dim=1), F.softmax(output, dim=1), reduction="batchmean")
    return F.cross_entropy(output, target), kl, masked
# ---- end of the port ----


def _case(seed: int = 0):
    torch.manual_seed(seed)
    model = create("cc_resnet10", 4)  # Normalize (ImageNet mean/std) + the network
    g = torch.Generator().manual_seed(seed + 1)
    images = torch.rand(N, 3, SIZE, SIZE, generator=g) ** torch.tensor([1.0, 2.0, 0.5])[:, None, None]
    return model, images, torch.randint(0, 4, (N,), generator=g)


def _project(model, images, labels, **options):
    strategy = build_method("sgt", {"fraction": FRACTION, **options})
    strategy.setup(MethodContext(model=model, device=torch.device("cpu"), task=Task(), num_samples=N,
                                   train_ids=torch.arange(N)))
    torch.manual_seed(5)
    terms = strategy.terms(images, labels)
    torch.manual_seed(5)  # the fill's uniform draws (the saliency pass and the forwards draw none)
    return terms, torch.rand_like(images)


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("saliency", ["abs", "signed"])
def test_default_masks_loss_and_gradient_match_the_reference(mode, saliency):
    model, images, labels = _case()
    model.train(mode == "train")
    twin = copy.deepcopy(model)
    ours, uniform = _project(model, images, labels, saliency=saliency)
    mean, std = model.mean, model.std
    ce, kl, masked = ref_sgt_loss(twin.model, (images - mean) / std, labels, FRACTION, saliency == "abs", uniform)
    ref_mask = (masked != (images - mean) / std).any(1)
    assert torch.equal(ours["mask"][:, 0], ref_mask)  # the same k = 102 pixels of each image
    assert int(ref_mask.sum()) == N * int(SIZE * SIZE * FRACTION)
    assert torch.allclose((ours["masked"] - mean) / std, masked, atol=1e-5)  # same values, per-channel ranges
    assert ours["ce"].item() == pytest.approx(ce.item(), rel=1e-6)
    assert ours["kl"].item() == pytest.approx(kl.item(), rel=1e-5, abs=1e-7)
    g_ours = flat_grad(ours["ce"] + ours["kl"], list(model.parameters()))
    g_ref = flat_grad(ce + kl, list(twin.model.parameters()))
    assert cosine(g_ours, g_ref) > 0.99999 and relative_error(g_ours, g_ref) < 1e-4
    for (name, buf), ref in zip(model.named_buffers(), twin.buffers(), strict=True):
        assert torch.allclose(buf, ref, atol=1e-6), name


def test_pixel_space_saliency_and_image_range_differ_from_the_reference():
    """The former defaults (saliency w.r.t. [0, 1] pixels, one range over all channels) pick other pixels
    under ImageNet's unequal stds and fill values outside a channel's range (docs/methods.md)."""
    model, images, labels = _case()
    twin = copy.deepcopy(model)
    ours, uniform = _project(model, images, labels, saliency_input="pixel", value_range="image")
    mean, std = model.mean, model.std
    *_, masked = ref_sgt_loss(twin.model, (images - mean) / std, labels, FRACTION, True, uniform)
    ref_mask = (masked != (images - mean) / std).any(1)
    assert (ours["mask"][:, 0] != ref_mask).sum() > 0
    m = ours["mask"]
    low, high = images.amin((2, 3), keepdim=True).expand_as(images), images.amax((2, 3), keepdim=True).expand_as(images)
    outside = (ours["masked"] < low) | (ours["masked"] > high)
    assert outside[m].any()
