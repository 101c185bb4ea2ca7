from __future__ import annotations

import itertools
import math

import pytest
import torch

from consistcam.metrics.identification import identification, precision_at_k, roc_auc, weight_share


def _pairwise_auc(scores: list[float], positive: list[bool]) -> float:
    """The definition: over every (minority, other) pair, 1 if the minority scores higher, 1/2 on a tie."""
    pos = [s for s, p in zip(scores, positive) if p]
    neg = [s for s, p in zip(scores, positive) if not p]
    wins = sum(1.0 if a > b else 0.5 if a == b else 0.0 for a, b in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


def test_roc_auc_by_hand_with_ties():
    # pairs (minority, other): (.5, .1) 1, (.5, .5) 1/2, (.9, .1) 1, (.9, .5) 1 -> 3.5 / 4
    assert roc_auc(torch.tensor([0.1, 0.5, 0.5, 0.9]), torch.tensor([0, 0, 1, 1])) == pytest.approx(0.875)
    assert roc_auc(torch.tensor([1.0, 1.0, 0.0, 0.0]), torch.tensor([0, 1, 1, 0])) == pytest.approx(0.5)
    assert roc_auc(torch.tensor([3.0, 5.0, 7.0, 0.0]), torch.tensor([0, 1, 1, 0])) == pytest.approx(1.0)
    assert roc_auc(torch.tensor([3.0, 5.0, 7.0, 0.0]), torch.tensor([1, 0, 0, 1])) == pytest.approx(0.0)
    assert math.isnan(roc_auc(torch.tensor([0.2, 0.4]), torch.tensor([0, 0])))
    assert math.isnan(roc_auc(torch.tensor([0.2, 0.4]), torch.tensor([1, 1])))


def test_roc_auc_matches_the_pairwise_definition_on_many_ties():
    g = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 4, (40,), generator=g).float()  # four values: ties everywhere
    positive = torch.rand(40, generator=g) < 0.3
    assert roc_auc(scores, positive) == pytest.approx(_pairwise_auc(scores.tolist(), positive.tolist()))
    assert roc_auc(scores > 1, positive) == pytest.approx(_pairwise_auc((scores > 1).float().tolist(),
                                                                        positive.tolist()))


def test_precision_at_k_breaks_ties_at_the_cut_in_expectation():
    positive = torch.tensor([1, 1, 0, 0, 0])
    # k = 2: the 3 is in; one place left for three tied 2s, of which one is a minority: (1 + 1/3) / 2
    assert precision_at_k(torch.tensor([3.0, 2.0, 2.0, 2.0, 1.0]), positive) == pytest.approx(2 / 3)
    assert precision_at_k(torch.tensor([3.0, 2.5, 2.0, 2.0, 1.0]), positive) == pytest.approx(1.0)
    assert precision_at_k(torch.tensor([0.0, 0.0, 1.0, 1.0, 1.0]), positive) == pytest.approx(0.0)
    # a set (bool score): k = 1 among three members, one of them the minority
    assert precision_at_k(torch.tensor([True, True, True, False]), torch.tensor([1, 0, 0, 0])) == pytest.approx(1 / 3)
    assert precision_at_k(torch.tensor([1.0, 2.0]), torch.tensor([1, 0]), k=2) == pytest.approx(0.5)


def test_weight_share_and_the_set_quality_of_an_error_set():
    assert weight_share(torch.tensor([2.0, 1.0, 1.0]), torch.tensor([1, 0, 0])) == pytest.approx(0.5)
    assert weight_share(torch.ones(10), torch.arange(10) < 3) == pytest.approx(0.3)  # ERM: the minority fraction
    errors = torch.tensor([True, True, False, True, False, False])
    minority = torch.tensor([1, 0, 0, 1, 1, 0])
    out = identification(errors, minority, weights=torch.where(errors, 4.0, 1.0))
    assert out["set_size"] == 3
    assert out["set_precision"] == pytest.approx(2 / 3) and out["set_recall"] == pytest.approx(2 / 3)
    assert out["weight_share"] == pytest.approx((4 + 4 + 1) / (3 * 4 + 3))
    assert out["minority_fraction"] == pytest.approx(0.5) and out["n"] == 6
    assert "set_size" not in identification(errors.float(), minority)
    with pytest.raises(ValueError, match="1-d of one length"):
        roc_auc(torch.ones(3), torch.ones(4))
