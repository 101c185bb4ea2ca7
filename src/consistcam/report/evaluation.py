"""The evaluation report: metric tables, best/worst example grids, E and v histograms, curves.

Rendered from saved results only (:mod:`consistcam.report.results`): the grids show the tensors the
evaluation pass kept while it ranked them, so the E under an example is the E it was ranked by, and
a report can be rebuilt anywhere without the model, the data or an attack.
"""

from __future__ import annotations

import html
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path

from torch import Tensor

from consistcam.report.figures import consistency_grid, histograms, read_history, training_curves, weight_histograms
from consistcam.report.html import img, metrics_table, write_report
from consistcam.report.results import SavedEvaluation, read_evaluation

# ranking key -> heading (the keys the evaluation pass ranks by; others are shown by their name)
RANKING_LABELS = {"energy_gain": "energy inside the object above the uniform baseline",
                  "E": "explanation consistency E"}


def _scalars(results: dict) -> dict[str, float]:
    return {k: v for k, v in results.items() if isinstance(v, (int, float))}


def example_grids(examples: Mapping[str, Tensor]) -> list[tuple[str, str]]:
    """(heading, HTML) per ranking key and side from a flat ``{"<key>/<side>/<field>": tensor}``."""
    groups: dict[tuple[str, str], dict[str, Tensor]] = {}
    for name, tensor in examples.items():
        key, side, field = name.split("/", 2)
        groups.setdefault((key, side), {})[field] = tensor
    sections = []
    for (key, side), rows in groups.items():
        label = RANKING_LABELS.get(key, key)
        title = f"{side} {len(rows['id'])} by {label}: " + ", ".join(
            f"id {int(i)} ({float(v):.3f})" for i, v in zip(rows["id"], rows["value"]))
        sections.append((title, img(consistency_grid(rows), title)))
    return sections


def evaluation_report(path: str | Path, title: str, results: dict[str, dict], *,
                      per_sample: Mapping[str, Mapping[str, Tensor]] | None = None,
                      examples: Mapping[str, Mapping[str, Tensor]] | None = None,
                      run_dirs: Mapping[str, Path] | None = None, notes: str = "",
                      classes: list[str] | None = None, **legacy: object) -> Path:
    """Write the report from results in memory. ``results``: column name -> metrics (splits of one
    run, or runs side by side); ``per_sample`` / ``examples``: column -> the saved tensors (E
    histograms, example grids); ``run_dirs``: name -> run folder (training curves, v histograms).

    ``model``, ``datasets`` and ``cfg`` (the old way to re-score examples) are ignored: grids come
    from the tensors the evaluation pass saved."""
    unknown = set(legacy) - {"model", "datasets", "cfg"}
    if unknown:
        raise TypeError(f"evaluation_report() got unexpected keyword argument(s) {sorted(unknown)}")
    if legacy:
        warnings.warn("evaluation_report no longer re-scores examples; model, datasets and cfg are ignored (use "
                      "consistcam.evaluation.evaluate_run, which saves the grids' tensors)", DeprecationWarning,
                      stacklevel=2)
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
    e_values = {f"E, {name}": s["E"] for name, s in (per_sample or {}).items() if len(s.get("E", ())) > 0}
    if e_values:
        sections.append(("Explanation consistency E of the test images", img(histograms(e_values), "E histograms")))
    for name, saved in (examples or {}).items():
        sections.extend((f"{name}: {heading}", body) for heading, body in example_grids(saved))
    for name, run_dir in (run_dirs or {}).items():
        hist = read_history(run_dir)
        if hist:
            sections.append((f"{name}: training curves", img(training_curves({name: hist}), "training curves")))
        weights = weight_histograms(run_dir)
        if weights:
            sections.append((f"{name}: E and training weights v per scoring round", img(weights, "weights")))
    return write_report(path, title, sections)


def render_evaluation(eval_dir: str | Path, out: str | Path | None = None) -> Path:
    """``report.html`` of one evaluation folder (default: written into it), from its files alone."""
    saved = read_evaluation(eval_dir)
    run_dir = saved.run_dir
    return evaluation_report(
        Path(out) if out is not None else saved.eval_dir / "report.html", f"consistcam evaluation: {saved.name}",
        saved.splits, per_sample={s: saved.per_sample(s) for s in saved.splits},
        examples={s: saved.examples(s) for s in saved.splits}, run_dirs={saved.name: run_dir} if run_dir else None,
        notes=saved.meta.get("command", ""), classes=saved.meta.get("classes"))


def compare_runs(runs: Iterable[str | Path], out: str | Path, title: str = "consistcam: runs side by side") -> Path:
    """Evaluated runs side by side (one column per run and split), with their E histograms,
    training curves and ECL rounds. ``runs``: run folders, evaluation folders or metrics.json files."""
    results, per_sample, run_dirs = {}, {}, {}
    for item in runs:
        saved: SavedEvaluation = read_evaluation(item)
        for split, res in saved.splits.items():
            results[f"{saved.name}/{split}"] = res
            per_sample[f"{saved.name}/{split}"] = saved.per_sample(split)
        if saved.run_dir:
            run_dirs[saved.name] = saved.run_dir
    return evaluation_report(out, title, results, per_sample=per_sample, run_dirs=run_dirs)
