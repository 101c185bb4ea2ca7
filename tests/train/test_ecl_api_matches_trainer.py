"""The plain-loop API and ``consistcam train`` are one implementation of ECL: with the same seed and data
order they find the same weights v in every round and, their loops being the same, the same model."""

from __future__ import annotations

import torch
from safetensors.torch import load_file

import consistcam
from consistcam.cli import main
from consistcam.models import create
from consistcam.train import Schedule, TrainConfig
from consistcam.train.data import TrainData
from consistcam.train.trainer import build_optimizer
from consistcam.utils import seed_everything

OPTIONS = {"data": "demo:n=64,n_test=16,size=16", "arch": "cc_resnet10", "epochs": 3, "batch_size": 32, "lr": 0.05,
           "method": "ecl", "seed": 3, "device": "cpu",
           "ecl": {"warmup": 1, "update_every": 1, "score_batch_size": 48,
                   "consistency": {"steps": 1}, "weights": {"ema": 0.3}}}


def plain_loop(cfg: TrainConfig) -> tuple[list[torch.Tensor], dict[str, torch.Tensor]]:
    """ECL through consistcam.ECL in a hand-written loop over the trainer's own data pipeline."""
    seed_everything(cfg.seed)
    data = TrainData.from_spec(cfg.data, cfg.image_size, cfg.augment)
    model = create(cfg.arch, len(data.classes), cfg.pretrained, cfg.small_input)
    optimizer, schedule = build_optimizer(cfg, model), Schedule.from_config(cfg)
    data.preload(cfg.preload, torch.device("cpu"))
    assert isinstance(cfg.method_options, consistcam.ECLConfig)  # the ecl section of a config is the API's config
    ecl = consistcam.ECL(data.num_samples, cfg.method_options, seed=cfg.seed)
    rounds = []
    for epoch in range(cfg.epochs):
        torch.manual_seed(cfg.seed * 1000 + epoch)
        if ecl.on_epoch_start(model, data.scoring_loader(cfg.method_options.score_batch_size), epoch):
            rounds.append(ecl.weights.clone())
        model.train()
        loader = data.train_loader(cfg.batch_size, cfg.seed * 1000 + epoch)
        for i, batch in enumerate(loader):
            for group in optimizer.param_groups:
                group["lr"] = schedule(epoch * len(loader) + i, len(loader))
            loss = ecl.loss(model(batch["image"]), batch["label"], batch["id"])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return rounds, model.state_dict()


def test_plain_loop_api_matches_consistcam_train(tmp_path):
    run = tmp_path / "run"
    args = ["train", "--out", str(run), "--quiet", "--data", OPTIONS["data"], "--arch", OPTIONS["arch"],
            "--epochs", "3", "--batch-size", "32", "--lr", "0.05", "--method", "ecl", "--seed", "3", "--device", "cpu",
            "--set", "ecl.warmup=1", "--set", "ecl.update_every=1", "--set", "ecl.score_batch_size=48",
            "--set", "ecl.consistency.steps=1", "--set", "ecl.weights.ema=0.3"]
    assert main(args) == 0
    cfg = TrainConfig.from_dict({**OPTIONS, "out": str(tmp_path / "plain")})
    rounds, state = plain_loop(cfg)
    saved = [load_file(str(run / "consistency" / f"epoch_{e:03d}.safetensors")) for e in (1, 2)]
    assert len(rounds) == len(saved) == 2
    for mine, theirs in zip(rounds, saved):
        assert torch.equal(mine[theirs["ids"]], theirs["weights"])  # v of every sample, every round
    assert not torch.equal(saved[0]["weights"], saved[1]["weights"])  # the rounds really differ
    trained = load_file(str(run / "model.safetensors"))
    assert trained.keys() == state.keys()
    assert all(torch.equal(trained[k], state[k]) for k in trained)
