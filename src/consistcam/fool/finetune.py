"""Adversarial model manipulation (Heo, Joo, Moon, NeurIPS 2019): fine-tune a trained classifier with
``CE + λ · fooling loss`` so that its explanations change while its accuracy does not, then measure
how far they changed (FSR, rank correlation), what it cost (accuracy before/after) and whether the
fooling carries over to explainers it was not trained against (transfer).

The original model is kept frozen beside the one being fooled: the top-k, centre-of-mass and active
losses compare against its maps of the very same images, as the reference code does (``net_ori``).
Both run in eval mode (BatchNorm statistics fixed), which the reference recommends for models with
BatchNorm.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from consistcam.config import from_dict, option, validate
from consistcam.fool.losses import (
    REGIONS,
    active_loss,
    center_mass_distance,
    center_mass_loss,
    location_loss,
    topk_loss,
)
from consistcam.fool.maps import GRADIENT, fool_explainers, fool_maps
from consistcam.fool.metrics import FSR_RANGES, fooling_success, spearman
from consistcam.models.state import preserved_state

KINDS = ("location", "topk", "center-mass", "active")


def _known_explainer(value: object) -> str | None:
    return None if value in fool_explainers() else f"unknown explainer (known: {', '.join(fool_explainers())})"


def _known_explainers(value: object) -> str | None:
    if not isinstance(value, (list, tuple)):
        return "must be a list of explainer names"
    bad = [v for v in value if v not in fool_explainers()]
    return f"unknown explainer(s) {bad} (known: {', '.join(fool_explainers())})" if bad else None


def _two_classes(value: object) -> str | None:
    ok = isinstance(value, (list, tuple)) and len(value) == 2 and all(isinstance(v, int) and v >= 0 for v in value)
    if not ok:
        return "must be two class ids"
    return "must be two different classes" if value[0] == value[1] else None


@dataclass
class FoolConfig:
    """The fooling budget and what is measured; the same config applied to several models makes
    their FSRs comparable."""

    kind: str = option("location", "what the fine-tuning does to the explanations", choices=KINDS)
    explainer: str = option("gradcam", "explainer the fooling loss is computed on (a CAM method or 'gradient')",
                            check=_known_explainer)
    lam: float = option(2.0, "weight of the fooling loss: CE + lam * fooling loss", ge=0.0)
    epochs: int = option(1, "passes over the training split", ge=1)
    steps: int | None = option(None, "stop after this many optimizer steps (the fooling budget; default: epochs)",
                               ge=1)
    batch_size: int = option(64, "training batch size", ge=1)
    lr: float = option(3e-4, "Adam learning rate", gt=0.0)
    region: str = option("frame", "location fooling: where the maps are moved", choices=REGIONS)
    topk: float = option(0.1, "top-k fooling: fraction of the original map's pixels driven down", gt=0.0, le=1.0)
    classes: tuple = option((0, 1), "active fooling: the two classes whose explanations are swapped",
                            check=_two_classes)
    transfer: tuple = option(("gradcam++", "layercam", "gradient"),
                             "explainers measured besides the fooled one (transfer)", check=_known_explainers)
    split: str | None = option(None, "test split measured (default: the data's first test split)")
    subset: int | None = option(256, "test images measured (default all with None)", ge=1)
    eval_batch_size: int = option(64, "batch size of the measurement", ge=1)
    examples: int = option(4, "original vs fooled example maps saved for the report", ge=0)
    seed: int = option(0, "seed of the shuffling")

    def __post_init__(self) -> None:
        self.classes = tuple(self.classes)
        self.transfer = tuple(self.transfer)
        validate(self)

    @classmethod
    def from_dict(cls, data: dict) -> FoolConfig:
        return from_dict(cls, data)

    @property
    def explainers(self) -> list[str]:
        """The fooled explainer first, then the transfer explainers (without repeats)."""
        return list(dict.fromkeys([self.explainer, *self.transfer]))


def frozen_copy(model: nn.Module) -> nn.Module:
    """The original model, kept beside the fooled one: eval mode, no parameter gradients."""
    original = copy.deepcopy(model).eval()
    for p in original.parameters():
        p.requires_grad_(False)
    return original


def fooling_loss(cfg: FoolConfig, model: nn.Module, original: nn.Module, images: Tensor, labels: Tensor) -> Tensor:
    """(N,) per-sample fooling loss of ``model`` on a batch (differentiable in its parameters).

    Passive kinds explain the label; ``active`` uses only the images of its two classes and explains
    both classes on each of them (the others contribute 0)."""
    if cfg.kind == "active":
        a, b = cfg.classes
        keep = (labels == a) | (labels == b)
        loss = images.new_zeros(len(labels))
        if not keep.any():
            return loss
        x = images[keep]
        ta, tb = torch.full_like(labels[keep], a), torch.full_like(labels[keep], b)
        orig_a, orig_b = (fool_maps(original, x, t, cfg.explainer) for t in (ta, tb))
        map_a, map_b = (fool_maps(model, x, t, cfg.explainer, differentiable=True) for t in (ta, tb))
        return loss.masked_scatter(keep, active_loss(map_a, map_b, orig_a, orig_b))
    maps = fool_maps(model, images, labels, cfg.explainer, differentiable=True)
    if cfg.kind == "location":
        return location_loss(maps, cfg.region)
    orig = fool_maps(original, images, labels, cfg.explainer)
    if cfg.kind == "topk":
        return topk_loss(maps, orig, cfg.topk)
    return center_mass_loss(maps, orig)


def fool_model(model: nn.Module, batches: Callable[[int], Iterable[dict]], cfg: FoolConfig,
               on_epoch_end: Callable[[dict], None] | None = None, progress: bool = False) -> list[dict]:
    """Fine-tune ``model`` in place with ``CE + lam · fooling loss``; return one record per epoch.

    ``batches(epoch)`` yields dicts with ``image`` and ``label`` (e.g. a seeded shuffling loader).
    The model is fine-tuned in eval mode (BatchNorm statistics fixed); its modes and
    ``requires_grad`` flags are restored afterwards (its weights are what changes).
    """
    from consistcam.utils import model_device, progress_bar

    device = model_device(model)
    original = frozen_copy(model)
    history: list[dict] = []
    step = 0
    with preserved_state(model, eval_mode=True):
        for p in model.parameters():
            p.requires_grad_(True)
        optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
        for epoch in range(cfg.epochs):
            start, sums, count = time.time(), {"loss": 0.0, "ce": 0.0, "fool": 0.0, "acc": 0.0}, 0
            for batch in progress_bar(batches(epoch), f"fool {cfg.kind} epoch {epoch}", progress):
                if cfg.steps is not None and step >= cfg.steps:
                    break
                images, labels = batch["image"].to(device), batch["label"].to(device)
                logits = model(images)
                ce = F.cross_entropy(logits, labels)
                fool = fooling_loss(cfg, model, original, images, labels).mean()
                loss = ce + cfg.lam * fool
                if not torch.isfinite(loss):
                    raise ValueError(f"fooling loss became {loss.item()} at step {step}; lower --lr or --lam")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                step += 1
                n = len(labels)
                count += n
                for key, value in (("loss", loss), ("ce", ce), ("fool", fool)):
                    sums[key] += value.item() * n
                sums["acc"] += (logits.argmax(1) == labels).sum().item()
            if not count:
                break
            record = {"epoch": epoch, "train/loss": sums["loss"] / count, "train/ce": sums["ce"] / count,
                      "train/fool_loss": sums["fool"] / count, "train/acc": sums["acc"] / count, "steps": step,
                      "time_s": round(time.time() - start, 2)}
            history.append(record)
            if on_epoch_end is not None:
                on_epoch_end(record)
    return history


def _test_loss(kind: str, fooled: Tensor, orig: Tensor, region: str, fraction: float) -> Tensor:
    """The per-sample value the FSR thresholds (see :data:`~consistcam.fool.metrics.FSR_RANGES`)."""
    if kind == "location":
        return location_loss(fooled, region)
    if kind == "topk":
        return topk_loss(fooled, orig, fraction)
    return center_mass_distance(fooled, orig)


@torch.no_grad()
def _accuracy_counts(model: nn.Module, images: Tensor, labels: Tensor) -> int:
    with preserved_state(model, eval_mode=True):
        return int((model(images).argmax(1) == labels).sum())


def measure_fooling(original: nn.Module, fooled: nn.Module, batches: Iterable[dict], cfg: FoolConfig,
                    progress: bool = False) -> tuple[dict, dict[str, Tensor]]:
    """FSR, rank correlation and accuracies of ``fooled`` against ``original`` on held-out batches.

    Returns (results, examples): results hold ``acc_before``/``acc_after`` and, per explainer
    (the fooled one first, then the transfer ones), ``fsr``, ``test_loss`` and ``rank_corr``
    (Spearman, original vs fooled map, mean over images); for ``active`` also ``rank_corr_swap``
    (fooled map of class a vs original map of class b), for the passive kinds ``fsr_before`` (the
    original maps against the same threshold: the FSR without any fooling). ``examples``: the first images with their
    original and fooled maps of the fooled explainer.
    """
    from consistcam.utils import model_device, progress_bar

    device = model_device(fooled)
    explainers = cfg.explainers
    per: dict[str, dict[str, list[Tensor]]] = {e: {"loss": [], "rho": [], "swap": [], "ok": [], "ok_before": []}
                                               for e in explainers}
    correct_before = correct_after = total = 0
    examples: dict[str, list[Tensor]] = {}
    for batch in progress_bar(batches, "measuring", progress):
        images, labels = batch["image"].to(device), batch["label"].to(device)
        if cfg.subset is not None:
            images, labels = images[: cfg.subset - total], labels[: cfg.subset - total]
        if cfg.kind == "active":
            keep = (labels == cfg.classes[0]) | (labels == cfg.classes[1])
            images, labels = images[keep], labels[keep]
        if not len(labels):
            continue
        correct_before += _accuracy_counts(original, images, labels)
        correct_after += _accuracy_counts(fooled, images, labels)
        total += len(labels)
        for e in explainers:
            orig, fool = _compare_maps(original, fooled, images, labels, e, cfg, per[e])
            have = sum(len(t) for t in examples.get("label", []))  # images so far, not batches
            if e == cfg.explainer and have < cfg.examples:
                k = cfg.examples - have
                fields = {"image": images[:k], "label": labels[:k], "original": orig[0][:k], "fooled": fool[0][:k]}
                if len(orig) == 2:
                    fields.update(original_b=orig[1][:k], fooled_b=fool[1][:k])
                for key, value in fields.items():
                    examples.setdefault(key, []).append(value.detach().cpu())
        if cfg.subset is not None and total >= cfg.subset:
            break
    if not total:
        what = f"of classes {list(cfg.classes)} " if cfg.kind == "active" else ""
        raise ValueError(f"no test images {what}to measure the fooling on")
    results = {"images": total, "acc_before": correct_before / total, "acc_after": correct_after / total,
               **_fooling_results(per, cfg)}
    return results, {k: torch.cat(v) for k, v in examples.items()}


def _compare_maps(original: nn.Module, fooled: nn.Module, images: Tensor, labels: Tensor, explainer: str,
                  cfg: FoolConfig, lists: dict[str, list[Tensor]]) -> tuple[tuple[Tensor, ...], tuple[Tensor, ...]]:
    """One batch's maps of ``explainer`` by both models, their test loss, rank correlations and fooling
    success appended to ``lists``; returns the original and fooled maps (two of each for ``active``)."""
    if cfg.kind == "active":
        ta, tb = (torch.full_like(labels, c) for c in cfg.classes)
        orig_a, orig_b = fool_maps(original, images, ta, explainer), fool_maps(original, images, tb, explainer)
        fool_a, fool_b = fool_maps(fooled, images, ta, explainer), fool_maps(fooled, images, tb, explainer)
        same = (spearman(fool_a, orig_a) + spearman(fool_b, orig_b)) / 2
        swap = (spearman(fool_a, orig_b) + spearman(fool_b, orig_a)) / 2
        lists["rho"].append(same)
        lists["swap"].append(swap)
        lists["ok"].append(swap > same)
        lists["loss"].append(active_loss(fool_a, fool_b, orig_a, orig_b))
        return (orig_a, orig_b), (fool_a, fool_b)
    o, f = fool_maps(original, images, labels, explainer), fool_maps(fooled, images, labels, explainer)
    loss = _test_loss(cfg.kind, f, o, cfg.region, cfg.topk)
    lists["loss"].append(loss)
    lists["rho"].append(spearman(f, o))
    lists["ok"].append(fooling_success(cfg.kind, loss))
    # the original model's own maps against the same threshold: what counts as fooled without fooling
    lists["ok_before"].append(fooling_success(cfg.kind, _test_loss(cfg.kind, o, o, cfg.region, cfg.topk)))
    return (o,), (f,)


def _fooling_results(per: dict[str, dict[str, list[Tensor]]], cfg: FoolConfig) -> dict:
    """Per explainer, the FSR, test loss and rank correlations over all batches; the fooled explainer's
    at the top level too."""
    results: dict = {"explainers": {}}
    for e, lists in per.items():
        cat = {k: torch.cat(v).float() for k, v in lists.items() if v}
        entry = {"fsr": cat["ok"].mean().item(), "test_loss": cat["loss"].mean().item(),
                 "rank_corr": cat["rho"].nanmean().item(), "rank_corr_std": _nanstd(cat["rho"])}
        if "ok_before" in cat:
            entry["fsr_before"] = cat["ok_before"].mean().item()
        if "swap" in cat:
            entry["rank_corr_swap"] = cat["swap"].nanmean().item()
        results["explainers"][e] = entry
    results["fsr"] = results["explainers"][cfg.explainer]["fsr"]
    results["rank_corr"] = results["explainers"][cfg.explainer]["rank_corr"]
    results["fsr_before"] = results["explainers"][cfg.explainer].get("fsr_before")
    results["fsr_range"] = list(FSR_RANGES.get(cfg.kind, ())) or None
    return results


def _nanstd(x: Tensor) -> float:
    x = x[~x.isnan()]
    return x.std().item() if len(x) > 1 else 0.0


__all__ = ["GRADIENT", "KINDS", "FoolConfig", "fool_model", "fooling_loss", "frozen_copy", "measure_fooling"]
