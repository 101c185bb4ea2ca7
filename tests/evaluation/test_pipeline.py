"""The evaluation pass and its pipeline protocols: equivariance, attacks, background reliance,
multi-label data, the cost of a pass (each clean image explained once per explainer) and the
streaming best/worst examples; against reference loops and the peers (torchattacks, scikit-learn)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from consistcam.attack import masked_attack
from consistcam.consistency import ConsistencyConfig
from consistcam.data import DemoShapes, build_transform
from consistcam.data.demo import BACKGROUND_COLOURS
from consistcam.data.masks import mask_from_boxes
from consistcam.evaluation import (
    ExtremeExamples,
    apply_crop_flip,
    attack_images,
    background_reliance,
    evaluate_model,
    heatmap_equivariance,
    random_crop_flip,
)
from consistcam.explain import explain, normalize_maps
from consistcam.metrics import energy_inside
from tests.helpers import TinyNet, square_images, trained_tiny_net


def test_crop_flip_geometry():
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).view(2, 3, 8, 8)
    ident = torch.tensor([[0, 0, 1, 1, 0.0]] * 2)
    assert torch.allclose(apply_crop_flip(x, ident), x, atol=1e-4)
    flip = torch.tensor([[0, 0, 1, 1, 1.0]] * 2)
    assert torch.allclose(apply_crop_flip(x, flip), x.flip(-1), atol=1e-4)
    left = torch.tensor([[0, 0, 0.5, 1, 0.0]] * 2)  # left half, stretched to full width
    ref = F.interpolate(x[..., :4], size=(8, 8), mode="bilinear", align_corners=False)
    # equal except the last column, which interpolates with the real pixel beyond the crop (not a clamp)
    assert torch.allclose(apply_crop_flip(x, left)[..., :7], ref[..., :7], atol=1e-4)
    t = random_crop_flip(1000, torch.Generator().manual_seed(0))
    area = (t[:, 2] - t[:, 0]) * (t[:, 3] - t[:, 1])
    assert (t[:, :4] >= 0).all() and (t[:, 2:4] <= 1 + 1e-6).all() and area.min() > 0.2
    assert 0.4 < t[:, 4].mean() < 0.6


class PointwiseNet(nn.Module):
    """1x1 convolutions then global pooling: its CAM is a per-pixel function, exactly flip-equivariant."""

    def __init__(self, coord: bool = False) -> None:
        super().__init__()
        self.coord = coord
        self.features = nn.Sequential(nn.Conv2d(3 + 2 * coord, 8, 1), nn.ReLU())
        self.fc = nn.Linear(8, 2)

    def forward(self, x):
        if self.coord:  # position channels break equivariance
            ys, xs = torch.meshgrid(torch.linspace(-1, 1, x.shape[-2]), torch.linspace(-1, 1, x.shape[-1]),
                                    indexing="ij")
            x = torch.cat([x, xs.expand(len(x), 1, -1, -1), ys.expand(len(x), 1, -1, -1)], 1)
        return self.fc(self.features(x).mean((2, 3)))


def test_equivariance_exact_for_pointwise_net_and_lower_with_coordinates():
    torch.manual_seed(0)
    images = torch.rand(4, 3, 8, 8)
    labels = torch.tensor([0, 1, 0, 1])
    flip = torch.tensor([[0, 0, 1, 1, 1.0]] * 4)
    net = PointwiseNet()
    assert torch.allclose(heatmap_equivariance(net, images, labels, transforms=flip, layer="features.1"),
                          torch.ones(4), atol=1e-4)
    torch.manual_seed(0)
    coord = PointwiseNet(coord=True)
    with torch.no_grad():
        coord.features[0].weight[:, 3:] *= 20  # make position dominate
    score = heatmap_equivariance(coord, images, labels, transforms=flip, layer="features.1")
    assert score.mean() < 0.95


def test_attacks_match_torchattacks():
    torchattacks = pytest.importorskip("torchattacks")
    model = trained_tiny_net()
    images, labels, _ = square_images(8, seed=7)
    eps = 4 / 255
    ours = attack_images(model, images, labels, "fgsm", eps)
    theirs = torchattacks.FGSM(model, eps=eps)(images, labels)
    assert torch.allclose(ours, theirs, atol=1e-6)
    ours = masked_attack(model, images, labels, None, eps=eps, alpha=eps / 4, steps=10, random_start=False)
    theirs = torchattacks.PGD(model, eps=eps, alpha=eps / 4, steps=10, random_start=False)(images, labels)
    assert torch.allclose(ours, theirs, atol=1e-6)


class BorderColour(nn.Module):
    """Classifies by the colour of the image border: a pure background shortcut."""

    def forward(self, x):
        border = torch.cat([x[..., 0, :], x[..., -1, :], x[..., 1:-1, 0], x[..., 1:-1, -1]], -1).mean(-1)
        return F.normalize(border, dim=1) @ F.normalize(BACKGROUND_COLOURS[:3], dim=1).T * 50


def test_background_reliance_of_a_shortcut_model():
    ds = DemoShapes("test_correlated", num_classes=3, size=24, seed=3)
    res = background_reliance(BorderColour(), ds, build_transform(), subset=120, batch_size=64)
    # the border colour is the background's (stripes and noise make it imperfect): same background,
    # same answers; the next class's background, the next class
    assert res["bg/original"] > 0.85 and abs(res["bg/mixed_same"] - res["bg/original"]) < 0.05
    assert res["bg/no_fg"] == res["bg/original"] and res["bg/mixed_next"] < 0.1
    assert res["bg_gap"] == pytest.approx(res["bg/mixed_same"] - res["bg/mixed_rand"]) and res["bg_gap"] > 0.4


def test_multilabel_map_matches_sklearn():
    from sklearn.metrics import average_precision_score

    g = torch.Generator().manual_seed(0)
    images = torch.rand(40, 3, 8, 8, generator=g)
    labels = (torch.rand(40, 5, generator=g) > 0.6).float()
    labels[0] = 1  # every class has a positive
    model = nn.Sequential(nn.Flatten(), nn.Linear(192, 5))
    loader = [{"image": images[i:i + 16], "label": labels[i:i + 16], "id": torch.arange(i, min(i + 16, 40))}
              for i in range(0, 40, 16)]
    res = evaluate_model(model, loader, 5)
    with torch.no_grad():
        scores = model(images)
    assert res["mAP"] == pytest.approx(average_precision_score(labels.numpy(), scores.numpy(), average="macro"),
                                       abs=1e-5)


def test_evaluate_results_do_not_depend_on_other_explainers():
    from consistcam.consistency import ConsistencyConfig
    model = trained_tiny_net()
    images, labels, masks = square_images(16, seed=9)
    loader = [{"image": images, "label": labels, "id": torch.arange(16), "mask": masks}]
    cfg = ConsistencyConfig(steps=2)
    kw = dict(consistency=cfg, protocols=("localization", "consistency", "equivariance"))
    alone = evaluate_model(model, loader, 2, explainer="gradcam", **kw)
    both = evaluate_model(model, loader, 2, explainer=["layercam", "gradcam"], **kw)
    for key in ("energy", "pointing_game", "consistency_E", "equivariance"):
        assert both[f"gradcam/{key}"] == pytest.approx(alone[key], abs=1e-6), key


def test_multilabel_localisation_per_image_and_class():
    torch.manual_seed(0)
    model = PointwiseNet()
    model.fc = nn.Linear(8, 3)
    images = torch.rand(3, 3, 8, 8)
    labels = torch.tensor([[1.0, 0, 1], [0, 0, 0], [0, 1, 0]])  # image 1 has no positive class
    boxes = [torch.tensor([[0.0, 0, 4, 4], [4, 4, 8, 8], [0, 4, 2, 8]]), torch.zeros(0, 4),
             torch.tensor([[2.0, 2, 6, 6]])]
    box_labels = [torch.tensor([0, 2, 0]), torch.zeros(0, dtype=torch.long), torch.tensor([1])]
    loader = [{"image": images, "label": labels, "id": torch.arange(3), "boxes": boxes, "box_labels": box_labels}]
    res = evaluate_model(model, loader, 3, protocols=("localization",), pointing_tolerance=0)
    ref = []
    for i, c in [(0, 0), (0, 2), (2, 1)]:
        h = explain(model, images[i:i + 1], torch.tensor([c]))
        ref.append(energy_inside(h, mask_from_boxes([boxes[i][box_labels[i] == c]], (8, 8))).item())
    assert res["energy"] == pytest.approx(sum(ref) / 3, abs=1e-6)
    assert 0 <= res["pointing_game"] <= 1 and "mAP" in res


def test_equivariance_reuses_any_normalisation_of_the_clean_map():
    """The score is the same for the raw clean map, its min-max normalisation (what the consistency
    pass returns) or any positive scale and offset, so the pass need not explain x a second time."""
    model = trained_tiny_net()
    images, labels, _ = square_images(8, seed=2)
    transforms = random_crop_flip(8, torch.Generator().manual_seed(0))
    raw = explain(model, images, labels, normalize=False)
    ref = heatmap_equivariance(model, images, labels, transforms=transforms)
    for clean in (raw, normalize_maps(raw), 3 * raw + 0.2):
        got = heatmap_equivariance(model, images, labels, transforms=transforms, heatmaps=clean)
        assert torch.allclose(got, ref, atol=1e-5)
    assert ((ref >= 0) & (ref <= 1)).all() and ref.mean() > 0.5


def test_equivariance_ignores_a_constant_floor():
    """A map with a constant floor everywhere scores by its shape, not by the floor it shares."""
    torch.manual_seed(0)
    net = PointwiseNet()
    images, labels = torch.rand(4, 3, 8, 8), torch.tensor([0, 1, 0, 1])
    flip = torch.tensor([[0, 0, 1, 1, 1.0]] * 4)
    unrelated = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    floor = heatmap_equivariance(net, images, labels, transforms=flip, layer="features.1", heatmaps=unrelated + 10)
    assert torch.allclose(floor, heatmap_equivariance(net, images, labels, transforms=flip, layer="features.1",
                                                      heatmaps=unrelated), atol=1e-5)
    assert floor.mean() < 0.9  # a raw cosine would give ~1 for any map on a floor of 10


def test_clean_image_is_explained_once_per_explainer():
    """Per batch and explainer, one forward of the clean images (the consistency pass's explained
    forward): accuracy, localisation and equivariance reuse its logits and heatmap."""
    model = trained_tiny_net()
    images, labels, masks = square_images(16, seed=9)
    loader = [{"image": images[i:i + 8], "label": labels[i:i + 8], "id": torch.arange(i, i + 8),
               "mask": masks[i:i + 8]} for i in (0, 8)]
    clean_forwards = [0, 0]

    def count(_module, args):
        for b, batch in enumerate(loader):
            if args[0].shape == batch["image"].shape and torch.equal(args[0], batch["image"]):
                clean_forwards[b] += 1

    handle = model.register_forward_pre_hook(count)
    try:
        res = evaluate_model(model, loader, 2, explainer=["gradcam", "layercam"],
                             consistency=ConsistencyConfig(steps=1),
                             protocols=("localization", "consistency", "equivariance"))
    finally:
        handle.remove()
    assert clean_forwards == [2, 2]  # two explainers, two batches
    assert {"equivariance", "layercam/equivariance", "consistency_E", "energy"} <= set(res)


def test_pass_equivariance_equals_the_standalone_protocol():
    model = trained_tiny_net()
    images, labels, masks = square_images(8, seed=3)
    loader = [{"image": images, "label": labels, "id": torch.arange(8), "mask": masks}]
    cfg = ConsistencyConfig(steps=1, seed=5)
    res = evaluate_model(model, loader, 2, consistency=cfg, protocols=("consistency", "equivariance"))
    alone = heatmap_equivariance(model, images, labels, generator=torch.Generator().manual_seed(cfg.seed + 1))
    assert res["equivariance"] == pytest.approx(alone.mean().item(), abs=1e-5)


def test_robustness_protocol():
    model = trained_tiny_net()
    images, labels, _ = square_images(16, seed=8)
    loader = [{"image": images[i:i + 8], "label": labels[i:i + 8], "id": torch.arange(i, i + 8)} for i in (0, 8)]
    out = evaluate_model(model, loader, 2, protocols=("robustness",), epsilons=(0.0, 2 / 255, 8 / 255))
    clean = out["acc"]
    assert out["fgsm@0/255"] == pytest.approx(clean) and out["pgd10@0/255"] == pytest.approx(clean)
    assert out["pgd10@8/255"] <= out["pgd10@2/255"] <= clean
    assert out["pgd10@8/255"] <= out["fgsm@8/255"] + 1e-6 and out["pgd10@8/255"] < clean


def test_extreme_examples_stream_like_one_sort():
    g = torch.Generator().manual_seed(0)
    values = torch.randint(0, 5, (40,), generator=g).float()  # many ties: broken by id
    ids = torch.randperm(40, generator=g)
    images = torch.rand(40, 3, 4, 4, generator=g)
    streamed = ExtremeExamples(3)
    for start in range(0, 40, 7):
        part = slice(start, start + 7)
        streamed.update(values[part], ids[part], {"image": images[part]})
    for side, descending in (("best", True), ("worst", False)):
        order = sorted(range(40), key=lambda i: (-values[i] if descending else values[i], ids[i]))[:3]
        kept = streamed.kept[side]
        assert kept["id"].tolist() == ids[order].tolist()
        assert torch.equal(kept["image"], images[order]) and torch.equal(kept["value"], values[order])
    flat = streamed.tensors("E")
    assert set(flat) == {f"E/{s}/{f}" for s in ("best", "worst") for f in ("value", "id", "image")}


def test_evaluate_model_per_sample_and_examples_come_from_the_same_pass():
    model = trained_tiny_net()
    images, labels, masks = square_images(16, seed=4)
    loader = [{"image": images[i:i + 8], "label": labels[i:i + 8], "id": torch.arange(i, i + 8),
               "mask": masks[i:i + 8]} for i in (0, 8)]
    res = evaluate_model(model, loader, 2, consistency=ConsistencyConfig(steps=1), per_sample=True, examples=2)
    per = res["per_sample"]
    assert per["id"].tolist() == list(range(16)) and res["consistency_E"] == pytest.approx(per["E"].mean().item())
    gain = per["energy"] - masks.flatten(1).mean(1)
    assert torch.allclose(per["energy_gain"], gain, atol=1e-6)
    ex = res["examples"]
    for key in ("E", "energy_gain"):
        best, worst = ex[f"{key}/best/id"], ex[f"{key}/worst/id"]
        assert torch.equal(ex[f"{key}/best/value"], per[key][best]) and torch.equal(ex[f"{key}/best/E"], per["E"][best])
        ranked = per[key].sort().values
        assert torch.equal(per[key][best], ranked.flip(0)[:2]) and torch.equal(per[key][worst], ranked[:2])
        assert ex[f"{key}/best/adversarial"].shape == (2, 3, 16, 16)
        assert torch.equal(ex[f"{key}/worst/image"], images[worst])


def test_prediction_target_scores_the_explained_class(monkeypatch):
    import consistcam.evaluation.pipeline as pipeline

    model = trained_tiny_net()
    images, labels, masks = square_images(8, seed=5)
    wrong = 1 - labels  # every label is the class the model does not predict
    seen = {}
    localize, faithfulness = pipeline._localize, pipeline._update_faithfulness

    def spy_localize(metrics, heatmaps, gt, classes, *args):
        seen["localization"] = classes.clone()
        return localize(metrics, heatmaps, gt, classes, *args)

    def spy_faithfulness(metrics, forward, images, heatmaps, classes, logits, steps):
        seen["faithfulness"] = classes.clone()
        seen["pred"] = logits.argmax(1)
        return faithfulness(metrics, forward, images, heatmaps, classes, logits, steps)

    monkeypatch.setattr(pipeline, "_localize", spy_localize)
    monkeypatch.setattr(pipeline, "_update_faithfulness", spy_faithfulness)
    loader = [{"image": images, "label": wrong, "id": torch.arange(8), "mask": masks.float()}]
    pipeline.evaluate_model(model, loader, 2, consistency=ConsistencyConfig(target="prediction", steps=1),
                            protocols=("localization", "faithfulness"), faithfulness_steps=4)
    for protocol in ("localization", "faithfulness"):
        assert torch.equal(seen[protocol], seen["pred"]) and not torch.equal(seen[protocol], wrong), protocol


# evaluate_model's figures at main e4b7ce2, when InsertionDeletion and ConfidenceChange still ran the model
# inside their update (issue 34): the faithfulness forwards moved to evaluation/faithfulness.py and the
# metrics into MetricCollections without changing a figure or the order of the keys. The same with 1 and
# 2 threads (the model is trained in float64, full batch: no thread-dependent rounding grows in it).
PINNED = {
    "acc": 1.0,
    "acc_top5": 1.0,
    "acc_per_class": [1.0, 1.0],
    "energy": 0.6910704076995291,
    "energy_uniform_baseline": 0.140625,
    "energy_small_objects": 0.6910704076995291,
    "n_small_objects": 24.0,
    "pointing_game": 1.0,
    "pointing_game_class_mean": 1.0,
    "mask_iou@0.3": 0.6611319133301193,
    "mask_iou@0.5": 0.5679062290904396,
    "insertion": 0.9138919115066528,
    "deletion": 0.5144790410995483,
    "ins_minus_del": 0.3994128704071045,
    "average_drop": 0.4758718013763428,
    "increase_in_confidence": 0.0,
    "average_drop_top15": 0.2983646094799042,
    "increase_in_confidence_top15": 0.0,
    "consistency_E": 0.9745396474997202,
    "adv_flip_rate": 0.25,
    "equivariance": 0.9038234250620008,
    "layercam/energy": 0.6817762362291773,
    "layercam/energy_uniform_baseline": 0.140625,
    "layercam/energy_small_objects": 0.6817762362291773,
    "layercam/n_small_objects": 24.0,
    "layercam/pointing_game": 1.0,
    "layercam/pointing_game_class_mean": 1.0,
    "layercam/mask_iou@0.3": 0.6669662141498854,
    "layercam/mask_iou@0.5": 0.5679062290904396,
    "layercam/insertion": 0.9148844480514526,
    "layercam/deletion": 0.5140687823295593,
    "layercam/ins_minus_del": 0.4008156657218933,
    "layercam/average_drop": 0.47560325264930725,
    "layercam/increase_in_confidence": 0.0,
    "layercam/average_drop_top15": 0.2981448471546173,
    "layercam/increase_in_confidence_top15": 0.0,
    "layercam/consistency_E": 0.9746398975451788,
    "layercam/adv_flip_rate": 0.25,
    "layercam/equivariance": 0.9069308148076137,
    "fgsm@2/255": 0.9583333134651184,
    "pgd10@2/255": 0.9583333134651184,
}


def _float64_trained_tiny_net() -> nn.Module:
    torch.manual_seed(0)
    model = TinyNet().double()
    images, labels, _ = square_images(128, seed=1)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(40):
        loss = F.cross_entropy(model(images.double()), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.float().eval()


def test_a_fixed_seed_evaluation_gives_the_pinned_figures():
    model = _float64_trained_tiny_net()
    images, labels, masks = square_images(24, seed=11)
    loader = [{"image": images[i:i + 12], "label": labels[i:i + 12], "id": torch.arange(i, i + 12),
               "mask": masks[i:i + 12]} for i in (0, 12)]
    res = evaluate_model(model, loader, 2, explainer=["gradcam", "layercam"], consistency=ConsistencyConfig(steps=2),
                         protocols=None, faithfulness_steps=5, epsilons=(2 / 255,))
    assert list(res) == list(PINNED)
    assert res.pop("acc_per_class") == PINNED["acc_per_class"]
    assert res == pytest.approx({k: v for k, v in PINNED.items() if k != "acc_per_class"}, abs=1e-5)
