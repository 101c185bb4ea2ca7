"""``evaluate_run``: evaluate a trained run folder and save everything its report shows.

The command ``consistcam evaluate`` is a thin wrapper over it. What is saved (named in
:mod:`consistcam.run.layout`, read back by :mod:`consistcam.report.results`) is all the report
reads, so ``report.html`` can be rebuilt, or runs compared, without the model and without running
an attack again.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Subset

from consistcam.config import to_dict
from consistcam.data import build_dataset, build_transform, check_same_classes, collate, eval_splits
from consistcam.evaluation.background import background_reliance
from consistcam.evaluation.config import EvaluationConfig
from consistcam.evaluation.pipeline import evaluate_model, stream_seeds
from consistcam.metrics import GroupAccuracy, alignment, group_report
from consistcam.run.layout import (
    EVAL_DIR,
    EVAL_METRICS_FILE,
    REPORT_FILE,
    config_path,
    examples_file,
    per_sample_file,
    read_config,
    run_folder,
    run_option,
)
from consistcam.utils import atomic_save_tensors, atomic_write


def run_data(run_dir: Path) -> str:
    """The data spec the run was trained on (its config)."""
    config = read_config(run_dir, hint="pass the data spec (--data) for a model without its run folder")
    if not isinstance(config.get("data"), str):
        raise ValueError(f"{config_path(run_dir)}: no 'data' spec; pass --data or repair the file")
    return config["data"]


def start_evaluation(out_dir: Path) -> None:
    """An evaluation folder is one unit: metrics.json is written last and lists the sha256 of every
    file it names. Before the first new file, the previous metrics.json and report.html go (a kill
    now leaves no metrics.json rather than one describing other files), and so do temporaries a
    killed evaluation left behind."""
    from consistcam.run.status import remove_stale_temporaries

    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"--out {out_dir}: exists and is not a folder")
    if out_dir.is_dir():
        remove_stale_temporaries(out_dir)
        for name in (EVAL_METRICS_FILE, REPORT_FILE):
            (out_dir / name).unlink(missing_ok=True)


def _save_or_remove(tensors: dict[str, torch.Tensor], path: Path, digests: dict[str, str]) -> str | None:
    """Write ``tensors`` (images and heatmaps as float16: they are only drawn) or remove a stale file;
    the file's sha256 goes into ``digests`` (metrics.json's manifest)."""
    if not tensors:
        path.unlink(missing_ok=True)
        return None
    compact = {k: (v.half() if v.is_floating_point() and v.dim() > 1 else v).contiguous() for k, v in tensors.items()}
    digests[path.name] = atomic_save_tensors(compact, path)
    return path.name


# splits of the data sets with a background shortcut (demo, shortcut:<spec>): decorrelated and correlated test
DECORRELATED, CORRELATED = "test", "test_correlated"


def _group_inputs(ds, per_sample: dict[str, torch.Tensor]) -> tuple[torch.Tensor, ...] | None:
    """(predictions, labels, background aligned/conflicting) of each evaluated image from the
    evaluation's per-sample results; None for data without background groups."""
    if ds.groups is None or ds.multilabel or "pred" not in per_sample:
        return None
    groups = torch.tensor(ds.groups)[per_sample["id"]]
    return per_sample["pred"], per_sample["label"], alignment(per_sample["label"], groups)


def _groups(inputs: list[tuple[torch.Tensor, ...]], classes: list[str]) -> dict:
    metric = GroupAccuracy(len(classes))
    for pred, label, attribute in inputs:
        metric.update(pred, label, attribute)
    return group_report(metric, classes)


def shortcut_summary(results: dict, group_inputs: dict[str, tuple[torch.Tensor, ...]], classes: list[str]) -> dict:
    """``acc_correlated`` / ``acc_decorrelated`` (top-1 of the correlated and decorrelated test
    splits) and the per-group and worst-group accuracy over both splits together: the same objects
    on aligned and on conflicting backgrounds, so every (class, alignment) cell is well populated."""
    out: dict = {}
    if "acc" in results.get(CORRELATED, {}):  # multi-label results: exact-match accuracy
        out["acc_correlated"] = results[CORRELATED]["acc"]
    if "acc" in results.get(DECORRELATED, {}):
        out["acc_decorrelated"] = results[DECORRELATED]["acc"]
    if "acc_correlated" in out and "acc_decorrelated" in out:
        out["shortcut_gap"] = out["acc_correlated"] - out["acc_decorrelated"]
    parts = [group_inputs[s] for s in (DECORRELATED, CORRELATED) if s in group_inputs]
    if parts:
        out.update(_groups(parts, classes))
    return out


def _with_options(config: EvaluationConfig, options: dict[str, Any]) -> EvaluationConfig:
    """``config`` with some fields replaced, through ``from_dict`` so that an unknown option is
    named with its near matches."""
    if not options:
        return config
    return EvaluationConfig.from_dict({**{f.name: getattr(config, f.name) for f in dataclasses.fields(config)},
                                       **options})


def _check_label_spaces(datasets: dict, classes: list[str], num_classes: int, model: str, data: str) -> None:
    """Every split against the model's classes (by name where the checkpoint has them), before any
    work: a wrong label space fails at once, not after the first split's evaluation."""
    for split, ds in datasets.items():
        if classes:
            check_same_classes(classes, ds.classes, model, f"{data} split {split!r}")
        elif ds.num_classes != num_classes:
            raise ValueError(f"{data} has {ds.num_classes} classes, the model {num_classes}")


def _write_metrics(out_dir: Path, meta: dict, results: dict, summary: dict) -> None:
    """metrics.json, written last and atomically (see :func:`start_evaluation`): meta, the splits,
    then the shortcut summary where there is one."""
    text = json.dumps({"meta": meta, "splits": results, **({"summary": summary} if summary else {})}, indent=2)
    atomic_write(out_dir / EVAL_METRICS_FILE, lambda tmp: Path(tmp).write_text(text))


def evaluate_run(
    run: str | Path,
    config: EvaluationConfig | None = None,
    *,
    data: str | None = None,
    splits: Sequence[str] | None = None,
    out: str | Path | None = None,
    report: bool = True,
    progress: bool = True,
    command: str = "",
    allow_incomplete: bool = False,
    **options: Any,
) -> Path:
    """Evaluate the model of ``run`` (run folder or model.safetensors) on each split of ``data``
    (default: the run's data, its test splits) and return the evaluation folder (default RUN/eval).

    What is computed is ``config`` (an :class:`EvaluationConfig`, default its defaults) with
    ``options`` (its fields, e.g. ``subset=40, protocols=("localization",)``) replacing some, so a
    Python call and ``consistcam evaluate`` share one set of defaults.

    Writes metrics.json (every metric per split; meta: command, data, explainers, protocols, seeds,
    classes), per_sample_<split>.safetensors, examples_<split>.safetensors (the ``examples`` best and
    worst samples by energy gain and by E, with the tensors that ranked them) and, with ``report``,
    report.html rendered from those files. An interrupted run is refused unless ``allow_incomplete``.
    """
    from consistcam.report import render_evaluation
    from consistcam.run.checkpoint import load_model
    from consistcam.run.device import resolve_device
    from consistcam.run.status import require_complete

    config = _with_options(config or EvaluationConfig(), options)
    explainers, protocols, seed, subset = list(config.explainers), tuple(config.protocols), config.seed, config.subset
    batch_size, workers = config.batch_size, config.workers
    run_dir = run_folder(run)
    device = resolve_device(config.device, run_dir)  # auto: the run's device where it exists here
    require_complete(run_dir, allow_incomplete)
    model, info = load_model(run, device)
    data = data or run_data(run_dir)
    skip_bad = config.skip_bad if config.skip_bad is not None else bool(run_option(run_dir, "skip_bad", False))
    data_kw = {"skip_bad": True} if skip_bad else {}
    out_dir = Path(out) if out is not None else run_dir / EVAL_DIR
    num_classes = len(info["classes"])
    cfg = dataclasses.replace(config.consistency, explainer=explainers[0], seed=seed)
    transform = build_transform(info.get("image_size"), "none")
    results, files, group_inputs, digests = {}, {}, {}, {}
    datasets = {split: build_dataset(data, split, transform, **data_kw) for split in splits or eval_splits(data)}
    _check_label_spaces(datasets, info["classes"], num_classes, f"the model of {run}", data)
    start_evaluation(out_dir)
    for split, ds in datasets.items():
        view = Subset(ds, range(min(subset, len(ds)))) if subset else ds
        loader = DataLoader(view, batch_size=batch_size, collate_fn=collate, num_workers=workers)
        res = evaluate_model(model, loader, num_classes, explainer=explainers, consistency=cfg, protocols=protocols,
                             faithfulness_steps=config.faithfulness_steps, progress=progress, device=device,
                             per_sample=True, examples=config.examples)
        groups = _group_inputs(ds, res.get("per_sample", {}))
        if groups is not None:
            group_inputs[split] = groups
            res.update(_groups([groups], info["classes"]))
        files[split] = {kind: _save_or_remove(res.pop(kind, {}), out_dir / name(split), digests)
                        for kind, name in (("per_sample", per_sample_file), ("examples", examples_file))}
        if config.background and not ds.multilabel and (ds.has_boxes or ds.has_masks):
            res.update(background_reliance(model, ds, transform, seed=seed, batch_size=batch_size, subset=subset,
                                           progress=progress, num_workers=workers, device=device))
        results[split] = res
    meta = {"checkpoint": str(run), "run": str(run_dir.resolve()), "data": data, "explainers": explainers,
            "protocols": list(protocols), "subset": subset, "seed": seed, "skip_bad": skip_bad,
            "seeds": {**stream_seeds(seed), "background": seed}, "consistency": to_dict(cfg),
            "classes": info["classes"], "command": command, "files": files, "sha256": digests,
            "init": {"path": run_option(run_dir, "init"), "sha256": run_option(run_dir, "init_sha256")}}
    _write_metrics(out_dir, meta, results, shortcut_summary(results, group_inputs, info["classes"]))
    if report:
        render_evaluation(out_dir)
    return out_dir
