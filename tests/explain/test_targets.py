"""Targets as class ids or as callables on the logits, for every method."""

from __future__ import annotations

import pytest
import torch

from consistcam.explain import explain, list_explainers
from tests.helpers import TinyNet

OPTIONS = dict(steps=3, batch_size=24)


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return TinyNet(classes=5).eval()


@pytest.fixture(scope="module")
def x():
    return torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("method", list_explainers())
def test_callables_equal_class_ids(net, x, method):
    ids = [3, 1, 4, 0]
    by_ids = explain(net, x, torch.tensor(ids), explainer=method, **OPTIONS)
    per_image = explain(net, x, [lambda z, c=c: z[c] for c in ids], explainer=method, **OPTIONS)
    assert by_ids.amax() > 0.99
    assert torch.allclose(per_image, by_ids, atol=1e-6)
    same_class = explain(net, x, 2, explainer=method, **OPTIONS)
    assert torch.allclose(explain(net, x, lambda logits: logits[:, 2], explainer=method, **OPTIONS), same_class,
                          atol=1e-6)
    assert torch.allclose(explain(net, x, [2, 2, 2, 2], explainer=method, **OPTIONS), same_class, atol=1e-6)


@pytest.mark.parametrize("method", ["gradcam", "scorecam", "integrated-gradcam"])
def test_pytorch_grad_cam_targets_work_directly(net, x, method):
    targets = pytest.importorskip("pytorch_grad_cam.utils.model_targets")
    ids = [3, 1, 4, 0]
    expected = explain(net, x, torch.tensor(ids), explainer=method, **OPTIONS)
    ours = explain(net, x, [targets.ClassifierOutputTarget(c) for c in ids], explainer=method, **OPTIONS)
    assert torch.allclose(ours, expected, atol=1e-6)
    one = explain(net, x, targets.ClassifierOutputTarget(3), explainer=method, **OPTIONS)  # (N, C) -> (N,)
    assert torch.allclose(one, explain(net, x, 3, explainer=method, **OPTIONS), atol=1e-6)
    soft = explain(net, x, [targets.ClassifierOutputSoftmaxTarget(c) for c in ids], explainer=method, **OPTIONS)
    assert soft.shape == expected.shape and torch.isfinite(soft).all()


def test_callable_targets_are_differentiable(net, x):
    maps = explain(net, x, lambda z: z.log_softmax(1)[:, 1], explainer="gradcam", differentiable=True)
    maps.sum().backward()
    assert net.features[0].weight.grad.abs().sum() > 0
    net.zero_grad(set_to_none=True)


def test_bad_targets_are_clear_errors(net, x):
    with pytest.raises(ValueError, match="targets must be 4 integer class ids"):
        explain(net, x, [0, 1])
    with pytest.raises(ValueError, match=r"targets must lie in \[0, 5\)"):
        explain(net, x, [0, 1, 2, 5])
    with pytest.raises(ValueError, match=r"targets must lie in \[0, 5\)"):
        explain(net, x, -1)
    with pytest.raises(ValueError, match="targets must be integer class ids, got dtype torch.float32"):
        explain(net, x, torch.tensor([0.0, 1.0, 2.0, 3.0]))
    with pytest.raises(ValueError, match="got 2 targets callables for 4 images"):
        explain(net, x, [lambda z: z[0]] * 2)
    with pytest.raises(TypeError, match="targets mixes callables with non-callables"):
        explain(net, x, [lambda z: z[0], 1, 2, 3])
    with pytest.raises(TypeError, match="targets must be"):
        explain(net, x, "cat")
    with pytest.raises(TypeError, match="targets must be"):
        explain(net, x, [object()] * 4)
    with pytest.raises(ValueError, match=r"targets callable must map the \(4, C\) logits to 4 scores"):
        explain(net, x, lambda logits: logits.sum())
    with pytest.raises(ValueError, match="each targets callable must map one image's"):
        explain(net, x, [lambda z: z] * 4)
