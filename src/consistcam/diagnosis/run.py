"""The diagnosis of one run folder, and the mean ± std over several (seeds).

Scores, each oriented so that higher means "more likely bias-conflicting":

* ECL, every scoring round (``consistency/epoch_XXX.safetensors``): the weight ``v``; ``1 - E``
  (the consistency itself, before tempering); ``error``, the round's misclassified training images
  (``pred != label``: the error set JTT would take from that same model).
* JTT (``jtt/error_set.safetensors``): its ``error set`` (with the weights it trained on) and the
  identification model's ``per-sample loss``.

The minority is every training image whose background group is not its class
(:func:`consistcam.metrics.groups.alignment`), known on the demo and shortcut data sets only.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
from torch import Tensor

from consistcam.metrics.groups import alignment
from consistcam.metrics.identification import identification
from consistcam.report.results import load_tensors
from consistcam.run.layout import (
    DIAGNOSIS_DIR,
    DIAGNOSIS_FIGURE_FILE,
    DIAGNOSIS_FILE,
    DIAGNOSIS_TABLE_FILE,
    ECL_DIR,
    EPOCH_FILES,
    JTT_DIR,
    JTT_ERROR_SET_FILE,
    config_path,
    read_config,
)
from consistcam.utils import atomic_write

ROUNDS = f"{ECL_DIR}/{EPOCH_FILES}"  # ECL's scoring rounds in the run folder
JTT_FILE = f"{JTT_DIR}/{JTT_ERROR_SET_FILE}"
COLUMNS = ("source", "epoch", "auc", "precision_at_k", "weight_share", "set_size", "set_precision", "set_recall",
           "minority_fraction", "n")


def _config(run_dir: Path) -> dict:
    cfg = read_config(run_dir, hint=f"is {run_dir} a run folder?")
    if not isinstance(cfg.get("data"), str):
        raise ValueError(f"{config_path(run_dir)}: no 'data' spec; the file is damaged")
    return cfg


def minority_mask(spec: str, skip_bad: bool = False) -> tuple[Tensor, Tensor]:
    """(labels, bias-conflicting mask) of every sample of the training split of ``spec``."""
    from consistcam.data import build_dataset

    ds = build_dataset(spec, "train", None, **({"skip_bad": True} if skip_bad else {}))
    if ds.groups is None or ds.multilabel:
        raise ValueError(f"data {spec!r}: its training images carry no background group, so which are "
                         "bias-conflicting is unknown (diagnose needs the demo or shortcut data sets)")
    labels = torch.tensor(ds.all_labels())
    return labels, alignment(labels, torch.tensor(ds.groups)).bool()


def _row(source: str, epoch: int, scores: Tensor, minority: Tensor, weights: Tensor | None = None) -> dict:
    return {"source": source, "epoch": epoch, **identification(scores, minority, weights)}


def score_rows(run_dir: str | Path, labels: Tensor, minority: Tensor) -> list[dict]:
    """One row per (score, epoch) found in ``run_dir`` (ValueError when it holds none)."""
    run_dir = Path(run_dir)
    rows = []
    fix = f"delete it or re-train {run_dir}"
    for path in sorted(run_dir.glob(ROUNDS)):
        t = load_tensors(path, fix, required=("ids", "E", "weights", "pred"))
        epoch, ids = int(path.stem.rsplit("_", 1)[-1]), _ids(t["ids"], labels, path)
        rows += [_row("ecl weight v", epoch, t["weights"], minority[ids], t["weights"]),
                 _row("ecl 1 - E", epoch, 1 - t["E"].double(), minority[ids]),
                 _row("ecl model's errors", epoch, t["pred"].long() != labels[ids], minority[ids])]
    if (run_dir / JTT_FILE).is_file():
        t = load_tensors(run_dir / JTT_FILE, fix, required=("ids", "loss", "error", "weights"))
        ids = _ids(t["ids"], labels, run_dir / JTT_FILE)
        epoch = int((_config(run_dir).get("jtt") or {}).get("identification_epochs", 1))
        rows += [_row("jtt error set", epoch, t["error"].bool(), minority[ids], t["weights"]),
                 _row("jtt per-sample loss", epoch, t["loss"].double(), minority[ids])]
    if not rows:
        raise ValueError(f"{run_dir}: no per-sample weights to diagnose (an ecl run writes {ROUNDS}, "
                         f"a jtt run {JTT_FILE})")
    return rows


def _ids(ids: Tensor, labels: Tensor, path: Path) -> Tensor:
    ids = ids.long()
    if len(ids) and (int(ids.min()) < 0 or int(ids.max()) >= len(labels)):
        raise ValueError(f"{path}: sample ids up to {int(ids.max())}, but the training data has {len(labels)} "
                         "images; was the run trained on other data? (--data names the training data)")
    return ids


def _cell(v: object) -> str:
    if isinstance(v, float):
        return "" if math.isnan(v) else f"{v:.3f}"
    return "" if v is None else str(v)


def markdown(rows: Sequence[dict], columns: Sequence[str] = COLUMNS) -> str:
    columns = [c for c in columns if any(c in r for r in rows)]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def diagnose_run(run_dir: str | Path, data: str | None = None) -> Path:
    """Write ``RUN/diagnosis/`` (diagnosis.json, diagnosis.md, diagnosis.png); returns the folder.
    ``data``: the training data spec when the run's (its config.yaml) does not resolve from here."""
    from consistcam.report.figures import identification_figure

    run_dir = Path(run_dir)
    cfg = _config(run_dir)
    spec = data or cfg["data"]
    labels, minority = minority_mask(spec, bool(cfg.get("skip_bad", False)))
    rows = score_rows(run_dir, labels, minority)
    out = run_dir / DIAGNOSIS_DIR
    out.mkdir(parents=True, exist_ok=True)
    doc = {"run": str(run_dir), "method": cfg.get("method"), "data": spec, "seed": cfg.get("seed"),
           "rows": [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()}
                    for r in rows]}
    atomic_write(out / DIAGNOSIS_FILE, lambda tmp: Path(tmp).write_text(json.dumps(doc, indent=1)))
    atomic_write(out / DIAGNOSIS_TABLE_FILE, lambda tmp: Path(tmp).write_text(
        f"# Minority identification: {run_dir}\n\nmethod {doc['method']}, data {spec}, seed {doc['seed']}; "
        "minority = training images whose background group is not their class\n\n" + markdown(rows)))
    fig = identification_figure(rows)
    atomic_write(out / DIAGNOSIS_FIGURE_FILE, lambda tmp: fig.savefig(tmp, format="png", dpi=90, bbox_inches="tight"))
    return out


def summarize(docs: Iterable[dict]) -> list[dict]:
    """Mean and sample standard deviation over runs (seeds) of every metric, per (source, epoch):
    ``<metric>`` is the mean, ``<metric>_std`` the deviation, ``runs`` how many runs had the row."""
    cells: dict[tuple[str, int], list[dict]] = {}
    for doc in docs:
        for r in doc["rows"]:
            cells.setdefault((r["source"], r["epoch"]), []).append(r)
    out = []
    for (source, epoch), rows in cells.items():
        row: dict = {"source": source, "epoch": epoch, "runs": len(rows)}
        for key in COLUMNS[2:]:
            values = [float(r[key]) for r in rows if isinstance(r.get(key), (int, float))]
            if values:
                row[key] = statistics.fmean(values)
                row[f"{key}_std"] = statistics.stdev(values) if len(values) > 1 else math.nan
        out.append(row)
    return sorted(out, key=lambda r: (r["source"], r["epoch"]))
