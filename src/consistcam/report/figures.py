"""Figures for reports: heatmap overlays, grids, curves, histograms (matplotlib, headless)."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from torch import Tensor  # noqa: E402


def overlay(image: Tensor, heatmap: Tensor, alpha: float = 0.5) -> Tensor:
    """Blend a [0, 1] heatmap (jet colour map) over an image; (3, H, W) in, (H, W, 3) out, on CPU."""
    cmap = torch.tensor(plt.get_cmap("jet")(torch.linspace(0, 1, 256).numpy())[:, :3], dtype=torch.float32)
    idx = (heatmap.squeeze().clamp(0, 1) * 255).long().cpu()
    return (1 - alpha) * image.permute(1, 2, 0).cpu().float() + alpha * cmap[idx]


def to_data_uri(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def consistency_grid(rows: dict[str, Tensor], title: str = "") -> str:
    """One row per example: image, its heatmap, background-attacked image, its heatmap; E and v."""
    n = len(rows["image"])
    fig, axes = plt.subplots(n, 4, figsize=(6.4, 1.7 * n), squeeze=False)
    for i in range(n):
        panels = [rows["image"][i].permute(1, 2, 0), overlay(rows["image"][i], rows["heatmap"][i]),
                  rows["adversarial"][i].permute(1, 2, 0), overlay(rows["adversarial"][i], rows["heatmap_adv"][i])]
        for j, panel in enumerate(panels):
            ax = axes[i, j]
            ax.imshow(panel.clamp(0, 1).cpu().numpy())
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(["image", "heatmap", "bg-attacked", "its heatmap"][j], fontsize=8)
        label = f"E={rows['E'][i]:.3f}"
        if "v" in rows:
            label += f"\nv={rows['v'][i]:.2f}"
        axes[i, 0].set_ylabel(label, fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    return to_data_uri(fig)


def read_history(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def training_curves(histories: dict[str, list[dict]]) -> str:
    keys = sorted({k for h in histories.values() for r in h for k in r if k.endswith("/acc") or k == "train/loss"})
    fig, axes = plt.subplots(1, len(keys), figsize=(3.2 * len(keys), 2.6), squeeze=False)
    for ax, key in zip(axes[0], keys):
        for name, hist in histories.items():
            pts = [(r["epoch"], r[key]) for r in hist if key in r]
            if pts:
                ax.plot(*zip(*pts), marker="o", ms=3, label=name)
        ax.set_title(key, fontsize=9)
        ax.set_xlabel("epoch", fontsize=8)
        ax.legend(fontsize=7)
    return to_data_uri(fig)


def weight_histograms(run_dir: Path) -> str | None:
    from safetensors.torch import load_file

    files = sorted((Path(run_dir) / "consistency").glob("epoch_*.safetensors"))
    if not files:
        return None
    fig, axes = plt.subplots(2, len(files), figsize=(2.8 * len(files), 4.4), squeeze=False)
    for j, f in enumerate(files):
        d = load_file(str(f))
        axes[0, j].hist(d["E"].numpy(), bins=40, color="tab:blue")
        axes[0, j].set_title(f"E, {f.stem}", fontsize=8)
        axes[1, j].hist(d["weights"].numpy(), bins=40, color="tab:orange", log=True)
        axes[1, j].set_title(f"v, {f.stem}", fontsize=8)
    fig.tight_layout()
    return to_data_uri(fig)


def histograms(values: dict[str, list[float]], bins: int = 40) -> str:
    """One panel per named set of values (e.g. the model's E on a test split)."""
    fig, axes = plt.subplots(1, len(values), figsize=(3.2 * len(values), 2.6), squeeze=False)
    for ax, (name, vals) in zip(axes[0], values.items()):
        ax.hist(vals, bins=bins, color="tab:blue")
        ax.set_title(name, fontsize=9)
    fig.tight_layout()
    return to_data_uri(fig)
