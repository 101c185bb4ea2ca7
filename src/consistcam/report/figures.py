"""Figures for reports: heatmap overlays, grids, curves, histograms.

Built with matplotlib's object-oriented API (``Figure`` and its own ``savefig``): no pyplot and no
backend switch, so importing the report leaves a user's interactive backend alone. Overlay PNGs
are written with PIL.
"""

from __future__ import annotations

import base64
import functools
import io
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib
import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from torch import Tensor

from consistcam.report.results import read_rounds


def plain(text: object) -> str:
    """``text`` as literal figure text: a run or metric name with ``$...$`` would otherwise be parsed as
    mathtext, and malformed mathtext fails the whole report."""
    return str(text).replace("$", r"\$")


@functools.lru_cache(maxsize=1)
def _jet() -> Tensor:
    return torch.tensor(matplotlib.colormaps["jet"](np.linspace(0, 1, 256))[:, :3], dtype=torch.float32)


def overlay(image: Tensor, heatmap: Tensor, alpha: float = 0.5) -> Tensor:
    """Blend a [0, 1] heatmap (jet colour map) over an image; (3, H, W) in, (H, W, 3) out, on CPU."""
    idx = (heatmap.squeeze().float().clamp(0, 1) * 255).long().cpu()
    return (1 - alpha) * image.permute(1, 2, 0).cpu().float() + alpha * _jet()[idx]


def save_overlay(path: str | Path, image: Tensor, heatmap: Tensor, alpha: float = 0.5) -> Path:
    """Write :func:`overlay` of one (3, H, W) image in [0, 1] and its heatmap as an RGB PNG (PIL)."""
    from PIL import Image

    pixels = (overlay(image, heatmap, alpha).clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return path


def to_data_uri(fig: Figure) -> str:
    """PNG of a figure as a data URI (the HTML report inlines every figure)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _panel_grid(rows: int, cols: int, width: float, height: float):
    fig = Figure(figsize=(width * cols, height * rows))
    return fig, fig.subplots(rows, cols, squeeze=False)


GRID_COLUMNS = (("image", None, "image"), ("image", "heatmap", "heatmap"), ("adversarial", None, "bg-attacked"),
                ("adversarial", "heatmap_adv", "its heatmap"))


def _show(ax, panel: Tensor, title: str = "") -> None:
    """One (H, W, 3) picture in a grid cell, without ticks; ``title`` over the first row."""
    ax.imshow(panel.clamp(0, 1).cpu().numpy())
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=8)


def consistency_grid(rows: Mapping[str, Tensor], title: str = "") -> str:
    """One row per example: image, its heatmap, background-attacked image, its heatmap (the last two
    where ``rows`` has them); E and v beside each row where given."""
    columns = [c for c in GRID_COLUMNS if c[0] in rows and (c[1] is None or c[1] in rows)]
    n = len(rows["image"])
    fig, axes = _panel_grid(n, len(columns), 1.6, 1.7)
    for i in range(n):
        for j, (image, heat, name) in enumerate(columns):
            picture = rows[image][i].float()
            panel = picture.permute(1, 2, 0) if heat is None else overlay(picture, rows[heat][i])
            _show(axes[i, j], panel, name if i == 0 else "")
        label = "\n".join(f"{key}={float(rows[key][i]):.3f}" for key in ("E", "v") if key in rows)
        axes[i, 0].set_ylabel(label, fontsize=7)
    if title:
        fig.suptitle(plain(title), fontsize=9)
    return to_data_uri(fig)


def training_curves(histories: dict[str, list[dict]]) -> str:
    keys = sorted({k for h in histories.values() for r in h for k in r if k.endswith("/acc") or k == "train/loss"})
    fig, axes = _panel_grid(1, len(keys), 3.2, 2.6)
    for ax, key in zip(axes[0], keys):
        for name, hist in histories.items():
            pts = [(r["epoch"], r[key]) for r in hist if key in r]
            if pts:
                ax.plot(*zip(*pts), marker="o", ms=3, label=plain(name))
        ax.set_title(plain(key), fontsize=9)
        ax.set_xlabel("epoch", fontsize=8)
        ax.legend(fontsize=7)
    return to_data_uri(fig)


def weight_histograms(run_dir: Path) -> str | None:
    """E and v of every scoring round the run's method saved (:func:`~consistcam.report.results.read_rounds`)."""
    return rounds_figure(read_rounds(run_dir))


def rounds_figure(rounds: Sequence[tuple[str, Mapping[str, Tensor]]]) -> str | None:
    """E and v histograms of :func:`~consistcam.report.results.read_rounds`' rounds (None if none)."""
    if not rounds:
        return None
    fig, axes = _panel_grid(2, len(rounds), 2.8, 2.2)
    for j, (stem, d) in enumerate(rounds):
        axes[0, j].hist(d["E"].float().numpy(), bins=40, color="tab:blue")
        axes[0, j].set_title(plain(f"E, {stem}"), fontsize=8)
        axes[1, j].hist(d["weights"].float().numpy(), bins=40, color="tab:orange", log=True)
        axes[1, j].set_title(plain(f"v, {stem}"), fontsize=8)
    fig.tight_layout()
    return to_data_uri(fig)


def histograms(values: Mapping[str, Sequence[float] | Tensor], bins: int = 40) -> str:
    """One panel per named set of values (e.g. the model's E on a test split)."""
    fig, axes = _panel_grid(1, len(values), 3.2, 2.6)
    for ax, (name, vals) in zip(axes[0], values.items()):
        ax.hist(np.asarray(vals, dtype=np.float64), bins=bins, color="tab:blue")
        ax.set_title(plain(name), fontsize=9)
    fig.tight_layout()
    return to_data_uri(fig)


FOOL_COLUMNS = (("original", "original map"), ("fooled", "fooled map"), ("original_b", "original, class b"),
                ("fooled_b", "fooled, class b"))


def fooling_grid(examples: Mapping[str, Tensor], title: str = "") -> str:
    """One row per saved example of ``consistcam fool``: the image, then its original and fooled
    maps (and, for active fooling, the two maps of the second class) as overlays."""
    columns = [c for c in FOOL_COLUMNS if c[0] in examples]
    n = len(examples["image"])
    fig, axes = _panel_grid(n, 1 + len(columns), 1.6, 1.7)
    for i in range(n):
        picture = examples["image"][i].float()
        panels = [("image", picture.permute(1, 2, 0))] + [(name, overlay(picture, examples[key][i]))
                                                          for key, name in columns]
        for j, (name, panel) in enumerate(panels):
            _show(axes[i, j], panel, name if i == 0 else "")
        if "label" in examples:
            axes[i, 0].set_ylabel(f"label {int(examples['label'][i])}", fontsize=7)
    if title:
        fig.suptitle(plain(title), fontsize=9)
    return to_data_uri(fig)


IDENTIFICATION_PANELS = (("auc", "ROC-AUC (0.5: chance)"), ("precision_at_k", "precision at the minority fraction"),
                         ("weight_share", "minority's share of the weight"))


def identification_figure(rows: Sequence[Mapping]) -> Figure:
    """``consistcam diagnose``'s rows as curves over the epoch of each score, one line per source:
    how well each per-sample score singles out the bias-conflicting minority; dashed, what a score
    blind to the minority gets (AUC 0.5; precision and weight share = the minority fraction)."""
    fig, axes = _panel_grid(1, len(IDENTIFICATION_PANELS), 3.6, 2.8)
    chance = {"auc": 0.5}
    fraction = [r["minority_fraction"] for r in rows if isinstance(r.get("minority_fraction"), float)]
    for ax, (key, title) in zip(axes[0], IDENTIFICATION_PANELS):
        for source in dict.fromkeys(r["source"] for r in rows):
            pts = [(r["epoch"], r[key]) for r in rows if r["source"] == source and isinstance(r.get(key), float)]
            if pts:
                ax.plot(*zip(*pts), marker="o", ms=4, label=plain(source))
        level = chance.get(key, fraction[0] if fraction else None)
        if level is not None:
            ax.axhline(level, color="grey", ls="--", lw=1)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("epoch of the score", fontsize=8)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylim(0, 1)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.tight_layout()
    return fig
