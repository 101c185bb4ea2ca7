from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from consistcam.models import create
from consistcam.train import TrainConfig, Trainer
from consistcam.train.methods import MethodContext, build_method
from consistcam.train.methods._shared import masked_count
from consistcam.train.methods.sgt import SGTConfig, fill_masked, kl_divergence
from consistcam.train.task import Task

TINY = dict(data="demo:n=64,n_test=32,size=16", arch="cc_resnet10", batch_size=32, eval_batch_size=64, lr=0.05)


class LinearNet(nn.Module):
    """logits = W x: the input gradient of logit c is W[c], known in closed form."""

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1) @ self.weight.T


def _strategy(model, **options):
    strategy = build_method("sgt", options)
    strategy.setup(MethodContext(model=model, device=torch.device("cpu"), task=Task(), num_samples=8,
                                   train_ids=torch.arange(8)))
    return strategy


def _linear_case(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    weight = torch.randn(3, 3 * 4 * 4, generator=g)
    images = 0.2 + 0.5 * torch.rand(4, 3, 4, 4, generator=g)
    return LinearNet(weight), images, torch.tensor([0, 1, 2, 1]), weight


@pytest.mark.parametrize(("unit", "saliency", "mode"), [("pixel", "abs", "eval"), ("feature", "abs", "train"),
                                                        ("pixel", "signed", "train")])
def test_exactly_k_lowest_saliency_features_are_replaced(unit, saliency, mode):
    model, images, labels, weight = _linear_case()
    torch.manual_seed(0)
    t = _strategy(model, fraction=0.25, unit=unit, saliency=saliency, saliency_mode=mode).terms(images, labels)
    grad = weight[labels].view(4, 3, 4, 4)  # d logit_label / dx of a linear model
    score = grad.mean(1) if unit == "pixel" else grad
    score = score.abs() if saliency == "abs" else score
    k = math.floor(0.25 * score[0].numel())
    for i in range(4):
        expected = set(score[i].flatten().argsort()[:k].tolist())
        chosen = t["mask"][i, 0] if unit == "pixel" else t["mask"][i]
        assert set(chosen.flatten().nonzero().flatten().tolist()) == expected
        assert int(t["mask"][i].sum()) == 12  # 25 % of the 48 features (4 pixels x 3 channels, or 12 values)
        assert int((t["masked"][i] != images[i]).sum()) == 12  # replaced exactly there
    assert masked_count(0.1, 16) == 1 and masked_count(0.3, 10) == 3 and masked_count(0.001, 10) == 1
    assert masked_count(0.0, 10) == 0


@pytest.mark.parametrize("value_range", ["image", "channel"])
def test_replaced_values_lie_in_the_image_range(value_range):
    g = torch.Generator().manual_seed(2)
    lo = torch.tensor([0.0, 0.3, 0.6])[:, None, None, None]
    images = lo + 0.2 * torch.rand(3, 3, 8, 8, generator=g) * torch.tensor([1.0, 0.5, 2.0])[None, :, None, None]
    mask = torch.rand(3, 3, 8, 8, generator=g) < 0.5
    torch.manual_seed(0)
    out = fill_masked(images, mask, "random", value_range)
    dims = (1, 2, 3) if value_range == "image" else (2, 3)
    low, high = images.amin(dims, keepdim=True).expand_as(images), images.amax(dims, keepdim=True).expand_as(images)
    assert ((out >= low) & (out <= high))[mask].all()
    assert torch.equal(out[~mask], images[~mask])
    assert out[mask].unique().numel() == int(mask.sum())  # random values, not one constant
    mean = fill_masked(images, mask, "mean")
    assert torch.allclose(mean, torch.where(mask, images.mean((2, 3), keepdim=True), images))


def test_kl_term_matches_a_hand_computation():
    a = torch.tensor([[1.0, 2.0, 0.5], [0.0, 0.0, 3.0]], requires_grad=True)
    b = torch.tensor([[0.5, 0.5, 0.5], [1.0, -1.0, 2.0]], requires_grad=True)
    expected = 0.0
    for row_a, row_b in zip(a.tolist(), b.tolist()):
        za, zb = sum(math.exp(v) for v in row_a), sum(math.exp(v) for v in row_b)
        p, q = [math.exp(v) / za for v in row_a], [math.exp(v) / zb for v in row_b]
        expected += sum(pi * math.log(pi / qi) for pi, qi in zip(p, q)) / 2  # KL(p || q), batch mean
    kl = kl_divergence(a, b)
    assert kl.item() == pytest.approx(expected, rel=1e-6)
    assert all(g.abs().sum() > 0 for g in torch.autograd.grad(kl, [a, b]))  # both sides train (reference)
    grad_a, = torch.autograd.grad(kl_divergence(a, b, detach_target=True), [a], allow_unused=True)
    assert grad_a is None


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_saliency_pass_leaves_no_parameter_gradients(mode):
    torch.manual_seed(0)
    model = create("cc_resnet10", 4).train()
    g = torch.Generator().manual_seed(1)
    images, labels = torch.rand(8, 3, 16, 16, generator=g), torch.randint(0, 4, (8,), generator=g)
    strategy = _strategy(model, fraction=0.2, saliency_mode=mode)
    t = strategy.terms(images, labels)
    assert all(p.grad is None for p in model.parameters())  # nothing from the saliency pass
    assert all(m.training for m in model.modules())
    (t["ce"] + t["kl"]).backward()
    got = [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    logits = model(images)  # the final loss alone, on the same masked images
    (F.cross_entropy(logits, labels) + kl_divergence(logits, model(t["masked"]))).backward()
    for p, g1 in zip(model.parameters(), got, strict=True):
        assert torch.allclose(p.grad, g1, atol=1e-6)


def test_one_epoch_on_demo_data_gives_a_finite_loss(tmp_path):
    cfg = TrainConfig.from_dict({**TINY, "method": "sgt", "epochs": 1, "out": str(tmp_path),
                                 "sgt": {"fraction": 0.1, "lam": 1.0}})
    assert cfg.method_options == SGTConfig()
    record = Trainer.from_config(cfg, progress=False).fit()[0]
    assert math.isfinite(record["train/loss"]) and record["train/kl"] >= 0
    assert record["train/loss"] == pytest.approx(record["train/ce"] + record["train/kl"], rel=1e-4)
