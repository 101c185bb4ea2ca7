"""Faithfulness, localisation and robustness metric leaves: hand-computed cases, reference loops,
and the peers' implementations (pytorch-grad-cam, Quantus)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.transforms.v2.functional import gaussian_blur

from consistcam.metrics import (
    AdversarialAccuracy,
    InsertionDeletion,
    confidence_change,
    insertion_deletion,
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


def test_insertion_deletion_states_merge():
    model = trained_tiny_net()
    images, labels, _ = square_images(24, seed=8)
    heat = torch.rand(24, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    m1, m2, m12 = InsertionDeletion(4), InsertionDeletion(4), InsertionDeletion(4)
    m1.update(model, images[:10], heat[:10], labels[:10])
    m2.update(model, images[10:], heat[10:], labels[10:])
    m12.update(model, images, heat, labels)
    m1.merge_state(m2)
    assert all(torch.allclose(m1.compute()[k], m12.compute()[k]) for k in ("insertion", "deletion"))
