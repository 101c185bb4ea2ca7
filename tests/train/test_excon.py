from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from consistcam.data.geometry import apply_crop_flip, random_crop_flip
from consistcam.explain import explain
from consistcam.models import create
from consistcam.train import TrainConfig, Trainer
from consistcam.train.methods import MethodContext, build_method
from consistcam.train.methods.excon import ExConConfig, mask_below, sup_con_loss
from consistcam.train.task import Task

TINY = dict(data="demo:n=64,n_test=32,size=16", arch="cc_resnet10", batch_size=32, eval_batch_size=64, lr=0.05)


def _strategy(model, **options):
    strategy = build_method("excon", options)
    strategy.setup(MethodContext(model=model, device=torch.device("cpu"), task=Task(), num_samples=8,
                                   train_ids=torch.arange(8)))
    return strategy


class ChannelMeans(nn.Module):
    """logits_c = mean of channel c: identity 1x1 conv (the explained layer), average pool, identity Linear.
    Grad-CAM of class c is channel c of the image itself, so every prediction and mask is known."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 1, bias=False)
        self.fc = nn.Linear(3, 3, bias=False)
        with torch.no_grad():
            self.conv.weight.copy_(torch.eye(3)[:, :, None, None])
            self.fc.weight.copy_(torch.eye(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(x).mean((2, 3)))


def _halves(left: list[float], right: list[float]) -> torch.Tensor:
    img = torch.empty(3, 8, 8)
    img[:, :, :4] = torch.tensor(left)[:, None, None]
    img[:, :, 4:] = torch.tensor(right)[:, None, None]
    return img


def _known_batch():
    """Label 0 everywhere but the last; the right half (map of the label <= 0.5) is masked to black.
    clean / masked prediction correct: (yes, yes), (no, yes), (yes, no), (no, no)."""
    images = torch.stack([
        _halves([1.0, 0.3, 0.3], [0.1, 0.3, 0.3]),  # clean 0.55 vs 0.3; masked 0.5 vs 0.15
        _halves([0.8, 0.0, 0.0], [0.0, 1.0, 0.0]),  # clean 0.4 < 0.5 (class 1); masked 0.4 vs 0
        _halves([0.9, 1.0, 0.0], [0.5, 0.0, 0.0]),  # clean 0.7 vs 0.5; masked 0.45 < 0.5 (class 1)
        _halves([0.5, 0.0, 0.1], [0.5, 0.0, 0.1]),  # label 2: constant map, all masked -> argmax 0
    ])
    return images, torch.tensor([0, 0, 0, 2])


@pytest.mark.parametrize(("keep", "expected"), [("masked", [True, True, False, False]),
                                                ("clean", [True, False, True, False]),
                                                ("both", [True, False, False, False])])
def test_masked_views_only_where_the_rule_holds_and_rejected_ones_are_negatives(keep, expected):
    model = ChannelMeans().train()
    images, labels = _known_batch()
    strategy = _strategy(model, keep=keep, fill="zero")
    crops = random_crop_flip(8, torch.Generator().manual_seed(0), scale=(0.2, 1.0))
    v = strategy.views(images, labels, crops)
    expected = torch.tensor(expected)
    assert torch.equal(v["kept"], expected)
    backup, second = apply_crop_flip(torch.cat([images, images]), crops, edges="clamp").split(4)
    masked = images.clone()
    masked[:, :, :, 4:] = 0
    masked[3] = 0
    assert torch.equal(v["masked"], masked)
    for i in range(4):
        assert torch.equal(v["view1"][i], masked[i] if expected[i] else backup[i])
    assert torch.equal(v["view2"], second)
    assert torch.equal(v["negatives"], masked[~expected])  # wrongly classified: no masked view, a negative
    without = _strategy(model, keep=keep, fill="zero", negatives=False).views(images, labels, crops)
    assert torch.equal(without["negatives"], images[:0])
    t = strategy.terms(images, labels, crops)
    assert math.isfinite(t["supcon"].item())


def test_pixels_with_normalised_map_at_most_half_are_exactly_those_filled():
    g = torch.Generator().manual_seed(0)
    images = 0.2 + 0.7 * torch.rand(3, 3, 8, 8, generator=g)
    maps = torch.rand(3, 1, 8, 8, generator=g)
    maps[0, 0, 0, :4] = 0.5  # exactly at the threshold: filled (the reference's `<= tau`)
    below = (maps <= 0.5).expand_as(images)
    out = mask_below(nn.Identity(), images, maps, 0.5, "zero")
    assert torch.equal(out == 0, below) and torch.equal(out[~below], images[~below])
    model = create("cc_resnet10", 4)  # Normalize inside: 0 after normalisation is its mean colour
    out = mask_below(model, images, maps, 0.5)
    assert torch.equal(out, torch.where(below, model.mean.expand_as(images), images))
    # through the strategy: the map is explain()'s without ReLU at the last main-path conv, min-max normalised
    torch.manual_seed(0)
    model = create("cc_resnet10", 4).train()
    images, labels = 0.2 + 0.7 * torch.rand(6, 3, 16, 16, generator=g), torch.randint(0, 4, (6,), generator=g)
    v = _strategy(model, fill="zero").views(images, labels)
    below = (explain(model, images, labels, layer="model.layer4.0.conv2", relu=False) <= 0.5).expand_as(images)
    assert below.any() and (~below).any()
    assert torch.equal(v["masked"] == 0, below)


def reference_supcon(features, labels, temperature, base_temperature, actual_bsz=None):
    """Transcription of SupContrast/ExCon ``SupConLoss.forward`` (contrast_mode='all'); ``actual_bsz``
    set = ``background_anchor == 0`` (rows from actual_bsz on are background samples)."""
    bsz, views = features.shape[:2]
    mask = torch.eq(labels[:, None], labels[None]).float()
    if actual_bsz is not None:
        mask[actual_bsz:] = 0
        mask[:, actual_bsz:] = 0
    contrast = torch.cat(torch.unbind(features, dim=1), dim=0)
    logits = contrast @ contrast.T / temperature
    logits = logits - logits.max(1, keepdim=True).values.detach()
    mask = mask.repeat(views, views)
    logits_mask = torch.scatter(torch.ones_like(mask), 1, torch.arange(bsz * views)[:, None], 0)
    mask = mask * logits_mask
    log_prob = logits - torch.log((torch.exp(logits) * logits_mask).sum(1, keepdim=True))
    denominator = mask.sum(1)
    if actual_bsz is not None:
        denominator[denominator == 0] = 1
    loss = -(temperature / base_temperature) * (mask * log_prob).sum(1) / denominator
    loss = loss.view(views, bsz).mean()
    return loss * (bsz / actual_bsz) if actual_bsz is not None else loss


def test_supcon_matches_the_reference_and_a_hand_computation():
    g = torch.Generator().manual_seed(0)
    feats = F.normalize(torch.randn(6, 2, 5, generator=g), dim=2)
    labels = torch.tensor([0, 1, 0, 2, 1, 1])
    flat = torch.cat([feats[:, 0], feats[:, 1]])
    ours = sup_con_loss(flat, labels.repeat(2), temperature=0.1, base_temperature=0.07)
    assert ours.item() == pytest.approx(reference_supcon(feats, labels, 0.1, 0.07).item(), rel=1e-5)
    # the last two rows as background samples: denominators only (README --background_anchor=0)
    anchors = torch.tensor([True] * 4 + [False] * 2).repeat(2)
    ours = sup_con_loss(flat, labels.repeat(2), anchors, 0.1, 0.07)
    assert ours.item() == pytest.approx(reference_supcon(feats, labels, 0.1, 0.07, actual_bsz=4).item(), rel=1e-5)
    # three unit vectors by hand: rows 0 and 1 share a label, row 2 is alone (no positives: adds 0)
    z = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]])
    t = 0.5
    e = [[math.exp(sum(a * b for a, b in zip(u, v)) / t) for v in z.tolist()] for u in z.tolist()]
    l0 = -math.log(e[0][1] / (e[0][1] + e[0][2]))
    l1 = -math.log(e[1][0] / (e[1][0] + e[1][2]))
    got = sup_con_loss(z, torch.tensor([0, 0, 1]), temperature=t, base_temperature=t)
    assert got.item() == pytest.approx((l0 + l1 + 0.0) / 3, rel=1e-6)


def test_head_state_round_trips_exactly_and_is_required():
    torch.manual_seed(0)
    model = create("cc_resnet10", 4)
    a = _strategy(model, projection_dim=16)
    assert [tuple(p.shape) for p in a.head.parameters()] == [(256, 256), (256,), (16, 256), (16,)]
    state = a.state_dict()
    assert sorted(state) == ["head.0.bias", "head.0.weight", "head.2.bias", "head.2.weight"]
    b = _strategy(model, projection_dim=16)  # a fresh head: different initial weights
    params = list(b.head.parameters())
    assert not torch.equal(params[0], state["head.0.weight"])
    b.load_state_dict({k: v.clone() for k, v in state.items()})
    assert all(torch.equal(b.state_dict()[k], v) for k, v in state.items())
    assert all(p is q for p, q in zip(params, b.head.parameters()))  # in place: the optimizer keeps them
    with pytest.raises(ValueError, match="no state"):
        b.load_state_dict({**state, "weights": torch.ones(1)})
    with pytest.raises(RuntimeError, match="setup"):
        build_method("excon").parameters(model)  # the head is built in setup


@pytest.mark.parametrize("classifier", ["probe", "joint"])
def test_probe_trains_the_classifier_on_detached_features(classifier):
    torch.manual_seed(0)
    model = create("cc_resnet10", 4).train()
    g = torch.Generator().manual_seed(1)
    images, labels = torch.rand(8, 3, 16, 16, generator=g), torch.tensor([0, 1, 2, 3] * 2)
    strategy = _strategy(model, classifier=classifier)
    torch.manual_seed(0)
    t = strategy.terms(images, labels)
    assert all(p.grad is None for p in model.parameters())  # the explanation pass leaves no gradients
    conv = model.model.conv1.weight
    ce_conv, ce_fc = torch.autograd.grad(t["ce"], [conv, model.model.fc.weight], retain_graph=True,
                                         allow_unused=True)
    sc_fc, sc_head = torch.autograd.grad(t["supcon"], [model.model.fc.weight, strategy.head[0].weight],
                                         retain_graph=True, allow_unused=True)
    assert ce_fc.abs().sum() > 0 and sc_head.abs().sum() > 0
    assert sc_fc is None or sc_fc.abs().sum() == 0  # SupCon never trains the classifier
    assert (ce_conv is None) == (classifier == "probe")  # probe: CE reaches only the classifier


def test_one_epoch_on_demo_data_trains_the_head_and_checkpoints_it(tmp_path):
    cfg = TrainConfig.from_dict({**TINY, "method": "excon", "epochs": 1, "out": str(tmp_path)})
    assert cfg.method_options == ExConConfig()
    trainer = Trainer.from_config(cfg, progress=False)
    assert trainer.optimizer.param_groups[1]["params"] == list(trainer.method.head.parameters())
    before = {k: v.clone() for k, v in trainer.method.state_dict().items()}
    record = trainer.fit()[0]
    assert math.isfinite(record["train/loss"]) and math.isfinite(record["train/supcon"])
    assert 0 <= record["train/kept"] <= 1
    after = trainer.method.state_dict()
    assert all(not torch.equal(before[k], after[k]) for k in before)  # the optimizer stepped the head
    saved = load_file(str(tmp_path / "checkpoint.safetensors"))
    assert all(torch.equal(saved[f"strategy.{k}"], v) for k, v in after.items())
