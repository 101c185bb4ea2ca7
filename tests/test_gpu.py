"""The library on a CUDA GPU, checked against the CPU: explain, masked PGD, consistency scoring (float32 and
bfloat16 autocast), one AMP training run, evaluation, and the trainer's DDP path over NCCL in one process.

Every test runs on ``cpu`` and on ``cuda`` (the ``gpu`` marker: skipped without CUDA, with the reason; see
tests/conftest.py), so the code of each check runs in CI; on a GPU the cuda case is compared with the CPU
reference where both should compute the same function. Those comparisons run with TF32 off (cuDNN's
default for float32 convolutions rounds inputs to a 10-bit mantissa), so float32 tolerances apply; the
bfloat16 test states its own. Run on a GPU machine: ``pytest -m gpu tests/test_gpu.py``.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from consistcam.attack import masked_attack
from consistcam.consistency import (
    ConsistencyConfig,
    ExecutionConfig,
    consistency_weights,
    explanation_consistency,
    score_dataset,
)
from consistcam.evaluation import evaluate_model
from consistcam.explain import explain
from consistcam.train import TrainConfig, Trainer
from tests.helpers import square_images, trained_tiny_net

EPS, ALPHA = 8 / 255, 2 / 255


@pytest.fixture(params=["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def device(request):
    if request.param == "cpu":
        yield torch.device("cpu")
        return
    tf32 = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield torch.device("cuda")
    finally:
        torch.backends.cudnn.allow_tf32 = tf32


@pytest.fixture(scope="module")
def data():
    """32 images of the tiny two-class square task (16 px), their labels and the squares' masks."""
    return square_images(32, seed=3)


def _on(device: torch.device, *tensors: torch.Tensor) -> list[torch.Tensor]:
    return [t.to(device) for t in tensors]


def test_explain_matches_cpu(device, data):
    x, y, _ = data
    ref, ref_logits = explain(trained_tiny_net(), x, y, explainer="gradcam", return_logits=True)
    maps, logits = explain(trained_tiny_net().to(device), *_on(device, x, y), explainer="gradcam", return_logits=True)
    assert maps.device.type == device.type and maps.shape == (32, 1, 16, 16)
    assert torch.allclose(logits.cpu(), ref_logits, atol=1e-4)
    # float32 rounding only (different kernels), through the per-map min-max normalisation
    assert torch.allclose(maps.cpu(), ref, atol=1e-3)
    peaks = maps.flatten(1).amax(1).cpu()
    assert torch.allclose(peaks, torch.ones_like(peaks), atol=1e-5)  # normalised maps peak at 1 on either device


def test_masked_pgd_leaves_the_foreground_exactly(device, data):
    x, y, fg = _on(device, *data)
    model = trained_tiny_net().to(device)
    adv = masked_attack(model, x, y, fg, eps=EPS, alpha=ALPHA, steps=5,
                        generator=torch.Generator(device=device).manual_seed(0))
    delta = adv - x
    assert adv.device.type == device.type
    assert delta[fg.expand_as(delta) > 0].abs().max().item() == 0.0  # exactly 0, not just small
    assert delta.abs().max().item() <= EPS + 1e-6 and adv.min() >= 0 and adv.max() <= 1
    assert delta.abs().amax().item() > ALPHA / 2  # the background did move
    with torch.no_grad():
        assert F.cross_entropy(model(adv), y) > F.cross_entropy(model(x), y)  # and it is an attack
    again = masked_attack(model, x, y, fg, eps=EPS, alpha=ALPHA, steps=5,
                          generator=torch.Generator(device=device).manual_seed(0))
    assert torch.equal(again, adv)  # seeded on the device: reproducible
    # without a random start the attack is a function of the gradients: the same on either device, but for
    # the odd pixel whose gradient sign differs by rounding near zero
    plain = masked_attack(model, x, y, fg, eps=EPS, alpha=ALPHA, steps=5, random_start=False)
    ref = masked_attack(trained_tiny_net(), *data, eps=EPS, alpha=ALPHA, steps=5, random_start=False)
    assert (plain.cpu() - ref).abs().gt(1e-5).float().mean().item() < 0.02


def test_consistency_scoring_matches_cpu(device, data):
    x, y, _ = data
    cfg = ConsistencyConfig(steps=3, random_start=False)
    ref = explanation_consistency(trained_tiny_net(), x, y, cfg)
    out = explanation_consistency(trained_tiny_net().to(device), *_on(device, x, y), cfg)
    assert out["E"].device.type == device.type
    assert torch.equal(out["pred"].cpu(), ref["pred"])
    assert torch.allclose(out["E"].cpu(), ref["E"], atol=1e-2)  # a PGD sign flipped by rounding moves E a little
    assert (out["E"].cpu() - ref["E"]).abs().mean().item() < 1e-3
    # the data-set pass, on the folded, channels-last copy ECL scores with
    loader = [{"image": x[i:i + 16], "label": y[i:i + 16], "id": torch.arange(i, i + 16)} for i in (0, 16)]
    fp32 = ExecutionConfig(amp="off")  # fp32 against fp32 (bf16: below and the next tests)
    scores = score_dataset(trained_tiny_net().to(device), loader, cfg, execution=fp32, device=device)
    assert scores.E.device.type == device.type
    assert torch.allclose(scores.E.cpu(), ref["E"], atol=1e-2)
    v = consistency_weights(scores.E, floor=0.5, power=0.5)  # ECL's default weights
    assert v.mean().item() == pytest.approx(1.0, abs=1e-5)
    # amp=auto, the default: bf16 on CUDA; E and v agree with fp32 within tests/consistency/test_amp.py's tolerance
    auto = score_dataset(trained_tiny_net().to(device), loader, cfg, device=device)
    assert auto.E.dtype == torch.float32
    assert (auto.E.cpu() - ref["E"]).abs().max().item() < 0.05
    assert (consistency_weights(auto.E, floor=0.5, power=0.5) - v).abs().max().item() < 0.05


def test_consistency_under_bf16_autocast_is_close_to_float32(device, data):
    """torch.autocast around a single call (what ExecutionConfig.amp does inside score_dataset; explain()
    accepts float32 images under autocast). The result stays close to float32's."""
    model = trained_tiny_net().to(device)
    x, y, _ = _on(device, *data)
    cfg = ConsistencyConfig(steps=3, random_start=False)
    fp32 = explanation_consistency(model, x, y, cfg)
    with torch.autocast(device.type, dtype=torch.bfloat16):
        bf16 = explanation_consistency(model, x, y, cfg, return_images=True)
    assert bf16["logits"].dtype == torch.bfloat16  # autocast did reach the explained forward
    fg = bf16["foreground"].expand_as(x) > 0
    assert (bf16["adversarial"] - x)[fg].abs().max().item() == 0.0
    d = (bf16["E"].float() - fp32["E"]).abs()
    # bfloat16 keeps 8 mantissa bits: measured on the CPU mean |dE| 0.003, max 0.013
    assert d.mean().item() < 0.02 and d.max().item() < 0.1
    assert (bf16["pred"] == fp32["pred"]).float().mean().item() >= 0.9


def test_amp_training_run(device, tmp_path):
    """ECL (scoring, weighted loss) with ``amp`` and channels-last for one epoch: finite loss, weights moved,
    and on CUDA the forward really ran in bfloat16 (``amp`` is CUDA-only: float32 on the CPU)."""
    cfg = TrainConfig.from_dict({"data": "demo:n=64,n_test=32,size=16", "method": "ecl", "epochs": 1,
                                 "batch_size": 32, "eval_batch_size": 32, "out": str(tmp_path / "run"),
                                 "device": device.type, "amp": True, "channels_last": True,
                                 "ecl": {"warmup": 0, "score_batch_size": 32, "consistency": {"steps": 1}}})
    trainer = Trainer.from_config(cfg, progress=False)
    conv = next(m for m in trainer.module.modules() if isinstance(m, torch.nn.Conv2d))
    dtypes: set[torch.dtype] = set()
    handle = conv.register_forward_hook(lambda mod, inp, out: dtypes.add(out.dtype) if mod.training else None)
    before = [p.detach().clone() for p in trainer.module.parameters()]
    record = trainer.fit()[0]
    handle.remove()
    assert trainer.device.type == device.type
    assert math.isfinite(record["train/loss"]) and 0 <= record["train/acc"] <= 1
    assert dtypes == ({torch.bfloat16} if device.type == "cuda" else {torch.float32})
    assert any(not torch.equal(b, p.detach()) for b, p in zip(before, trainer.module.parameters()))
    assert json.loads((tmp_path / "run" / "status.json").read_text())["state"] == "complete"


def test_evaluate_model_matches_cpu(device):
    x, y, masks = square_images(48, seed=5)
    loader = [{"image": x[i:i + 16], "label": y[i:i + 16], "id": torch.arange(i, i + 16), "mask": masks[i:i + 16]}
              for i in range(0, 48, 16)]
    kw = dict(consistency=ConsistencyConfig(steps=2, random_start=False), protocols=("localization", "consistency"),
              per_sample=True)
    ref = evaluate_model(trained_tiny_net(), loader, 2, device="cpu", **kw)
    res = evaluate_model(trained_tiny_net().to(device), loader, 2, device=device, **kw)
    assert res["acc"] == ref["acc"]
    assert res["energy"] == pytest.approx(ref["energy"], abs=1e-4)
    assert torch.equal(res["per_sample"]["pred"], ref["per_sample"]["pred"])
    assert torch.allclose(res["per_sample"]["E"], ref["per_sample"]["E"], atol=1e-2)
    assert res["consistency_E"] == pytest.approx(ref["consistency_E"], abs=1e-3)


def _launch(out: Path, device: torch.device, mode: str) -> dict:
    script = str(Path(__file__).with_name("gpu_ddp_script.py"))
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1"]
                if mode == "ddp" else [sys.executable])
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR",
                                                            "MASTER_PORT")}
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parents[1]), *sys.path])
    env["OMP_NUM_THREADS"] = "1"
    proc = subprocess.run([*launcher, script, str(out), device.type, mode], env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return json.loads((out / "ddp.json").read_text())


@pytest.mark.slow
def test_ddp_one_process_matches_plain_run(device, tmp_path):
    """The trainer's DDP path in a world of one (NCCL on CUDA, gloo on the CPU; tests/gpu_ddp_script.py)
    trains the same model as a plain run: one rank's all-reduce is the identity."""
    ddp, plain = tmp_path / "ddp", tmp_path / "plain"
    info = _launch(ddp, device, "ddp")
    assert info == {"ddp": True, "backend": "nccl" if device.type == "cuda" else "gloo",
                    "device": "cuda:0" if device.type == "cuda" else "cpu"}
    assert _launch(plain, device, "plain")["ddp"] is False
    assert json.loads((ddp / "status.json").read_text())["state"] == "complete"
    rec_ddp = [json.loads(line) for line in (ddp / "metrics.jsonl").read_text().splitlines()]
    rec_plain = [json.loads(line) for line in (plain / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rec_ddp] == [0, 1]
    for a, b in zip(rec_ddp, rec_plain):
        assert a["train/loss"] == pytest.approx(b["train/loss"], rel=1e-4)
        assert a["test/acc"] == pytest.approx(b["test/acc"], abs=1 / 32)
    for epoch in (0, 1):  # the sharded, gathered scoring pass
        name = f"consistency/epoch_00{epoch}.safetensors"
        a, b = load_file(str(ddp / name)), load_file(str(plain / name))
        assert a["ids"].tolist() == list(range(64))
        assert torch.allclose(a["E"], b["E"], atol=1e-3)  # 1e-3: room for a PGD sign flipped by rounding
    a, b = load_file(str(ddp / "state.safetensors")), load_file(str(plain / "state.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], rtol=1e-3, atol=1e-4), k
