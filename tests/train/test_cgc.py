from __future__ import annotations

import copy
import math

import pytest
import torch
from torch.nn.modules.batchnorm import _BatchNorm

from consistcam.config import ConfigError
from consistcam.data.geometry import apply_crop_flip, random_crop_flip
from consistcam.models import create
from consistcam.train import TrainConfig, Trainer
from consistcam.train.methods import MethodContext, build_method
from consistcam.train.methods.cgc import CGCConfig, cgc_embedding, info_nce
from consistcam.train.methods.crops import resized_crop_flip
from consistcam.train.task import Task

TINY = dict(data="demo:n=64,n_test=32,size=16", arch="cc_resnet10", batch_size=32, eval_batch_size=64, lr=0.05)


def _strategy(model, **options):
    strategy = build_method("cgc", options)
    strategy.setup(MethodContext(model=model, device=torch.device("cpu"), task=Task(), num_samples=8,
                                   train_ids=torch.arange(8)))
    return strategy


def _batch(n: int = 8, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, 16, 16, generator=g), torch.randint(0, 4, (n,), generator=g)


def test_info_nce_prefers_second_view_maps_that_follow_the_transform():
    g = torch.Generator().manual_seed(0)
    maps = torch.rand(6, 1, 12, 12, generator=g) ** 6  # peaked, distinct maps
    transforms = random_crop_flip(6, g, scale=(0.3, 1.0))
    positives = cgc_embedding(apply_crop_flip(maps, transforms))  # T(G(x))
    following = apply_crop_flip(maps, transforms)  # G(T(x)) of a perfectly equivariant explainer
    aligned = info_nce(cgc_embedding(following), positives, 0.5)
    shuffled = info_nce(cgc_embedding(following[[1, 2, 3, 4, 5, 0]]), positives, 0.5)
    assert aligned < shuffled - 0.1


def test_info_nce_matches_a_hand_computation_on_three_samples():
    anchors = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]])
    positives = torch.tensor([[0.8, 0.6], [1.0, 0.0], [0.0, 1.0]])
    tau = 0.5
    a, p = anchors.tolist(), positives.tolist()

    def dot(u, v):
        return sum(x * y for x, y in zip(u, v))

    expected = 0.0
    for i in range(3):
        pos = math.exp(dot(a[i], p[i]) / tau)
        neg = sum(math.exp(dot(a[i], a[j]) / tau) for j in range(3) if j != i)
        expected += -math.log(pos / (pos + neg)) / 3
    assert info_nce(anchors, positives, tau).item() == pytest.approx(expected, rel=1e-6)
    # the reference's map embedding: divide by the sum, add eps, L2-normalise
    emb = cgc_embedding(torch.tensor([[[[1.0, 3.0]]]]))
    assert emb[0].tolist() == pytest.approx([1 / math.sqrt(10), 3 / math.sqrt(10)], rel=1e-5)
    assert torch.isfinite(cgc_embedding(torch.zeros(1, 1, 2, 2))).all()  # an all-zero map is defined


def test_contrastive_term_alone_reaches_the_backbone_through_the_map():
    torch.manual_seed(0)
    model = create("cc_resnet10", 4).train()
    strategy = _strategy(model)
    images, labels = _batch()
    contrastive = strategy.terms(images, labels)["contrastive"]
    net = model.model
    conv1, fc = torch.autograd.grad(contrastive, [net.conv1.weight, net.fc.weight])
    assert torch.isfinite(conv1).all() and conv1.abs().sum() > 0  # the first layer of the backbone
    assert fc.abs().sum() > 0  # the head enters the map only through dy/dA: double backprop works
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("forward", ["separate", "joint"])
def test_batchnorm_statistics_and_modes_follow_plain_forwards_of_the_views(forward):
    torch.manual_seed(0)
    model = create("cc_resnet10", 4).train()
    model.model.layer1.eval()  # a frozen sub-module keeps its own mode
    reference = copy.deepcopy(model)
    modes = [m.training for m in model.modules()]
    images, labels = _batch()
    transforms = resized_crop_flip(8, (16, 16), generator=torch.Generator().manual_seed(1))
    strategy = _strategy(model, forward=forward)
    loss = strategy.terms(images, labels, transforms)["ce"]
    loss.backward()  # in-place buffer restores must not break the graph
    second = apply_crop_flip(images, transforms, edges="clamp")
    with torch.no_grad():  # separate: one forward per view, in order (reference); joint: one of both
        for views in ([images, second] if forward == "separate" else [torch.cat([images, second])]):
            reference(views)
    assert [m.training for m in model.modules()] == modes
    for (name, buf), ref in zip(model.named_buffers(), reference.buffers(), strict=True):
        assert torch.allclose(buf, ref, atol=1e-6), name
    tracked = [m.num_batches_tracked.item() for m in model.modules() if isinstance(m, _BatchNorm)]
    assert set(tracked) == {0, 2 if forward == "separate" else 1}  # 0: the eval-mode layer1


def test_one_epoch_on_demo_data_trains_and_logs_the_contrastive_term(tmp_path):
    cfg = TrainConfig.from_dict({**TINY, "method": "cgc", "epochs": 1, "out": str(tmp_path),
                                 "cgc": {"lam": 0.5, "temperature": 0.5}})
    assert cfg.method_options == CGCConfig()
    trainer = Trainer.from_config(cfg, progress=False)
    original, seen = trainer.method.loss, []

    def watched(batch):
        seen.append(all(m.training for m in trainer.model.modules()))
        out = original(batch)
        seen.append(all(m.training for m in trainer.model.modules()))
        return out

    trainer.method.loss = watched
    record = trainer.fit()[0]
    assert seen and all(seen)  # the model stays in train mode between and across steps
    assert math.isfinite(record["train/loss"]) and record["train/contrastive"] > 0
    assert record["train/loss"] == pytest.approx(record["train/ce"] + 0.5 * record["train/contrastive"], rel=1e-4)
    with pytest.raises(ConfigError, match=r"cgc.crop_scale: expected two area fractions"):
        TrainConfig.from_dict({**TINY, "method": "cgc", "cgc": {"crop_scale": [0.5, 0.1]}})
    with pytest.raises(ConfigError, match="cgc.explainer"):
        TrainConfig.from_dict({**TINY, "method": "cgc", "cgc": {"explainer": "scorecam"}})
