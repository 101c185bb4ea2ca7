from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file

from consistcam.cli import main
from consistcam.train import TrainConfig, Trainer, learning_rate, load_model, weighted_cross_entropy

TINY = dict(data="demo:n=96,size=16", arch="cc_resnet10", batch_size=32, eval_batch_size=200, lr=0.05,
            score_batch_size=48, consistency={"steps": 1})


def test_weighted_loss_matches_manual():
    g = torch.Generator().manual_seed(0)
    logits, labels = torch.randn(5, 3, generator=g), torch.tensor([0, 2, 1, 1, 0])
    w = torch.tensor([0.5, 1.5, 1.0, 2.0, 0.0])
    manual = sum(w[i] * -torch.log_softmax(logits[i], 0)[labels[i]] for i in range(5)) / 5
    assert torch.allclose(weighted_cross_entropy(logits, labels, w), manual)
    assert torch.allclose(weighted_cross_entropy(logits, labels), F.cross_entropy(logits, labels))


def test_lr_schedule():
    cfg = TrainConfig(lr=1.0, epochs=10, warmup_epochs=1)
    assert learning_rate(cfg, 0, 10) == pytest.approx(0.1)
    assert learning_rate(cfg, 10, 10) == pytest.approx(1.0)
    assert learning_rate(cfg, 100, 10) == pytest.approx(0.0, abs=1e-9)


def test_ecl_loss_uses_the_scored_weights_by_id(tmp_path):
    trainer = Trainer(TrainConfig(**TINY, method="ecl", epochs=1, ecl_warmup=0, update_every=1, out=str(tmp_path)),
                      progress=False)
    trainer.run_dir.mkdir(parents=True, exist_ok=True)
    trainer.strategy.on_epoch_start(0)
    saved = load_file(str(tmp_path / "consistency" / "epoch_000.safetensors"))
    by_id = dict(zip(saved["ids"].tolist(), saved["weights"].tolist()))
    assert saved["weights"].mean().item() == pytest.approx(1.0, abs=1e-5)
    seen = []
    original = trainer.strategy.sample_weights

    def spy(ids):
        w = original(ids)
        seen.append((ids.clone(), w.clone()))
        return w

    trainer.strategy.sample_weights = spy
    trainer.train_epoch(0, seed=123)  # shuffled batches
    ids = torch.cat([s[0] for s in seen])
    weights = torch.cat([s[1] for s in seen])
    assert sorted(ids.tolist()) == list(range(96))
    assert weights.tolist() == pytest.approx([by_id[i] for i in ids.tolist()], abs=1e-6)
    assert len(set(weights.tolist())) > 10  # really re-weighted


def test_resume_is_bit_identical(tmp_path):
    cfg = dict(**TINY, method="ecl", ecl_warmup=1, update_every=1)
    full = Trainer(TrainConfig(**cfg, epochs=3, out=str(tmp_path / "full")), progress=False)
    full.fit()
    part = Trainer(TrainConfig(**cfg, epochs=3, out=str(tmp_path / "part")), progress=False)
    part.fit(stop_after=2)  # interrupted after epoch 1
    resumed = Trainer(TrainConfig(**cfg, epochs=3, out=str(tmp_path / "part")), progress=False, resume=True)
    assert resumed.start_epoch == 2
    resumed.fit()
    a = load_file(str(tmp_path / "full" / "model.safetensors"))
    b = load_file(str(tmp_path / "part" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert torch.equal(full.strategy.weights, resumed.strategy.weights)
    lines = (tmp_path / "part" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [0, 1, 2]


def test_resume_rejects_a_changed_config(tmp_path):
    Trainer(TrainConfig(**TINY, epochs=1, out=str(tmp_path)), progress=False).fit()
    with pytest.raises(ValueError, match=r"config differs .*lr"):
        Trainer(TrainConfig(**{**TINY, "lr": 0.2}, epochs=2, out=str(tmp_path)), progress=False, resume=True)


def test_config_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown training option"):
        TrainConfig.from_dict({"epoch": 3})
    bad = tmp_path / "bad.yaml"
    bad.write_text("consistency: {lambda: 2}\n")
    with pytest.raises(ValueError, match="bad.yaml: unknown consistency option"):
        TrainConfig.from_yaml(bad)


def test_cli_train_evaluate_explain_list(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--data", "demo:n=64,size=16", "--epochs", "1", "--batch-size", "32", "--out", str(run),
                 "--method", "ecl", "--ecl-warmup", "0", "--set", "consistency.steps=1", "--quiet"]) == 0
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
    assert "unknown data set 'nope'" in capsys.readouterr().err
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
    assert "skipped 1 bad file" in capsys.readouterr().err
