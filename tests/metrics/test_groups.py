"""Per-group and worst-group accuracy against hand-computed cells."""

import math

import pytest
import torch

from consistcam.metrics import GroupAccuracy, alignment, group_report


def test_cells_match_a_hand_count():
    labels = torch.tensor([0, 0, 0, 1, 1, 1, 1])
    groups = torch.tensor([0, 0, 1, 1, 0, 0, 1])  # aligned: 0,1 | 3,6 ; conflicting: 2 | 4,5
    preds = torch.tensor([0, 1, 0, 1, 1, 0, 1])
    m = GroupAccuracy(num_classes=3)
    m.update(preds[:4], labels[:4], alignment(labels[:4], groups[:4]))  # streaming: two updates
    m.update(preds[4:], labels[4:], alignment(labels[4:], groups[4:]))
    out = m.compute()
    acc = out["group_acc"]
    assert acc[0, 0].item() == pytest.approx(0.5) and acc[0, 1].item() == pytest.approx(1.0)
    assert acc[1, 0].item() == pytest.approx(1.0) and acc[1, 1].item() == pytest.approx(0.5)
    assert math.isnan(acc[2, 0].item())  # class 2 never seen: empty cell, not 0
    assert out["worst_group_acc"].item() == pytest.approx(0.5)
    report = group_report(m, ["a", "b", "c"])
    assert report["group_acc"] == {"a/aligned": 0.5, "a/conflicting": 1.0, "b/aligned": 1.0, "b/conflicting": 0.5}
    assert report["group_count"]["b/conflicting"] == 2 and report["worst_group_acc"] == 0.5


def test_min_count_ignores_thin_cells_and_logits_are_accepted():
    labels = torch.tensor([0, 0, 0, 1])
    attr = torch.tensor([0, 0, 0, 1])
    logits = torch.tensor([[2.0, 0.0], [2.0, 0.0], [2.0, 0.0], [2.0, 0.0]])  # class 1 always wrong
    m = GroupAccuracy(2, min_count=2)
    m.update(logits, labels, attr)
    assert m.compute()["worst_group_acc"].item() == 1.0  # the 1-image cell is below min_count
    assert GroupAccuracy(2).forward(logits, labels, attr)["worst_group_acc"].item() == 0.0


def test_bad_shapes_and_sizes_are_clear_errors():
    with pytest.raises(ValueError, match="same shape"):
        GroupAccuracy(2).update(torch.zeros(3), torch.zeros(3), torch.zeros(2))
    with pytest.raises(ValueError, match="num_classes"):
        GroupAccuracy(0)
