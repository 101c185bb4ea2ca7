"""What every command shares about a run: which device it runs on, the run-folder layout (the one
place its file names are spelled), its life cycle (``running``/``complete``), its checkpoints and
its kept checkpoints. Below train/, evaluation/, influence/, vae/, sweep/ and report/: it imports
only consistcam.config, consistcam.utils and consistcam.models (see docs/architecture.md)."""

from consistcam.run.checkpoint import load_checkpoint, load_model, read_metadata, save_checkpoint, save_model
from consistcam.run.device import DEVICE_HELP, resolve_device, run_device
from consistcam.run.kept import KEPT_FORMAT, keep_every, kept_checkpoints, read_kept, write_kept
from consistcam.run.layout import (
    CHECKPOINT_FILE,
    CONFIG_FILE,
    EVAL_DIR,
    EVAL_METRICS_FILE,
    KEPT_DIR,
    MODEL_FILE,
    RUN_LOCAL_KEYS,
    STATUS_FILE,
    TRAIN_METRICS_FILE,
    config_differences,
    read_config,
    run_folder,
    run_option,
    write_config,
)
from consistcam.run.status import RunFolderError, method_dir, read_metrics, read_status, require_complete

__all__ = [
    "CHECKPOINT_FILE",
    "CONFIG_FILE",
    "DEVICE_HELP",
    "EVAL_DIR",
    "EVAL_METRICS_FILE",
    "KEPT_DIR",
    "KEPT_FORMAT",
    "MODEL_FILE",
    "RUN_LOCAL_KEYS",
    "STATUS_FILE",
    "TRAIN_METRICS_FILE",
    "RunFolderError",
    "config_differences",
    "keep_every",
    "kept_checkpoints",
    "load_checkpoint",
    "load_model",
    "method_dir",
    "read_config",
    "read_kept",
    "read_metadata",
    "read_metrics",
    "read_status",
    "require_complete",
    "resolve_device",
    "run_device",
    "run_folder",
    "run_option",
    "save_checkpoint",
    "save_model",
    "write_config",
    "write_kept",
]
