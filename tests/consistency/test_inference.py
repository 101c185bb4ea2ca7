"""The scoring pass's fast path (BatchNorm folded, channels-last) against a plain reference.

``reference_scores`` below is the consistency protocol of docs/method.md written out step by step
with no consistcam code on the path: Grad-CAM by a hook and ``autograd.grad``, the heatmap mask,
masked PGD with random start, the second Grad-CAM, cosine and Jensen-Shannon. The exact path
(``ExecutionConfig(fold_batchnorm=False, channels_last=False)``) must reproduce it to float precision; the fast path,
the same function computed in another order, must stay within the tolerance stated in
docs/benchmarks.md.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from consistcam.consistency import ConsistencyConfig, ExecutionConfig, explanation_consistency, score_dataset
from consistcam.consistency.inference import foldable_pairs, inference_copy
from tests.helpers import TinyNet, square_images, trained_tiny_net


def _gradcam(model: nn.Module, layer: nn.Module, x: torch.Tensor, classes: torch.Tensor):
    store = {}

    def hook(_m, _i, out):
        store["a"] = out.detach().requires_grad_(True)
        return store["a"].clone()

    handle = layer.register_forward_hook(hook)
    try:
        with torch.enable_grad():
            logits = model(x)
            (g,) = torch.autograd.grad(logits.gather(1, classes[:, None]).sum(), store["a"])
    finally:
        handle.remove()
    cam = F.relu((g.mean((2, 3))[:, :, None, None] * store["a"].detach()).sum(1))[:, None]
    cam = F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)
    lo, hi = cam.amin((2, 3), keepdim=True), cam.amax((2, 3), keepdim=True)
    return (cam - lo) / (hi - lo + 1e-7), logits.detach()


def reference_scores(model, layer, images, labels, cfg: ConsistencyConfig, seed: int) -> torch.Tensor:
    """E for one batch, written out plainly (label target, heatmap mask, CE-PGD, L-inf)."""
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    heat, logits = _gradcam(model, layer, images, labels)
    background = 1.0 - (heat >= cfg.tau).float()
    g = torch.Generator().manual_seed(seed)
    eps, alpha = cfg.eps, cfg.alpha

    def project(d):
        return ((images + d.clamp(-eps, eps)).clamp(0, 1) - images) * background

    delta = project(eps * (2 * torch.rand(images.shape, generator=g) - 1))
    for _ in range(cfg.steps):
        delta.requires_grad_(True)
        with torch.enable_grad():
            loss = F.cross_entropy(model(images + delta), labels, reduction="sum")
            (grad,) = torch.autograd.grad(loss, delta)
        delta = project(delta.detach() + alpha * (grad * background).sign())
    heat_adv, logits_adv = _gradcam(model, layer, images + delta, labels)
    a, b = heat.flatten(1), heat_adv.flatten(1)
    s = ((a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1)).clamp_min(1e-12)).clamp(0, 1)
    p, q = logits.softmax(1), logits_adv.softmax(1)
    m = (p + q) / 2
    js = 0.5 * ((p * (p / m).log()).nansum(1) + (q * (q / m).log()).nansum(1))
    pc = (1 - js / math.log(2)).clamp(0, 1)
    return (cfg.lam * s + (1 - cfg.lam) * pc).clamp(0, 1)


def _batches(images, labels, batch):
    return [{"image": images[i:i + batch], "label": labels[i:i + batch],
             "id": torch.arange(i, min(i + batch, len(images)))} for i in range(0, len(images), batch)]


CFG = dict(steps=3, eps=16 / 255, alpha=4 / 255, seed=7)
EXACT = ExecutionConfig(fold_batchnorm=False, channels_last=False)  # the model as it is


def test_exact_path_matches_the_plain_reference():
    model = trained_tiny_net()
    images, labels, _ = square_images(32, seed=11)
    cfg = ConsistencyConfig(**CFG)
    got = score_dataset(model, _batches(images, labels, 32), cfg, execution=EXACT)
    ref = trained_tiny_net()
    want = reference_scores(ref, ref.features, images, labels, cfg, seed=7)
    assert torch.allclose(got.E, want, atol=1e-5), (got.E - want).abs().max()
    assert got.E.std() > 0.01  # the attack does something, so the comparison has teeth


def test_exact_path_is_bit_identical_to_explanation_consistency_on_the_model():
    # what score_dataset computed before the fast path existed: the scorer on the model itself
    model = trained_tiny_net()
    images, labels, _ = square_images(24, seed=12)
    cfg = ConsistencyConfig(**CFG)
    got = score_dataset(model, _batches(images, labels, 24), cfg, execution=EXACT)
    with torch.no_grad():
        want = explanation_consistency(model, images, labels, cfg, generator=torch.Generator().manual_seed(7),
                                       channels_last=False)
    for key in ("E", "S", "P", "pred", "pred_adv"):
        assert torch.equal(getattr(got, key), want[key]), key


def test_fast_path_within_tolerance_and_model_untouched():
    model = trained_tiny_net()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    images, labels, _ = square_images(48, seed=13)
    exact = score_dataset(model, _batches(images, labels, 24), ConsistencyConfig(**CFG), execution=EXACT)
    fast = score_dataset(model, _batches(images, labels, 24), ConsistencyConfig(**CFG))
    diff = (fast.E - exact.E).abs()
    # stated tolerance (docs/benchmarks.md): mean |dE| < 1e-3, every |dE| < 0.05, predictions equal
    assert diff.mean() < 1e-3 and diff.max() < 0.05, (diff.mean(), diff.max())
    assert torch.equal(fast.pred, exact.pred)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert not model.training and all(p.requires_grad for p in model.parameters())


def test_inference_copy_folds_every_conv_bn_pair_and_keeps_the_function():
    model = trained_tiny_net()
    clone = inference_copy(model)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in clone.modules())
    assert isinstance(clone.features[1], nn.Identity)  # names kept: features.0 / features.1 / ...
    assert not any(p.requires_grad for p in clone.parameters()) and not clone.training
    assert clone.features[0].weight.is_contiguous(memory_format=torch.channels_last)
    x = square_images(8, seed=14)[0]
    with torch.no_grad():
        assert torch.allclose(clone(x), model(x), atol=1e-5)
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())  # the original is untouched


class _Shared(nn.Module):
    """A conv whose output also feeds a skip, a conv called twice, and a data-dependent branch."""

    def __init__(self, branch: bool = False) -> None:
        super().__init__()
        self.a, self.bn_a = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.b, self.bn_b = nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.c, self.bn_c = nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4)
        self.branch = branch
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        y = self.a(x)
        y = self.bn_a(y) + y  # a's output has two users: folding would change the skip
        y = self.bn_b(self.b(self.b(y)))  # b runs twice
        if self.branch and x.sum() > 0:  # data-dependent: fx cannot trace it
            y = y * 2
        return self.fc(self.bn_c(self.c(y)).mean((2, 3)))


def test_only_provably_safe_pairs_are_folded():
    torch.manual_seed(0)
    model = _Shared().eval()
    assert foldable_pairs(model) == [("c", "bn_c")]
    assert foldable_pairs(_Shared(branch=True)) == []  # untraceable: scored unfolded
    x = torch.rand(4, 3, 8, 8)
    for m in (model, _Shared(branch=True).eval()):
        with torch.no_grad():
            assert torch.allclose(inference_copy(m)(x), m(x), atol=1e-5)
    # the explained layer keeps its own output: a conv named as the layer is not folded
    assert isinstance(inference_copy(model, keep="c").bn_c, nn.BatchNorm2d)
    assert isinstance(inference_copy(model, keep="bn_c").bn_c, nn.Identity)


def test_fast_path_with_a_conv_as_the_explained_layer():
    model = trained_tiny_net()
    images, labels, _ = square_images(16, seed=15)
    kw = dict(CFG, layer="features.3")  # the pre-BatchNorm map: its conv must not be folded
    exact = score_dataset(model, _batches(images, labels, 16), ConsistencyConfig(**kw), execution=EXACT)
    fast = score_dataset(model, _batches(images, labels, 16), ConsistencyConfig(**kw))
    assert (fast.E - exact.E).abs().mean() < 1e-3


@pytest.mark.parametrize("fold,cl", [(True, False), (False, True)])
def test_each_switch_alone(fold, cl):
    model = TinyNet().eval()
    images, labels, _ = square_images(16, seed=16)
    exact = score_dataset(model, _batches(images, labels, 16), ConsistencyConfig(**CFG), execution=EXACT)
    fast = score_dataset(model, _batches(images, labels, 16), ConsistencyConfig(**CFG),
                         execution=ExecutionConfig(fold_batchnorm=fold, channels_last=cl))
    assert (fast.E - exact.E).abs().mean() < 1e-3


def test_multilabel_scoring_uses_the_fast_copy_within_tolerance():
    # score_multilabel_dataset runs on the same folded, channels-last copy as score_dataset: the
    # same per-pair E up to the stated tolerance, and exactly the exact path with both switches off
    from consistcam.consistency.multilabel import multilabel_consistency, score_multilabel_dataset

    model = trained_tiny_net()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    images, labels, _ = square_images(32, seed=14)
    hot = F.one_hot(labels, 2).float()
    hot[::3] = 1.0  # every third image has both classes
    batches = [{**b, "label": hot[b["id"]]} for b in _batches(images, labels, 16)]
    cfg = ConsistencyConfig(**CFG)
    exact = score_multilabel_dataset(model, batches, cfg, execution=EXACT)
    fast = score_multilabel_dataset(model, batches, cfg)
    diff = (fast["pair_E"] - exact["pair_E"]).abs()
    assert len(diff) == 32 + len(range(0, 32, 3))
    assert diff.mean() < 1e-3 and diff.max() < 0.05, (diff.mean(), diff.max())
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    generator = torch.Generator().manual_seed(7)
    want = [multilabel_consistency(model, b["image"], b["label"], cfg, generator=generator, channels_last=False)["E"]
            for b in batches]
    assert torch.equal(exact["E"], torch.cat(want))
