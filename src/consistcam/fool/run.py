"""``fool_run``: fool a trained run folder and write the fooled model as a normal run folder.

The output (``config.yaml``, ``model.safetensors``, ``metrics.jsonl``, ``status.json``) is what
``consistcam evaluate`` and ``report`` read, so a fooled model is evaluated like any other; beside
them ``fool.json`` (the fooling config, FSR, rank correlation, accuracy before/after, transfer) and
``fool_examples.safetensors`` (original vs fooled maps) feed the report's fooling section.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Subset

from consistcam.config import to_dict
from consistcam.fool.finetune import FoolConfig, fool_model, frozen_copy, measure_fooling
from consistcam.run.layout import (
    FOOL_EXAMPLES_FILE,
    FOOL_FILE,
    model_path,
    read_config,
    run_folder,
    run_option,
    write_config,
)
from consistcam.run.status import prepare_new_run, require_complete, write_metrics, write_status
from consistcam.utils import atomic_save_tensors, atomic_write, seed_everything


def fool_run(run: str | Path, out: str | Path, cfg: FoolConfig, *, device: str | torch.device = "auto",
             overwrite: bool = False, allow_incomplete: bool = False, progress: bool = True,
             command: str = "") -> dict:
    """Fine-tune the model of ``run`` with ``cfg``'s fooling and write the run folder ``out``.

    Fine-tunes on the run's training split (un-augmented, shuffled with ``cfg.seed``), measures on
    the first of its test splits, and returns what ``out/fool.json`` holds. ``out`` is refused if it
    holds a run (unless ``overwrite``); it is ``running`` until the last file is written.
    """
    from consistcam.data import build_dataset, build_transform, collate, eval_splits
    from consistcam.evaluation.run import run_data
    from consistcam.run.checkpoint import load_model

    run_dir, out = run_folder(run), Path(out)
    if not model_path(run_dir).is_file() and not Path(run).is_file():
        raise FileNotFoundError(f"{model_path(run_dir)} not found (is {run} a trained run folder?)")
    if out.resolve() == run_dir.resolve():
        raise ValueError(f"--out {out} is the run being fooled; write the fooled model to a new folder")
    require_complete(run_dir, allow_incomplete)
    model, info = load_model(run, device)
    data = run_data(run_dir)
    data_kw = {"skip_bad": True} if run_option(run_dir, "skip_bad", False) else {}
    transform = build_transform(info.get("image_size"), "none")
    train = build_dataset(data, "train", transform, **data_kw)
    test_split = cfg.split or eval_splits(data)[0]
    test = build_dataset(data, test_split, transform, **data_kw)
    num_classes = len(info["classes"]) or train.num_classes
    if train.num_classes != num_classes:
        raise ValueError(f"{data} has {train.num_classes} classes, the model of {run_dir} {num_classes}")
    if cfg.kind == "active" and max(cfg.classes) >= num_classes:
        raise ValueError(f"classes {list(cfg.classes)}: the model has {num_classes} classes (ids 0..{num_classes - 1})")

    prepare_new_run(out, overwrite, resumable=False)
    out.mkdir(parents=True, exist_ok=True)
    config = {**(read_config(run_dir, missing_ok=True) or {"data": data}), "out": str(out)}
    write_config(out, config)
    write_status(out, "running", fooled_from=str(run_dir.resolve()), kind=cfg.kind)

    seed_everything(cfg.seed)
    original = frozen_copy(model)

    def batches(epoch: int):
        g = torch.Generator().manual_seed(cfg.seed * 1000 + epoch)
        return DataLoader(train, batch_size=cfg.batch_size, shuffle=True, generator=g, collate_fn=collate)

    records: list[dict] = []

    def on_epoch_end(record: dict) -> None:
        records.append(record)
        write_metrics(out, records)

    fool_model(model, batches, cfg, on_epoch_end, progress)
    view = Subset(test, range(min(cfg.subset, len(test)))) if cfg.subset and cfg.kind != "active" else test
    loader = DataLoader(view, batch_size=cfg.eval_batch_size, collate_fn=collate)
    results, examples = measure_fooling(original, model, loader, cfg, progress)

    from consistcam.run.checkpoint import save_model

    save_model(model_path(out), model, info["arch"], num_classes,
               bool(config.get("small_input", False)), info["classes"], info.get("image_size"))
    if records:
        records[-1] = {**records[-1], f"{test_split}/acc": results["acc_after"]}
        write_metrics(out, records)
    doc = {"source": str(run_dir.resolve()), "command": command, "data": data, "split": test_split,
           "config": to_dict(cfg), **results,
           "examples": FOOL_EXAMPLES_FILE if examples else None}
    if examples:
        atomic_save_tensors({k: v.contiguous() for k, v in examples.items()}, out / FOOL_EXAMPLES_FILE)
    else:
        (out / FOOL_EXAMPLES_FILE).unlink(missing_ok=True)
    atomic_write(out / FOOL_FILE, lambda tmp: Path(tmp).write_text(json.dumps(doc, indent=2) + "\n"))
    write_status(out, "complete", fooled_from=str(run_dir.resolve()), kind=cfg.kind)
    return doc

