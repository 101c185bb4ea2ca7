"""DDP on the CPU (gloo, 2 processes launched by torchrun): the run completes, every epoch is
logged once, ECL's sharded scoring pass is gathered so that every rank holds the same weights v
over the whole data set, and the result matches a 1-process run with the same global batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from consistcam.train.data import GlobalBatchSampler

SCRIPT = Path(__file__).with_name("ddp_script.py")


def _env() -> dict:
    root = str(Path(__file__).parents[2])
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR",
                                                            "MASTER_PORT", "CONSISTCAM_KILL_AT")}
    env["PYTHONPATH"] = os.pathsep.join([root, *sys.path])
    env["OMP_NUM_THREADS"] = "1"
    return env


def _launch(out: Path, nproc: int, epochs: int = 2) -> None:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           str(SCRIPT), str(out), str(epochs)]
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]


def test_global_batches_are_the_same_for_any_world_size():
    one = list(GlobalBatchSampler(37, 8, seed=3))
    for world in (2, 4):
        shards = [list(GlobalBatchSampler(37, 8, seed=3, rank=r, world_size=world)) for r in range(world)]
        assert all(len(s) == len(one) for s in shards)
        for b, batch in enumerate(one):
            merged = sorted(i for s in shards for i in s[b])
            assert set(batch) <= set(merged) and 0 <= len(merged) - len(batch) < world  # padded only to split evenly
            assert len({len(s[b]) for s in shards}) == 1  # equal shares: DDP's gradient mean is the global mean
    loader_order = torch.utils.data.DataLoader(list(range(37)), batch_size=8, shuffle=True,
                                               generator=torch.Generator().manual_seed(3))
    assert [b.tolist() for b in loader_order] == one  # one process sees what it always saw


def test_weighted_global_batches_match_weighted_random_sampler_for_any_world_size():
    weights = torch.tensor([0.0, 1.0, 5.0, 2.0] * 9 + [3.0])
    one = list(GlobalBatchSampler(37, 8, seed=3, weights=weights))
    g = torch.Generator().manual_seed(3)
    torch.empty((), dtype=torch.int64).random_(generator=g)  # the base-seed draw, as in the unweighted order
    reference = list(torch.utils.data.WeightedRandomSampler(weights, 37, generator=g))
    assert [i for batch in one for i in batch] == reference and 0 not in reference  # weight 0: never drawn
    for world in (2, 4):
        shards = [list(GlobalBatchSampler(37, 8, seed=3, rank=r, world_size=world, weights=weights))
                  for r in range(world)]
        for b, batch in enumerate(one):  # with replacement: compare as multisets
            merged = Counter(i for s in shards for i in s[b])
            assert not Counter(batch) - merged and 0 <= sum((merged - Counter(batch)).values()) < world
    with pytest.raises(ValueError, match="non-negative numbers with a positive sum"):
        GlobalBatchSampler(37, 8, seed=3, weights=torch.zeros(37))
    with pytest.raises(ValueError, match="got shape"):
        GlobalBatchSampler(37, 8, seed=3, weights=torch.ones(36))


@pytest.mark.slow
def test_two_gloo_processes_match_one(tmp_path):
    _launch(tmp_path / "two", 2)
    _launch(tmp_path / "one", 1)
    two, one = tmp_path / "two", tmp_path / "one"
    assert json.loads((two / "status.json").read_text())["state"] == "complete"
    records = [json.loads(line) for line in (two / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [0, 1]  # each epoch logged once (rank 0 writes)
    w0 = load_file(str(two / "weights_rank0.safetensors"))["weights"]
    w1 = load_file(str(two / "weights_rank1.safetensors"))["weights"]
    assert torch.equal(w0, w1)  # every rank holds the same v
    for epoch in (0, 1):
        scores = load_file(str(two / "consistency" / f"epoch_00{epoch}.safetensors"))
        assert scores["ids"].tolist() == list(range(64))  # one score per training sample
        assert scores["weights"].mean().item() == pytest.approx(1.0, abs=1e-5)  # mean 1 over the whole set
    assert torch.equal(w0, load_file(str(two / "consistency" / "epoch_001.safetensors"))["weights"])
    # the first round scores the untrained model: sharded over 2 ranks it equals 1 process to float precision
    # (PGD without a random start here: random starts are drawn per shard, see docs/distributed.md)
    a = load_file(str(two / "consistency" / "epoch_000.safetensors"))
    b = load_file(str(one / "consistency" / "epoch_000.safetensors"))
    assert torch.allclose(a["E"], b["E"], atol=1e-5) and torch.allclose(a["weights"], b["weights"], atol=1e-4)
    # training: the same global batches and weights v, but BatchNorm normalises each rank's half batch
    # and each rank draws its own augmentations, so the first epoch's loss agrees to 20 %, not exactly
    loss_two = records[0]["train/loss"]
    loss_one = json.loads((one / "metrics.jsonl").read_text().splitlines()[0])["train/loss"]
    assert loss_two == pytest.approx(loss_one, rel=0.2)
