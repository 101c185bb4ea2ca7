"""The group-robustness baselines: jtt, groupdro, reweight_groups (weighting rules by hand, a port of the
reference's Group DRO step, one demo epoch each through the CLI, exact resume, refusals)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from consistcam.cli import main
from consistcam.data.demo import DemoShapes
from consistcam.models import create
from consistcam.run.layout import JTT_DIR, JTT_ERROR_SET_FILE
from consistcam.train import LoopSettings, RunOutput, Schedule, TrainConfig, Trainer
from consistcam.train.data import TrainData
from consistcam.train.methods import build_method
from consistcam.train.methods.groupdro import group_mean_losses, update_group_weights
from consistcam.train.methods.groups import conflicting_groups, group_index, inverse_frequency_weights
from consistcam.train.methods.jtt import upweight

TINY = dict(data="demo:n=64,n_test=40,size=16", arch="cc_resnet10", batch_size=32, eval_batch_size=200, lr=0.05)


def tiny(out, method: str, epochs: int = 1, **kw) -> TrainConfig:
    return TrainConfig.from_dict({**TINY, "method": method, "epochs": epochs, "out": str(out), **kw})


def test_group_cells_by_hand():
    labels, backgrounds = torch.tensor([0, 0, 1, 1, 2]), torch.tensor([0, 1, 1, 0, 2])
    assert group_index(labels, backgrounds, 3, "class_alignment").tolist() == [0, 1, 2, 3, 4]
    assert group_index(labels, backgrounds, 3, "class_background").tolist() == [0, 1, 4, 3, 8]
    assert conflicting_groups(3, "class_alignment").tolist() == [False, True] * 3
    assert conflicting_groups(2, "class_background").tolist() == [False, True, True, False]
    with pytest.raises(ValueError, match="grouping must be one of"):
        group_index(labels, backgrounds, 3, "class")


def test_inverse_group_frequency_by_hand():
    # cells 0, 1 and 3 hold 3, 1 and 1 of the 5 trained samples (id 4 is not trained): N / (G' n_g)
    w = inverse_frequency_weights(torch.tensor([0, 0, 0, 1, -1, 3]), 4)
    assert w.tolist() == pytest.approx([5 / 9, 5 / 9, 5 / 9, 5 / 3, 0.0, 5 / 3])
    assert w[w > 0].mean().item() == pytest.approx(1.0)  # ERM's learning-rate scale


def test_jtt_upweighting_by_hand():
    assert upweight(torch.tensor([True, False, False, False]), 5.0).tolist() == pytest.approx([2.5, 0.5, 0.5, 0.5])
    assert upweight(torch.zeros(3, dtype=torch.bool), 50.0).tolist() == pytest.approx([1.0, 1.0, 1.0])


def test_group_dro_step_by_hand():
    q = update_group_weights(torch.tensor([0.5, 0.5, 0.0]), torch.tensor([1.0, 2.0, 0.0]), eta=0.1)
    z = math.exp(0.1) + math.exp(0.2)
    assert q.tolist() == pytest.approx([math.exp(0.1) / z, math.exp(0.2) / z, 0.0])
    # adjustment C / sqrt(n_g) with C = 1, n = (4, 1): exponents 0.1 * 1.5 and 0.1 * 3
    q = update_group_weights(torch.tensor([0.5, 0.5]), torch.tensor([1.0, 2.0]), 0.1, torch.tensor([0.5, 1.0]))
    z = math.exp(0.15) + math.exp(0.3)
    assert q.tolist() == pytest.approx([math.exp(0.15) / z, math.exp(0.3) / z])
    per_sample = torch.tensor([1.0, 3.0, 5.0], requires_grad=True)
    mean, share = group_mean_losses(per_sample, torch.tensor([0, 0, 2]), 3)
    assert mean.tolist() == [2.0, 0.0, 5.0] and share.tolist() == [2.0, 0.0, 5.0]
    (torch.tensor([0.2, 0.3, 0.5]) * share).sum().backward()
    assert per_sample.grad.tolist() == pytest.approx([0.1, 0.1, 0.5])  # q_g / n_g for each sample of g


def _reference_group_dro(losses_per_step, groups_per_step, n_groups, step_size, adj, counts):
    """Ported from kohpangwei/group_DRO, loss.py (MIT licence): LossComputer.compute_group_avg and
    compute_robust_loss, without CUDA and logging; returns (robust loss, q) after every step."""
    adv_probs = torch.ones(n_groups) / n_groups
    out = []
    for losses, group_idx in zip(losses_per_step, groups_per_step):
        group_map = (group_idx == torch.arange(n_groups).unsqueeze(1).long()).float()
        group_count = group_map.sum(1)
        group_denom = group_count + (group_count == 0).float()
        group_loss = (group_map @ losses.view(-1)) / group_denom
        adjusted_loss = group_loss
        if torch.all(adj > 0):
            adjusted_loss += adj / torch.sqrt(counts)  # in place: the reference's robust loss includes it
        adv_probs = adv_probs * torch.exp(step_size * adjusted_loss.data)
        adv_probs = adv_probs / (adv_probs.sum())
        out.append(((group_loss @ adv_probs).item(), adv_probs.clone()))
    return out


@pytest.mark.parametrize("c", [0.0, 2.0])
def test_group_dro_matches_the_reference_over_several_steps(c):
    g = torch.Generator().manual_seed(0)
    steps = [(torch.rand(12, generator=g) * 3, torch.randint(0, 4, (12,), generator=g)) for _ in range(6)]
    counts = torch.tensor([40.0, 5.0, 30.0, 9.0])
    ref = _reference_group_dro([s[0] for s in steps], [s[1] for s in steps], 4, 0.3, torch.full((4,), c), counts)
    q = torch.full((4,), 0.25)
    adjustment = c / counts.sqrt() if c > 0 else None
    for (losses, groups), (ref_loss, ref_q) in zip(steps, ref):
        mean, share = group_mean_losses(losses, groups, 4)
        q = update_group_weights(q, mean, 0.3, adjustment)
        assert torch.allclose(q, ref_q, atol=1e-6)
        constant = 0.0 if adjustment is None else (q * adjustment).sum().item()  # the reference adds it in place
        assert (q * share).sum().item() + constant == pytest.approx(ref_loss, abs=1e-5)


@pytest.mark.parametrize("method", ["jtt", "groupdro", "reweight_groups"])
def test_each_method_trains_on_the_demo_set_through_the_cli(tmp_path, method):
    # jtt: epoch 0 identifies, epoch 1 trains the up-weighted model (the one epoch that is jtt's own)
    epochs = "2" if method == "jtt" else "1"
    args = ["train", "--data", TINY["data"], "--arch", "cc_resnet10", "--batch-size", "32", "--epochs", epochs,
            "--method", method, "--out", str(tmp_path), "--quiet"]
    assert main(args) == 0
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == int(epochs) and all(math.isfinite(r["train/loss"]) for r in records)
    if method == "groupdro":
        assert 0 < records[0]["train/q_conflicting"] < 1
    if method == "jtt":
        assert records[1]["jtt/errors"] > 0 and (tmp_path / JTT_DIR / JTT_ERROR_SET_FILE).is_file()


def test_jtt_picks_the_identification_models_errors_then_restarts_model_and_optimizer(tmp_path):
    trainer = Trainer.from_config(tiny(tmp_path, "jtt", epochs=2, jtt={"lambda_up": 6.0}), progress=False)
    initial = {k: v.clone() for k, v in trainer.module.state_dict().items()}
    trainer.fit(stop_after=1)
    assert trainer.optimizer.state  # momentum buffers after the identification epoch
    with torch.no_grad():  # the identification model's predictions on the un-augmented training images
        trainer.module.eval()
        batch = next(iter(trainer.data.scoring_loader(64)))
        wrong = trainer.module(batch["image"]).argmax(1) != batch["label"]
        trainer.module.train()
    logs = trainer.method.on_epoch_start(1)
    saved = load_file(str(tmp_path / JTT_DIR / JTT_ERROR_SET_FILE))
    assert torch.equal(saved["error"], wrong) and logs["jtt/errors"] == int(wrong.sum()) > 0
    assert torch.allclose(saved["weights"], upweight(wrong, 6.0))
    assert saved["weights"][wrong].unique().item() == pytest.approx(6 * saved["weights"][~wrong].unique().item())
    assert all(torch.equal(v, initial[k]) for k, v in trainer.module.state_dict().items())
    assert not trainer.optimizer.state and trainer.module.training
    assert torch.equal(trainer.method.sample_weights(batch["id"]), saved["weights"])


def _resume_matches(tmp_path, method, **kw):
    full = Trainer.from_config(tiny(tmp_path / "full", method, epochs=3, **kw), progress=False)
    full.fit()
    part = Trainer.from_config(tiny(tmp_path / "part", method, epochs=3, **kw), progress=False)
    part.fit(stop_after=1)
    resumed = Trainer.from_config(tiny(tmp_path / "part", method, epochs=3, **kw), progress=False, resume=True)
    resumed.fit()
    a = load_file(str(tmp_path / "full" / "model.safetensors"))
    b = load_file(str(tmp_path / "part" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    return full, resumed


def test_jtt_resume_before_the_restart_is_exact(tmp_path):
    # stopped after epoch 0 of T = 2: the checkpoint carries the initial weights the restart goes back to
    kw = {"jtt": {"identification_epochs": 2}}
    state = None
    full, resumed = _resume_matches(tmp_path, "jtt", **kw)
    state = load_file(str(tmp_path / "full" / "checkpoint.safetensors"))
    assert not any(k.startswith("strategy.initial.") for k in state)  # dropped once restarted
    assert torch.equal(full.method.weights, resumed.method.weights) and resumed.method.identified


def test_groupdro_resume_is_exact(tmp_path):
    full, resumed = _resume_matches(tmp_path, "groupdro", groupdro={"eta": 0.5, "adjustment": 1.0})
    assert torch.equal(full.method.q, resumed.method.q)
    assert not torch.allclose(full.method.q, full.method.q.mean().expand_as(full.method.q))  # q moved


def test_groupdro_balanced_sampling_resume_is_exact(tmp_path):
    full, resumed = _resume_matches(tmp_path, "groupdro", groupdro={"sampler": "group_balanced"})
    assert torch.equal(full.method.q, resumed.method.q)


@pytest.mark.parametrize("method, options", [("groupdro", {"sampler": "group_balanced"}),
                                             ("reweight_groups", {"form": "sampling"})])
def test_group_balanced_epochs_draw_every_cell_equally_often(tmp_path, method, options):
    # demo data with rho 0.9: the conflicting cells hold ~10 % of the samples; drawn balanced, each of
    # the 2C cells gets 1/(2C) of every epoch's draws in expectation
    kw = dict(data="demo:n=400,n_test=40,size=16", batch_size=50)
    trainer = Trainer.from_config(tiny(tmp_path, method, **kw, **{method: options}), progress=False)
    table = trainer.method.table if method == "groupdro" else None
    if table is None:
        from consistcam.train.methods.groups import training_groups
        table, _ = training_groups(trainer.method.ctx, method, "class_alignment")
    cells = 2 * len(trainer.classes)
    weights = trainer.method.sampling_weights()
    assert weights is not None and trainer.method.sample_weights(torch.arange(4)) is None  # unweighted loss
    totals = torch.zeros(cells, dtype=torch.float64).index_add_(0, table, weights.double())
    assert torch.allclose(totals, totals.mean().expand(cells))  # every cell the same total weight
    drawn = torch.cat([b["id"] for seed in range(20) for b in trainer.data.train_loader(50, seed, weights=weights)])
    share = torch.bincount(table[drawn], minlength=cells).double() / len(drawn)
    assert len(drawn) == 20 * 400 and (share - 1 / cells).abs().max() < 0.02
    natural = torch.bincount(table, minlength=cells).double() / 400
    assert natural[1::2].sum() < 0.2 < share[1::2].sum()  # the conflicting cells: rare as they are, half of the draws
    assert main(["train", "--data", kw["data"], "--arch", "cc_resnet10", "--batch-size", "50", "--epochs", "1",
                 "--method", method, *[a for k, v in options.items() for a in ("--set", f"{method}.{k}={v}")],
                 "--out", str(tmp_path / "cli"), "--quiet"]) == 0


@pytest.mark.parametrize("method", ["groupdro", "reweight_groups"])
def test_group_methods_refuse_data_without_groups(method):
    ds = DemoShapes("train", n=16, size=16)
    ds.groups = None  # as any data set without a background annotation
    data = TrainData(ds, {}, None, None)
    from consistcam.data import build_transform

    data.train_transform = data.eval_transform = build_transform(None, "none")
    model = create("cc_resnet10", 4)
    with pytest.raises(ValueError, match=f"{method} needs the background group of every training image"):
        Trainer(model, data, build_method(method), torch.optim.SGD(model.parameters(), lr=0.1),
                Schedule(0.1, 1), LoopSettings(epochs=1, progress=False), RunOutput(callbacks=[]), device="cpu")


def _worst_group_accuracy(trainer: Trainer, split: str = "test") -> float:
    from consistcam.metrics.groups import GroupAccuracy, alignment
    from consistcam.models.state import preserved_state

    metric = GroupAccuracy(len(trainer.classes))
    with torch.no_grad(), preserved_state(trainer.module, eval_mode=True):
        for batch in trainer.data.eval_loader(split, 500):
            metric.update(trainer.module(batch["image"]), batch["label"], alignment(batch["label"], batch["group"]))
    return metric.compute()["worst_group_acc"].item()


def test_groupdro_beats_erm_on_the_worst_group_of_the_demo_set(tmp_path):
    # Waterbirds-sized: 2 classes (4 cells), rho 0.9; in 4 epochs ERM learns the background alone
    # (measured: worst group 0.055, accuracy 0.53 on the decorrelated test), Group DRO 0.511 / 0.62
    kw = dict(data="demo:n=400,n_test=200,num_classes=2,size=16", batch_size=50, seed=1)
    worst = {}
    for method in ("erm", "groupdro"):
        trainer = Trainer.from_config(tiny(tmp_path / method, method, epochs=4, **kw), progress=False)
        trainer.fit()
        worst[method] = _worst_group_accuracy(trainer)
    assert worst["erm"] < 0.2 and worst["groupdro"] > worst["erm"] + 0.25


def test_jtt_error_set_is_the_errors_of_the_model_ecl_first_scores(tmp_path):
    # with identification_epochs = ecl.warmup both train the same ERM model up to that epoch, so the
    # diagnosis compares ECL's first weights and JTT's error set taken from one model
    kw = dict(ecl={"warmup": 1, "consistency": {"steps": 1}}, jtt={"identification_epochs": 1})
    for method in ("ecl", "jtt"):
        Trainer.from_config(tiny(tmp_path / method, method, epochs=2, **kw), progress=False).fit()
    ecl = load_file(str(tmp_path / "ecl" / "consistency" / "epoch_001.safetensors"))
    jtt = load_file(str(tmp_path / "jtt" / JTT_DIR / JTT_ERROR_SET_FILE))
    assert torch.equal(ecl["ids"], jtt["ids"]) and torch.equal(ecl["pred"], jtt["pred"])


def test_every_epoch_logs_the_worst_group_accuracy_of_grouped_splits(tmp_path):
    trainer = Trainer.from_config(tiny(tmp_path, "erm"), progress=False)
    record = trainer.fit()[-1]
    for split in ("test", "test_correlated"):
        assert record[f"{split}/worst_group_acc"] == pytest.approx(_worst_group_accuracy(trainer, split), abs=1e-6)
        assert record[f"{split}/worst_group_acc"] <= record[f"{split}/acc"]
