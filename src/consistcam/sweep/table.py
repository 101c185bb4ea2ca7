"""The sweep's table (markdown, CSV, JSON) and its plot, from collected metrics only.

One row per (split, metric, arm): mean ± std over seeds and, for every arm but the baseline, the
paired difference to the baseline with its verdict (:mod:`consistcam.sweep.stats`). The markdown
shows the key metrics (``--metrics``) per split; CSV and JSON hold every numeric metric.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

from consistcam.sweep.runner import Collected
from consistcam.sweep.stats import paired, summarize
from consistcam.utils import atomic_write

# shown in the markdown table by default (those the evaluation wrote); everything goes to CSV/JSON
KEY_METRICS = ("acc", "acc_decorrelated", "acc_correlated", "worst_group_acc", "shortcut_gap", "energy",
               "pointing_game", "consistency_E", "bg_gap")
FIELDS = ("split", "metric", "arm", "n", "mean", "std", "values", "baseline", "n_pairs", "diff_mean", "diff_std",
          "half_width", "verdict")


def build_rows(collected: Collected, arms: Sequence[str], baseline: str | None,
               confidence: float = 0.95) -> list[dict]:
    """Rows in split, metric, arm order (arms in sweep order); NaN where a value is not defined."""
    rows = []
    for split, metrics in collected.values.items():
        for metric, by_arm in metrics.items():
            for arm in arms:
                if arm not in by_arm:
                    continue
                s = summarize(by_arm[arm])
                row = {"split": split, "metric": metric, "arm": arm, "n": s.n, "mean": s.mean, "std": s.std,
                       "values": {str(k): v for k, v in sorted(s.values.items())}, "baseline": baseline or "",
                       "n_pairs": 0, "diff_mean": math.nan, "diff_std": math.nan, "half_width": math.nan,
                       "verdict": ""}
                if baseline and arm != baseline and baseline in by_arm:
                    p = paired(by_arm[arm], by_arm[baseline], confidence)
                    row.update(n_pairs=p.n, diff_mean=p.mean, diff_std=p.std, half_width=p.half_width,
                               verdict=p.verdict)
                rows.append(row)
    return rows


def _fmt(x: float, signed: bool = False) -> str:
    return "—" if x is None or not math.isfinite(x) else (f"{x:+.3f}" if signed else f"{x:.3f}")


def cell(row: dict) -> str:
    """``mean ± std``, and for a compared arm ``Δ diff ± half-width (verdict)``."""
    text = _fmt(row["mean"]) + ("" if row["n"] < 2 else f" ± {_fmt(row['std'])}")
    if row["verdict"]:
        text += f"; Δ {_fmt(row['diff_mean'], True)}"
        if math.isfinite(row["half_width"]):
            text += f" ± {_fmt(row['half_width'])}"
        text += f" ({row['verdict']})"
    return text


def markdown(rows: Sequence[dict], arms: Sequence[str], metrics: Sequence[str] | None, baseline: str | None,
             confidence: float, header: str = "", missing: Mapping[str, Sequence[int]] | None = None) -> str:
    """One table per split: arms as rows, the chosen metrics as columns."""
    lines = [header] if header else []
    if baseline:
        lines.append(f"Cells: mean ± std over seeds; Δ = paired difference to `{baseline}` (same seeds) ± the "
                     f"half-width of its {confidence:.0%} t-interval; verdict \"none\" when that interval holds 0, "
                     "else higher/lower.")
    else:
        lines.append("Cells: mean ± std over seeds (no baseline arm: pass --baseline to compare).")
    if missing:
        lines.append("Not evaluated yet (left out): " + "; ".join(
            f"`{arm}` seeds {','.join(map(str, seeds))}" for arm, seeds in missing.items()) + ".")
    for split in dict.fromkeys(r["split"] for r in rows):
        present = list(dict.fromkeys(r["metric"] for r in rows if r["split"] == split))
        wanted = [m.removeprefix(f"{split}/") for m in (metrics or KEY_METRICS)]  # METRIC or SPLIT/METRIC
        chosen = [m for m in dict.fromkeys(wanted) if m in present] or present
        lookup = {(r["metric"], r["arm"]): r for r in rows if r["split"] == split}
        lines += ["", f"**{split}**", "", "| arm | seeds | " + " | ".join(chosen) + " |",
                  "|---|---|" + "---|" * len(chosen)]
        for arm in arms:
            first = next((lookup[(m, arm)] for m in chosen if (m, arm) in lookup), None)
            if first is None:
                continue
            seeds = ",".join(first["values"])
            cells = [cell(lookup[(m, arm)]) if (m, arm) in lookup else "—" for m in chosen]
            lines.append(f"| `{arm}` | {seeds} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def to_csv(rows: Sequence[dict]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=FIELDS, lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({**r, "values": json.dumps(r["values"])})
    return buf.getvalue()


def _json_safe(x):
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_json_safe(v) for v in x]
    return x


def plot(rows: Sequence[dict], arms: Sequence[str], split: str, metric: str, baseline: str | None,
         path: Path) -> Path | None:
    """Each seed's value (dots) and mean ± std (bar) of one metric per arm; the baseline's mean as a
    dashed line. None when no arm has that metric."""
    from matplotlib.figure import Figure

    from consistcam.report.figures import plain

    chosen = {r["arm"]: r for r in rows if r["split"] == split and r["metric"] == metric}
    names = [a for a in arms if a in chosen]
    if not names:
        return None
    fig = Figure(figsize=(max(4.0, 0.9 * len(names) + 2), 3.6 + 0.08 * max(len(n) for n in names)))
    ax = fig.add_subplot()
    for i, arm in enumerate(names):
        r = chosen[arm]
        vals = list(r["values"].values())
        ax.scatter([i] * len(vals), vals, s=14, color="0.45", zorder=3)
        std = r["std"] if math.isfinite(r["std"]) else 0.0
        ax.errorbar([i], [r["mean"]], yerr=[std], fmt="o", color="C1" if arm == baseline else "C0", capsize=4,
                    markersize=7, zorder=4)
    if baseline in chosen:
        ax.axhline(chosen[baseline]["mean"], color="C1", linestyle="--", linewidth=1,
                   label=f"{plain(baseline)} (baseline)")
        ax.legend(loc="best", fontsize=8)
    ax.set_xticks(range(len(names)), [plain(n) for n in names], rotation=30, ha="right", fontsize=8)
    ax.set_ylabel(plain(f"{metric} ({split})"))
    ax.set_title(plain(f"{metric} on {split}: seeds (grey), mean ± std"), fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight"))
    return path


def write_outputs(root: Path, collected: Collected, arms: Sequence[str], baseline: str | None,
                  confidence: float = 0.95, metrics: Sequence[str] | None = None,
                  plot_metric: str | None = None, header: str = "", meta: dict | None = None) -> dict[str, Path]:
    """Write ROOT/sweep.md, sweep.csv, sweep.json and sweep.png; returns the paths written."""
    rows = build_rows(collected, arms, baseline, confidence)
    out = {"md": root / "sweep.md", "csv": root / "sweep.csv", "json": root / "sweep.json"}
    text = markdown(rows, arms, metrics, baseline, confidence, header, collected.missing_seeds)
    atomic_write(out["md"], lambda tmp: Path(tmp).write_text(text))
    atomic_write(out["csv"], lambda tmp: Path(tmp).write_text(to_csv(rows)))
    doc = {"meta": meta or {}, "baseline": baseline, "confidence": confidence, "arms": list(arms),
           "missing": list(collected.missing), "rows": _json_safe(rows)}
    atomic_write(out["json"], lambda tmp: Path(tmp).write_text(json.dumps(doc, indent=1) + "\n"))
    if rows:
        split, _, metric = (plot_metric or "").rpartition("/")
        split = split or rows[0]["split"]
        metric = metric or next((m for m in (metrics or KEY_METRICS) if any(r["metric"] == m for r in rows)),
                                rows[0]["metric"])
        png = plot(rows, arms, split, metric, baseline, root / "sweep.png")
        if png is None:
            raise ValueError(f"--plot-metric {plot_metric!r}: no evaluated member has metric {metric!r} on split "
                             f"{split!r}")
        out["png"] = png
    return out
