"""The evaluation report: rendered from saved files, self-contained, in a real headless browser
(Debian's Chromium) with every image; figures without pyplot or a backend switch."""

from __future__ import annotations

import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from consistcam.evaluation import evaluate_run
from consistcam.report import overlay, save_overlay
from tests.evaluation.runs import QUICK, make_run
from tests.test_layering import import_graph

CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = evaluate_run(make_run(tmp_path_factory.mktemp("report")), **QUICK)
    return out / "report.html"


def test_report_is_self_contained(report):
    text = report.read_text()
    assert "src='http" not in text and "src=\"http" not in text  # every figure inlined
    assert text.count("data:image/png;base64,") == 1 + 4  # E histogram + best/worst by energy gain and by E
    assert "Per-class accuracy (4 classes)" in text and "0: disk" in text
    assert "<title>consistcam evaluation: run</title>" in text


def test_report_imports_no_scoring_code():
    """report/ renders files: nothing it reaches, directly or through another module, attacks or scores
    (the layer test allows attack/ beside it; this rule is stricter)."""
    graph = import_graph()
    seen, todo = set(), [m for m in graph if m.startswith("consistcam.report")]
    while todo:
        m = todo.pop()
        if m not in seen:
            seen.add(m)
            todo.extend(graph.get(m, ()))
    forbidden = ("consistcam.attack", "consistcam.consistency", "consistcam.train", "consistcam.evaluation")
    assert len(seen) > 5 and not {m for m in seen if m.startswith(forbidden)}, sorted(seen)


def test_report_keeps_the_users_matplotlib_backend(report):
    code = f"""
import sys, matplotlib
matplotlib.use("svg")
import torch
import consistcam.report as r
r.render_evaluation({str(report.parent)!r}, {str(report.parent / "again.html")!r})
r.save_overlay({str(report.parent / "o.png")!r}, torch.rand(3, 8, 8), torch.rand(1, 8, 8))
assert matplotlib.get_backend() == "svg", matplotlib.get_backend()
assert "matplotlib.pyplot" not in sys.modules
"""
    subprocess.run([sys.executable, "-c", code], check=True)


def test_save_overlay_writes_the_overlay_png(tmp_path):
    from PIL import Image

    g = torch.Generator().manual_seed(0)
    image, heat = torch.rand(3, 12, 10, generator=g), torch.rand(1, 12, 10, generator=g)
    path = save_overlay(tmp_path / "sub" / "x.png", image, heat)
    png = np.asarray(Image.open(path))
    assert png.shape == (12, 10, 3) and png.dtype == np.uint8
    expected = (overlay(image, heat).clamp(0, 1) * 255).round().numpy()
    assert np.abs(png.astype(np.float64) - expected).max() <= 0.5


@pytest.mark.skipif(not (CHROMIUM and DRIVER), reason="needs Debian's chromium and chromium-driver (.ci/run "
                                                       "installs them)")
def test_report_renders_in_headless_chromium(report, tmp_path):
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=opts, service=Service(DRIVER))
    try:
        driver.get(report.resolve().as_uri())
        images = driver.execute_script(
            "return Array.from(document.images).map(i => [i.complete, i.naturalWidth, i.naturalHeight]);")
        assert len(images) == 5 and all(c and w > 50 and h > 50 for c, w, h in images), images
        assert driver.execute_script("return document.querySelectorAll('table tr').length;") > 10
        assert driver.title == "consistcam evaluation: run"
        errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert not errors, errors
        png = tmp_path / "shot.png"
        driver.save_screenshot(str(png))
        assert png.stat().st_size > 5000
    finally:
        driver.quit()
