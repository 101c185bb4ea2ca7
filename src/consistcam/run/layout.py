"""The names inside a run folder, in one place: every command that writes or reads a run goes through
these constants and helpers, so the layout cannot drift between the trainer, ``evaluate``, the
sweep, ``diagnose``, ``fool``, TracIn and the VAE (tests/run/test_layout_names.py finds any of these
names spelled elsewhere in the package).

A training method's own files go in one folder it declares (``Method.output_dir``; the trainer
records it in ``status.json``, :func:`consistcam.run.status.method_dir` finds it); the built-in
methods' folders are named here with the rest."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from consistcam.config import ConfigError
from consistcam.utils import atomic_write

# what training writes (the trainer, and the VAE's and ``fool``'s training loops)
CONFIG_FILE = "config.yaml"  # the options the run was trained with
MODEL_FILE = "model.safetensors"  # the final weights plus what rebuilds the model by name
CHECKPOINT_FILE = "checkpoint.safetensors"  # exact resume: weights, optimizer, method state
TRAIN_METRICS_FILE = "metrics.jsonl"  # one JSON record per epoch
STATUS_FILE = "status.json"  # running / complete, written last
SKIPPED_FILE = "skipped.txt"  # entries skipped under skip_bad: split, kind, file, reason (tab-separated)
TENSORBOARD_DIR = "tb"  # TensorBoard events
KEPT_DIR = "checkpoints"  # kept weights of every N-th epoch, what TracIn sums over (consistcam.run.kept)
EPOCH_FILES = "epoch_*.safetensors"  # one file per epoch in KEPT_DIR and ECL_DIR: epoch_file(epoch)

# the built-in training methods' folders (Method.output_dir)
ECL_DIR = "consistency"  # ECL's scoring rounds: E, S, P, predictions, flips, area and v per sample id
JTT_DIR = "jtt"  # JTT's error set
JTT_ERROR_SET_FILE = "error_set.safetensors"  # in JTT_DIR
# by method name; a run whose status.json does not record its method's folder (one trained before
# the trainer wrote it) is read from the one of these it holds (consistcam.run.status.method_dir)
BUILTIN_METHOD_DIRS = {"ecl": ECL_DIR, "jtt": JTT_DIR}

# what ``consistcam evaluate`` writes: RUN/EVAL_DIR by default, or its --out
EVAL_DIR = "eval"
EVAL_METRICS_FILE = "metrics.json"  # every metric per split, and the manifest of the files below
REPORT_FILE = "report.html"  # an evaluation's report (and the default name of a comparison's)
SWEEP_MARKER_FILE = "sweep_evaluate.json"  # the evaluation arguments a sweep evaluated the run with

# what the other commands add to a run folder
DIAGNOSIS_DIR = "diagnosis"  # ``consistcam diagnose RUN``
DIAGNOSIS_FILE = "diagnosis.json"  # in DIAGNOSIS_DIR: the rows the report shows
DIAGNOSIS_TABLE_FILE = "diagnosis.md"
DIAGNOSIS_FIGURE_FILE = "diagnosis.png"
INFLUENCE_DIR = "influence"  # ``consistcam influence RUN`` and ``consistcam vae influence RUN`` (or their --out)
INFLUENCE_FILE = "influence.safetensors"
INFLUENCE_PAGE_FILE = "influence.html"
FOOL_FILE = "fool.json"  # in a run written by ``consistcam fool``: what the fooling measured
FOOL_EXAMPLES_FILE = "fool_examples.safetensors"  # its original vs fooled maps

# options that say where and how a run executes, not what it trains: two configs that differ only
# here describe the same run (resume and the sweep's "same member?" check both ignore them)
RUN_LOCAL_KEYS = ("out", "workers", "device")


def run_folder(path: str | Path) -> Path:
    """The run folder of a run folder or of a file inside it (``RUN/model.safetensors``); a path
    that does not exist is taken as a folder (never its parent, whose files belong to no run)."""
    path = Path(path)
    return path.parent if path.is_file() else path


def config_path(run: str | Path) -> Path:
    return Path(run) / CONFIG_FILE


def model_path(run: str | Path) -> Path:
    return Path(run) / MODEL_FILE


def checkpoint_path(run: str | Path) -> Path:
    return Path(run) / CHECKPOINT_FILE


def metrics_path(run: str | Path) -> Path:
    return Path(run) / TRAIN_METRICS_FILE


def epoch_file(epoch: int) -> str:
    """The name of epoch ``epoch``'s file in a folder of per-epoch files (KEPT_DIR, ECL_DIR)."""
    return f"epoch_{epoch:03d}.safetensors"


def file_epoch(name: str) -> int | None:
    """The epoch in a per-epoch file's name (the inverse of :func:`epoch_file`); None for another name."""
    match = re.fullmatch(r"epoch_(\d+)\.safetensors", name)
    return int(match.group(1)) if match else None


def per_sample_file(split: str) -> str:
    """In an evaluation folder: every evaluated sample's values of ``split``."""
    return f"per_sample_{split}.safetensors"


def examples_file(split: str) -> str:
    """In an evaluation folder: the best and worst examples of ``split`` by each ranking key."""
    return f"examples_{split}.safetensors"


def read_config(run: str | Path, hint: str = "", missing_ok: bool = False) -> dict[str, Any]:
    """The run's config as a mapping (no validation: old and foreign layouts still read). A missing
    file is a FileNotFoundError naming it (``hint`` says what to do), or ``{}`` with ``missing_ok``;
    a damaged one a ConfigError naming it."""
    path = config_path(run_folder(run))
    try:
        text = path.read_text()
    except FileNotFoundError:
        if missing_ok:
            return {}
        raise FileNotFoundError(f"{path} not found" + (f": {hint}" if hint else "")) from None
    except (IsADirectoryError, PermissionError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: unreadable ({type(err).__name__})") from None
    try:
        config = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({err})") from None
    if config is None:
        return {}
    if not isinstance(config, dict):
        raise ConfigError(f"{path}: expected a mapping of options, got {type(config).__name__}")
    return config


def run_option(run: str | Path, key: str, default: Any = None) -> Any:
    """One option of the run's config (``default`` when the run has no config or not that key)."""
    return read_config(run, missing_ok=True).get(key, default)


def write_config(run_dir: str | Path, config: Mapping[str, Any]) -> None:
    """``RUN/config.yaml``, written atomically in the order given."""
    text = yaml.safe_dump(dict(config), sort_keys=False)
    atomic_write(Path(run_dir) / CONFIG_FILE, lambda tmp: Path(tmp).write_text(text))


def config_differences(saved: Mapping[str, Any], mine: Mapping[str, Any], ignore_epochs: bool = False) -> list[str]:
    """The options in which two (resolved, defaults filled in) configs describe different runs, sorted;
    :data:`RUN_LOCAL_KEYS` never count, and ``epochs`` not with ``ignore_epochs`` (resume: a run may
    be extended, while a sweep member with other epochs is another run)."""
    skip = {*RUN_LOCAL_KEYS, *(("epochs",) if ignore_epochs else ())}
    return sorted(k for k in set(saved) | set(mine) if k not in skip and saved.get(k) != mine.get(k))
