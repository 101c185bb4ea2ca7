"""The report's metric glossary, difference columns, per-class view and the fooled-vs-original
section of a run written by `consistcam fool` (built here by hand: no fine-tuning needed)."""

from __future__ import annotations

import json
import re
import shutil

import pytest
import torch
from safetensors.torch import save_file

from consistcam.evaluation import evaluate_run
from consistcam.report import compare_runs, render_evaluation
from consistcam.report.evaluation import difference_pairs
from consistcam.report.glossary import describe, is_better
from consistcam.run.layout import FOOL_EXAMPLES_FILE, FOOL_FILE
from tests.evaluation.runs import QUICK, make_run

FOOL_DOC = {"source": "/runs/erm", "split": "test", "images": 12, "acc_before": 0.75, "acc_after": 0.5,
            "config": {"kind": "location", "explainer": "gradcam", "lam": 2.0, "steps": 20, "epochs": 1},
            "fsr_range": [0.0, 0.2], "fsr": 0.625, "rank_corr": 0.25,
            "explainers": {"gradcam": {"fsr": 0.625, "fsr_before": 0.0, "rank_corr": 0.25, "test_loss": 0.18},
                           "gradient": {"fsr": 0.125, "fsr_before": 0.0, "rank_corr": 0.5, "test_loss": 0.3}}}


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    """An evaluated tiny run, and a copy of it that carries fool.json and its example maps."""
    root = tmp_path_factory.mktemp("fooled")
    run = make_run(root)
    evaluate_run(run, **QUICK)
    fooled = root / "fooled"
    shutil.copytree(run, fooled)
    (fooled / FOOL_FILE).write_text(json.dumps(FOOL_DOC))
    g = torch.Generator().manual_seed(0)
    save_file({"image": torch.rand(2, 3, 16, 16, generator=g), "label": torch.tensor([0, 3]),
               "original": torch.rand(2, 1, 16, 16, generator=g), "fooled": torch.rand(2, 1, 16, 16, generator=g)},
              str(fooled / FOOL_EXAMPLES_FILE))
    return run, fooled


def _text(path) -> str:
    return re.sub(r"data:image/png;base64,[^']*", "IMG", path.read_text())


def test_glossary_names_meaning_and_direction():
    assert describe("acc") == ("top-1 accuracy on the split", "higher")
    assert describe("gradcam++/deletion")[1] == "lower" and "gradcam++ heatmaps" in describe("gradcam++/deletion")[0]
    assert describe("pgd10@4/255")[1] == "higher" and describe("mask_iou@0.5")[1] == "higher"
    assert describe("bg/no_fg")[1] == "lower" and describe("bg_gap")[1] == "lower"
    assert describe("no_such_metric") is None
    assert is_better("deletion", 0.1, 0.2) and not is_better("acc", 0.1, 0.2)
    assert is_better("energy_uniform_baseline", 0.3, 0.2) is None and is_better("acc", 0.5, 0.5) is None


def test_difference_pairs_compare_runs_per_split_and_splits_of_one_run():
    assert difference_pairs(["a/test", "a/val", "b/test", "b/val"]) == [("b/test", "a/test"), ("b/val", "a/val")]
    assert difference_pairs(["test", "test_correlated"]) == [("test_correlated", "test")]
    assert difference_pairs(["test"]) == []


def test_unfooled_report_explains_metrics_and_shows_classes(evaluated):
    run, _ = evaluated
    text = _text(run / "eval" / "report.html")
    assert "<h2>What the metrics mean</h2>" in text
    assert "<dt>acc</dt><dd>top-1 accuracy on the split. <i>higher is better</i></dd>" in text
    assert "<td title='top-1 accuracy on the split'>acc</td><td>↑</td>" in text
    assert "Per-class mean E and energy" in text and "test: E" in text and "0: disk" in text
    assert "fooled" not in text


def test_fooled_run_shows_fool_metrics_and_maps(evaluated, tmp_path):
    _, fooled = evaluated
    out = render_evaluation(fooled / "eval", tmp_path / "r.html")
    raw = out.read_text()
    text = _text(out)
    assert raw.count("data:image/png;base64,") == 1 + 4 + 1  # + the original-vs-fooled grid
    assert "fooled: fooled by adversarial model manipulation (location)" in text
    assert "fooled: original vs fooled maps (gradcam)" in text
    # one column per explainer, the fooled one first; FSR is lower-better (for the model's user)
    assert "<th>gradcam</th><th>gradient</th>" in text
    assert re.search(r"<td title='fooling success rate[^']*'>fsr</td><td>↓</td><td>0.625</td><td>0.125</td>", text)
    assert "<td>accuracy after</td><td>0.500</td>" in text


def test_comparison_has_difference_columns_coloured_by_direction(evaluated, tmp_path):
    run, fooled = evaluated
    doc = json.loads((run / "eval" / "metrics.json").read_text())
    doc["splits"]["test"]["acc"] = 0.25
    other = tmp_path / "other"
    shutil.copytree(run, other)
    (other / "eval" / "metrics.json").write_text(json.dumps(doc))
    base = json.loads((run / "eval" / "metrics.json").read_text())["splits"]["test"]["acc"]
    text = _text(compare_runs([run, other, fooled], tmp_path / "cmp.html"))
    assert "<th>Δ other/test − run/test</th><th>Δ fooled/test − run/test</th>" in text
    row = re.search(r"<td title='top-1 accuracy on the split'>acc</td>.*?</tr>", text).group(0)
    diff = 0.25 - base
    mood = "better" if diff > 0 else "worse" if diff < 0 else ""
    assert f"<td class='diff {mood}'>{diff:+.3f}</td><td class='diff '>+0.000</td>" in row
    assert "fooled: original vs fooled maps" in text  # the fooled run's section in the comparison too


def test_damaged_fool_json_is_named(evaluated, tmp_path):
    _, fooled = evaluated
    broken = tmp_path / "broken"
    shutil.copytree(fooled, broken)
    (broken / FOOL_FILE).write_text("{\"explainers\": ")
    with pytest.raises(ValueError, match=r"fool\.json: not valid JSON.*consistcam fool"):
        render_evaluation(broken / "eval", tmp_path / "x.html")


@pytest.mark.skipif(not (shutil.which("chromium") and shutil.which("chromedriver")),
                    reason="needs Debian's chromium and chromium-driver (.ci/run installs them)")
def test_fooled_report_renders_in_headless_chromium(evaluated, tmp_path):
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    _, fooled = evaluated
    report = render_evaluation(fooled / "eval", tmp_path / "fooled.html")
    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which("chromium")
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=opts, service=Service(shutil.which("chromedriver")))
    try:
        driver.get(report.resolve().as_uri())
        images = driver.execute_script(
            "return Array.from(document.images).map(i => [i.complete, i.naturalWidth, i.naturalHeight]);")
        assert len(images) == 6 and all(c and w > 50 and h > 50 for c, w, h in images), images
        headings = driver.execute_script("return Array.from(document.querySelectorAll('h2')).map(h => h.textContent);")
        assert "What the metrics mean" in headings and any("original vs fooled" in h for h in headings)
        assert driver.execute_script("return document.querySelectorAll('td[title]').length;") > 10  # tooltips
        errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert not errors, errors
    finally:
        driver.quit()
