"""The evaluation report: metric tables, best/worst example grids, E and v histograms, curves."""

from __future__ import annotations

import html
from pathlib import Path

import torch
from torch import nn

from consistcam.consistency import ConsistencyConfig, explanation_consistency
from consistcam.data import collate
from consistcam.report.figures import consistency_grid, histograms, read_history, training_curves, weight_histograms
from consistcam.report.html import img, metrics_table, write_report
from consistcam.utils import model_device


def _scalars(results: dict) -> dict[str, float]:
    return {k: v for k, v in results.items() if isinstance(v, (int, float))}


def example_grids(model: nn.Module, dataset, per_sample: dict[str, list], cfg: ConsistencyConfig,
                  k: int = 4) -> list[tuple[str, str]]:
    """Grids of the ``k`` best and worst test examples by energy gain inside the object and by E.

    ``dataset[id]`` must give the sample with that id (ids are indices of the evaluated data set)."""
    device = model_device(model)
    ids = torch.tensor(per_sample["id"])
    sections = []
    # energy gain, not raw energy: an object filling the image scores 1 with any heatmap
    for key, label in (("energy_gain", "energy inside the object above the uniform baseline"),
                       ("E", "explanation consistency E")):
        if key not in per_sample:
            continue
        order = torch.argsort(torch.tensor(per_sample[key]), stable=True)
        for name, pick in (("best", order.flip(0)[:k]), ("worst", order[:k])):
            batch = collate([dataset[int(i)] for i in ids[pick]])
            images = batch["image"].to(device)
            masks = batch.get("mask")
            rows = explanation_consistency(model, images, batch["label"].to(device), cfg, boxes=batch.get("boxes"),
                                           masks=None if masks is None else masks.to(device),
                                           generator=torch.Generator(device=device).manual_seed(cfg.seed),
                                           return_images=True)
            rows["image"] = images
            title = f"{name} {len(pick)} by {label}: " + ", ".join(
                f"id {int(i)} ({per_sample[key][int(j)]:.3f})" for i, j in zip(ids[pick], pick))
            sections.append((title, img(consistency_grid(rows), title)))
    return sections


def evaluation_report(path: str | Path, title: str, results: dict[str, dict], *, model: nn.Module | None = None,
                      datasets: dict | None = None, per_sample: dict[str, dict] | None = None,
                      cfg: ConsistencyConfig | None = None, run_dirs: dict[str, Path] | None = None,
                      notes: str = "", classes: list[str] | None = None) -> Path:
    """``results``: column name -> metrics (splits of one run, or runs side by side).
    With ``model``, ``datasets`` and ``per_sample`` (split -> ids, E, energy), adds example grids and
    E histograms; with ``run_dirs`` (name -> run folder), training curves and v histograms."""
    sections = []
    if notes:
        sections.append(("About", f"<p class='note'>{html.escape(notes)}</p>"))
    sections.append(("Metrics", metrics_table({name: _scalars(r) for name, r in results.items()})))
    per_class = {name: r["acc_per_class"] for name, r in results.items() if "acc_per_class" in r}
    if per_class:
        n = max(len(v) for v in per_class.values())
        label = (lambda c: f"{c}: {classes[c]}") if classes and len(classes) == n else (lambda c: f"class {c}")
        table = {name: {label(c): v[c] for c in range(len(v))} for name, v in per_class.items()}
        sections.append((f"Per-class accuracy ({n} classes)", metrics_table(table)))
    per_sample = per_sample or {}
    e_values = {f"E, {split}": s["E"] for split, s in per_sample.items() if s.get("E")}
    if e_values:
        sections.append(("Explanation consistency E of the test images", img(histograms(e_values), "E histograms")))
    if model is not None and datasets:
        for split, samples in per_sample.items():
            if split in datasets and samples.get("id"):
                for heading, body in example_grids(model, datasets[split], samples, cfg or ConsistencyConfig()):
                    sections.append((f"{split}: {heading}", body))
    for name, run_dir in (run_dirs or {}).items():
        hist = read_history(run_dir)
        if hist:
            sections.append((f"{name}: training curves", img(training_curves({name: hist}), "training curves")))
        weights = weight_histograms(run_dir)
        if weights:
            sections.append((f"{name}: E and training weights v per scoring round", img(weights, "weights")))
    return write_report(path, title, sections)
