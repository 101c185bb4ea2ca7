"""Faithfulness, equivariance, robustness and background reliance: hand-computed cases, reference
loops, and the peers' implementations (pytorch-grad-cam, torchattacks, Quantus)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.transforms.v2.functional import gaussian_blur

from consistcam.data import DemoShapes
from consistcam.data.demo import BACKGROUND_COLOURS
from consistcam.metrics import (
    AdversarialAccuracy,
    InsertionDeletion,
    apply_crop_flip,
    attack_images,
    background_reliance,
    confidence_change,
    heatmap_equivariance,
    insertion_deletion,
    random_crop_flip,
    top_fraction_mask,
)
from tests.helpers import square_images, trained_tiny_net


class MeanBrightness(nn.Module):
    """p(class 0) = mean of channel 0 exactly (logits are log-probabilities), so curves are hand-computable."""

    def forward(self, x):
        f = x[:, 0].flatten(1).mean(1).clamp(1e-6, 1 - 1e-6)
        return torch.stack([f.log(), (1 - f).log()], 1)


def _half_image():
    x = torch.zeros(1, 3, 8, 8)
    x[..., :4] = 1.0  # left half bright: 32 of 64 pixels
    return x


def test_deletion_hand_computed():
    x, t = _half_image(), torch.tensor([0])
    good = insertion_deletion(MeanBrightness(), x, x[:, :1], t, steps=4, return_curves=True)
    # 16 pixels per step: the bright ones go first -> p = .5, .25, 0, 0, 0
    assert good["deletion_curve"][0].tolist() == pytest.approx([0.5, 0.25, 0, 0, 0], abs=1e-6)
    assert good["deletion"].item() == pytest.approx((0.75 + 0.25) / 8, abs=1e-6)
    bad = insertion_deletion(MeanBrightness(), x, 1 - x[:, :1], t, steps=4)
    assert bad["deletion"].item() == pytest.approx((1 + 1 + 0.75 + 0.25) / 8, abs=1e-6)


def test_insertion_matches_reference_loop():
    torch.manual_seed(0)
    model = trained_tiny_net()
    images, labels, _ = square_images(3, seed=4)
    heat = torch.rand(3, 1, 4, 4)  # coarse map, upsampled inside
    steps = 8
    got = insertion_deletion(model, images, heat, labels, steps=steps, return_curves=True)
    up = F.interpolate(heat, size=(16, 16), mode="bilinear", align_corners=False)
    blurred = gaussian_blur(images, [11, 11], [5.0, 5.0])
    for i in range(3):
        order = torch.argsort(up[i].flatten(), descending=True, stable=True)
        ins, dele = [], []
        for k in range(steps + 1):
            m = torch.zeros(256)
            m[order[: round(k * 256 / steps)]] = 1
            m = m.view(1, 1, 16, 16)
            with torch.no_grad():
                ins.append(model(blurred[i:i + 1] * (1 - m) + images[i:i + 1] * m).softmax(1)[0, labels[i]])
                dele.append(model(images[i:i + 1] * (1 - m)).softmax(1)[0, labels[i]])
        assert torch.allclose(got["insertion_curve"][i], torch.stack(ins), atol=1e-5)
        assert torch.allclose(got["deletion_curve"][i], torch.stack(dele), atol=1e-5)
        assert got["insertion"][i].item() == pytest.approx(torch.trapezoid(torch.stack(ins), dx=1 / steps).item(),
                                                           abs=1e-5)


def test_confidence_change_hand_computed_and_top_fraction():
    x, t = torch.ones(2, 3, 4, 4), torch.tensor([0, 0])
    h = torch.stack([torch.full((1, 4, 4), 0.5), torch.ones(1, 4, 4)])
    out = confidence_change(MeanBrightness(), x, h, t)
    assert out["average_drop"].tolist() == pytest.approx([0.5, 0.0], abs=1e-5)  # o = 1, p = .5 and 1
    assert out["increase_in_confidence"].tolist() == [0.0, 0.0]
    mask = top_fraction_mask(torch.arange(16.0).view(1, 1, 4, 4), 0.25)
    assert mask.flatten().tolist() == [0.0] * 12 + [1.0] * 4
    top = confidence_change(MeanBrightness(), x[:1], torch.arange(16.0).view(1, 1, 4, 4), t[:1], top_fraction=0.25)
    assert top["average_drop"].item() == pytest.approx(0.75, abs=1e-5)


def test_average_drop_matches_pytorch_grad_cam():
    """pytorch-grad-cam's DropInConfidence is the absolute drop max(0, o - p); ours is relative to o."""
    from pytorch_grad_cam.metrics.cam_mult_image import DropInConfidence, IncreaseInConfidence
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget

    model = trained_tiny_net()
    images, labels, _ = square_images(6, seed=5)
    heat = torch.rand(6, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    targets = [ClassifierOutputSoftmaxTarget(int(c)) for c in labels]
    theirs_drop = DropInConfidence()(images, heat[:, 0].numpy(), targets, model)
    theirs_inc = IncreaseInConfidence()(images, heat[:, 0].numpy(), targets, model)
    ours = confidence_change(model, images, heat, labels)
    with torch.no_grad():
        o = model(images).softmax(1).gather(1, labels[:, None]).squeeze(1)
    assert torch.allclose(ours["average_drop"] * o, torch.from_numpy(theirs_drop).flatten(), atol=1e-6)
    assert ours["increase_in_confidence"].tolist() == torch.from_numpy(theirs_inc).flatten().tolist()


def test_deletion_curve_matches_quantus_pixel_flipping():
    quantus = pytest.importorskip("quantus")
    model = trained_tiny_net()
    images, labels, _ = square_images(4, size=12, seed=6)
    heat = torch.rand(4, 1, 12, 12, generator=torch.Generator().manual_seed(2))  # distinct values: no ties
    ours = insertion_deletion(model, images, heat, labels, steps=9, return_curves=True)["deletion_curve"]
    # Quantus ranks the map broadcast over channels: 16 pixels x 3 channels per step = 144 / 9 pixels
    metric = quantus.PixelFlipping(features_in_step=3 * 16, perturb_baseline=0.0, disable_warnings=True,
                                   display_progressbar=False)
    theirs = metric(model=model, x_batch=images.numpy(), y_batch=labels.numpy(), a_batch=heat.numpy(),
                    device="cpu", softmax=True)
    # Quantus records the curve after each step; ours also has the unperturbed start
    assert torch.allclose(ours[:, 1:], torch.tensor(theirs, dtype=torch.float32), atol=1e-5)


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
    from consistcam.attack import masked_attack

    ours = masked_attack(model, images, labels, None, eps=eps, alpha=eps / 4, steps=10, random_start=False)
    theirs = torchattacks.PGD(model, eps=eps, alpha=eps / 4, steps=10, random_start=False)(images, labels)
    assert torch.allclose(ours, theirs, atol=1e-6)


def test_adversarial_accuracy_and_merge():
    model = trained_tiny_net()
    images, labels, _ = square_images(64, seed=8)
    with torch.no_grad():
        clean = (model(images).argmax(1) == labels).float().mean().item()
    whole = AdversarialAccuracy(epsilons=(0.0, 2 / 255, 8 / 255))
    whole.update(model, images, labels, torch.Generator().manual_seed(0))
    out = whole.compute()
    assert out["fgsm@0/255"].item() == pytest.approx(clean) and out["pgd10@0/255"].item() == pytest.approx(clean)
    assert out["pgd10@8/255"] <= out["pgd10@2/255"] <= clean
    assert out["pgd10@8/255"] <= out["fgsm@8/255"] + 1e-6 and out["pgd10@8/255"] < clean
    a, b = AdversarialAccuracy(attacks=("fgsm",)), AdversarialAccuracy(attacks=("fgsm",))
    a.update(model, images[:20], labels[:20])
    b.update(model, images[20:], labels[20:])
    one = AdversarialAccuracy(attacks=("fgsm",))
    one.update(model, images, labels)
    a.merge_state(b)
    assert a.compute() == one.compute()
    m1, m2, m12 = InsertionDeletion(4), InsertionDeletion(4), InsertionDeletion(4)
    heat = torch.rand(64, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    m1.update(model, images[:10], heat[:10], labels[:10])
    m2.update(model, images[10:], heat[10:], labels[10:])
    m12.update(model, images, heat, labels)
    m1.merge_state(m2)
    assert all(torch.allclose(m1.compute()[k], m12.compute()[k]) for k in ("insertion", "deletion"))


class BorderColour(nn.Module):
    """Classifies by the colour of the image border: a pure background shortcut."""

    def forward(self, x):
        border = torch.cat([x[..., 0, :], x[..., -1, :], x[..., 1:-1, 0], x[..., 1:-1, -1]], -1).mean(-1)
        return F.normalize(border, dim=1) @ F.normalize(BACKGROUND_COLOURS[:3], dim=1).T * 50


def test_background_reliance_of_a_shortcut_model():
    ds = DemoShapes("test_correlated", num_classes=3, size=24, seed=3)
    from consistcam.data import build_transform

    res = background_reliance(BorderColour(), ds, build_transform(), subset=120, batch_size=64)
    # the border colour is the background's (stripes and noise make it imperfect): same background,
    # same answers; the next class's background, the next class
    assert res["bg/original"] > 0.85 and abs(res["bg/mixed_same"] - res["bg/original"]) < 0.05
    assert res["bg/no_fg"] == res["bg/original"] and res["bg/mixed_next"] < 0.1
    assert res["bg_gap"] == pytest.approx(res["bg/mixed_same"] - res["bg/mixed_rand"]) and res["bg_gap"] > 0.4


def test_multilabel_map_matches_sklearn():
    from sklearn.metrics import average_precision_score

    from consistcam.metrics import evaluate_model

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
    from consistcam.metrics import evaluate_model

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
    from consistcam.attack import mask_from_boxes
    from consistcam.explain import explain
    from consistcam.metrics import energy_inside, evaluate_model

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
