"""SISE and Ada-SISE: agreement with ports of the authors' code, and the properties the methods promise."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from consistcam.cli import main
from consistcam.explain import explain, list_explainers
from consistcam.explain.layers import find_block_layers
from consistcam.explain.sise import otsu_levels
from tests.helpers import square_images, trained_tiny_net

cv2 = pytest.importorskip("cv2")


class ThreeBlocks(nn.Module):
    """Three convolutional blocks (16, 8, 4 px at a 16 px input): three SISE layers."""

    def __init__(self, classes: int = 5) -> None:
        super().__init__()
        self.b1 = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
        self.b2 = nn.Sequential(nn.Conv2d(8, 12, 3, 2, 1), nn.ReLU())
        self.b3 = nn.Sequential(nn.Conv2d(12, 16, 3, 2, 1), nn.ReLU())
        self.fc = nn.Linear(16, classes)

    def forward(self, x):
        return self.fc(self.b3(self.b2(self.b1(x))).mean((2, 3)))


LAYERS = ["b1", "b2", "b3"]


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    model = ThreeBlocks().eval()
    with torch.no_grad():
        model.fc.weight.mul_(5)  # softmax outputs that vary with the mask (random weights give ~uniform ones)
    return model


@pytest.fixture(scope="module")
def x():
    return torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(1))


TARGETS = [0, 3, 1]


# --- ports of the reference implementations (numpy / OpenCV, one image at a time) ---------------------------------


def _features_and_gradients(model, image, cls, names):
    """Per layer: the (K, h, w) feature maps and the gradient of the softmax output of ``cls`` (the Keras
    models of the references end in a softmax)."""
    feats = {}
    hooks = [model.get_submodule(n).register_forward_hook(lambda _m, _i, o, n=n: feats.__setitem__(n, o))
             for n in names]
    try:
        prob = model(image[None]).softmax(1)[0, cls]
    finally:
        for h in hooks:
            h.remove()
    grads = torch.autograd.grad(prob, [feats[n] for n in names])
    return [feats[n][0].detach().numpy() for n in names], [g[0].numpy() for g in grads]


def _scores(model, batch, cls):
    with torch.no_grad():
        return model(torch.from_numpy(np.ascontiguousarray(batch)).float()).softmax(1)[:, cls].double().numpy()


def _resize(fmap, size):
    return cv2.resize(fmap.astype(np.float32), (size, size), interpolation=cv2.INTER_LINEAR).astype(np.float64)


def _ref_otsu(img, nbins=256, tau=1.5):
    """The SISE authors' ``otsu`` (TensorFlow repository), verbatim in numpy."""
    img = np.round(img * nbins)
    hist, _ = np.histogram(img.ravel(), nbins, [0, nbins])
    i = np.arange(nbins)
    varsb = np.zeros(nbins)
    for j in range(1, nbins):
        w0, w1 = np.sum(hist[0:j]), np.sum(hist[j:nbins])
        u0 = np.sum(hist[0:j] * i[0:j]) / w0
        u1 = np.sum(hist[j:nbins] * i[j:nbins]) / w1
        varsb[j] = w0 * w1 * (u0 - u1) * (u0 - u1)
    t = np.argmax(varsb)
    k = round(t * tau)
    return t * tau / nbins if np.sum(hist[int(k):256]) < 0.1 * np.sum(hist) else t / nbins


def reference_sise(model, image, cls, names, grad_thr=0.0, temperature=100.0):
    """create_attribution_masks + visualize_layers + fuse_visualization_maps('otsu') of the SISE code."""
    size = image.shape[-1]
    img = image.numpy().astype(np.float64)
    feats, grads = _features_and_gradients(model, image, cls, names)
    exmaps = []
    for fmap, grad in zip(feats, grads):
        significance = grad.mean((1, 2))
        idxs = np.where(significance > grad_thr * np.max(significance))[0]
        masks = np.stack([_resize(fmap[k], size) for k in idxs], axis=2)
        masks -= masks.min(axis=(0, 1))
        masks /= masks.max(axis=(0, 1)) + 10e-7
        preds = _scores(model, np.einsum("chw,hwn->nchw", img, masks), cls)
        masks /= masks.sum(axis=(0, 1)) + 10e-7
        sum_mask = np.einsum("hwn,n->hw", masks, preds)
        sum_mask -= sum_mask.min()
        sum_mask /= sum_mask.max()
        exmaps.append(sum_mask)
    ex = exmaps[0].copy()
    for m in exmaps[1:]:
        ex += m
        ex *= 1 / (1 + np.exp(-(m - _ref_otsu(m)) * temperature))
    return ex


def _cv2_otsu(values_uint8):
    return cv2.threshold(values_uint8.reshape(-1, 1), 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)[0]


def reference_ada_sise(model, image, cls, names):
    """The Ada-SISE reference's explain(): Otsu-selected maps, score-weighted masks, Otsu-gated fusion
    (the masked image is left in float: our inputs are [0, 1] floats, not uint8)."""
    size = image.shape[-1]
    img = image.numpy().astype(np.float64)
    feats, grads = _features_and_gradients(model, image, cls, names)
    maps = []
    for fmap, grad in zip(feats, grads):
        a = grad.mean((1, 2))
        a_nor = a / a.max()
        th = _cv2_otsu((a_nor[a_nor > 0] * 255).astype(np.uint8)) / 255
        sal = 0
        for j in np.where(a_nor > th)[0]:
            md = _resize(fmap[j], size)
            if md.max() == md.min():
                continue
            md = (md - md.min()) / (md.max() - md.min())
            sal = sal + _scores(model, (img * md[None])[None], cls)[0] * md
        maps.append((sal - sal.min()) / (sal.max() - sal.min()))
    heatmap = 0
    for i, m in enumerate(maps):
        s = (m * 255).astype(np.uint8)
        block = (s > _cv2_otsu(s)).astype(np.float64)
        heatmap = heatmap + m
        if i > 0:
            heatmap = heatmap * block
    return heatmap


def _minmax(a):
    return (a - a.min()) / (a.max() - a.min())


@pytest.mark.parametrize("method, reference", [("sise", reference_sise), ("ada-sise", reference_ada_sise)])
def test_agrees_with_the_reference_implementation(net, x, method, reference):
    ours = explain(net, x, torch.tensor(TARGETS), explainer=method, layers=LAYERS)[:, 0].double().numpy()
    for i, cls in enumerate(TARGETS):
        ref = _minmax(reference(net, x[i], cls, LAYERS))
        assert np.corrcoef(ours[i].ravel(), ref.ravel())[0, 1] > 0.9999
        assert np.abs(ours[i] - ref).max() < 1e-3


def test_default_layers_are_the_block_ends(net, x):
    assert find_block_layers(net, x, net.b3, (4, 4)) == ["b1", "b2"]
    assert torch.allclose(explain(net, x, 1, explainer="sise"), explain(net, x, 1, explainer="sise", layers=LAYERS))
    resnet = torchvision.models.resnet18(num_classes=3).eval()
    assert find_block_layers(resnet, torch.rand(1, 3, 224, 224), resnet.layer4, (7, 7)) == [
        "relu", "layer1", "layer2", "layer3"]
    vgg = torchvision.models.vgg11(num_classes=3).eval()
    # the layer before each max-pool; the explained layer is 'features' (after the last pool)
    assert find_block_layers(vgg, torch.rand(1, 3, 64, 64), vgg.features, (2, 2)) == [
        "features.1", "features.4", "features.9", "features.14", "features.19"]


def test_otsu_levels_matches_opencv():
    g = torch.Generator().manual_seed(0)
    rows = torch.cat([torch.randint(0, 256, (3, 500), generator=g),
                      (torch.randn(3, 500, generator=g) * 20 + 60).clamp(0, 255).long(),
                      torch.cat([torch.full((1, 250), 40), torch.full((1, 250), 200)], 1).expand(3, -1)])
    ours = otsu_levels(rows)
    for row, t in zip(rows, ours):
        assert t == _cv2_otsu(row.numpy().astype(np.uint8))


@pytest.mark.parametrize("method", ["sise", "ada-sise"])
def test_batched_chunked_and_per_image_results_agree(net, x, method):
    targets = torch.tensor(TARGETS)
    full = explain(net, x, targets, explainer=method, batch_size=1000)
    assert full.shape == (3, 1, 16, 16) and full.amax() > 0.99
    assert torch.allclose(explain(net, x, targets, explainer=method, batch_size=7), full, atol=1e-5)
    alone = torch.cat([explain(net, x[i:i + 1], targets[i:i + 1], explainer=method) for i in range(3)])
    assert torch.allclose(alone, full, atol=1e-5)


def _count_masked_images(model, fn):
    seen = []
    handle = model.register_forward_pre_hook(lambda _m, args: seen.append(args[0].shape[0]))
    try:
        fn()
    finally:
        handle.remove()
    return sum(seen) - 1  # minus the explained batch's own forward passes


def test_ada_sise_does_less_work_and_both_localise_the_object():
    model = trained_tiny_net()
    images, labels, masks = square_images(8, seed=5)
    work, energy = {}, {}
    for method in ("sise", "ada-sise"):
        maps = None

        def run(method=method):
            nonlocal maps
            maps = explain(model, images, labels, explainer=method, batch_size=10_000)

        work[method] = _count_masked_images(model, run)
        energy[method] = float(((maps * masks).sum((1, 2, 3)) / maps.sum((1, 2, 3))).mean())
    assert work["ada-sise"] < work["sise"]
    uniform = float(masks.mean())  # 36 / 256 of the image
    assert energy["sise"] > 3 * uniform and energy["ada-sise"] > 3 * uniform, (energy, uniform)


def test_differentiable_maps_reach_the_parameters(net, x):
    maps = explain(net, x, torch.tensor(TARGETS), explainer="sise", differentiable=True)
    assert maps.requires_grad
    maps.sum().backward()
    assert net.b1[0].weight.grad is not None and net.b1[0].weight.grad.abs().sum() > 0
    net.zero_grad(set_to_none=True)


def test_progress_bar_and_errors(net, x, capsys):
    explain(net, x, 1, explainer="ada-sise", progress=True)
    assert "ada-sise" in capsys.readouterr().err
    with pytest.raises(ValueError, match="batch_size must be >= 1, got 0"):
        explain(net, x, 1, explainer="sise", batch_size=0)
    with pytest.raises(ValueError, match="no layer 'b9'"):
        explain(net, x, 1, explainer="sise", layers=["b1", "b9"])


def test_listed_on_the_command_line(capsys):
    assert {"sise", "ada-sise"} <= set(list_explainers())
    assert main(["list", "explainers"]) == 0
    assert {"sise", "ada-sise"} <= set(capsys.readouterr().out.split())
