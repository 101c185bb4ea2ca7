"""scripts/gpu_check.sh --dry-run: every step's scripts, flags and configs are there, without a GPU."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_gpu_check_dry_run_finds_every_step():
    r = subprocess.run(["bash", str(ROOT / "scripts/gpu_check.sh"), "--dry-run"], cwd=ROOT, capture_output=True,
                       text=True, env={"PATH": "/usr/bin:/bin", "PY": sys.executable}, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "dry run: ok" in r.stdout
    for step in ("determinism", "bench_evaluation", "bench_train", "bench_ecl_scoring", "bench_gradcam", "tests",
                 "compare_shortcut_tinyimagenet_gpu"):
        assert f"[{step}]" in r.stdout


def test_gpu_check_names_an_unknown_step():
    r = subprocess.run(["bash", str(ROOT / "scripts/gpu_check.sh"), "--dry-run", "--only", "nope"], cwd=ROOT,
                       capture_output=True, text=True, env={"PATH": "/usr/bin:/bin", "PY": sys.executable})
    assert r.returncode == 2 and "unknown step(s) ['nope']" in r.stderr
