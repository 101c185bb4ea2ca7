"""Kept checkpoints: one option parser for the trainer and the VAE, one file format, a round trip."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from consistcam.config import ConfigError
from consistcam.run.kept import (
    is_kept_epoch,
    keep_check,
    keep_every,
    kept_checkpoints,
    kept_path,
    read_kept,
    write_kept,
)
from consistcam.utils import load_tensor_file


def test_keep_every_parses_every_spelling():
    assert keep_every(None) == 0 and keep_every(3) == 3 and keep_every("4") == 4 and keep_every(" every=2 ") == 2
    with pytest.raises(ConfigError, match="keep_checkpoints: expected every=N"):
        keep_every("every=x")
    with pytest.raises(ConfigError, match="every=N needs N >= 1"):
        keep_every("every=0")
    assert keep_check()(0) is None and keep_check()(-1) == "must be >= 0"
    assert keep_check(1)(0) == "must be >= 1" and keep_check(1)("every=1") is None
    assert keep_check()("every=x") == "expected every=N or an integer N >= 0"


def test_kept_epochs_are_every_nth_and_the_last():
    assert [e for e in range(7) if is_kept_epoch(e, 3, 7)] == [2, 5, 6]
    assert not any(is_kept_epoch(e, 0, 7) for e in range(7))


def test_both_configs_use_the_same_option():
    from consistcam.train import TrainConfig
    from consistcam.vae import VAEConfig

    assert TrainConfig.from_dict({"keep_checkpoints": "every=3"}).keep_checkpoints == 3
    assert VAEConfig(keep_checkpoints="every=3").keep_checkpoints == 3
    assert VAEConfig().keep_checkpoints == 1  # a VAE run exists for TracIn: it keeps every epoch by default
    with pytest.raises(ConfigError, match="keep_checkpoints: must be >= 1"):
        VAEConfig(keep_checkpoints=0)


def test_kept_checkpoint_round_trip(tmp_path):
    model = nn.Linear(3, 2)
    for epoch, lr in ((1, 0.5), (4, 0.25)):
        path = write_kept(tmp_path, epoch, model, lr, 3, {"format": "test-1", "arch": "linear"})
        assert path == kept_path(tmp_path, epoch) == tmp_path / "checkpoints" / f"epoch_{epoch:03d}.safetensors"
    (tmp_path / "checkpoints" / "notes.txt").write_text("not a checkpoint")
    kept = kept_checkpoints(tmp_path)
    assert list(kept) == [1, 4]
    info = read_kept(kept[4])
    assert (info.epoch, info.lr, info.interval_epochs) == (4, 0.25, 3.0)
    assert info.meta["format"] == "test-1" and info.meta["arch"] == "linear"
    tensors, _ = load_tensor_file(kept[4])
    assert torch.equal(tensors["weight"], model.weight.detach())
    assert kept_checkpoints(tmp_path / "none") == {}
