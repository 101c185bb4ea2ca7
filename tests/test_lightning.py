"""consistcam.lightning.ECLCallback under a real lightning.Trainer (CPU, the demo set): the module's
loss is mean_i(v_i * CE_i) with the callback's v, and ECL's state goes into Lightning's checkpoints
and comes back on resume (the lightning_module example is the run)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

lightning = pytest.importorskip("lightning")

from consistcam.lightning import ECLCallback, ecl_callback, ecl_loss  # noqa: E402

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "lightning_module.py"
SMALL = ["--n", "64", "--steps", "1"]
QUIET = {"enable_progress_bar": False}


def example():
    spec = importlib.util.spec_from_file_location("example_lightning_module", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_callback_scores_on_schedule_checkpoints_and_resumes(tmp_path, monkeypatch):
    run = example()
    seen = []
    original = ECLCallback.on_train_epoch_start

    def spy(self, trainer, pl_module):
        original(self, trainer, pl_module)
        seen.append((trainer.current_epoch, self.ecl.rounds))

    monkeypatch.setattr(ECLCallback, "on_train_epoch_start", spy)
    first = run.main(SMALL + ["--epochs", "2"], default_root_dir=str(tmp_path), **QUIET)
    callback = ecl_callback(first.lightning_module)
    assert seen == [(0, 0), (1, 1)]  # warm-up epoch 0; a round before epoch 1
    v = callback.ecl.weights
    assert v.mean().item() == pytest.approx(1.0, abs=1e-5) and v.std() > 0
    (ckpt,) = (tmp_path / "checkpoints").glob("*.ckpt")
    saved = torch.load(ckpt, weights_only=False)["callbacks"][callback.state_key]
    assert torch.equal(saved["weights"], v) and int(saved["rounds"]) == 1

    seen.clear()
    resumed = run.main(SMALL + ["--epochs", "3", "--resume", str(ckpt)], default_root_dir=str(tmp_path / "r"),
                       **QUIET)
    again = ecl_callback(resumed.lightning_module)
    assert seen == [(2, 2)]  # the restored round counts: epoch 2's round is the second
    assert again is not callback and not torch.equal(again.ecl.weights, v)


def test_ecl_loss_is_the_weighted_cross_entropy_of_the_attached_callback():
    class Tiny(lightning.LightningModule):
        pass

    module = Tiny()
    with pytest.raises(RuntimeError, match="not attached to a lightning.Trainer"):
        ecl_loss(module, torch.zeros(1, 2), torch.zeros(1).long(), torch.zeros(1).long())
    callback = ECLCallback([], num_samples=4)
    callback.ecl.weights = torch.tensor([0.5, 1.0, 1.5, 1.0])
    trainer = lightning.Trainer(callbacks=[callback], logger=False, enable_checkpointing=False, **QUIET)
    module.trainer = trainer
    logits, labels, ids = torch.randn(3, 2), torch.tensor([0, 1, 1]), torch.tensor([2, 0, 2])
    expected = (torch.tensor([1.5, 0.5, 1.5]) * F.cross_entropy(logits, labels, reduction="none")).mean()
    assert torch.allclose(ecl_loss(module, logits, labels, ids), expected)
