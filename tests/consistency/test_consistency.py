from __future__ import annotations

import math

import pytest
import torch

import consistcam.attack.pgd as pgd
import consistcam.consistency.score as score
from consistcam.consistency import (
    PREDICTION_CONSISTENCIES,
    SIMILARITIES,
    ConsistencyConfig,
    consistency_weights,
    explanation_consistency,
    score_dataset,
)
from consistcam.explain import find_target_layer
from tests.helpers import square_images, trained_tiny_net


def test_similarities_are_one_on_identical_maps_and_bounded():
    g = torch.Generator().manual_seed(0)
    h = torch.rand(5, 1, 16, 16, generator=g)
    other = torch.rand(5, 1, 16, 16, generator=g)
    for name in SIMILARITIES.names():
        fn = SIMILARITIES.get(name)
        assert torch.allclose(fn(h, h), torch.ones(5), atol=1e-5), name
        s = fn(h, other)
        assert ((s >= 0) & (s <= 1)).all(), name
        assert (s < 0.999).all(), name


def test_similarity_hand_computed_cases():
    a = torch.tensor([[1.0, 0.0, 0.0, 0.0]]).view(1, 1, 2, 2)
    b = torch.tensor([[1.0, 1.0, 0.0, 0.0]]).view(1, 1, 2, 2)
    assert SIMILARITIES.get("cosine")(a, b).item() == pytest.approx(1 / math.sqrt(2))
    assert SIMILARITIES.get("l1")(a, b).item() == pytest.approx(0.5)  # TV distance 0.5
    # Pearson of [1,0,0,0] and [1,1,0,0] is 1/sqrt(3) -> rescaled (1 + r) / 2
    assert SIMILARITIES.get("pearson")(a, b).item() == pytest.approx((1 + 1 / math.sqrt(3)) / 2, abs=1e-6)
    assert SIMILARITIES.get("iou")(a, b, top_q=0.5).item() == pytest.approx(1 / 3)  # {0,1 or 0,x} vs {0,1}
    zero = torch.zeros(1, 1, 2, 2)
    assert SIMILARITIES.get("cosine")(zero, zero).item() == 1.0
    assert SIMILARITIES.get("cosine")(zero, a).item() == 0.0


def test_prediction_consistency():
    p = torch.tensor([[0.5, 0.5], [1.0, 0.0]])
    q = torch.tensor([[0.5, 0.5], [0.0, 1.0]])
    js = PREDICTION_CONSISTENCIES.get("js")(p, q)
    assert js.tolist() == pytest.approx([1.0, 0.0], abs=1e-6)  # disjoint supports: JS = ln 2
    ratio = PREDICTION_CONSISTENCIES.get("ratio")(p, torch.tensor([[0.25, 0.75], [0.5, 0.5]]), torch.tensor([0, 0]))
    assert ratio.tolist() == pytest.approx([0.5, 0.5])


def test_weights_mean_one_and_inverse_order():
    e = torch.tensor([0.9, 0.1, 0.5, 0.7, 0.3])
    v = consistency_weights(e)
    assert v.mean().item() == pytest.approx(1.0)
    assert torch.equal(v.argsort(), e.argsort(descending=True))
    assert torch.allclose(v, (1 - e) / (1 - e).mean())
    floored = consistency_weights(torch.tensor([1.0, 0.0]), floor=0.2)
    assert floored.tolist() == pytest.approx([0.2, 1.8])
    assert consistency_weights(torch.ones(3)).tolist() == [1.0, 1.0, 1.0]
    ema = consistency_weights(e, previous=torch.ones(5), ema=0.5)
    assert ema.mean().item() == pytest.approx(1.0) and torch.allclose(ema, 0.5 + 0.5 * v)
    powered = consistency_weights(e, power=2.0)
    assert torch.allclose(powered, (1 - e) ** 2 / ((1 - e) ** 2).mean())


@pytest.mark.parametrize("attack,forwards", [("pgd", 1 + 2 + 1), ("noise", 1 + 1)])
def test_consistency_is_one_for_a_zero_perturbation(attack, forwards):
    # eps = 0: the attacked image is a new tensor equal to the clean one, so the second explained
    # forward really runs (unlike attack="none", which reuses the clean heatmap and logits).
    model = trained_tiny_net()
    images, labels, _ = square_images(16, seed=3)
    find_target_layer(model, images)  # cached: its dry forward is not counted below
    inputs = []
    handle = model.register_forward_hook(lambda _m, args, _out: inputs.append(args[0]))
    try:
        # channels_last=False: the model then sees the very tensors (the fast layout would pass copies)
        cfg = ConsistencyConfig(attack=attack, eps=0.0, steps=2)
        out = explanation_consistency(model, images, labels, cfg, generator=torch.Generator().manual_seed(0),
                                      return_images=True, channels_last=False)
    finally:
        handle.remove()
    assert len(inputs) == forwards
    assert inputs[-1] is out["adversarial"] and out["adversarial"] is not images
    assert torch.equal(out["adversarial"], images)
    for key in ("E", "S", "P"):
        assert torch.allclose(out[key], torch.ones(16), atol=1e-5), key
    assert not out["flipped"].any()


def test_attack_lowers_consistency_more_than_noise():
    model = trained_tiny_net()
    images, labels, masks = square_images(64, seed=4)
    cfg = dict(mask="gt", eps=16 / 255, alpha=4 / 255, steps=5)
    e_pgd = explanation_consistency(model, images, labels, ConsistencyConfig(**cfg), masks=masks)["E"]
    e_noise = explanation_consistency(model, images, labels, ConsistencyConfig(attack="noise", **cfg),
                                      masks=masks, generator=torch.Generator().manual_seed(0))["E"]
    assert e_pgd.mean() < e_noise.mean()
    assert ((e_pgd >= 0) & (e_pgd <= 1)).all()


def _loader(images, labels, masks, ids, batch):
    for i in range(0, len(ids), batch):
        yield {"image": images[i : i + batch], "label": labels[i : i + batch], "id": ids[i : i + batch],
               "mask": masks[i : i + batch]}


def test_score_dataset_is_ordered_by_id_and_independent_of_batching():
    model = trained_tiny_net()
    images, labels, masks = square_images(40, seed=5)
    perm = torch.randperm(40, generator=torch.Generator().manual_seed(0))
    ids = torch.arange(100, 140)
    cfg = ConsistencyConfig(mask="gt", random_start=False)
    a = score_dataset(model, list(_loader(images, labels, masks, ids, 8)), cfg)
    b = score_dataset(model, list(_loader(images[perm], labels[perm], masks[perm], ids[perm], 16)), cfg)
    assert torch.equal(a.ids, ids) and torch.equal(b.ids, ids)
    assert torch.allclose(a.E, b.E, atol=1e-5)
    assert not hasattr(a, "weights")  # scores only: v is ECL's (consistency_weights of E)
    assert set(a.summary()) == {"E_mean", "S_mean", "P_mean", "flip_rate", "fg_area"}


def test_config_rejects_unknown_names():
    with pytest.raises(ValueError, match="known"):
        ConsistencyConfig(similarity="euclid")
    with pytest.raises(ValueError, match="lambda"):
        ConsistencyConfig.from_dict({"lambda": 0.3})


def _wrong_labels(n: int, seed: int):
    """Images the trained net classifies well, with the labels swapped: prediction != label."""
    images, labels, masks = square_images(n, seed=seed)
    return images, 1 - labels, masks


def test_prediction_target_attacks_the_explained_class(monkeypatch):
    model = trained_tiny_net()
    images, labels, _ = _wrong_labels(16, 6)
    attacked = []

    def spy(model, checked, labels, *args, **kwargs):  # the labels travel inside the checked inputs
        attacked.append(checked.targets)
        return real(model, checked, labels, *args, **kwargs)

    real = score.masked_attack
    monkeypatch.setattr(score, "masked_attack", spy)
    for objective in ("ce", "explanation"):
        out = explanation_consistency(model, images, labels, ConsistencyConfig(target="prediction", steps=1,
                                                                               objective=objective))
        assert (out["pred"] != labels).sum() >= 8
        assert torch.equal(attacked[-1], out["pred"])
    explanation_consistency(model, images, labels, ConsistencyConfig(steps=1))
    assert torch.equal(attacked[-1], labels)


@pytest.mark.parametrize("objective", ["ce", "explanation"])
def test_score_dataset_with_prediction_target_does_not_depend_on_labels(objective):
    # Everything (explained class, attacked class, explanation-shift reference) is the prediction, so
    # the labels must not matter at all; attacking the labels instead would change the adversarials.
    model = trained_tiny_net()
    images, labels, masks = _wrong_labels(24, 6)
    ids = torch.arange(24)
    cfg = ConsistencyConfig(target="prediction", objective=objective, steps=2, eps=16 / 255, alpha=8 / 255)
    wrong = score_dataset(model, list(_loader(images, labels, masks, ids, 12)), cfg)
    right = score_dataset(model, list(_loader(images, 1 - labels, masks, ids, 12)), cfg)
    assert (wrong.pred != labels).float().mean() > 0.5
    for key, value in wrong.to_dict().items():
        assert torch.equal(value, getattr(right, key)), key
    as_label = score_dataset(model, list(_loader(images, right.pred, masks, ids, 12)),
                             ConsistencyConfig(target="label", objective=objective, steps=2, eps=16 / 255,
                                               alpha=8 / 255))
    assert torch.allclose(as_label.E, right.E, atol=1e-6)


def test_per_module_modes_survive_scoring():
    model = trained_tiny_net().train()
    model.features[1].eval()  # e.g. a frozen BatchNorm while the rest trains
    modes = [m.training for m in model.modules()]
    images, labels, masks = square_images(8, seed=2)
    explanation_consistency(model, images, labels, ConsistencyConfig(steps=1))
    assert [m.training for m in model.modules()] == modes
    score_dataset(model, list(_loader(images, labels, masks, torch.arange(8), 4)), ConsistencyConfig(steps=1))
    assert [m.training for m in model.modules()] == modes


def test_explanation_objective_from_config_uses_the_differentiable_explainer(monkeypatch):
    model = trained_tiny_net()
    images, labels, _ = square_images(16, seed=8)
    differentiable = []

    def spy(*args, **kwargs):
        differentiable.append(kwargs.get("differentiable", False))
        return real(*args, **kwargs)

    real = pgd.explain
    monkeypatch.setattr(pgd, "explain", spy)
    kw = dict(steps=2, eps=16 / 255, alpha=8 / 255)
    e_ce = explanation_consistency(model, images, labels, ConsistencyConfig(**kw))["E"]
    assert differentiable == []
    e_expl = explanation_consistency(model, images, labels, ConsistencyConfig(objective="explanation", **kw))["E"]
    assert differentiable == [True, True]  # one per step; the reference maps are the clean heatmaps
    assert not torch.allclose(e_ce, e_expl, atol=1e-3)


def test_rank_weights_depend_only_on_the_order_of_e():
    e = torch.tensor([0.9, 0.1, 0.5])
    # 1 - E = [0.1, 0.9, 0.5] -> ranks [1, 3, 2] / 3, mean 2/3 -> [0.5, 1.5, 1.0]
    v = consistency_weights(e, scheme="rank")
    assert v.tolist() == pytest.approx([0.5, 1.5, 1.0])
    squeezed = 0.99 + 0.01 * e  # E bunched near 1, the case where literal weights degenerate
    assert torch.allclose(consistency_weights(squeezed, scheme="rank"), v)
    ties = consistency_weights(torch.tensor([0.2, 0.2, 0.8, 0.8]), scheme="rank")
    assert ties.tolist() == pytest.approx([1.4, 1.4, 0.6, 0.6])  # mean ranks 3.5, 3.5, 1.5, 1.5
    assert consistency_weights(torch.ones(4), scheme="rank").tolist() == [1.0, 1.0, 1.0, 1.0]
    tempered = consistency_weights(e, scheme="rank", power=0.5, floor=0.5)
    assert tempered.mean().item() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="weight scheme"):
        consistency_weights(e, scheme="softmax")
