"""The evaluation report renders in a real headless browser (Debian's Chromium) with every image."""

from __future__ import annotations

import shutil

import pytest
import torch
from torch.utils.data import DataLoader, Subset

from consistcam.consistency import ConsistencyConfig
from consistcam.data import DemoShapes, build_transform, collate
from consistcam.metrics import evaluate_model
from consistcam.report import evaluation_report
from tests.helpers import TinyNet

CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")


def _report(tmp_path):
    torch.manual_seed(0)
    model = TinyNet(classes=4).eval()
    ds = DemoShapes("test", size=16, transform=build_transform())
    loader = DataLoader(Subset(ds, range(24)), batch_size=12, collate_fn=collate)
    cfg = ConsistencyConfig(steps=1)
    res = evaluate_model(model, loader, 4, consistency=cfg, per_sample=True)
    per_sample = {"test": res.pop("per_sample")}
    path = evaluation_report(tmp_path / "report.html", "test report", {"test": res, "copy": dict(res)}, model=model,
                             datasets={"test": ds}, per_sample=per_sample, cfg=cfg)
    return path, per_sample


def test_report_is_self_contained(tmp_path):
    path, per_sample = _report(tmp_path)
    text = path.read_text()
    assert "src='http" not in text and "src=\"http" not in text  # every figure inlined
    assert text.count("data:image/png;base64,") == 1 + 4  # E histogram + best/worst by energy and by E
    worst = min(per_sample["test"]["energy_gain"])
    assert f"({worst:.3f})" in text  # the worst example's energy is named in its grid's title


@pytest.mark.skipif(not (CHROMIUM and DRIVER), reason="needs Debian's chromium and chromium-driver (.ci/run "
                                                       "installs them)")
def test_report_renders_in_headless_chromium(tmp_path):
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service
    path, _ = _report(tmp_path)
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=opts, service=Service(DRIVER))
    try:
        driver.get(path.resolve().as_uri())
        images = driver.execute_script(
            "return Array.from(document.images).map(i => [i.complete, i.naturalWidth, i.naturalHeight]);")
        assert len(images) == 5 and all(c and w > 50 and h > 50 for c, w, h in images), images
        assert driver.execute_script("return document.querySelectorAll('table tr').length;") > 10
        assert driver.title == "test report"
        errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert not errors, errors
        png = tmp_path / "shot.png"
        driver.save_screenshot(str(png))
        assert png.stat().st_size > 5000
    finally:
        driver.quit()
