"""The in-memory training input path and worker-independent augmentation."""

from __future__ import annotations

import pytest
import torch
from torchvision.transforms.v2 import functional as TF

from consistcam.config import ConfigError
from consistcam.train import TrainConfig, TrainData, Trainer
from consistcam.train.preload import crop_flip, epoch_draws

DEMO = "demo:n=64,size=16"


def test_crop_flip_is_pad_crop_flip_of_torchvision():
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (6, 3, 12, 10), dtype=torch.uint8, generator=g)
    padded = torch.nn.functional.pad(images, (4,) * 4)
    offsets = torch.tensor([[0, 0], [8, 8], [3, 5], [8, 0], [1, 7], [4, 4]])
    flips = torch.tensor([False, True, True, False, False, True])
    out = crop_flip(padded, offsets, flips, 12, 10)
    for i in range(6):
        ref = TF.crop(TF.pad(images[i], [4]), int(offsets[i, 0]), int(offsets[i, 1]), 12, 10)
        ref = TF.horizontal_flip(ref) if flips[i] else ref
        assert torch.equal(out[i], ref)


def test_draws_depend_on_seed_and_id_only():
    a_off, a_flip = epoch_draws(100, 4, seed=7, device=torch.device("cpu"))
    b_off, b_flip = epoch_draws(100, 4, seed=7, device=torch.device("cpu"))
    c_off, _ = epoch_draws(100, 4, seed=8, device=torch.device("cpu"))
    assert torch.equal(a_off, b_off) and torch.equal(a_flip, b_flip) and not torch.equal(a_off, c_off)
    assert int(a_off.min()) == 0 and int(a_off.max()) == 8  # uniform over 0..2*pad, as v2.RandomCrop draws


def _batches_by_id(loader) -> dict[int, torch.Tensor]:
    return {int(i): img for batch in loader for i, img in zip(batch["id"], batch["image"])}


def test_preloaded_pixels_are_the_eval_pixels_and_batching_does_not_change_augmentation():
    plain = TrainData.from_spec(DEMO, 16, "none")
    assert plain.preload("on", torch.device("cpu")) is None
    eval_images = _batches_by_id(plain.scoring_loader(16))
    pre = _batches_by_id(plain.train_loader(16, seed=3))
    assert pre.keys() == eval_images.keys()
    assert all(torch.equal(pre[i], eval_images[i]) for i in pre)
    aug = TrainData.from_spec(DEMO, 16, "crop_flip")
    aug.preload("on", torch.device("cpu"))
    small, large = _batches_by_id(aug.train_loader(8, seed=3)), _batches_by_id(aug.train_loader(64, seed=3))
    assert all(torch.equal(small[i], large[i]) for i in small)
    other = _batches_by_id(aug.train_loader(8, seed=4))
    assert any(not torch.equal(small[i], other[i]) for i in small)


def test_preload_on_says_why_it_cannot():
    data = TrainData.from_spec(DEMO, 16, "rrc_flip")
    with pytest.raises(ConfigError, match="augment='rrc_flip' is not done on the device"):
        data.preload("on", torch.device("cpu"))
    assert "rrc_flip" in data.preload("auto", torch.device("cpu"))  # auto falls back, with the reason
    assert data.preloaded is None


def _train(tmp_path, name: str, **options) -> dict[str, torch.Tensor]:
    cfg = TrainConfig.from_dict({"data": DEMO, "epochs": 1, "batch_size": 16, "augment": "crop_flip",
                                 "image_size": 16, "seed": 1, "out": str(tmp_path / name), **options})
    trainer = Trainer.from_config(cfg, progress=False)
    trainer.fit()
    return trainer.module.state_dict()


def test_workers_do_not_change_the_model(tmp_path):
    """The augmentation of a sample is a function of (seed, epoch, id): 0 and 2 loader workers train
    the same model, bit for bit (DataLoader path; the preloaded path has no workers at all)."""
    a = _train(tmp_path, "w0", workers=0, preload="off")
    b = _train(tmp_path, "w2", workers=2, preload="off")
    assert all(torch.equal(a[k], b[k]) for k in a)
    c = _train(tmp_path, "pre", preload="on")
    assert any(not torch.equal(a[k], c[k]) for k in a if k.endswith("weight"))  # another (valid) random stream
