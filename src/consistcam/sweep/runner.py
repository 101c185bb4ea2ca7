"""Running a sweep: train each member (resuming an interrupted one, skipping a complete one),
evaluate it once, and collect the metrics every evaluated member saved.

Members run one after the other in this process through the library (``Trainer.from_config``, then
``evaluate_run`` with the options ``consistcam evaluate`` would read from ``--evaluate-args``), so
a sweep needs no shell and its runs are ordinary run folders: ``consistcam train --resume
DIR/<member>`` or ``consistcam evaluate`` work on them too.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shlex
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from consistcam.evaluation.config import EvaluationConfig
from consistcam.run.init import InitError, file_sha256, resolve_init_path
from consistcam.run.layout import (
    CHECKPOINT_FILE,
    CONFIG_FILE,
    EVAL_DIR,
    EVAL_METRICS_FILE,
    RUN_LOCAL_KEYS,
    SWEEP_MARKER_FILE,
    config_differences,
    config_path,
    metrics_path,
    model_path,
    read_config,
)
from consistcam.run.status import read_metrics, read_status
from consistcam.sweep.grid import Member
from consistcam.train import TrainConfig
from consistcam.train.config import merge
from consistcam.utils import atomic_write

SUMMARY = "summary"  # may differ between invocations without changing the run


def member_config(config: str | Path | None, base: Mapping, member: Member, root: Path) -> TrainConfig:
    """The validated training config of ``member``: CONFIG, then ``base`` (--set), then the arm's
    overrides, then its seed and folder; an error names the member."""
    overrides = merge(merge(dict(base), member.arm.nested()), {"seed": member.seed, "out": str(root / member.folder)})
    try:
        return TrainConfig.from_yaml(config, overrides) if config else TrainConfig.from_dict(overrides)
    except ValueError as err:
        raise type(err)(f"sweep arm {member.arm.name!r}: {err}") from None


def _resolved(d: Mapping) -> dict:
    """A config mapping with defaults filled in (old layouts upgraded), for comparing two configs."""
    return {k: v for k, v in TrainConfig.from_dict({**d, "out": "x"}).to_dict().items() if k not in RUN_LOCAL_KEYS}


def check_same_config(run_dir: Path, cfg: TrainConfig) -> None:
    """Refuse a run folder that holds a different run (the CONFIG file or the grid changed)."""
    if not config_path(run_dir).is_file():
        return
    wanted = cfg.to_dict()
    if cfg.init is not None and cfg.init_sha256 is None:  # training records the file's hash: compare with it
        try:
            wanted["init_sha256"] = file_sha256(resolve_init_path(cfg.init))
        except InitError:  # the file is gone: trust the run, as a resume does
            wanted["init_sha256"] = read_config(run_dir).get("init_sha256")
    diff = config_differences(_resolved(read_config(run_dir)), _resolved(wanted))
    if diff:
        raise ValueError(f"{run_dir} holds a run whose config differs from this sweep member's in {diff}; "
                         f"use another --out or delete that folder")


def train_member(cfg: TrainConfig, progress: bool = False) -> str:
    """Train (or finish) one member; returns what was done: ``skipped`` (complete), ``resumed``, ``trained``."""
    from consistcam.train import Trainer

    run_dir = Path(cfg.out)
    state = read_status(run_dir)["state"] if run_dir.is_dir() else "missing"
    if run_dir.is_dir():
        check_same_config(run_dir, cfg)
    if state == "complete":
        return "skipped"
    resume = run_dir.is_dir() and any((run_dir / f).is_file() for f in (CONFIG_FILE, CHECKPOINT_FILE))
    trainer = Trainer.from_config(cfg, progress=progress, resume=resume)
    trainer.fit()
    return "resumed" if resume else "trained"


def _model_stamp(run_dir: Path) -> str:
    """Content hash of the trained model: a re-trained member is evaluated again, a copied one is not."""
    model = model_path(run_dir)
    if not model.is_file():
        return ""
    digest = hashlib.sha256()
    with model.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def is_evaluated(run_dir: Path, evaluate_args: Sequence[str]) -> bool:
    """RUN/eval/metrics.json exists and was written by a sweep with the same evaluation arguments
    from the model now in the folder."""
    marker = run_dir / EVAL_DIR / SWEEP_MARKER_FILE
    if not (marker.is_file() and (run_dir / EVAL_DIR / EVAL_METRICS_FILE).is_file()):
        return False
    try:
        saved = json.loads(marker.read_text())
    except ValueError:
        return False
    return saved == {"evaluate_args": list(evaluate_args), "model_sha256": _model_stamp(run_dir)}


def evaluation_options(run_dir: Path, evaluate_args: Sequence[str]) -> tuple[EvaluationConfig, argparse.Namespace]:
    """``evaluate_args`` read as ``consistcam evaluate RUN *evaluate_args`` would read them (the same
    flags, checked the same way) without building the whole command line; ``--out`` is refused."""
    from consistcam.evaluation.cli import parse_evaluate_args

    config, args = parse_evaluate_args(str(run_dir), evaluate_args)
    if args.out is not None:
        raise ValueError(f"--evaluate-args: --out is not allowed (each member is evaluated into RUN/{EVAL_DIR})")
    return config, args


def evaluate_member(run_dir: Path, evaluate_args: Sequence[str], progress: bool = False) -> bool:
    """Evaluate as ``consistcam evaluate RUN *evaluate_args`` would; returns False when it was
    already evaluated with these arguments."""
    if is_evaluated(run_dir, evaluate_args):
        return False
    from consistcam.evaluation import evaluate_run

    config, args = evaluation_options(run_dir, evaluate_args)
    evaluate_run(run_dir, config, data=args.data, splits=args.split, report=not args.no_report,
                 progress=progress and not args.quiet, allow_incomplete=args.allow_incomplete,
                 command=shlex.join(["consistcam", "evaluate", str(run_dir), *evaluate_args]))
    stamp = {"evaluate_args": list(evaluate_args), "model_sha256": _model_stamp(run_dir)}
    atomic_write(run_dir / EVAL_DIR / SWEEP_MARKER_FILE, lambda tmp: Path(tmp).write_text(json.dumps(stamp) + "\n"))
    return True


@dataclass
class Collected:
    """Metrics of every evaluated member: ``values[split][metric][arm name][seed]``."""

    values: dict[str, dict[str, dict[str, dict[int, float]]]] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)  # member folders without an evaluation
    missing_seeds: dict[str, list[int]] = field(default_factory=dict)  # the same, as {arm name: seeds}


def collect(root: Path, items: Sequence[Member], evaluate_args: Sequence[str]) -> Collected:
    """Read RUN/eval/metrics.json of each member: the numeric metrics of every split, and those of its
    ``summary`` (figures over several splits) under the pseudo-split ``summary``."""
    from consistcam.report import read_evaluation

    out = Collected()
    for m in items:
        run_dir = root / m.folder
        if not is_evaluated(run_dir, evaluate_args):
            out.missing.append(m.folder)
            out.missing_seeds.setdefault(m.arm.name, []).append(m.seed)
            continue
        saved = read_evaluation(run_dir)  # validates the file; names it if damaged
        splits = dict(saved.splits)
        summary = json.loads((saved.eval_dir / EVAL_METRICS_FILE).read_text()).get("summary")
        if isinstance(summary, dict):  # across-split figures (shortcut data: acc_correlated, worst_group_acc, ...)
            splits[SUMMARY] = dict(summary)
        epochs = read_metrics(metrics_path(run_dir))
        if epochs and all("time_s" in r for r in epochs):  # the cost of the method: training wall time
            splits.setdefault(SUMMARY, {})["train_time_s"] = sum(r["time_s"] for r in epochs)
        if epochs and "train/acc" in epochs[-1]:  # how well the run fits its (augmented) training set
            splits.setdefault(SUMMARY, {})["train_acc"] = epochs[-1]["train/acc"]
        for split, metrics in splits.items():
            for key, value in metrics.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    out.values.setdefault(split, {}).setdefault(key, {}).setdefault(m.arm.name, {})[m.seed] = \
                        float(value)
    return out


def run_members(root: Path, config: str | Path | None, base: Mapping, items: Sequence[Member],
                evaluate_args: Sequence[str], progress: bool = False,
                log: Callable[[str], None] = lambda s: print(s, file=sys.stderr, flush=True)) -> dict[str, str]:
    """Train and evaluate ``items`` in order; every config is validated before the first run starts.
    Returns {folder: what was done}."""
    configs = [member_config(config, base, m, root) for m in items]
    done = {}
    for k, (m, cfg) in enumerate(zip(items, configs), 1):
        log(f"[sweep] {k}/{len(items)} {m.folder}: training")
        action = train_member(cfg, progress)
        evaluated = evaluate_member(root / m.folder, evaluate_args, progress)
        done[m.folder] = action + (", evaluated" if evaluated else "")
        log(f"[sweep] {k}/{len(items)} {m.folder}: {done[m.folder]}")
    return done
