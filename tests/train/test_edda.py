from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from consistcam.explain import explain
from consistcam.models import create
from consistcam.train import TrainConfig, Trainer
from consistcam.train.methods import MethodContext, build_method
from consistcam.train.methods._shared import occlude
from consistcam.train.methods.edda import (
    EDDAConfig,
    occlusion_masks,
    random_scores,
    soft_cross_entropy,
    soft_target,
)
from consistcam.train.task import Task

TINY = dict(data="demo:n=64,n_test=32,size=16", arch="cc_resnet10", batch_size=32, eval_batch_size=64, lr=0.05)


def _strategy(model, **options):
    strategy = build_method("edda", {"warmup": 0, **options})
    strategy.setup(MethodContext(model=model, device=torch.device("cpu"), task=Task(), num_samples=8,
                                   train_ids=torch.arange(8)))
    return strategy


def _batch(n: int = 6, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return 0.2 + 0.7 * torch.rand(n, 3, 16, 16, generator=g), torch.randint(0, 4, (n,), generator=g)


@pytest.mark.parametrize(("fraction", "k"), [(0.25, 64), (0.3, 76), (0.001, 1)])
def test_each_copy_occludes_exactly_floor_fraction_of_the_pixels(fraction, k):
    torch.manual_seed(0)
    model = create("cc_resnet10", 4).train()
    images, labels = _batch()
    t = _strategy(model, fraction=fraction, fill="zero").terms(images, labels)
    maps = explain(model, images, labels)  # explain() leaves no trace, so this is the strategy's heatmap
    for name in ("keep", "drop"):
        assert (t[f"{name}_mask"].flatten(1).sum(1) == k).all()  # k = max(1, floor(fraction * 256))
        occluded = (t[name] == 0).all(1, keepdim=True)  # images lie in [0.2, 0.9]: black only where occluded
        assert torch.equal(occluded, t[f"{name}_mask"])
        assert torch.equal(t[name][~occluded.expand_as(images)], images[~occluded.expand_as(images)])
    keep_max = maps.masked_fill(~t["keep_mask"], -1).flatten(1).amax(1)
    rest_min = maps.masked_fill(t["keep_mask"], 2).flatten(1).amin(1)
    assert (keep_max <= rest_min).all()  # the least salient pixels of the actual Grad-CAM map


def test_least_and_most_salient_regions_on_a_hand_made_heatmap():
    g = torch.Generator().manual_seed(3)
    scores = torch.rand(2, 1, 6, 6, generator=g)
    scores[1, 0, :3] = 0.5  # ties across the cut: 18 equal values
    keep, drop = occlusion_masks(scores, 0.25)  # k = floor(9) = 9 pixels
    for i in range(2):
        s = scores[i].flatten()
        km, dm = keep[i].flatten(), drop[i].flatten()
        assert int(km.sum()) == int(dm.sum()) == 9 and not (km & dm).any()
        assert s[km].max() <= s[~km].min()  # keep: nothing left visible is less salient
        assert s[dm].min() >= s[~dm].max()  # drop: nothing left visible is more salient
    ordered = scores[0].flatten().argsort()
    assert set(keep[0].flatten().nonzero().flatten().tolist()) == set(ordered[:9].tolist())
    assert set(drop[0].flatten().nonzero().flatten().tolist()) == set(ordered[-9:].tolist())


@pytest.mark.parametrize("grid", [0, 4])
def test_random_control_occludes_the_same_fraction_independently_of_the_heatmap(grid):
    images, labels = _batch()
    torch.manual_seed(0)
    one, other = create("cc_resnet10", 4).train(), create("cc_resnet10", 4).train()  # different heatmaps
    masks = []
    for model in (one, other):
        torch.manual_seed(0)
        masks.append(_strategy(model, occlusion="random", random_grid=grid).terms(images, labels))
    a, b = masks
    assert torch.equal(a["drop_mask"], b["drop_mask"]) and torch.equal(a["keep_mask"], b["keep_mask"])
    assert (a["keep_mask"].flatten(1).sum(1) == 64).all() and (a["drop_mask"].flatten(1).sum(1) == 64).all()
    torch.manual_seed(0)  # exactly the positions ranked by the seeded random scores
    keep, drop = occlusion_masks(random_scores(images, grid), 0.25)
    assert torch.equal(keep, a["keep_mask"]) and torch.equal(drop, a["drop_mask"])
    torch.manual_seed(1)
    d = _strategy(other, occlusion="random", random_grid=grid).terms(images, labels)
    assert not torch.equal(d["drop_mask"], a["drop_mask"])  # a new draw, new positions
    explained = occlusion_masks(explain(other, images, labels), 0.25)[1]
    overlap = (explained & a["drop_mask"]).flatten(1).sum(1).float().mean() / 64
    assert overlap < 0.6  # not the salient region (chance level is 0.25)


def test_soft_target_and_its_loss_match_a_hand_computation():
    labels = torch.tensor([2, 0])
    uniform = soft_target(labels, 4)
    assert torch.allclose(uniform, torch.full((2, 4), 0.25))
    reduced = soft_target(labels, 4, 0.1)
    assert torch.allclose(reduced, torch.tensor([[0.3, 0.3, 0.1, 0.3], [0.1, 0.3, 0.3, 0.3]]))
    logits = torch.tensor([[2.0, 0.0, 1.0, -1.0], [0.5, 0.5, 0.0, 3.0]])
    expected = 0.0
    for row, q in zip(logits.tolist(), reduced.tolist()):
        log_z = math.log(sum(math.exp(v) for v in row))
        expected += -sum(qc * (v - log_z) for qc, v in zip(q, row)) / 2
    assert soft_cross_entropy(logits, reduced).item() == pytest.approx(expected, rel=1e-6)
    # uniform target: the mean over classes of -log p, i.e. CE with label smoothing 1
    assert torch.allclose(soft_cross_entropy(logits, uniform), F.cross_entropy(logits, labels, label_smoothing=1.0))


def test_loss_adds_the_weighted_terms_and_fills_are_as_documented():
    torch.manual_seed(0)
    model = create("cc_resnet10", 4).train()
    images, labels = _batch()
    strategy = _strategy(model, w_keep=0.5, w_drop=2.0, drop_mass=0.0)
    torch.manual_seed(0)
    out = strategy.loss({"image": images, "label": labels, "id": torch.arange(6)})
    torch.manual_seed(0)
    t = strategy.terms(images, labels)
    assert out.loss.item() == pytest.approx((t["ce"] + 0.5 * t["keep_loss"] + 2.0 * t["drop_loss"]).item(), rel=1e-5)
    assert all(m.training for m in model.modules()) and all(p.grad is None for p in model.parameters())
    mask = t["drop_mask"]
    mean = occlude(images, mask, "mean")
    assert torch.allclose(mean, torch.where(mask, images.mean((2, 3), keepdim=True), images))
    blur = occlude(images, mask, "blur")
    assert torch.equal(blur[~mask.expand_as(images)], images[~mask.expand_as(images)])


def test_one_epoch_on_demo_data_gives_a_finite_loss(tmp_path):
    cfg = TrainConfig.from_dict({**TINY, "method": "edda", "epochs": 1, "out": str(tmp_path),
                                 "edda": {"warmup": 0}})
    assert cfg.method_options == EDDAConfig(warmup=0)
    record = Trainer.from_config(cfg, progress=False).fit()[0]
    assert math.isfinite(record["train/loss"])
    assert record["train/drop_loss"] > 0 and 0 <= record["train/p_drop"] <= 1
