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

from consistcam.report.figures import (
    consistency_grid,
    fooling_grid,
    histograms,
    identification_figure,
    rounds_figure,
    to_data_uri,
    training_curves,
)
from consistcam.report.glossary import describe
from consistcam.report.html import comparison_table, glossary, img, metrics_table, write_report
from consistcam.report.results import (
    SavedEvaluation,
    read_diagnosis,
    read_evaluation,
    read_fooling,
    read_history,
    read_rounds,
    skipped_counts,
)
from consistcam.run.layout import REPORT_FILE, SKIPPED_FILE

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
                      classes: list[str] | None = None) -> Path:
    """Write the report from results in memory. ``results``: column name -> metrics (splits of one
    run, or runs side by side); ``per_sample`` / ``examples``: column -> the saved tensors (E
    histograms, example grids); ``run_dirs``: name -> run folder (training curves, v histograms)."""
    runs = {name: _read_run(run_dir) for name, run_dir in (run_dirs or {}).items() if run_dir is not None}
    return _write(path, title, results, per_sample, examples, runs, notes, classes)


def _read_run(run_dir: Path) -> tuple[list[dict], list, dict, tuple[dict, dict] | None, dict | None]:
    """What the report shows of a run folder: its epoch records, ECL rounds (ValueError if damaged),
    the entries skipped by --skip-bad, for a fooled run fool.json with its example maps and, for a
    diagnosed run, ``consistcam diagnose``'s table."""
    return (read_history(run_dir), read_rounds(run_dir), skipped_counts(run_dir), read_fooling(run_dir),
            read_diagnosis(run_dir))


def _diagnosis_section(doc: dict) -> str:
    """``consistcam diagnose``'s table (one row per score and epoch) and its curves."""
    metrics = ("auc", "precision_at_k", "weight_share", "set_precision", "set_recall", "minority_fraction")
    table = {m: {f"{r['source']}, epoch {r['epoch']}": r.get(m) for r in doc["rows"]} for m in metrics
             if any(isinstance(r.get(m), (int, float)) for r in doc["rows"])}
    note = ("<p class='note'>How well each per-sample score singles out the bias-conflicting training images "
            "(background group not the class): ROC-AUC (0.5 = blind), precision among the top-k scores with k "
            "the minority's size, and the minority's share of the total weight (ERM: the minority fraction). "
            "A re-weighting whose weights do not single out the minority cannot remove the shortcut.</p>")
    return note + metrics_table(table) + img(to_data_uri(identification_figure(doc["rows"])), "minority identification")


def difference_pairs(names: list[str]) -> list[tuple[str, str]]:
    """(column, reference) of the difference columns: each run against the first run of the same
    split (columns ``run/split``); columns that share no split (one run's splits) against the first."""
    groups: dict[str, list[str]] = {}
    for name in names:
        groups.setdefault(name.rsplit("/", 1)[-1] if "/" in name else "", []).append(name)
    pairs = [(name, group[0]) for group in groups.values() for name in group[1:]]
    return pairs or [(name, names[0]) for name in names[1:]]


def _better(metric: str) -> str:
    info = describe(metric)
    return info[1] if info else ""


def _tooltip(metric: str) -> str | None:
    info = describe(metric)
    return info[0] if info else None


def _metric_sections(results: dict[str, dict]) -> list[tuple[str, str]]:
    """The metric table (with the better direction and the difference columns) and the glossary
    of the metrics it shows."""
    scalars = {name: _scalars(r) for name, r in results.items()}
    pairs = difference_pairs(list(scalars))
    shown = dict.fromkeys(k for r in scalars.values() for k in r)
    entries = {k: info for k in shown if (info := describe(k)) is not None}
    sections = [("Metrics", comparison_table(scalars, pairs, _better, _tooltip))]
    if entries:
        sections.append(("What the metrics mean", glossary(entries)))
    return sections


def _per_class_sections(results: dict[str, dict], per_sample: Mapping | None,
                        classes: list[str] | None) -> list[tuple[str, str]]:
    """Per-class accuracy (with difference columns) and, where per-sample results carry labels,
    the per-class mean E and energy inside the object."""
    sections = []
    per_class = {name: r["acc_per_class"] for name, r in results.items() if isinstance(r.get("acc_per_class"), list)}
    n = max((len(v) for v in per_class.values()), default=0)
    for saved in (per_sample or {}).values():
        if "label" in saved and len(saved["label"]):
            n = max(n, int(saved["label"].max()) + 1)

    def label(c: int) -> str:
        return f"{c}: {classes[c]}" if classes and len(classes) == n else f"class {c}"

    if per_class:
        table = {name: {label(c): v[c] for c in range(len(v))} for name, v in per_class.items()}
        sections.append((f"Per-class accuracy ({n} classes)",
                         comparison_table(table, difference_pairs(list(table)), lambda k: "higher",
                                                          label="class")))
    columns: dict[str, dict[str, float]] = {}
    for name, saved in (per_sample or {}).items():
        if "label" not in saved:
            continue
        labels = saved["label"].long()
        for key in ("E", "energy"):
            if key not in saved or len(saved[key]) != len(labels):
                continue
            values = saved[key].float()
            columns[f"{name}: {key}"] = {label(c): values[labels == c].nanmean().item()
                                         for c in range(n) if bool((labels == c).any())}
    if columns:
        sections.append(("Per-class mean E and energy inside the object (higher is better)", metrics_table(columns)))
    return sections


def _fooling_sections(name: str, fooling: tuple[dict, dict]) -> list[tuple[str, str]]:
    """What ``consistcam fool`` measured (fool.json) and its original vs fooled maps."""
    doc, examples = fooling
    cfg = doc.get("config", {}) if isinstance(doc.get("config"), dict) else {}
    head = {"kind": cfg.get("kind"), "fooled explainer": cfg.get("explainer"), "lam": cfg.get("lam"),
            "steps": cfg.get("steps"), "epochs": cfg.get("epochs"), "source run": doc.get("source"),
            "measured on": f"{doc.get('images', '?')} images of {doc.get('split', '?')}",
            "accuracy before": doc.get("acc_before"), "accuracy after": doc.get("acc_after")}
    about = metrics_table({"": {k: v for k, v in head.items() if v is not None}})
    per_explainer = {e: {k: v for k, v in m.items() if isinstance(v, (int, float))}
                     for e, m in doc["explainers"].items()}
    table = comparison_table(per_explainer, [], _better, _tooltip)  # columns: explainers
    entries = {k: info for k in dict.fromkeys(k for m in per_explainer.values() for k in m)
               if (info := describe(k)) is not None}
    note = (f"<p class='note'>FSR range of this kind: {html.escape(str(doc.get('fsr_range')))}; the first "
            "explainer is the one the model was fooled against, the others measure transfer.</p>")
    sections = [(f"{name}: fooled by adversarial model manipulation ({cfg.get('kind', '?')})",
                 about + note + table + glossary(entries))]
    if examples:
        sections.append((f"{name}: original vs fooled maps ({cfg.get('explainer', '?')})",
                         img(fooling_grid(examples), "original vs fooled maps")))
    return sections


def _write(path: str | Path, title: str, results: dict[str, dict], per_sample: Mapping | None,
           examples: Mapping | None, runs: Mapping[str, tuple], notes: str,
           classes: list[str] | None) -> Path:
    """The report from data already read (reading is where damage is found, so callers decide what a
    damaged file means: an error for one run, a left-out run in a comparison)."""
    sections = []
    if notes:
        sections.append(("About", f"<p class='note'>{html.escape(str(notes))}</p>"))
    sections.extend(_metric_sections(results))
    sections.extend(_per_class_sections(results, per_sample, classes))
    e_values = {f"E, {name}": s["E"] for name, s in (per_sample or {}).items() if len(s.get("E", ())) > 0}
    if e_values:
        sections.append(("Explanation consistency E of the test images", img(histograms(e_values), "E histograms")))
    for name, saved in (examples or {}).items():
        sections.extend((f"{name}: {heading}", body) for heading, body in example_grids(saved))
    for name, (_, _, _, fooling, _) in runs.items():
        if fooling is not None:
            sections.extend(_fooling_sections(name, fooling))
    for name, (hist, rounds, skipped, _, diagnosis) in runs.items():
        if hist:
            sections.append((f"{name}: training curves", img(training_curves({name: hist}), "training curves")))
        weights = rounds_figure(rounds)
        if weights:
            sections.append((f"{name}: E and training weights v per scoring round", img(weights, "weights")))
        if diagnosis is not None:
            sections.append((f"{name}: do the weights single out the bias-conflicting samples? (consistcam diagnose)",
                             _diagnosis_section(diagnosis)))
        if skipped:
            sections.append((f"{name}: entries skipped by --skip-bad (listed in {SKIPPED_FILE})",
                             metrics_table(skipped, digits=0)))
    return write_report(path, title, sections)


def render_evaluation(eval_dir: str | Path, out: str | Path | None = None) -> Path:
    """``report.html`` of one evaluation folder (default: written into it), from its files alone."""
    saved = read_evaluation(eval_dir)
    run_dir = saved.run_dir
    return evaluation_report(
        Path(out) if out is not None else saved.eval_dir / REPORT_FILE, f"consistcam evaluation: {saved.name}",
        saved.splits, per_sample={s: saved.per_sample(s) for s in saved.splits},
        examples={s: saved.examples(s) for s in saved.splits}, run_dirs={saved.name: run_dir} if run_dir else None,
        notes=saved.meta.get("command", ""), classes=saved.meta.get("classes"))


def compare_runs(runs: Iterable[str | Path], out: str | Path, title: str = "consistcam: runs side by side") -> Path:
    """Evaluated runs side by side (one column per run and split), with their E histograms,
    training curves and ECL rounds. ``runs``: run folders, evaluation folders or metrics.json files.

    A run with a damaged file is left out with a warning naming the file, so one broken run does not
    cost the comparison of the others; if every run is broken, that is a ValueError.
    """
    results, per_sample, loaded, broken = {}, {}, {}, []
    runs = list(runs)
    for item in runs:
        try:
            saved: SavedEvaluation = read_evaluation(item)
            samples = {split: saved.per_sample(split) for split in saved.splits}
            run = _read_run(saved.run_dir) if saved.run_dir else None
        except ValueError as err:
            warnings.warn(f"compare_runs: leaving out {item}: {err}", stacklevel=2)
            broken.append(f"{item}: {err}")
            continue
        for split, res in saved.splits.items():
            results[f"{saved.name}/{split}"] = res
            per_sample[f"{saved.name}/{split}"] = samples[split]
        if run is not None:
            loaded[saved.name] = run
    if runs and len(broken) == len(runs):
        raise ValueError("no run could be read:\n" + "\n".join(broken))
    return _write(out, title, results, per_sample, None, loaded, "", None)
