"""Fine-tuning: ``init`` with every method, resume, a linear probe, learning-rate scales, torchrun."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from consistcam.cli import main
from consistcam.config import ConfigError
from consistcam.train import TrainConfig, Trainer
from consistcam.train.methods import METHODS

DATA = "demo:n=64,n_test=32,size=16"
BASE = dict(arch="cc_resnet10", batch_size=32, eval_batch_size=64, lr=0.05)


def _cfg(out: Path, **kw) -> TrainConfig:
    return TrainConfig.from_dict({**BASE, "data": DATA, "epochs": 1, "out": str(out), **kw})


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """A finished 4-class run to fine-tune from."""
    out = tmp_path_factory.mktemp("ft") / "src"
    Trainer.from_config(_cfg(out), progress=False).fit()
    return out


def _model(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "model.safetensors"))


def test_init_from_a_run_with_another_class_count(source, tmp_path, capsys):
    out = tmp_path / "ft"
    assert main(["train", "--data", DATA.replace("size=16", "size=16,num_classes=3"), "--epochs", "1",
                 "--batch-size", "32", "--init", str(source), "--backbone-lr-scale", "0", "--out", str(out)]) == 0
    assert "classifier head model.fc re-initialised for 3 classes" in capsys.readouterr().err
    digest = json.loads((source / "status.json").read_text())["sha256"]["model.safetensors"]
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["init"] == str(source) and config["init_sha256"] == digest
    assert json.loads((out / "status.json").read_text())["init"]["sha256"] == digest
    src, ft = _model(source), _model(out)
    assert ft["model.fc.weight"].shape == (3, 256)
    assert torch.equal(ft["model.conv1.weight"], src["model.conv1.weight"])  # backbone lr 0: weights unchanged
    assert not torch.equal(ft["model.bn1.running_mean"], src["model.bn1.running_mean"])  # BatchNorm still adapts


def test_init_sha256_pins_the_file(source, tmp_path):
    with pytest.raises(ConfigError, match="init_sha256: .* has sha256 .*, not the 0000"):
        Trainer.from_config(_cfg(tmp_path / "x", init=str(source), init_sha256="0" * 64), progress=False)
    with pytest.raises(ValueError, match="init .*nothing.pth: no such file"):
        Trainer.from_config(_cfg(tmp_path / "y", init=str(tmp_path / "nothing.pth")), progress=False)


@pytest.mark.parametrize("method", sorted(set(METHODS.names()) - {"lico"}))
def test_every_method_starts_from_the_init_weights(source, tmp_path, method):
    extra = {"dfr": {"split": "test"}} if method == "dfr" else {}  # the demo data has no val split
    cfg = _cfg(tmp_path / method, method=method, init=str(source), **extra)
    trainer = Trainer.from_config(cfg, progress=False)
    assert torch.equal(trainer.module.state_dict()["model.layer4.0.conv2.weight"],
                       _model(source)["model.layer4.0.conv2.weight"])


def test_linear_probe_trains_the_head_alone(source, tmp_path):
    out = tmp_path / "probe"
    Trainer.from_config(_cfg(out, init=str(source), freeze="backbone", epochs=2), progress=False).fit()
    src, ft = _model(source), _model(out)
    changed = sorted(k for k in src if not torch.equal(src[k], ft[k]))
    assert changed == ["model.fc.bias", "model.fc.weight"]  # BatchNorm statistics frozen too (eval mode)
    with pytest.raises(ConfigError, match="freeze: backbone trains only the head of a random backbone"):
        Trainer.from_config(_cfg(tmp_path / "random", freeze="backbone"), progress=False)
    assert not (tmp_path / "random").exists()  # refused before any folder is written


def test_lr_scales_reach_the_optimizer(source, tmp_path):
    trainer = Trainer.from_config(_cfg(tmp_path / "s", init=str(source), backbone_lr_scale=0.1, head_lr_scale=2.0),
                                  progress=False)
    trainer.fit()
    groups = trainer.optimizer.param_groups
    assert [g["lr_scale"] for g in groups] == [0.1, 2.0] and len(groups[1]["params"]) == 2
    assert groups[0]["lr"] == pytest.approx(0.05 * groups[1]["lr"])  # 0.1 vs 2.0 of the same schedule


def test_resume_gives_the_uninterrupted_model_even_without_the_init_file(source, tmp_path):
    init = tmp_path / "init.safetensors"
    init.write_bytes((source / "model.safetensors").read_bytes())
    kw = dict(init=str(init), epochs=2)
    Trainer.from_config(_cfg(tmp_path / "full", **kw), progress=False).fit()
    Trainer.from_config(_cfg(tmp_path / "part", **kw), progress=False).fit(stop_after=1)
    init.rename(tmp_path / "moved.safetensors")  # the checkpoint holds the weights; the file is not needed
    Trainer.from_config(_cfg(tmp_path / "part", **kw), progress=False, resume=True).fit()
    full, part = (tmp_path / name / "model.safetensors" for name in ("full", "part"))
    assert full.read_bytes() == part.read_bytes()
    assert json.loads((tmp_path / "part" / "status.json").read_text())["init"]["path"] == str(init)
    init.write_bytes(b"another file")  # back, but changed: the run no longer describes it
    with pytest.raises(ValueError, match="config differs from the checkpoint's in .*init_sha256"):
        Trainer.from_config(_cfg(tmp_path / "part", **{**kw, "epochs": 3}), progress=False, resume=True)


@pytest.mark.slow
def test_two_gloo_processes_fine_tune(source, tmp_path):
    """Every rank loads the file; the run completes and records it (torchrun, gloo, 2 processes)."""
    root = str(Path(__file__).parents[2])
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR",
                                                            "MASTER_PORT", "CONSISTCAM_KILL_AT")}
    env.update(PYTHONPATH=os.pathsep.join([root, *sys.path]), OMP_NUM_THREADS="1")
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "consistcam",
           "train", "--data", DATA.replace("size=16", "size=16,num_classes=3"), "--epochs", "1", "--batch-size", "32",
           "--device", "cpu", "--init", str(source), "--method", "ecl", "--set", "ecl.warmup=0",
           "--set", "ecl.consistency.steps=1", "--out", str(out), "--quiet"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    status = json.loads((out / "status.json").read_text())
    assert status["state"] == "complete" and status["init"]["head_reinitialised"] == "model.fc"
    assert yaml.safe_load((out / "config.yaml").read_text())["init_sha256"] == status["init"]["sha256"]
    assert _model(out)["model.fc.weight"].shape == (3, 256)
