"""Explaining must leave the model exactly as it found it."""

from __future__ import annotations

import pytest
import torch
import torchvision

from consistcam.explain import explain, list_explainers


def _snapshot(model):
    return (
        [m.training for m in model.modules()],
        [p.requires_grad for p in model.parameters()],
        {k: v.clone() for k, v in model.state_dict().items()},
        [(len(m._forward_hooks), len(m._backward_hooks), len(m._forward_pre_hooks)) for m in model.modules()],
    )


def _assert_same(before, after):
    assert before[0] == after[0]
    assert before[1] == after[1]
    for k in before[2]:
        assert torch.equal(before[2][k], after[2][k]), k
    assert before[3] == after[3]


@pytest.mark.parametrize("training", [False, True])
@pytest.mark.parametrize("method", list_explainers())
def test_state_restored(method, training):
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=5).train(training)
    model.fc.requires_grad_(False)  # a mixed pattern must survive too
    before = _snapshot(model)
    explain(model, torch.rand(3, 3, 32, 32), explainer=method, steps=2)
    _assert_same(before, _snapshot(model))
    assert all(p.grad is None for p in model.parameters())


def test_state_restored_after_exception():
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=5).train()
    before = _snapshot(model)
    with pytest.raises(ValueError):
        explain(model, torch.rand(3, 3, 32, 32), torch.tensor([0, 1, 99]))
    _assert_same(before, _snapshot(model))


def test_differentiable_maps_carry_gradients_to_parameters():
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=5).train()
    maps = explain(model, torch.rand(3, 3, 32, 32), torch.tensor([0, 1, 2]), explainer="hirescam",
                   differentiable=True)
    maps.sum().backward()
    assert model.conv1.weight.grad is not None and model.conv1.weight.grad.abs().sum() > 0


def test_works_under_no_grad():
    model = torchvision.models.resnet18(num_classes=5).eval()
    with torch.no_grad():
        maps = explain(model, torch.rand(2, 3, 32, 32))
    assert maps.shape == (2, 1, 32, 32)


@pytest.mark.parametrize("differentiable", [False, True])
def test_batchnorm_buffers_restored_in_place(differentiable):
    # Restored into the very tensors the module holds (DDP and optimisers keep references), and without
    # bumping their autograd versions: a differentiable map must still back-propagate after the context.
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=5).train()
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    names = ("running_mean", "running_var", "num_batches_tracked")
    objects = [[getattr(m, n) for n in names] for m in bns]
    values = [[t.clone() for t in ts] for ts in objects]
    maps = explain(model, torch.rand(3, 3, 32, 32), torch.tensor([0, 1, 2]), explainer="gradcam",
                   differentiable=differentiable)
    for m, ts, vs in zip(bns, objects, values):
        for n, t, v in zip(names, ts, vs):
            assert getattr(m, n) is t, n
            assert torch.equal(t, v), n
    assert model.training and all(m.training for m in model.modules())
    if differentiable:
        maps.sum().backward()
        assert model.conv1.weight.grad is not None and model.conv1.weight.grad.abs().sum() > 0
        assert all(torch.equal(t, v) for ts, vs in zip(objects, values) for t, v in zip(ts, vs))
