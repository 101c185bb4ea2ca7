"""The names inside a run folder, in one place: every command that writes or reads a run goes through
these constants and helpers, so the layout cannot drift between the trainer, ``evaluate``, the
sweep, TracIn and the VAE."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from consistcam.config import ConfigError
from consistcam.utils import atomic_write

CONFIG_FILE = "config.yaml"  # the options the run was trained with
MODEL_FILE = "model.safetensors"  # the final weights plus what rebuilds the model by name
CHECKPOINT_FILE = "checkpoint.safetensors"  # exact resume: weights, optimizer, strategy state
METRICS_FILE = "metrics.jsonl"  # one JSON record per epoch
STATUS_FILE = "status.json"  # running / complete, written last
KEPT_DIR = "checkpoints"  # kept weights of every N-th epoch, what TracIn sums over (consistcam.run.kept)

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
    return Path(run) / METRICS_FILE


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
