"""VAE-TracIn (Kong & Chaudhuri, NeurIPS 2021): TracIn over the ELBO loss of a VAE.

Influence of training image x_i on test image x: Σ over kept checkpoints of
lr · epochs · <∇ loss(x_i), ∇ loss(x)>, the loss being the per-sample negative ELBO averaged over
S reparameterisation draws (the reference's ``reconstruct_num``). By default the gradients are
those of the last encoder layer (``encoder.head``) and the last decoder layer (``decoder.out``),
as the reference's ``use_last_layer``. The noise of sample ``id`` is drawn from a generator seeded
by (seed, id), so a sample's gradient does not depend on the batch it is in.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from consistcam.influence.gradients import RandomProjection, per_sample_gradients, select_parameters
from consistcam.influence.tracin import TracInCheckpoint, TracInResult, kept_tracin_checkpoints, tracin
from consistcam.run.device import resolve_device
from consistcam.run.kept import kept_checkpoints
from consistcam.run.layout import KEPT_DIR
from consistcam.vae.loss import elbo_loss
from consistcam.vae.model import LAST_LAYERS, ConvVAE
from consistcam.vae.train import load_vae, load_vae_data, read_vae_config

TEST_ID_OFFSET = 2**40  # noise ids of test samples, apart from every training id


def sample_noise(ids: Tensor, samples: int, latent_dim: int, seed: int = 0) -> Tensor:
    """(B, S, L) standard normal noise, each sample's from its own generator seeded by (seed, id)."""
    rows = [torch.randn(samples, latent_dim, generator=torch.Generator().manual_seed(seed * 1_000_003 + int(i)))
            for i in ids.tolist()]
    return torch.stack(rows)


def _noise_ids(batch: dict) -> Tensor:
    return batch["noise_id"] if "noise_id" in batch else batch["id"]


def elbo_gradients(params: str | Sequence[str] = "last", samples: int = 16, beta: float = 1.0, seed: int = 0,
                   projection: int | None = None, chunk_size: int | None = None) -> Callable[[nn.Module, dict], Tensor]:
    """The VAE-TracIn featurizer ``(vae, batch) -> (B, D)``: per-sample gradients of the negative
    ELBO of ``batch["image"]`` w.r.t. the last layers (``"last"``), ``"all"`` parameters, a module
    prefix or a list of names; optionally randomly projected to ``projection`` dims."""
    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")
    project = RandomProjection(projection, seed) if projection else None

    def loss(forward, x: Tensor, eps: Tensor) -> Tensor:
        recon, mu, logvar = forward(x, eps)
        return elbo_loss(recon, x, mu, logvar, beta)

    def gradients(model: nn.Module, batch: dict) -> Tensor:
        if not isinstance(model, ConvVAE):
            raise TypeError(f"elbo_gradients needs a ConvVAE, got {type(model).__name__}")
        x = batch["image"]
        eps = sample_noise(_noise_ids(batch), samples, model.latent_dim, seed).to(x)
        if params == "last":
            names = [n for n, _ in model.named_parameters() if n.rsplit(".", 1)[0] in LAST_LAYERS]
        else:
            names = select_parameters(model, params, x)
        g = per_sample_gradients(model, loss, (x, eps), names, chunk_size)
        return project(g) if project is not None else g

    return gradients


@torch.no_grad()
def elbo_per_sample(model: ConvVAE, images: Tensor, ids: Tensor, samples: int = 64, beta: float = 1.0,
                    seed: int = 12345, batch_size: int = 256) -> Tensor:
    """The negative ELBO of each image (B,), averaged over ``samples`` seeded noise draws (for
    judging influences: loss before and after removing training samples)."""
    from consistcam.models.state import preserved_state

    out = []
    device = next(model.parameters()).device
    with preserved_state(model, eval_mode=True):
        for start in range(0, len(images), batch_size):
            x = images[start:start + batch_size].to(device)
            eps = sample_noise(ids[start:start + batch_size], samples, model.latent_dim, seed).to(x)
            recon, mu, logvar = model(x, eps)
            out.append(elbo_loss(recon, x, mu, logvar, beta).cpu())
    return torch.cat(out)


def vae_checkpoints(run: str | Path, last: int | None = None) -> list[TracInCheckpoint]:
    """A VAE run's kept checkpoints in epoch order, each weighted by lr · epochs."""
    kept = kept_checkpoints(run)
    if not kept:
        raise FileNotFoundError(f"{Path(run) / KEPT_DIR} holds no checkpoints: is {run} a VAE run folder?")
    return kept_tracin_checkpoints(kept, load_vae, last)


def vae_tracin(run: str | Path, test_images: Tensor | None = None, *, params: str = "last", samples: int = 16,
               projection: int | None = None, last: int | None = None, seed: int = 0, batch_size: int = 128,
               device: str = "auto", progress: bool = False) -> tuple[TracInResult, Tensor]:
    """VAE-TracIn of a run over all its training images (excluded ones included, so removal
    experiments can score them): returns the result and the training images (in ``ids`` order)."""
    cfg = read_vae_config(run)
    data = load_vae_data(cfg, keep_excluded=True)
    batches = [{"image": data.images[s:s + batch_size], "id": data.ids[s:s + batch_size]}
               for s in range(0, len(data.ids), batch_size)]
    test = None
    if test_images is not None:
        ids = torch.arange(len(test_images))
        test = {"image": test_images, "id": ids, "noise_id": ids + TEST_ID_OFFSET}
    result = tracin(vae_checkpoints(run, last), elbo_gradients(params, samples, cfg.beta, seed, projection),
                    batches, test, device=resolve_device(device, run), progress=progress)
    return result, data.images


def save_result(result: TracInResult, path: str | Path, meta: dict) -> Path:
    from consistcam.utils import atomic_save_tensors

    tensors = {"ids": result.ids, "self_influence": result.self_influence}
    if result.influence is not None:
        tensors["influence"] = result.influence
    atomic_save_tensors({k: v.contiguous() for k, v in tensors.items()}, path,
                        {k: json.dumps(v) for k, v in meta.items()})
    return Path(path)
