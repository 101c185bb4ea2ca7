"""The VAE-TracIn sanity checks of Kong & Chaudhuri (2021), small scale, as a reproducible script.

``PYTHONPATH=src python scripts/vae_checks.py --out DIR [--seeds 0 1] ...`` trains small VAEs and
prints one JSON line per check:

* ``self``: training images with high self-influence are the unusual / high-loss ones: Spearman
  correlation of self-influence with the final negative ELBO, and the AUC with which self-influence
  finds ``extra_n`` out-of-distribution images appended to the training set (the paper's
  unsupervised data-cleaning check: EMNIST in MNIST, CelebA in CIFAR; here tiny-imagenet in demo).
* ``proponents``: a test image's top proponents are visually similar: rate of the test image's
  shape class and background class among its top-k proponents vs. the rate among all training images,
  and their mean pixel distance vs. that of random training images.
* ``removal``: removing a test image's top-k proponents and retraining (same seed) raises its loss
  more than removing k random training images.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from torch import Tensor

from consistcam.influence.ranks import auc, spearman
from consistcam.run.layout import model_path
from consistcam.vae.config import VAEConfig
from consistcam.vae.tracin import TEST_ID_OFFSET, elbo_per_sample, vae_tracin
from consistcam.vae.train import load_vae, load_vae_data, train_vae


def _train(base: dict, out: Path, **changes) -> Path:
    cfg = VAEConfig(**{**base, **changes, "out": str(out)})
    return train_vae(cfg, overwrite=True)


def check_self(base: dict, out: Path, extra: str, extra_n: int, seed: int, samples: int, params: str = "last") -> dict:
    run = out / f"self_s{seed}"
    if not model_path(run).is_file():
        run = _train(base, run, extra=extra, extra_n=extra_n, seed=seed)
    result, images = vae_tracin(run, samples=samples, seed=seed, params=params)
    data = load_vae_data(VAEConfig(**{**base, "extra": extra, "extra_n": extra_n}), keep_excluded=True)
    loss = elbo_per_sample(load_vae(run), images, result.ids)
    top = result.self_influence.argsort(descending=True)[:extra_n]
    return {"check": "self", "seed": seed, "params": params, "n_train": len(images), "extra_n": extra_n,
            "spearman_selfinf_loss": round(spearman(result.self_influence, loss), 4),
            "auc_extra": round(auc(result.self_influence, data.is_extra), 4),
            "extra_in_top_n": int(data.is_extra[top].sum()), "auc_extra_by_loss": round(auc(loss, data.is_extra), 4)}


def _test_split(base: dict, n: int) -> tuple[Tensor, Tensor, Tensor]:
    from consistcam.data import build_dataset, build_transform

    ds = build_dataset(base["data"], "test", build_transform(base["image_size"], "none"))
    images = torch.stack([ds[i]["image"].as_subclass(Tensor) for i in range(n)])
    labels = torch.tensor([int(ds[i]["label"]) for i in range(n)])
    bg = getattr(ds, "background_class", torch.full((len(ds),), -1))[:n]
    return images, labels, bg


def check_proponents(base: dict, out: Path, seed: int, n_test: int, k: int, samples: int) -> dict:
    from consistcam.data import build_dataset

    run = _train(base, out / f"base_s{seed}", seed=seed)
    tests, labels, bg = _test_split(base, n_test)
    result, images = vae_tracin(run, tests, samples=samples, seed=seed)
    data = load_vae_data(VAEConfig(**base))
    train_bg = getattr(build_dataset(base["data"], "train"), "background_class", None)
    same_cls, same_bg, dist_top, dist_rand = [], [], [], []
    g = torch.Generator().manual_seed(seed)
    for t in range(n_test):
        ids, _ = result.proponents(t, k)
        same_cls.append((data.labels[ids] == labels[t]).float().mean())
        if train_bg is not None:
            same_bg.append((train_bg[ids] == bg[t]).float().mean())
        dist_top.append((images[ids] - tests[t]).flatten(1).norm(dim=1).mean())
        rand = torch.randperm(len(images), generator=g)[:k]
        dist_rand.append((images[rand] - tests[t]).flatten(1).norm(dim=1).mean())
    chance_cls = float(sum((data.labels == labels[t]).float().mean() for t in range(n_test)) / n_test)
    row = {"check": "proponents", "seed": seed, "n_test": n_test, "k": k,
           "same_class_top_k": round(float(torch.stack(same_cls).mean()), 4), "same_class_chance": round(chance_cls, 4),
           "pixel_dist_top_k": round(float(torch.stack(dist_top).mean()), 3),
           "pixel_dist_random": round(float(torch.stack(dist_rand).mean()), 3)}
    if same_bg:
        chance_bg = float(sum((train_bg == bg[t]).float().mean() for t in range(n_test)) / n_test)
        row.update(same_background_top_k=round(float(torch.stack(same_bg).mean()), 4),
                   same_background_chance=round(chance_bg, 4))
    return row


def check_removal(base: dict, out: Path, seed: int, tests_idx: list[int], k: int, samples: int) -> list[dict]:
    run = out / f"base_s{seed}"
    if not model_path(run).is_file():
        run = _train(base, run, seed=seed)
    tests, _, _ = _test_split(base, max(tests_idx) + 1)
    tests = tests[tests_idx]
    noise_ids = torch.arange(len(tests)) + TEST_ID_OFFSET
    result, images = vae_tracin(run, tests, samples=samples, seed=seed)
    before = elbo_per_sample(load_vae(run), tests, noise_ids)
    g = torch.Generator().manual_seed(1000 + seed)
    rows = []
    for t, idx in enumerate(tests_idx):
        top, _ = result.proponents(t, k)
        rand = torch.randperm(len(images), generator=g)[:k]
        after = {}
        for kind, ids in (("top", top), ("random", rand)):
            retrained = _train(base, out / f"removal_s{seed}_t{idx}_{kind}", seed=seed, exclude=ids.tolist())
            after[kind] = float(elbo_per_sample(load_vae(retrained), tests[t:t + 1], noise_ids[t:t + 1])[0])
        rows.append({"check": "removal", "seed": seed, "test": idx, "k": k, "loss_before": round(float(before[t]), 5),
                     "delta_top": round(after["top"] - float(before[t]), 5),
                     "delta_random": round(after["random"] - float(before[t]), 5)})
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="folder for the run folders")
    p.add_argument("--data", default="demo:n=1000", help="training data spec")
    p.add_argument("--extra", default="tinyimagenet:../shared/data/tiny-imagenet-10", help="outliers' data spec")
    p.add_argument("--extra-n", type=int, default=20, help="outliers appended for the self-influence check")
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--k", type=int, default=50, help="proponents removed / inspected")
    p.add_argument("--tests", type=int, nargs="+", default=[0, 1, 2], help="test images of the removal check")
    p.add_argument("--n-test", type=int, default=20, help="test images of the proponent-similarity check")
    p.add_argument("--samples", type=int, default=8, help="noise draws per loss in the gradients")
    p.add_argument("--checks", default="self,proponents,removal")
    p.add_argument("--params", default="last", help="gradients of the self-influence check: last or all")
    args = p.parse_args(argv)
    base = {"data": args.data, "image_size": 32, "latent_dim": 16, "widths": [16, 32, 64], "epochs": args.epochs,
            "batch_size": 64, "lr": 1e-3, "keep_checkpoints": 1}
    out = Path(args.out)
    checks = args.checks.split(",")
    for seed in args.seeds:
        if "self" in checks:
            row = check_self(base, out, args.extra, args.extra_n, seed, args.samples, args.params)
            print(json.dumps(row), flush=True)
        if "proponents" in checks:
            print(json.dumps(check_proponents(base, out, seed, args.n_test, 10, args.samples)), flush=True)
        if "removal" in checks:
            for row in check_removal(base, out, seed, args.tests, args.k, args.samples):
                print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
