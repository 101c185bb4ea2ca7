from __future__ import annotations

import pytest
import torch

from consistcam.metrics import EnergyPointingGame, MaskIoU, PointingGame


def test_energy_hand_computed():
    h = torch.tensor([[1.0, 3.0], [0.0, 4.0]]).view(1, 1, 2, 2)
    m = torch.tensor([[0.0, 1.0], [0.0, 1.0]]).view(1, 1, 2, 2)
    metric = EnergyPointingGame()
    metric.update(h, m)
    out = metric.compute()
    assert out["energy"].item() == pytest.approx(7 / 8)
    assert out["energy_uniform_baseline"].item() == pytest.approx(0.5)
    uniform = EnergyPointingGame()
    uniform.update(torch.ones(1, 1, 2, 2), m)
    assert uniform.compute()["energy"].item() == pytest.approx(0.5)  # = the area fraction


def test_pointing_game_and_iou():
    h = torch.zeros(2, 1, 10, 10)
    h[0, 0, 2, 2] = 1  # inside
    h[1, 0, 9, 9] = 1  # outside, 2 px from the mask
    m = torch.zeros(2, 1, 10, 10)
    m[:, :, 1:8, 1:8] = 1
    pg = PointingGame(tolerance=0)
    pg.update(h, m)
    assert pg.compute()["pointing_game"].item() == 0.5
    pg2 = PointingGame(tolerance=2)
    pg2.update(h, m)
    assert pg2.compute()["pointing_game"].item() == 1.0
    per_class = PointingGame(tolerance=0, num_classes=3)  # class 0: 1 hit of 1; class 2: 0 of 1
    per_class.update(torch.cat([h, h[1:]]), torch.cat([m, m[1:]]), torch.tensor([0, 2, 2]))
    out = per_class.compute()
    assert out["pointing_game"].item() == pytest.approx(1 / 3)
    assert out["pointing_game_class_mean"].item() == pytest.approx(0.5)
    iou = MaskIoU(0.5)
    iou.update(m, m)
    assert iou.compute().item() == 1.0


def test_metric_states_merge_like_one_pass():
    g = torch.Generator().manual_seed(0)
    h = torch.rand(8, 1, 6, 6, generator=g)
    m = (torch.rand(8, 1, 6, 6, generator=g) > 0.5).float()
    whole, a, b = EnergyPointingGame(), EnergyPointingGame(), EnergyPointingGame()
    whole.update(h, m)
    a.update(h[:3], m[:3])
    b.update(h[3:], m[3:])
    a.merge_state(b)
    assert torch.allclose(a.compute()["energy"], whole.compute()["energy"])
