"""One device rule for every command and API: ``auto`` (the default everywhere) means CUDA when it
is there, else the CPU; a command that opens a run folder prefers the device the run was trained
on when that device exists here; a device that is not there is a one-line error, never a deep
traceback from ``model.to``."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from consistcam.config import ConfigError
from consistcam.run.layout import read_config

DEVICE_HELP = ("device: auto (the run's device if it exists here, else cuda when available, else cpu), "
               "cpu, cuda, cuda:N or mps")


def _auto() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _available(device: torch.device) -> str | None:
    """Why ``device`` cannot be used here (None when it can)."""
    if device.type == "cuda":
        if not torch.cuda.is_available():
            return "no CUDA GPU is available (torch.cuda.is_available() is False)"
        if device.index is not None and device.index >= torch.cuda.device_count():
            return f"only {torch.cuda.device_count()} GPU(s) exist"
    if device.type == "mps" and not torch.backends.mps.is_available():
        return "MPS is not available"
    if device.type not in ("cpu", "cuda", "mps"):
        return "expected auto, cpu, cuda, cuda:N or mps"
    return None


def resolve_device(name: str | torch.device | None = "auto", run_dir: str | Path | None = None) -> torch.device:
    """The ``torch.device`` for ``name``; ``auto``/None picks the device of ``run_dir`` (its
    config) when that exists here, else CUDA when present, else the CPU."""
    if isinstance(name, torch.device):
        problem = _available(name)
        if problem:
            raise ConfigError(f"device: {str(name)!r} requested but {problem} (use --device auto or cpu)")
        return name
    if name is None or name == "auto":
        preferred = run_device(run_dir) if run_dir is not None else None
        if preferred is not None and preferred.type != "cpu" and _available(preferred) is None:
            return preferred
        if preferred is not None and preferred.type == "cpu":
            return preferred
        return _auto()
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise ConfigError(f"device: unknown device {name!r} (expected auto, cpu, cuda, cuda:N or mps)") from None
    problem = _available(device)
    if problem:
        raise ConfigError(f"device: {name!r} requested but {problem} (use --device auto or cpu)")
    return device


def run_device(run_dir: str | Path) -> torch.device | None:
    """The device a run folder was configured for (None: no config, or ``auto``/unreadable)."""
    try:
        name = read_config(run_dir, missing_ok=True).get("device", "auto")
        return None if name in (None, "auto") else torch.device(str(name))
    except (OSError, ValueError, RuntimeError):  # ConfigError is a ValueError
        return None


def set_deterministic() -> None:
    """Deterministic kernels for bit-identical reruns on CUDA (cuBLAS needs its workspace setting
    before its first call). Warn-only: an op without a deterministic CUDA kernel warns instead of
    stopping the run; the GPU check compares two reruns bit for bit."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    torch.use_deterministic_algorithms(True, warn_only=True)
