from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file

from consistcam.cli import main
from consistcam.config import ConfigError
from consistcam.train import (
    LoopSettings,
    RunOutput,
    Schedule,
    Task,
    TrainConfig,
    Trainer,
    load_model,
    weighted_cross_entropy,
)

TINY = dict(data="demo:n=96,size=16", arch="cc_resnet10", batch_size=32, eval_batch_size=200, lr=0.05)
ECL = {"warmup": 1, "update_every": 1, "score_batch_size": 48, "consistency": {"steps": 1}}


def tiny(tmp_path, method="erm", epochs=1, ecl=None, **kw) -> TrainConfig:
    return TrainConfig.from_dict({**TINY, "method": method, "epochs": epochs, "out": str(tmp_path),
                                  "ecl": {**ECL, **(ecl or {})}, **kw})


def test_weighted_loss_matches_manual():
    g = torch.Generator().manual_seed(0)
    logits, labels = torch.randn(5, 3, generator=g), torch.tensor([0, 2, 1, 1, 0])
    w = torch.tensor([0.5, 1.5, 1.0, 2.0, 0.0])
    manual = sum(w[i] * -torch.log_softmax(logits[i], 0)[labels[i]] for i in range(5)) / 5
    assert torch.allclose(weighted_cross_entropy(logits, labels, w), manual)
    assert torch.allclose(weighted_cross_entropy(logits, labels), F.cross_entropy(logits, labels))
    assert torch.allclose(Task().loss(logits, labels, w), manual)


def test_multilabel_task_uses_bce():
    logits, labels = torch.randn(4, 3), torch.tensor([[1, 0, 1], [0, 0, 1], [1, 1, 1], [0, 0, 0]]).float()
    ref = F.binary_cross_entropy_with_logits(logits, labels)
    assert torch.allclose(Task(multilabel=True).loss(logits, labels), ref)
    assert Task(multilabel=True).correct(labels * 20 - 10, labels) == 4


def test_lr_schedule():
    s = Schedule(lr=1.0, epochs=10, warmup_epochs=1)
    assert s(0, 10) == pytest.approx(0.1)
    assert s(10, 10) == pytest.approx(1.0)
    assert s(100, 10) == pytest.approx(0.0, abs=1e-9)
    assert Schedule(lr=1.0, epochs=10, kind="step", step_size=3, gamma=0.5)(35, 5) == pytest.approx(0.25)


def test_ecl_loss_uses_the_scored_weights_by_id(tmp_path):
    trainer = Trainer.from_config(tiny(tmp_path, "ecl", ecl={"warmup": 0}), progress=False)
    trainer.run_dir.mkdir(parents=True, exist_ok=True)
    trainer.method.on_epoch_start(0)
    saved = load_file(str(tmp_path / "consistency" / "epoch_000.safetensors"))
    by_id = dict(zip(saved["ids"].tolist(), saved["weights"].tolist()))
    assert saved["weights"].mean().item() == pytest.approx(1.0, abs=1e-5)
    seen = []
    original = trainer.method.sample_weights

    def spy(ids):
        w = original(ids)
        seen.append((ids.clone(), w.clone()))
        return w

    trainer.method.sample_weights = spy
    trainer.train_epoch(0, seed=123)  # shuffled batches
    ids = torch.cat([s[0] for s in seen])
    weights = torch.cat([s[1] for s in seen])
    assert sorted(ids.tolist()) == list(range(96))
    assert weights.tolist() == pytest.approx([by_id[i] for i in ids.tolist()], abs=1e-6)
    assert len(set(weights.tolist())) > 10  # really re-weighted


def _resume_matches(tmp_path, **kw):
    full = Trainer.from_config(tiny(tmp_path / "full", epochs=3, **kw), progress=False)
    full.fit()
    part = Trainer.from_config(tiny(tmp_path / "part", epochs=3, **kw), progress=False)
    part.fit(stop_after=2)  # interrupted after epoch 1
    resumed = Trainer.from_config(tiny(tmp_path / "part", epochs=3, **kw), progress=False, resume=True)
    assert resumed.start_epoch == 2
    resumed.fit()
    a = load_file(str(tmp_path / "full" / "model.safetensors"))
    b = load_file(str(tmp_path / "part" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    lines = (tmp_path / "part" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [0, 1, 2]
    return full, resumed


def test_resume_is_bit_identical(tmp_path):
    full, resumed = _resume_matches(tmp_path, method="ecl")
    assert torch.equal(full.method.weights, resumed.method.weights)


def test_resume_is_bit_identical_with_workers_and_weight_ema(tmp_path):
    full, resumed = _resume_matches(tmp_path, method="ecl", workers=2, ecl={"weights": {"ema": 0.5}})
    assert full.method.rounds == resumed.method.rounds == 2
    assert torch.equal(full.method.weights, resumed.method.weights)
    first = load_file(str(tmp_path / "full" / "consistency" / "epoch_001.safetensors"))["weights"]
    assert not torch.equal(first, full.method.weights)  # the EMA state really carried over


def test_score_fraction_rescores_a_seeded_subset_and_the_others_keep_their_last_E(tmp_path):
    from consistcam.consistency import consistency_weights

    trainer = Trainer.from_config(tiny(tmp_path, "ecl", epochs=2, ecl={"warmup": 0, "score_fraction": 0.25}),
                                  progress=False)
    trainer.fit()
    first = load_file(str(tmp_path / "consistency" / "epoch_000.safetensors"))
    second = load_file(str(tmp_path / "consistency" / "epoch_001.safetensors"))
    assert first["ids"].tolist() == second["ids"].tolist() == list(range(96))  # the first round scores all
    assert (first["scored_epoch"] == 0).all()
    rescored = second["scored_epoch"] == 1
    assert rescored.sum().item() == 24 and (second["scored_epoch"][~rescored] == 0).all()
    assert torch.equal(second["E"][~rescored], first["E"][~rescored])  # kept exactly
    assert not torch.equal(second["E"][rescored], first["E"][rescored])  # really re-scored (a trained epoch later)
    # v comes from every sample's E, mean 1
    w = trainer.method.config.weights
    assert torch.allclose(second["weights"], consistency_weights(second["E"], floor=w.floor, power=w.power), atol=1e-6)
    assert second["weights"].mean().item() == pytest.approx(1.0, abs=1e-5)
    again = Trainer.from_config(tiny(tmp_path / "again", "ecl", epochs=2, ecl={"warmup": 0, "score_fraction": 0.25}),
                                progress=False)
    again.fit()  # the subset is drawn from (seed, epoch): the same in a second run
    assert torch.equal(load_file(str(tmp_path / "again" / "consistency" / "epoch_001.safetensors"))["scored_epoch"],
                       second["scored_epoch"])


def test_resume_is_bit_identical_with_score_fraction(tmp_path):
    full, resumed = _resume_matches(tmp_path, method="ecl", ecl={"score_fraction": 0.5})
    assert torch.equal(full.method.weights, resumed.method.weights)
    assert torch.equal(full.method.last["E"], resumed.method.last["E"])


def test_score_fraction_is_refused_for_multilabel_data(tmp_path):
    with pytest.raises(ValueError, match="score_fraction"):
        Trainer.from_config(tiny(tmp_path, "ecl", data="demo:n=96,size=16,objects=2",
                                 ecl={"score_fraction": 0.5}), progress=False)


def test_resume_rejects_a_changed_config(tmp_path):
    Trainer.from_config(tiny(tmp_path), progress=False).fit()
    with pytest.raises(ValueError, match=r"config differs .*lr"):
        Trainer.from_config(tiny(tmp_path, epochs=2, lr=0.2), progress=False, resume=True)


def test_a_plain_trainer_run_ends_with_a_model_that_loads(tmp_path):
    """Built without a TrainConfig, a complete run still has a loadable model.safetensors (issue 23)."""
    from consistcam.models import create
    from consistcam.run.status import read_status
    from consistcam.train import build_method
    from consistcam.train.data import TrainData

    data = TrainData.from_spec("demo:n=32,n_test=16,size=16", 16, "none")
    model = create("cc_resnet10", len(data.classes))
    trainer = Trainer(model, data, build_method("erm"), torch.optim.SGD(model.parameters(), lr=0.05),
                      Schedule(0.05, 1), LoopSettings(epochs=1, batch_size=16, progress=False), RunOutput(tmp_path),
                      device="cpu")
    trainer.fit()
    assert read_status(tmp_path)["state"] == "complete"
    loaded, info = load_model(tmp_path, "cpu")
    assert info == {"arch": "cc_resnet10", "classes": data.classes, "image_size": 16}
    x = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(loaded(x), trainer.module.eval()(x))


def test_a_trainer_refuses_a_run_folder_it_could_not_load_again(tmp_path):
    from consistcam.train import build_method
    from consistcam.train.data import TrainData
    from tests.helpers import TinyNet

    data = TrainData.from_spec("demo:n=32,n_test=16,size=16", 16, "none")
    model = TinyNet(len(data.classes))
    args = (model, data, build_method("erm"), torch.optim.SGD(model.parameters(), lr=0.05), Schedule(0.05, 1))
    with pytest.raises(ValueError, match="was not built by consistcam.models.create"):
        Trainer(*args, LoopSettings(epochs=1, progress=False), RunOutput(tmp_path), device="cpu")
    assert not any(tmp_path.iterdir())
    Trainer(*args, LoopSettings(epochs=1, progress=False), device="cpu")  # nothing written: nothing to load again


def test_training_set_is_read_once(tmp_path, monkeypatch):
    import consistcam.train.data as train_data

    calls = []
    original = train_data.build_dataset

    def counting(spec, split="train", *a, **k):
        calls.append(split)
        return original(spec, split, *a, **k)

    monkeypatch.setattr(train_data, "build_dataset", counting)
    Trainer.from_config(tiny(tmp_path, "ecl"), progress=False).fit()
    assert calls.count("train") == 1


def test_a_new_strategy_plugs_in_without_touching_the_trainer(tmp_path):
    from dataclasses import dataclass

    from consistcam.config import option
    from consistcam.train import METHODS, Method, StepOutput, register_method

    @dataclass
    class HalfConfig:
        factor: float = option(0.5, "loss multiplier", gt=0)

    @register_method("test_half")
    class Half(Method):
        Config = HalfConfig

        def loss(self, batch):
            logits = self.ctx.model(batch["image"])
            return StepOutput(self.config.factor * self.ctx.task.loss(logits, batch["label"]), logits,
                              {"factor": self.config.factor})

    try:
        cfg = TrainConfig.from_dict({**TINY, "method": "test_half", "out": str(tmp_path), "test_half": {"factor": 2}})
        assert cfg.method_options == HalfConfig(2.0)
        hist = Trainer.from_config(cfg, progress=False).fit()
        assert hist[0]["train/factor"] == pytest.approx(2.0)
        with pytest.raises(ConfigError, match="test_half.factor: must be > 0"):
            TrainConfig.from_dict({**TINY, "method": "test_half", "test_half": {"factor": 0}})
    finally:
        METHODS._items.pop("test_half")
        METHODS._canonical.pop("test_half")


@pytest.mark.parametrize(("options", "message"), [
    ({"epoch": 3}, "unknown option 'epoch'; did you mean epochs"),
    ({"lr": float("nan")}, "lr: must be a finite number"),
    ({"lr": "1e-3x"}, "lr: expected a number"),
    ({"epochs": 2.5}, "epochs: expected an integer"),
    ({"label_smoothing": 2}, "label_smoothing: must be < 1.0"),
    ({"image_size": 0}, "image_size: must be >= 1"),
    ({"device": "foo"}, "device: expected auto, cpu"),
    ({"data": "nope"}, "data: unknown data set"),
    ({"method": "ecll"}, "method: unknown training method .*did you mean ecl"),
    ({"method": "ecl", "ecl": {"consistency": {"eps": -0.1}}}, "ecl.consistency.eps: must be >= 0"),
    ({"ecl": {"warmpu": 1}}, "unknown option 'ecl.warmpu'; did you mean warmup"),
    # the explainer of cgc, edda and excon is "explainer" (was "method", the word for training methods)
    ({"method": "cgc", "cgc": {"method": "gradcam"}}, "unknown option 'cgc.method'"),
    ({"method": "edda", "edda": {"method": "gradcam"}}, "unknown option 'edda.method'"),
    ({"method": "excon", "excon": {"method": "gradcam"}}, "unknown option 'excon.method'"),
    ({"method": "excon", "excon": {"explainer": "gradcm"}}, "excon.explainer: unknown explainer"),
    ({"ecl": {"consistency": {"steps": 0}}}, "ecl.consistency.steps: must be >= 1"),
    ({"ecl": {"consistency": {"attack": "pdg"}}}, "ecl.consistency.attack: 'pdg' is not one of .*did you mean pgd"),
])
def test_config_errors_name_the_option(options, message):
    with pytest.raises(ConfigError, match=message):
        TrainConfig.from_dict(options)


def test_yaml_config_errors_and_coercion(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("ecl: {consistency: {lambda: 2}}\n")
    with pytest.raises(ConfigError, match="bad.yaml: unknown option 'ecl.consistency.lambda'; did you mean lam"):
        TrainConfig.from_yaml(bad)
    bad.write_text("epochs: [1\n")
    with pytest.raises(ConfigError, match="bad.yaml: not valid YAML"):
        TrainConfig.from_yaml(bad)
    good = tmp_path / "good.yaml"
    good.write_text("lr: 1e-3\nmethod: ecl\necl: {consistency: {eps: 4e-3}}\n")  # YAML 1.1 reads 1e-3 as text
    cfg = TrainConfig.from_yaml(good, {"ecl": {"warmup": 0}})
    assert cfg.lr == 0.001 and cfg.method_options.consistency.eps == 0.004 and cfg.method_options.warmup == 0


def test_flat_ecl_options_are_unknown_options():
    """ECL's options live in the ``ecl`` section only: the old flat names are config errors."""
    for old in ({"ecl_warmup": 3}, {"update_every": 2}, {"consistency": {"steps": 2}}):
        with pytest.raises(ConfigError, match=f"unknown option '{next(iter(old))}'"):
            TrainConfig.from_dict({"method": "ecl", **old})
    cfg = TrainConfig.from_dict({"method": "ecl", "ecl": {"warmup": 3, "consistency": {"steps": 2}}})
    assert cfg.method_options.warmup == 3 and cfg.method_options.consistency.steps == 2


FORMER = {"weights": "weight_", "execution": ""}  # ecl.weights.power was ecl.consistency.weight_power, ...


def _former_layout(config: dict) -> dict:
    """A training config as written before ECL's options were split: ecl.weights and ecl.execution
    inside ecl.consistency, the weight options prefixed ``weight_``."""
    ecl = dict(config["ecl"])
    scorer = dict(ecl.get("consistency", {}))
    for section, prefix in FORMER.items():
        scorer.update({prefix + k: v for k, v in ecl.pop(section, {}).items()})
    return {**config, "ecl": {**ecl, "consistency": scorer}}


def test_former_ecl_consistency_keys_load_under_their_new_names(tmp_path):
    """Until the split, ECL's weights and execution options were ecl.consistency.weight_power,
    ecl.consistency.amp, ...: configs written then load with the same values, with no warning."""
    import warnings

    new = {"method": "ecl", "ecl": {"consistency": {"steps": 2}, "weights": {"power": 1.0, "floor": 0.0, "ema": 0.3,
                                                                            "scheme": "rank"},
                                    "execution": {"fold_batchnorm": False, "channels_last": False, "amp": "off"}}}
    former = _former_layout(new)
    assert former["ecl"]["consistency"]["weight_power"] == 1.0 and "weights" not in former["ecl"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cfg = TrainConfig.from_dict(former)
    assert cfg.to_dict() == TrainConfig.from_dict(new).to_dict()
    assert cfg.method_options.weights.scheme == "rank" and cfg.method_options.execution.amp == "off"
    assert set(cfg.to_dict()["ecl"]) >= {"consistency", "weights", "execution"}
    assert "weight_power" not in cfg.to_dict()["ecl"]["consistency"]  # written back in the new layout
    # a file in one layout, an override in the other: the override wins
    (tmp_path / "new.yaml").write_text("method: ecl\necl: {weights: {power: 0.25}}\n")
    (tmp_path / "former.yaml").write_text("method: ecl\necl: {consistency: {weight_power: 0.25, steps: 2}}\n")
    override = TrainConfig.from_yaml(tmp_path / "new.yaml", {"ecl": {"consistency": {"weight_power": 2.0}}})
    assert override.method_options.weights.power == 2.0
    override = TrainConfig.from_yaml(tmp_path / "former.yaml", {"ecl": {"weights": {"power": 2.0}}})
    assert override.method_options.weights.power == 2.0 and override.method_options.consistency.steps == 2
    with pytest.raises(ConfigError, match="ecl.consistency.weight_power .the former name of ecl.weights.power"):
        TrainConfig.from_dict({"ecl": {"consistency": {"weight_power": 1.0}, "weights": {"power": 2.0}}})
    with pytest.raises(ConfigError, match="unknown option 'ecl.consistency.weight_powr'"):
        TrainConfig.from_dict({"ecl": {"consistency": {"weight_powr": 1.0}}})


def test_a_run_folder_written_with_the_former_keys_resumes_and_evaluates(tmp_path, capsys):
    """A run's config.yaml (and its checkpoint's copy) in the former layout: ``--resume`` accepts it
    as the same config and ``evaluate`` reads the run, silently."""
    import warnings

    import yaml
    from safetensors import safe_open
    from safetensors.torch import save_file

    run = tmp_path / "run"
    cfg = tiny(run, "ecl", epochs=2, ecl={"warmup": 0, "weights": {"power": 1.0}})
    Trainer.from_config(cfg, progress=False).fit(stop_after=1)  # interrupted after epoch 0
    (run / "config.yaml").write_text(yaml.safe_dump(_former_layout(yaml.safe_load((run / "config.yaml").read_text()))))
    checkpoint = run / "checkpoint.safetensors"
    with safe_open(str(checkpoint), "pt") as f:
        meta = f.metadata()
    meta["config"] = json.dumps(_former_layout(json.loads(meta["config"])))
    save_file(load_file(str(checkpoint)), str(checkpoint), metadata=meta)
    assert "weight_power: 1.0" in (run / "config.yaml").read_text()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main(["train", "--resume", str(run), "--quiet"]) == 0
        assert main(["evaluate", str(run), "--subset", "8", "--protocols", "localization", "--no-report",
                     "--quiet"]) == 0
    assert not [w for w in caught if "weight" in str(w.message) or "consistency" in str(w.message)]
    assert "weight" not in capsys.readouterr().err
    assert json.loads((run / "status.json").read_text())["state"] == "complete"
    assert (run / "consistency" / "epoch_001.safetensors").is_file()


def test_bad_config_fails_before_any_work(tmp_path, capsys, monkeypatch):
    import consistcam.train.data as train_data

    monkeypatch.setattr(train_data, "build_dataset", lambda *a, **k: pytest.fail("data was read"))
    args = ["train", "--out", str(tmp_path / "r"), "--quiet", "--method", "ecl", "--epochs", "3"]
    assert main(args + ["--set", "ecl.consistency.eps=-0.1"]) == 2
    assert "ecl.consistency.eps: must be >= 0" in capsys.readouterr().err
    assert main(args + ["--device", "cuda:7"]) == 2
    assert "device" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_every_cli_option_documents_itself():
    from consistcam.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, p in sub.choices.items():
        for action in p._actions:
            if action.dest != "help":
                assert action.help, f"consistcam {name} {action.option_strings or action.dest} has no help"


def test_cli_train_evaluate_explain_list(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--data", "demo:n=64,size=16", "--epochs", "1", "--batch-size", "32", "--out", str(run),
                 "--method", "ecl", "--set", "ecl.warmup=0", "--set", "ecl.consistency.steps=1", "--quiet"]) == 0
    assert {p.name for p in run.iterdir()} >= {"config.yaml", "metrics.jsonl", "tb", "checkpoint.safetensors",
                                              "model.safetensors", "consistency"}
    assert main(["evaluate", str(run), "--subset", "40", "--quiet", "--explainer", "gradcam", "--explainer",
                 "layercam", "--faithfulness-steps", "4", "--batch-size", "20"]) == 0
    doc = json.loads((run / "eval" / "metrics.json").read_text())
    metrics = doc["splits"]
    assert set(metrics) == {"test", "test_correlated"} and doc["meta"]["explainers"] == ["gradcam", "layercam"]
    m = metrics["test"]
    for key in ("acc", "energy", "pointing_game_class_mean", "mask_iou@0.3", "insertion", "deletion",
                "average_drop_top15", "consistency_E", "equivariance", "pgd10@4/255", "bg/mixed_rand", "bg_gap",
                "layercam/energy", "layercam/insertion"):
        assert key in m, key
    assert 0 <= m["deletion"] <= 1 and 0 <= m["equivariance"] <= 1 and len(m["acc_per_class"]) == 4
    assert m["pgd10@4/255"] <= m["acc"] + 1e-6
    assert (run / "eval" / "report.html").stat().st_size > 10_000
    assert main(["report", str(run), str(run / "eval" / "metrics.json"), "--out", str(tmp_path / "r.html")]) == 0
    Image.fromarray(np.zeros((16, 16, 3), dtype=np.uint8)).save(tmp_path / "x.png")
    assert main(["explain", str(run), str(tmp_path / "x.png"), "--out", str(tmp_path / "ex")]) == 0
    assert (tmp_path / "ex" / "x_gradcam.png").is_file()
    assert main(["explain", str(run), str(tmp_path / "missing.png")]) != 0
    assert main(["train", "--data", "nope", "--out", str(tmp_path / "r2"), "--quiet"]) == 2
    assert "data: unknown data set" in capsys.readouterr().err
    main(["list", "explainers"])
    assert "integrated-gradcam" in capsys.readouterr().out
    model, info = load_model(run)
    assert info["classes"] == ["disk", "square", "triangle", "cross"]


def test_train_skip_bad_lists_skipped_files(tmp_path, capsys):
    from tests.data.test_data import _write_tiny

    data = tmp_path / "tin"
    data.mkdir()
    _write_tiny(data, zero_byte=True)
    run = tmp_path / "run"
    args = ["train", "--data", f"tinyimagenet:{data}", "--epochs", "1", "--batch-size", "4", "--image-size", "16",
            "--out", str(run), "--quiet"]
    assert main(args) == 2 and "n001_0.JPEG: empty file" in capsys.readouterr().err
    assert main(args + ["--skip-bad"]) == 0
    lines = (run / "skipped.txt").read_text().splitlines()
    assert len(lines) == 1 and lines[0].startswith("train\t") and "n001_0.JPEG" in lines[0]
    assert "skipped 1 bad entries (1 image)" in capsys.readouterr().err


def test_run_folder_life_cycle(tmp_path, capsys):
    run = tmp_path / "run"
    args = ["train", "--data", "demo:n=64,size=16", "--epochs", "1", "--batch-size", "32", "--out", str(run), "--quiet"]
    assert main(args) == 0
    status = json.loads((run / "status.json").read_text())
    assert status["state"] == "complete" and status["epochs"] == 1
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    assert main(args) == 2  # an existing run is never overwritten by accident
    assert f"{run} already holds a complete run; use --resume" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before
    assert main(["train", "--resume", str(run), "--quiet"]) == 0
    assert "is complete (1 epochs); nothing to do" in capsys.readouterr().out
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before
    assert main(["train", "--resume", str(run), "--epochs", "2", "--quiet"]) == 0  # an explicit extension
    status = json.loads((run / "status.json").read_text())
    assert status == {**status, "state": "complete", "epochs": 2, "extended_from": 1}
    assert [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [0, 1]
    assert main(args + ["--overwrite"]) == 0
    assert json.loads((run / "status.json").read_text())["epochs"] == 1


def test_overwrite_refuses_a_folder_that_is_not_a_run(tmp_path, capsys):
    folder = tmp_path / "d"  # issue 25: --overwrite used to delete d/notes.txt (more in tests/run/test_status.py)
    folder.mkdir()
    (folder / "notes.txt").write_text("precious\n")
    assert main(["train", "--data", "demo:n=64,size=16", "--epochs", "1", "--batch-size", "16", "--quiet",
                 "--out", str(folder), "--overwrite"]) == 2
    assert f"--overwrite: {folder} is not a consistcam run folder" in capsys.readouterr().err
    assert [p.name for p in folder.iterdir()] == ["notes.txt"]


@pytest.mark.parametrize("argv,message", [
    (["--image-size", "100000"], "image_size: must be <= 8192, got 100000"),
    (["--data", "demo:size=100000"], "demo option size: must be <= 8192 pixels, got 100000"),
    (["--data", "demo:n=100000,size=8192"], "demo option size: 100000 images of 8192x8192 pixels need 75000.0 GiB"),
    (["--image-size", "8192", "--batch-size", "100000"], "image_size: 100000 images of 8192x8192 pixels need"),
])
def test_sizes_are_bounded_before_anything_is_allocated(tmp_path, capsys, argv, message):
    # issue 25: these tried to allocate 30-160 GB (a traceback, the run left `running`)
    assert main(["train", *argv, "--epochs", "1", "--quiet", "--out", str(tmp_path / "run")]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_a_run_that_fails_before_its_first_checkpoint_is_not_left_running(tmp_path, capsys):
    data = tmp_path / "mixed"  # images of two sizes and no --image-size: the first batch fails
    for split in ("train", "val"):
        for cls in ("a", "b"):
            (data / split / cls).mkdir(parents=True)
            for i, side in enumerate((16, 20)):
                Image.fromarray(np.zeros((side, side, 3), dtype=np.uint8)).save(data / split / cls / f"{i}.png")
    run = tmp_path / "run"
    args = ["train", "--data", f"imagefolder:{data}", "--epochs", "1", "--batch-size", "4", "--quiet",
            "--out", str(run)]
    assert main(args) == 2
    assert "--image-size" in capsys.readouterr().err
    assert not run.exists()  # not a `running` folder that --resume cannot continue


def test_two_runs_of_one_command_write_byte_identical_tensor_files(tmp_path):
    """Issue 25: equal tensors used to come with different sha256 (metadata in hash-map order)."""
    import hashlib

    args = ["train", "--data", "demo:n=32,n_test=16,size=16", "--epochs", "1", "--batch-size", "16", "--method", "ecl",
            "--set", "ecl.warmup=0", "--set", "ecl.consistency.steps=1", "--quiet"]
    digests, run = [], tmp_path / "run"
    for name in ("first", "second"):  # one --out (checkpoints record the config, --out included)
        assert main([*args, "--out", str(run)]) == 0
        run = run.rename(tmp_path / name)
        files = {str(p.relative_to(run)): hashlib.sha256(p.read_bytes()).hexdigest()
                 for p in sorted(run.rglob("*.safetensors"))}
        status = json.loads((run / "status.json").read_text())["sha256"]
        assert status == {k: files[k] for k in ("model.safetensors", "checkpoint.safetensors")}
        digests.append(files)
        run = tmp_path / "run"
    assert "consistency/epoch_000.safetensors" in digests[0] and digests[0] == digests[1]


def test_the_documented_resume_works_whatever_the_kill_left(tmp_path):
    """README: resume = the same command plus ``--resume RUN``; it works also when the kill came before
    the run folder (or its config.yaml) existed, where ``train --resume RUN`` alone cannot know the run."""
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    assert re.search(r"--out runs/x \\\n\s+--resume runs/x ", readme)
    args = ["train", "--data", "demo:n=32,n_test=16,size=16", "--epochs", "1", "--batch-size", "16", "--quiet"]
    run = tmp_path / "run"  # killed before the folder existed (a kill inside config.yaml's write: test_faults)
    assert main([*args, "--out", str(run), "--resume", str(run)]) == 0
    assert json.loads((run / "status.json").read_text())["state"] == "complete"


def test_interrupted_run_is_running_and_resume_drops_a_torn_line_and_stale_temporaries(tmp_path):
    cfg = tiny(tmp_path, epochs=2)
    Trainer.from_config(cfg, progress=False).fit(stop_after=1)
    assert json.loads((tmp_path / "status.json").read_text())["state"] == "running"
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"epoch": 1, "train/lo')  # a kill in the middle of a write
    (tmp_path / ".checkpoint.safetensors.abc.tmp").write_bytes(b"half")
    with pytest.warns(RuntimeWarning, match=r"metrics.jsonl:2: dropping a torn last line"):
        trainer = Trainer.from_config(cfg, progress=False, resume=True)
    trainer.fit()
    assert not list(tmp_path.glob(".*.tmp"))
    assert json.loads((tmp_path / "status.json").read_text())["state"] == "complete"
    assert [json.loads(line)["epoch"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [0, 1]


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    trainer = Trainer.from_config(tiny(tmp_path, epochs=2), progress=False)
    trainer.fit(stop_after=1)
    saved = (tmp_path / "checkpoint.safetensors").read_bytes()
    with torch.no_grad():
        next(trainer.model.parameters()).fill_(float("nan"))
    with pytest.raises(ValueError, match=r"epoch 1, step 0: the loss is not finite"):
        trainer.fit()
    assert (tmp_path / "checkpoint.safetensors").read_bytes() == saved
    assert json.loads((tmp_path / "status.json").read_text())["state"] == "running"


def test_method_option_flags(tmp_path):
    import yaml

    run = tmp_path / "run"
    assert main(["train", "--data", "demo:n=32,n_test=16,size=16", "--epochs", "1", "--batch-size", "16",
                 "--method", "ecl", "--ecl-warmup", "0", "--ecl-update-every", "1", "--ecl-score-batch-size", "16",
                 "--set", "ecl.consistency.steps=1", "--out", str(run), "--quiet"]) == 0
    saved = yaml.safe_load((run / "config.yaml").read_text())["ecl"]
    assert (saved["warmup"], saved["update_every"], saved["score_batch_size"]) == (0, 1, 16)
    assert saved["consistency"]["steps"] == 1
    assert (run / "consistency" / "epoch_000.safetensors").is_file()
