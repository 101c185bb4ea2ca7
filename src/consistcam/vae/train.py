"""``train_vae(config)``: train :class:`ConvVAE` and write a run folder TracIn can read.

RUN/config.yaml, RUN/metrics.jsonl (one line per epoch), RUN/model.safetensors, and every
``keep_checkpoints``-th epoch's weights in RUN/checkpoints/epoch_XXX.safetensors with the learning rate
and the number of epochs they stand for; RUN/status.json says ``running`` until the last file is
written, then ``complete``. All writes are atomic; weights are safetensors (no pickle).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from consistcam.config import ConfigError, from_dict, to_dict
from consistcam.run.checkpoint import read_metadata
from consistcam.run.device import resolve_device
from consistcam.run.kept import is_kept_epoch, write_kept
from consistcam.run.layout import MODEL_FILE, model_path, read_config, write_config
from consistcam.run.status import prepare_new_run, write_metrics, write_status
from consistcam.utils import atomic_save_tensors, load_tensor_file, progress_bar, seed_everything
from consistcam.vae.config import VAEConfig
from consistcam.vae.loss import elbo_loss
from consistcam.vae.model import ConvVAE

FORMAT = "consistcam-vae-1"


@dataclass
class VAEData:
    """Training images as one float tensor in [0, 1] (small sets at 32-64 px fit in memory), their
    ids (positions in the full set: main images first, then the extras) and labels (for analysis)."""

    images: Tensor
    ids: Tensor
    labels: Tensor
    is_extra: Tensor


def _load_all(spec: str, size: int, limit: int | None) -> tuple[Tensor, Tensor]:
    from consistcam.data import build_dataset, build_transform

    ds = build_dataset(spec, "train", build_transform(size, "none"))
    ds.keep_locations = False
    n = len(ds) if limit is None else min(limit, len(ds))
    samples = [ds[i] for i in range(n)]
    return torch.stack([s["image"].as_subclass(Tensor) for s in samples]), torch.tensor(
        [int(s["label"]) for s in samples])


def load_vae_data(cfg: VAEConfig, keep_excluded: bool = False) -> VAEData:
    """The training set of ``cfg`` (``exclude`` removed unless ``keep_excluded``: TracIn scores all)."""
    images, labels = _load_all(cfg.data, cfg.image_size, cfg.subset)
    extra = torch.zeros(len(images), dtype=torch.bool)
    if cfg.extra:
        more, more_labels = _load_all(cfg.extra, cfg.image_size, cfg.extra_n)
        images, labels = torch.cat([images, more]), torch.cat([labels, torch.full_like(more_labels, -1)])
        extra = torch.cat([extra, torch.ones(len(more), dtype=torch.bool)])
    ids = torch.arange(len(images))
    if cfg.exclude and not keep_excluded:
        bad = [i for i in cfg.exclude if not 0 <= i < len(images)]
        if bad:
            raise ValueError(f"exclude: id {bad[0]} is not in the training set (0 .. {len(images) - 1})")
        keep = torch.ones(len(images), dtype=torch.bool)
        keep[torch.tensor(cfg.exclude)] = False
        images, ids, labels, extra = images[keep], ids[keep], labels[keep], extra[keep]
    return VAEData(images, ids, labels, extra)


def _format(model: ConvVAE) -> dict[str, str]:
    return {"format": FORMAT, "model": json.dumps(model.config())}


def load_vae(path: str | Path, device: str | torch.device = "cpu") -> ConvVAE:
    """A VAE from RUN/model.safetensors, a kept checkpoint, or a run folder."""
    path = Path(path)
    if path.is_dir():
        path = path / MODEL_FILE
    meta = read_metadata(path)
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path}: not a consistcam VAE file (format {meta.get('format')!r})")
    model = ConvVAE(**json.loads(meta["model"]))
    model.load_state_dict(load_tensor_file(path)[0])
    return model.to(device).eval()


def read_vae_config(run: str | Path) -> VAEConfig:
    config = read_config(run, hint=f"is {run} a VAE run folder (consistcam vae train)?")
    return from_dict(VAEConfig, config)


def train_vae(cfg: VAEConfig, overwrite: bool = False, progress: bool = False) -> Path:
    """Train and write the run folder; returns its path."""
    device = resolve_device(cfg.device)
    run_dir = Path(cfg.out)
    prepare_new_run(run_dir, overwrite, resumable=False)
    seed_everything(cfg.seed)
    data = load_vae_data(cfg)
    if len(data.images) == 0:
        raise ConfigError("exclude: every training image is excluded")
    if tuple(data.images.shape[1:]) != (3, cfg.image_size, cfg.image_size):
        raise ValueError(f"{cfg.data}: images of shape {tuple(data.images.shape[1:])}, expected 3 x {cfg.image_size}"
                         f" x {cfg.image_size} (use a square --image-size the data can be resized to)")
    model = ConvVAE(cfg.image_size, 3, cfg.latent_dim, cfg.widths).to(device)
    optimizer = (torch.optim.Adam(model.parameters(), lr=cfg.lr) if cfg.optimizer == "adam" else
                 torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum))
    run_dir.mkdir(parents=True, exist_ok=True)
    write_config(run_dir, to_dict(cfg))
    write_status(run_dir, "running", epochs=cfg.epochs)
    images = data.images.to(device)
    g = torch.Generator().manual_seed(cfg.seed)
    log = []
    last_kept = -1
    for epoch in range(cfg.epochs):
        t0 = time.time()
        model.train()
        order = torch.randperm(len(images), generator=g)
        total = 0.0
        for start in progress_bar(range(0, len(order), cfg.batch_size), desc=f"vae epoch {epoch}", enabled=progress):
            x = images[order[start:start + cfg.batch_size].to(device)]
            eps = torch.randn(len(x), 1, cfg.latent_dim, generator=g).to(device)
            loss = _batch_loss(model, x, eps, cfg.beta)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.item() * len(x)
        if not torch.isfinite(torch.tensor(total)):
            raise ValueError(f"epoch {epoch}: the VAE loss is not finite; lower --lr")
        record = {"epoch": epoch, "train/loss": total / len(images), "lr": cfg.lr, "time_s": round(time.time() - t0, 2)}
        log.append(record)
        if progress:
            print(json.dumps(record), flush=True)
        if is_kept_epoch(epoch, cfg.keep_checkpoints, cfg.epochs):
            write_kept(run_dir, epoch, model, cfg.lr, epoch - last_kept, _format(model))
            last_kept = epoch
        write_metrics(run_dir, log)
    atomic_save_tensors({k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}, model_path(run_dir),
                        {**_format(model), "epoch": str(cfg.epochs - 1)})
    write_status(run_dir, "complete", epochs=cfg.epochs)
    return run_dir


def _batch_loss(model: ConvVAE, x: Tensor, eps: Tensor, beta: float) -> Tensor:
    recon, mu, logvar = model(x, eps)
    return elbo_loss(recon, x, mu, logvar, beta).mean()
