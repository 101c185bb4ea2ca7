"""Every script in examples/ runs (small settings) and does what it says, so they never rot."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
SMALL = ["--n", "64", "--epochs", "2", "--steps", "1"]


def load(name: str):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_example_is_tested():
    assert {p.stem for p in EXAMPLES.glob("*.py")} == {"plain_loop", "lightning_module", "timm_finetune"}


@pytest.mark.parametrize("name", ["plain_loop", "timm_finetune"])
def test_plain_loop_examples_train_with_ecl_weights(name, capsys):
    if name == "timm_finetune":
        pytest.importorskip("timm")
    checkpoint = load(name).main(SMALL)
    state = checkpoint["ecl"]
    assert int(state["rounds"]) == 1  # warm-up epoch 0, a round before epoch 1
    v = state["weights"]
    assert v.mean().item() == pytest.approx(1.0, abs=1e-5) and v.std() > 0
    assert all(torch.isfinite(t).all() for t in checkpoint["model"].values() if t.is_floating_point())
    out = capsys.readouterr().out
    assert "epoch 0: loss" in out and "epoch 1: loss" in out and "E_mean" in out
