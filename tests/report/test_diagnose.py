"""``consistcam diagnose`` on a tiny ECL run of the demo set, its summary over runs and its report section."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from consistcam.cli import main
from consistcam.data.demo import DemoShapes
from consistcam.diagnosis import summarize
from consistcam.metrics.identification import precision_at_k, roc_auc, weight_share
from consistcam.report import evaluation_report
from consistcam.report.results import read_diagnosis

DATA = "demo:n=64,n_test=40,size=16"


@pytest.fixture(scope="module")
def ecl_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("ecl") / "run"
    assert main(["train", "--data", DATA, "--arch", "cc_resnet10", "--batch-size", "32", "--epochs", "2",
                 "--method", "ecl", "--set", "ecl.warmup=0", "--set", "ecl.update_every=1",
                 "--set", "ecl.consistency.steps=1", "--out", str(run), "--quiet"]) == 0
    return run


def test_diagnose_scores_every_ecl_round_against_the_bias_conflicting_samples(ecl_run, capsys):
    assert main(["diagnose", str(ecl_run)]) == 0
    assert "ecl weight v" in capsys.readouterr().out
    out = ecl_run / "diagnosis"
    assert {p.name for p in out.iterdir()} >= {"diagnosis.json", "diagnosis.md", "diagnosis.png"}
    doc = json.loads((out / "diagnosis.json").read_text())
    rows = {(r["source"], r["epoch"]): r for r in doc["rows"]}
    assert set(rows) == {(s, e) for s in ("ecl weight v", "ecl 1 - E", "ecl model's errors") for e in (0, 1)}
    ds = DemoShapes("train", n=64, size=16)  # the truth, independently of the run folder
    labels = torch.tensor(ds.labels)
    minority = ds.background_class != labels
    for epoch in (0, 1):
        saved = load_file(str(ecl_run / "consistency" / f"epoch_{epoch:03d}.safetensors"))
        m = minority[saved["ids"]]
        v = rows[("ecl weight v", epoch)]
        assert v["auc"] == pytest.approx(roc_auc(saved["weights"], m))
        assert v["precision_at_k"] == pytest.approx(precision_at_k(saved["weights"], m))
        assert v["weight_share"] == pytest.approx(weight_share(saved["weights"], m))
        assert v["minority_fraction"] == pytest.approx(m.float().mean().item()) and 0 < v["minority_fraction"] < 0.5
        # v is an increasing function of 1 - E: the same ranking, so the same AUC
        assert rows[("ecl 1 - E", epoch)]["auc"] == pytest.approx(v["auc"], abs=1e-9)
        errors = rows[("ecl model's errors", epoch)]
        wrong = saved["pred"] != labels[saved["ids"]]
        assert errors["set_size"] == int(wrong.sum())
        assert errors["set_recall"] == pytest.approx((wrong & m).sum().item() / m.sum().item())


def test_the_report_shows_the_diagnosis_and_refuses_a_damaged_one(ecl_run, tmp_path):
    main(["diagnose", str(ecl_run)])
    page = evaluation_report(tmp_path / "report.html", "t", {"run": {"acc": 0.5}}, run_dirs={"run": ecl_run})
    text = page.read_text()
    assert "do the weights single out the bias-conflicting samples?" in text and "ecl weight v, epoch 1" in text
    damaged = tmp_path / "damaged"
    (damaged / "diagnosis").mkdir(parents=True)
    (damaged / "diagnosis" / "diagnosis.json").write_text('{"rows": [{"auc": 0.5}]}')
    with pytest.raises(ValueError, match=r"diagnosis.json: no 'rows' list"):
        read_diagnosis(damaged)


def test_diagnose_refuses_a_run_without_weights(tmp_path, capsys):
    assert main(["train", "--data", DATA, "--arch", "cc_resnet10", "--batch-size", "32", "--epochs", "1",
                 "--out", str(tmp_path / "erm"), "--quiet"]) == 0
    assert main(["diagnose", str(tmp_path / "erm")]) == 2
    assert "no per-sample weights to diagnose" in capsys.readouterr().err


def test_summary_over_runs_by_hand():
    docs = [{"rows": [{"source": "v", "epoch": 2, "auc": 0.6, "weight_share": None}]},
            {"rows": [{"source": "v", "epoch": 2, "auc": 0.8, "weight_share": None},
                      {"source": "v", "epoch": 3, "auc": 0.5}]}]
    rows = summarize(docs)
    assert [(r["source"], r["epoch"], r["runs"]) for r in rows] == [("v", 2, 2), ("v", 3, 1)]
    assert rows[0]["auc"] == pytest.approx(0.7) and rows[0]["auc_std"] == pytest.approx(math.sqrt(0.02))
    assert math.isnan(rows[1]["auc_std"]) and "weight_share" not in rows[0]


def test_diagnose_a_jtt_run_scores_its_error_set_and_losses(tmp_path):
    run = tmp_path / "jtt"
    assert main(["train", "--data", DATA, "--arch", "cc_resnet10", "--batch-size", "32", "--epochs", "2",
                 "--method", "jtt", "--set", "jtt.lambda_up=4", "--out", str(run), "--quiet"]) == 0
    from consistcam.diagnosis import diagnose_run

    doc = json.loads((diagnose_run(run) / "diagnosis.json").read_text())
    rows = {r["source"]: r for r in doc["rows"]}
    assert set(rows) == {"jtt error set", "jtt per-sample loss"} and rows["jtt error set"]["epoch"] == 1
    saved = load_file(str(run / "jtt" / "error_set.safetensors"))
    ds = DemoShapes("train", n=64, size=16)
    minority = (ds.background_class != torch.tensor(ds.labels))[saved["ids"]]
    errors = saved["error"].bool()
    assert rows["jtt error set"]["set_size"] == int(errors.sum())
    share = (4 * (errors & minority).sum() + (~errors & minority).sum()) / (4 * errors.sum() + (~errors).sum())
    assert rows["jtt error set"]["weight_share"] == pytest.approx(share.item())  # lambda_up 4 : 1
    assert rows["jtt per-sample loss"]["auc"] == pytest.approx(roc_auc(saved["loss"], minority))
