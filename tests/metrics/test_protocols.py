"""Faithfulness, localisation and robustness metric leaves: tensors in (never a model),
hand-computed cases, merged states, and the peers' implementations (Quantus). The faithfulness
forward passes that make their inputs are tested in tests/evaluation/test_faithfulness.py."""

from __future__ import annotations

import inspect

import pytest
import torch
from torch import nn
from torchmetrics import Metric

import consistcam.metrics
from consistcam.metrics import (
    AdversarialAccuracy,
    ConfidenceChange,
    InsertionDeletion,
    curve_auc,
    drop_and_increase,
    top_fraction_mask,
)


def test_metric_leaves_take_tensors_only():
    """No metric's update takes (or calls) a model: the forward passes are evaluation's."""
    leaves = [obj for obj in vars(consistcam.metrics).values() if isinstance(obj, type) and issubclass(obj, Metric)]
    assert {InsertionDeletion, ConfidenceChange, AdversarialAccuracy} <= set(leaves)
    for leaf in leaves:
        hints = inspect.signature(leaf.update).parameters
        assert "model" not in hints and not any("Module" in str(p.annotation) for p in hints.values()), leaf


def test_faithfulness_metrics_hand_computed():
    curves = torch.tensor([[0.5, 0.25, 0.0, 0.0, 0.0], [1.0, 1.0, 0.75, 0.25, 0.0]])
    assert curve_auc(curves).tolist() == pytest.approx([(0.75 + 0.25) / 8, (2 + 1.75 + 1 + 0.25) / 8])
    insdel = InsertionDeletion()
    insdel.update(curves.flip(1), curves)  # the reversed curves as insertion
    out = insdel.compute()
    assert out["deletion"].item() == pytest.approx(curve_auc(curves).mean().item())
    assert out["ins_minus_del"].item() == pytest.approx(out["insertion"].item() - out["deletion"].item())
    clean, masked = torch.tensor([1.0, 0.5, 0.2]), torch.tensor([0.5, 0.5, 0.4])
    terms = drop_and_increase(clean, masked)
    assert terms["average_drop"].tolist() == pytest.approx([0.5, 0.0, 0.0])
    assert terms["increase_in_confidence"].tolist() == [0.0, 0.0, 1.0]
    top = ConfidenceChange(suffix="_top15")
    top.update(clean, masked)
    assert {k: v.item() for k, v in top.compute().items()} == pytest.approx(
        {"average_drop_top15": 0.5 / 3, "increase_in_confidence_top15": 1 / 3})
    assert top_fraction_mask(torch.arange(16.0).view(1, 1, 4, 4), 0.25).flatten().tolist() == [0.0] * 12 + [1.0] * 4
    with pytest.raises(ValueError, match="steps >= 1"):
        curve_auc(torch.ones(3, 1))


def test_localisation_matches_quantus():
    quantus = pytest.importorskip("quantus")
    from consistcam.metrics import EnergyPointingGame, PointingGame

    g = torch.Generator().manual_seed(3)
    images = torch.rand(5, 3, 12, 12, generator=g)
    heat = torch.rand(5, 1, 12, 12, generator=g)
    masks = torch.zeros(5, 1, 12, 12)
    for i in range(5):
        masks[i, :, i: i + 5, 2 * i: 2 * i + 4] = 1
    labels = torch.zeros(5, dtype=torch.long)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 144, 2))
    kw = dict(model=model, x_batch=images.numpy(), y_batch=labels.numpy(), a_batch=heat.numpy(),
              s_batch=masks.numpy(), device="cpu")
    pg = quantus.PointingGame(disable_warnings=True, normalise=False)(**kw)
    al = quantus.AttributionLocalisation(disable_warnings=True, normalise=False, abs=False)(**kw)
    ours_pg, ours_e = PointingGame(0), EnergyPointingGame()
    ours_pg.update(heat, masks)
    ours_e.update(heat, masks)
    assert ours_pg.compute()["pointing_game"].item() == pytest.approx(sum(pg) / 5)
    assert ours_e.compute()["energy"].item() == pytest.approx(sum(al) / 5, abs=1e-6)


def test_adversarial_accuracy_counts_given_predictions_and_merges():
    labels = torch.tensor([0, 1, 1, 0])
    keys = [("fgsm", 1 / 255), ("pgd10", 1 / 255)]
    outputs = {keys[0]: torch.tensor([0, 1, 0, 0]),  # class ids
               keys[1]: torch.tensor([[0.0, 1], [0, 1], [1, 0], [1, 0]])}  # or logits
    whole = AdversarialAccuracy(epsilons=(1 / 255,))
    assert whole.keys == keys
    whole.update(outputs, labels)
    assert {k: v.item() for k, v in whole.compute().items()} == {"fgsm@1/255": 0.75, "pgd10@1/255": 0.5}
    a, b = AdversarialAccuracy(epsilons=(1 / 255,)), AdversarialAccuracy(epsilons=(1 / 255,))
    a.update({k: v[:1] for k, v in outputs.items()}, labels[:1])
    b.update({k: v[1:] for k, v in outputs.items()}, labels[1:])
    a.merge_state(b)
    assert a.compute() == whole.compute()
    with pytest.raises(ValueError, match="pgd10@1/255"):
        whole.update({keys[0]: outputs[keys[0]]}, labels)  # a partial update would skew the counts
    with pytest.raises(ValueError, match="unknown attack"):
        AdversarialAccuracy(attacks=("cw",))


def test_faithfulness_states_merge():
    g = torch.Generator().manual_seed(0)
    ins, dele, clean, masked = torch.rand(24, 5, generator=g), torch.rand(24, 5, generator=g), \
        torch.rand(24, generator=g), torch.rand(24, generator=g)
    for make, inputs in ((InsertionDeletion, (ins, dele)), (ConfidenceChange, (clean, masked))):
        m1, m2, m12 = make(), make(), make()
        m1.update(*(x[:10] for x in inputs))
        m2.update(*(x[10:] for x in inputs))
        m12.update(*inputs)
        m1.merge_state(m2)
        assert all(torch.allclose(m1.compute()[k], v) for k, v in m12.compute().items())
