"""bfloat16 autocast of the scoring pass: E and the weights v agree with float32 within a stated
tolerance (the same code path runs on CUDA, where ``amp=auto`` turns it on; tests/test_gpu.py)."""

from __future__ import annotations

import pytest
import torch

from consistcam.consistency import ConsistencyConfig, ExecutionConfig, consistency_weights, score_dataset
from consistcam.consistency.score import scoring_uses_bf16
from tests.helpers import square_images, trained_tiny_net

# Measured on this test's 48 images (3 PGD steps, CPU): max |E_bf16 - E_fp32| < 0.03 and max
# |v_bf16 - v_fp32| = 0.031 with v in 0.69..1.52 (tempered weights); bf16 keeps 8 bits of mantissa, so the
# heatmaps and the PGD steps differ slightly. The stated tolerance: 0.05 on E and v, correlation > 0.99.
TOLERANCE = 0.05


def _loader(images, labels, ids, batch):
    return [{"image": images[i:i + batch], "label": labels[i:i + batch], "id": ids[i:i + batch]}
            for i in range(0, len(ids), batch)]


def test_auto_is_on_for_cuda_only():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert not scoring_uses_bf16(ExecutionConfig(), cpu) and scoring_uses_bf16(ExecutionConfig(), cuda)
    assert scoring_uses_bf16(ExecutionConfig(amp="bf16"), cpu)
    assert not scoring_uses_bf16(ExecutionConfig(amp="off"), cuda)


def test_bf16_scoring_agrees_with_fp32():
    model = trained_tiny_net()
    images, labels, _ = square_images(48, seed=3)
    ids = torch.arange(48)
    loader = _loader(images, labels, ids, 16)
    fp32 = score_dataset(model, loader, ConsistencyConfig(steps=3), execution=ExecutionConfig(amp="off"))
    bf16 = score_dataset(model, loader, ConsistencyConfig(steps=3), execution=ExecutionConfig(amp="bf16"))
    v_fp32, v_bf16 = consistency_weights(fp32.E, floor=0.5, power=0.5), consistency_weights(bf16.E, floor=0.5,
                                                                                            power=0.5)
    assert bf16.E.dtype == torch.float32 and v_bf16.dtype == torch.float32
    assert (fp32.E - bf16.E).abs().max().item() < TOLERANCE
    assert (v_fp32 - v_bf16).abs().max().item() < TOLERANCE
    assert torch.corrcoef(torch.stack([v_fp32, v_bf16]))[0, 1].item() > 0.99
    assert v_bf16.mean().item() == pytest.approx(1.0, abs=1e-5)
    assert torch.equal(fp32.pred, bf16.pred)  # a trained net's clean predictions survive bf16 here
    assert not torch.equal(fp32.E, bf16.E)  # it did run in bf16 (the figures are not the fp32 ones)
