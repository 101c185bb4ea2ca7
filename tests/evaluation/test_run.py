"""evaluate_run saves what the report shows; the report renders from those files alone."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from consistcam.cli import main
from consistcam.evaluation import evaluate_run
from consistcam.report import compare_runs, render_evaluation
from tests.evaluation.runs import QUICK, make_run


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    run = make_run(tmp_path_factory.mktemp("eval"))
    out = evaluate_run(run, **QUICK, seed=3, command="consistcam evaluate run --subset 24")
    return run, out


def test_evaluate_run_writes_metrics_per_sample_examples_and_seeds(evaluated):
    run, out = evaluated
    assert out == run / "eval"
    assert {p.name for p in out.iterdir()} == {"metrics.json", "per_sample_test.safetensors",
                                               "examples_test.safetensors", "report.html"}
    doc = json.loads((out / "metrics.json").read_text())
    meta, metrics = doc["meta"], doc["splits"]["test"]
    assert meta["command"] == "consistcam evaluate run --subset 24" and meta["data"] == "demo:size=16"
    assert meta["seeds"] == {"consistency": 3, "equivariance": 4, "robustness": 5, "background": 3}
    assert meta["classes"] == ["disk", "square", "triangle", "cross"] and meta["explainers"] == ["gradcam"]
    assert meta["files"]["test"] == {"per_sample": "per_sample_test.safetensors",
                                     "examples": "examples_test.safetensors"}
    per = load_file(str(out / "per_sample_test.safetensors"))
    assert per["id"].tolist() == list(range(24))
    assert metrics["consistency_E"] == pytest.approx(per["E"].double().mean().item(), abs=1e-6)
    assert metrics["energy"] == pytest.approx(per["energy"].double().mean().item(), abs=1e-6)
    assert {"acc", "equivariance", "pointing_game"} <= set(metrics)


def test_grid_shows_the_E_saved_for_its_samples(evaluated):
    _, out = evaluated
    per = load_file(str(out / "per_sample_test.safetensors"))
    examples = load_file(str(out / "examples_test.safetensors"))
    text = (out / "report.html").read_text()
    e_by_id = dict(zip(per["id"].tolist(), per["E"].tolist()))
    for key in ("E", "energy_gain"):
        for side in ("best", "worst"):
            ids = examples[f"{key}/{side}/id"].tolist()
            assert len(ids) == 3
            assert examples[f"{key}/{side}/E"].tolist() == [e_by_id[i] for i in ids]
            assert examples[f"{key}/{side}/value"].tolist() == per[key][ids].tolist()
            for i, v in zip(ids, per[key][ids].tolist()):
                assert f"id {i} ({v:.3f})" in text  # the grid's title names what ranked it
            assert examples[f"{key}/{side}/image"].shape == (3, 3, 16, 16)
    assert examples["E/best/E"].min() >= examples["E/worst/E"].max()


def test_report_renders_without_any_model(evaluated, tmp_path, monkeypatch):
    import sys

    run, out = evaluated

    def forbidden(*args, **kwargs):
        raise AssertionError("the report ran a model")

    for module, name in (("consistcam.consistency", "explanation_consistency"),
                         ("consistcam.consistency.score", "explanation_consistency"),
                         ("consistcam.explain", "explain"), ("consistcam.explain.api", "explain")):
        monkeypatch.setattr(sys.modules[module], name, forbidden)  # (consistcam.explain is also a function name)
    monkeypatch.setattr(torch.nn.Module, "__call__", forbidden)
    moved = tmp_path / "copy" / "eval"  # a copy of the folder, without the model or the data
    moved.mkdir(parents=True)
    for f in out.iterdir():
        (moved / f.name).write_bytes(f.read_bytes())
    path = render_evaluation(moved, tmp_path / "again.html")
    text = path.read_text()
    assert text.count("data:image/png;base64,") == 1 + 4  # E histogram, best/worst by energy gain and by E
    assert "consistcam evaluate run --subset 24" in text


def test_compare_runs_side_by_side(evaluated, tmp_path):
    run, out = evaluated
    path = compare_runs([run, out / "metrics.json"], tmp_path / "cmp.html", "two runs")
    text = path.read_text()
    assert "<title>two runs</title>" in text and "run/test" in text
    assert text.count("data:image/png;base64,") == 1  # the E histograms; grids belong to single-run reports


def test_evaluate_run_errors_name_the_problem(tmp_path):
    run = make_run(tmp_path)
    (run / "config.yaml").unlink()
    with pytest.raises(FileNotFoundError, match="config.yaml"):
        evaluate_run(run, **QUICK)
    with pytest.raises(ValueError, match=r"class names differ: the model of .* has \[.*\], demo:num_classes=2,size=16 "
                       r"split .test. has \[.*\]"):
        evaluate_run(run, data="demo:num_classes=2,size=16", **QUICK)


def test_shortcut_data_gets_correlated_decorrelated_and_worst_group_accuracy(tmp_path):
    from consistcam.data import build_dataset

    run = make_run(tmp_path)
    data = "shortcut:demo:size=16,n=200,n_test=60"
    out = evaluate_run(run, data=data, splits=("test", "test_correlated"), protocols=("localization",),
                       background=False, batch_size=30, examples=0, report=False, progress=False)
    doc = json.loads((out / "metrics.json").read_text())
    summary, splits = doc["summary"], doc["splits"]
    assert summary["acc_decorrelated"] == splits["test"]["acc"]
    assert summary["acc_correlated"] == splits["test_correlated"]["acc"]
    assert sum(summary["group_count"].values()) == 120  # both test splits, every image in one cell
    assert summary["worst_group_acc"] == min(summary["group_acc"].values())
    ds = build_dataset(data, "test")  # the per-split cells, recounted from the saved predictions
    per = load_file(str(out / "per_sample_test.safetensors"))
    groups = torch.tensor(ds.groups)[per["id"]]
    for c, name in enumerate(doc["meta"]["classes"]):
        for aligned, key in ((True, "aligned"), (False, "conflicting")):
            cell = (per["label"] == c) & ((groups == c) == aligned)
            if cell.any():
                expected = (per["pred"][cell] == c).double().mean().item()
                assert splits["test"]["group_acc"][f"{name}/{key}"] == pytest.approx(expected, abs=1e-4)


def test_a_killed_evaluation_never_leaves_a_mixed_folder(tmp_path, capsys):
    """Issue 25: `evaluate --subset 32` killed while writing its examples left a 32-row per-sample file
    beside a metrics.json that said 16, and the report rendered the mix."""
    run = make_run(tmp_path)
    evaluate_run(run, **{**QUICK, "subset": 12})
    first_per_sample = (run / "eval" / "per_sample_test.safetensors").read_bytes()
    argv = ["evaluate", str(run), "--split", "test", "--subset", "24", "--batch-size", "12", "--protocols",
            "localization,consistency,equivariance", "--no-background", "--faithfulness-steps", "2", "--quiet"]
    code = "import sys, tests.evaluation.runs; from consistcam.cli import main; sys.exit(main(sys.argv[1:]))"
    env = {**os.environ, "CONSISTCAM_KILL_AT": "write:examples_test.safetensors"}
    proc = subprocess.run([sys.executable, "-c", code, *argv], env=env, cwd=Path(__file__).parents[2],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert len(load_file(str(run / "eval" / "per_sample_test.safetensors"))["id"]) == 24  # the new one
    assert list((run / "eval").glob(".examples_test.*.tmp"))  # the kill's leftover
    with pytest.raises(FileNotFoundError, match="no metrics.json"):  # not the old metrics beside new files
        render_evaluation(run / "eval")
    assert main(["report", str(run), "--out", str(tmp_path / "r.html")]) == 2
    assert not (tmp_path / "r.html").exists()
    evaluate_run(run, **QUICK)  # the re-run cleans up and writes a consistent unit
    assert not list((run / "eval").glob(".*.tmp"))
    doc = json.loads((run / "eval" / "metrics.json").read_text())
    assert doc["meta"]["subset"] == 24 == len(load_file(str(run / "eval" / "per_sample_test.safetensors"))["id"])
    render_evaluation(run / "eval")
    (run / "eval" / "per_sample_test.safetensors").write_bytes(first_per_sample)  # a mix made by hand
    with pytest.raises(ValueError, match=r"per_sample_test.safetensors: belongs to another evaluation than"):
        render_evaluation(run / "eval")
    capsys.readouterr()
