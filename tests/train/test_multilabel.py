"""Multi-label training: the task (sigmoid + BCE), its metrics, the multi-label demo set, ECL's
per-(image, class) consistency reduced to one weight per image, and train -> evaluate end to end."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torchmetrics.classification import MultilabelAveragePrecision, MultilabelF1Score

from consistcam.cli import main
from consistcam.consistency import ConsistencyConfig, explanation_consistency
from consistcam.consistency.multilabel import (
    _union_heatmap_foreground,
    class_prediction_consistency,
    multilabel_consistency,
    reduce_pairs,
)
from consistcam.data import build_dataset, build_transform, collate
from consistcam.data.demo import make_demo_split
from consistcam.data.masks import mask_from_boxes
from consistcam.models import create
from consistcam.train import Task, TrainConfig, Trainer
from consistcam.train.task import f1_from_counts, mean_average_precision, multilabel_counts, resolve_task
from consistcam.train.trainer import average_flat
from consistcam.utils import DistInfo

DATA = "demo:n=32,n_test=16,size=16,objects=2"
ECL = {"warmup": 1, "update_every": 1, "score_batch_size": 32, "consistency": {"steps": 1}}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One thread: tiny models on a shared 2-core machine are many times slower with more."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _config(tmp_path, method="erm", **kw) -> TrainConfig:
    return TrainConfig.from_dict({"data": DATA, "method": method, "epochs": 2, "batch_size": 16,
                                  "eval_batch_size": 32, "device": "cpu", "out": str(tmp_path / method),
                                  "ecl": ECL, **kw})


# -- task and metrics --------------------------------------------------------------------------------
def test_task_resolution_and_bce_on_class_ids():
    assert resolve_task("auto", True) and not resolve_task("auto", False)
    assert resolve_task("multilabel", False) and not resolve_task("single", False)
    with pytest.raises(ValueError, match="task: 'single'.*voc:x has multi-hot labels"):
        resolve_task("single", True, "voc:x")
    logits, ids = torch.randn(5, 3, generator=torch.Generator().manual_seed(0)), torch.tensor([0, 2, 1, 1, 0])
    task = Task(multilabel=True)
    one_hot = F.one_hot(ids, 3).float()
    assert torch.allclose(task.loss(logits, ids), F.binary_cross_entropy_with_logits(logits, one_hot))
    assert task.correct(one_hot * 20 - 10, ids) == 5


def test_f1_and_map_match_torchmetrics():
    g = torch.Generator().manual_seed(1)
    labels = (torch.rand(40, 5, generator=g) < 0.4).long()
    labels[0] = 1  # every class present
    logits = 2 * labels - 1 + 1.5 * torch.randn(40, 5, generator=g)
    counts = multilabel_counts(logits[:25], labels[:25]) + multilabel_counts(logits[25:], labels[25:])  # batches add
    ref_f1 = MultilabelF1Score(5, average="none")(logits.sigmoid(), labels)
    assert torch.allclose(f1_from_counts(counts).float(), ref_f1, atol=1e-6)
    ref_map = MultilabelAveragePrecision(5, average="macro")(logits.sigmoid(), labels)
    assert mean_average_precision(logits, labels) == pytest.approx(ref_map.item(), abs=1e-6)
    # a class without positives is left out of the mean (VOC's protocol) instead of counting as 0
    labels[:, 4] = 0
    present = MultilabelAveragePrecision(4, average="macro")(logits[:, :4].sigmoid(), labels[:, :4])
    assert mean_average_precision(logits, labels) == pytest.approx(present.item(), abs=1e-6)


def test_strategy_gradients_are_averaged_in_one_collective(monkeypatch):
    import consistcam.train.trainer as trainer_module

    a, b = torch.arange(6.0).view(2, 3), torch.tensor([1.0, -1.0, 4.0, 0.5])
    other = torch.cat([torch.ones(6), torch.full((4,), 3.0)])  # the other rank's flattened gradients
    calls = []

    def fake_all_reduce(t, info):
        calls.append(t.numel())
        return t.add_(other)

    monkeypatch.setattr(trainer_module, "all_reduce_sum", fake_all_reduce)
    expect_a, expect_b = (a + 1) / 2, (b + 3) / 2
    average_flat([a, b], DistInfo(rank=0, world_size=2))
    assert calls == [10]
    assert torch.equal(a, expect_a) and torch.equal(b, expect_b)


# -- data ----------------------------------------------------------------------------------------------
def test_multilabel_demo_has_one_box_per_object_and_distinct_classes():
    ds = build_dataset("demo:n=20,size=32,objects=2", "train", build_transform(None, "none"))
    assert ds.multilabel
    batch = collate([ds[i] for i in range(20)])
    assert batch["label"].shape == (20, 4) and (batch["label"].sum(1) == 2).all()
    for i in range(20):
        boxes, classes = batch["boxes"][i], batch["box_labels"][i]
        assert sorted(classes.tolist()) == batch["label"][i].nonzero().flatten().tolist()
        area = mask_from_boxes([boxes[:1]], (32, 32)) * mask_from_boxes([boxes[1:]], (32, 32))
        assert area.sum() == 0  # objects in separate cells
        assert (batch["mask"][i] <= mask_from_boxes([boxes], (32, 32))[0]).all()  # mask inside the boxes
    # objects=1 is the single-label set, unchanged
    single = build_dataset("demo:n=8,size=16", "train")
    images, labels, _, _ = make_demo_split(8, 4, 16, 0.9, 0, "train")
    assert not single.multilabel and single.labels == labels.tolist() and torch.equal(single.images, images)
    with pytest.raises(ValueError, match="objects must be in"):
        build_dataset("demo:n=8,objects=5", "train")


# -- multi-label consistency ---------------------------------------------------------------------------
def test_reduce_pairs_by_hand():
    rows = torch.tensor([0, 0, 2, 2])
    vals = {"E": torch.tensor([0.2, 0.6, 0.5, 0.5]), "S": torch.tensor([0.1, 0.9, 0.3, 0.4]),
            "P": torch.tensor([0.3, 0.3, 0.7, 0.6]), "flipped": torch.tensor([False, True, False, False]),
            "fg_area": torch.tensor([0.25, 0.25, 0.5, 0.5])}
    mean = reduce_pairs(rows, vals, 3, "mean")
    assert torch.allclose(mean["E"][[0, 2]], torch.tensor([0.4, 0.5])) and mean["E"][1].isnan()
    assert mean["flipped"].tolist() == [True, False, False] and mean["positives"].tolist() == [2, 0, 2]
    low = reduce_pairs(rows, vals, 3, "min")
    assert torch.allclose(low["E"][[0, 2]], torch.tensor([0.2, 0.5]))
    assert torch.allclose(low["S"][[0, 2]], torch.tensor([0.1, 0.3]))  # S and P of the first minimal pair
    assert torch.allclose(low["P"][[0, 2]], torch.tensor([0.3, 0.7]))
    with pytest.raises(ValueError, match="mean, min"):
        reduce_pairs(rows, vals, 3, "max")


def test_class_prediction_consistency_by_hand():
    p, q = torch.tensor([0.9, 0.6, 0.3]), torch.tensor([0.9, 0.3, 0.6])
    ratio = class_prediction_consistency(p, q, "ratio")
    assert torch.allclose(ratio, torch.tensor([1.0, 0.5, 1.0]))
    js = class_prediction_consistency(p, q, "js")
    m = (0.6 + 0.3) / 2
    kl = lambda a, b: a * math.log(a / b) + (1 - a) * math.log((1 - a) / (1 - b))  # noqa: E731
    expected = 1 - 0.5 * (kl(0.6, m) + kl(0.3, m)) / math.log(2)
    assert js[0].item() == pytest.approx(1.0) and js[1].item() == pytest.approx(expected, abs=1e-6)
    assert js[1].item() == pytest.approx(js[2].item(), abs=1e-6)  # symmetric


@pytest.fixture(scope="module")
def batch_and_model():
    torch.manual_seed(0)
    model = create("cc_resnet10", 4).eval()
    ds = build_dataset("demo:n=6,size=16,objects=2", "train", build_transform(None, "none"))
    batch = collate([ds[i] for i in range(6)])
    return model, batch


def test_each_pair_is_attacked_outside_all_boxes_of_its_image(batch_and_model):
    model, batch = batch_and_model
    cfg = ConsistencyConfig(mask="boxes", steps=2)
    out = multilabel_consistency(model, batch["image"], batch["label"], cfg, boxes=batch["boxes"],
                                 generator=torch.Generator().manual_seed(3))
    rows, classes = out["pair_row"], out["pair_class"]
    assert len(rows) == 12 and torch.equal(rows, torch.arange(6).repeat_interleave(2))
    # reference: the single-label scorer on the expanded pairs, each with every box of its image
    ref = explanation_consistency(model, batch["image"][rows], classes, cfg,
                                  boxes=[batch["boxes"][i] for i in rows.tolist()],
                                  generator=torch.Generator().manual_seed(3), return_images=True)
    assert torch.allclose(out["pair_S"], ref["S"], atol=1e-6)
    union = mask_from_boxes([batch["boxes"][i] for i in rows.tolist()], (16, 16))
    assert torch.equal(ref["foreground"], union)
    assert ((ref["adversarial"] - batch["image"][rows]) * union).abs().max() == 0  # objects untouched
    with torch.no_grad():
        z, z_adv = model(batch["image"][rows]), model(ref["adversarial"])
    pick = lambda t: t.gather(1, classes[:, None])[:, 0].sigmoid()  # noqa: E731
    assert torch.allclose(out["pair_P"], class_prediction_consistency(pick(z), pick(z_adv)), atol=1e-5)
    assert torch.allclose(out["pair_E"], (0.5 * out["pair_S"] + 0.5 * out["pair_P"]).clamp(0, 1))
    assert torch.allclose(out["E"], out["pair_E"].view(6, 2).mean(1))
    low = multilabel_consistency(model, batch["image"], batch["label"], cfg, reduce="min", boxes=batch["boxes"],
                                 generator=torch.Generator().manual_seed(3))
    assert torch.allclose(low["E"], out["pair_E"].view(6, 2).min(1).values)


def test_heatmap_foreground_is_the_union_over_positive_classes(batch_and_model):
    model, batch = batch_and_model
    cfg = ConsistencyConfig(tau=0.6)
    rows, classes = batch["label"].nonzero(as_tuple=True)
    union = _union_heatmap_foreground(model, batch["image"], rows, classes, cfg)
    from consistcam.explain import explain

    per_pair = (explain(model, batch["image"][rows], classes) >= 0.6).float()
    assert torch.equal(union, per_pair.view(6, 2, 1, 16, 16).amax(1))
    nothing = multilabel_consistency(model, batch["image"], batch["label"], ConsistencyConfig(attack="none"))
    assert torch.allclose(nothing["E"], torch.ones(6))  # no attack: perfectly consistent
    state = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    multilabel_consistency(model, batch["image"], batch["label"], ConsistencyConfig(steps=1))
    assert model.training and all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())


# -- training and evaluation ---------------------------------------------------------------------------
def test_erm_and_ecl_train_multilabel_with_map_and_f1(tmp_path):
    erm = Trainer.from_config(_config(tmp_path), progress=False)
    assert erm.task.multilabel
    records = erm.fit()
    assert {"train/loss", "test/mAP", "test/f1_macro", "test_correlated/mAP"} <= set(records[-1])
    assert len(records[-1]["test/f1_per_class"]) == 4 and 0 <= records[-1]["test/mAP"] <= 1
    ecl = Trainer.from_config(_config(tmp_path, "ecl", ecl={**ECL, "multilabel_reduce": "min"}), progress=False)
    records = ecl.fit()
    assert "consistency/E_mean" in records[1] and "consistency/E_mean" not in records[0]
    saved = load_file(str(tmp_path / "ecl" / "consistency" / "epoch_001.safetensors"))
    assert saved["ids"].tolist() == list(range(32))  # one E and one v per image
    assert saved["pair_ids"].tolist() == [i for i in range(32) for _ in range(2)]  # two positives each
    assert torch.allclose(saved["E"], saved["pair_E"].view(32, 2).min(1).values)  # multilabel_reduce: min
    assert saved["weights"].mean().item() == pytest.approx(1.0, abs=1e-5)
    assert torch.equal(ecl.method.weights, saved["weights"])


def test_multilabel_task_on_single_label_data_scores_the_one_class(tmp_path):
    cfg = _config(tmp_path, "ecl", data="demo:n=24,n_test=8,size=16", task="multilabel", epochs=1,
                  ecl={**ECL, "warmup": 0})
    trainer = Trainer.from_config(cfg, progress=False)
    record = trainer.fit()[0]
    assert trainer.task.multilabel and {"test/mAP", "test/f1_per_class"} <= set(record)
    saved = load_file(str(tmp_path / "ecl" / "consistency" / "epoch_000.safetensors"))
    labels = torch.tensor(trainer.data.train.labels)
    assert torch.equal(saved["pair_class"], labels) and torch.equal(saved["E"], saved["pair_E"])


def test_single_label_peers_refuse_multilabel_data(tmp_path):
    for method in ("cgc", "sgt", "edda", "excon"):
        with pytest.raises(ValueError, match=f"{method} explains one class per image"):
            Trainer.from_config(_config(tmp_path, method), progress=False)
    with pytest.raises(ValueError, match="task: 'single'"):
        Trainer.from_config(_config(tmp_path, task="single"), progress=False)


def test_cli_train_multilabel_ecl_then_evaluate(tmp_path):
    run = tmp_path / "run"
    assert main(["train", "--data", DATA, "--task", "multilabel", "--method", "ecl", "--epochs", "2",
                 "--ecl-warmup", "1", "--ecl-update-every", "1", "--batch-size", "16", "--device", "cpu",
                 "--set", "ecl.consistency.steps=1", "--out", str(run), "--quiet"]) == 0
    assert json.loads((run / "status.json").read_text())["state"] == "complete"
    assert main(["evaluate", str(run), "--split", "test", "--protocols", "localization", "--quiet",
                 "--no-report"]) == 0
    metrics = json.loads((run / "eval" / "metrics.json").read_text())["splits"]["test"]
    assert 0 <= metrics["mAP"] <= 1 and 0 <= metrics["energy"] <= 1
    assert len(metrics["f1_per_class"]) == 4 and metrics["f1_macro"] == pytest.approx(
        sum(metrics["f1_per_class"]) / 4, abs=1e-3)
