"""Checkpoints as single safetensors files, written atomically and loaded without pickle.

``checkpoint.safetensors`` holds model weights, optimizer state, the strategy's state (ECL's
current weights v) and, in its metadata, the epoch, optimizer hyper-parameters and the config.
``model.safetensors`` holds the weights alone plus what is needed to rebuild the model by name.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn

from consistcam.run.layout import MODEL_FILE
from consistcam.utils import atomic_save_tensors, load_tensor_file

FORMAT = "consistcam-checkpoint-1"


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], list]:
    sd = optimizer.state_dict()
    tensors = {}
    for pid, state in sd["state"].items():
        for key, value in state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{pid}.{key}"] = value
            elif value is not None:
                tensors[f"optim.{pid}.{key}"] = torch.tensor(value)
    return tensors, sd["param_groups"]


def save_checkpoint(path: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer, strategy_state: dict,
                    epoch: int, config: dict, extra: dict | None = None) -> None:
    tensors = {f"model.{k}": v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    optim_tensors, groups = _optimizer_tensors(optimizer)
    tensors.update({k: v.detach().contiguous().cpu() for k, v in optim_tensors.items()})
    tensors.update({f"strategy.{k}": v.detach().contiguous().cpu() for k, v in strategy_state.items()})
    meta = {"format": FORMAT, "epoch": str(epoch), "param_groups": json.dumps(groups),
            "config": json.dumps(config), "extra": json.dumps(extra or {})}
    atomic_save_tensors(tensors, path, metadata=meta)


def read_metadata(path: str | Path) -> dict[str, str]:
    try:
        with safe_open(str(path), framework="pt") as f:
            return f.metadata() or {}
    except FileNotFoundError:
        raise FileNotFoundError(f"checkpoint {path} not found") from None
    except Exception as err:  # safetensors raises its own error types for corrupt headers
        raise ValueError(f"{path}: not a readable safetensors checkpoint ({err})") from None


def load_checkpoint(path: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> dict:
    """Restore model (and optimizer) in place; return epoch, config, strategy state, extra."""
    meta = read_metadata(path)
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path}: not a consistcam training checkpoint (format {meta.get('format')!r})")
    tensors, _ = load_tensor_file(path)  # checks the content hash: a bit flip is an error, not a resume
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    if optimizer is not None:
        groups = json.loads(meta["param_groups"])
        state: dict[int, dict] = {}
        for k, v in tensors.items():
            if k.startswith("optim."):
                _, pid, key = k.split(".", 2)
                state.setdefault(int(pid), {})[key] = v
        optimizer.load_state_dict({"state": state, "param_groups": groups})
    return {
        "epoch": int(meta["epoch"]),
        "config": json.loads(meta["config"]),
        "extra": json.loads(meta.get("extra", "{}")),
        "strategy": {k[9:]: v for k, v in tensors.items() if k.startswith("strategy.")},
    }


def save_model(path: str | Path, model: nn.Module, arch: str, num_classes: int, small_input: bool,
               classes: list[str] | None = None, image_size: int | None = None) -> None:
    meta = {"arch": arch, "num_classes": str(num_classes), "small_input": str(bool(small_input)),
            "classes": json.dumps(classes or []), "image_size": json.dumps(image_size)}
    atomic_save_tensors({k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}, path, meta)


def load_model(path: str | Path, device: str | torch.device = "auto") -> tuple[nn.Module, dict]:
    """Rebuild a trained model from ``model.safetensors`` (or a run folder holding one) on ``device``
    (``auto``: the run's device where it exists here, else CUDA when present, else the CPU)."""
    from consistcam.models import create
    from consistcam.run.device import resolve_device

    path = Path(path)
    device = resolve_device(device, path)  # before reading anything: a missing GPU is a one-line error
    if path.is_dir():
        path = path / MODEL_FILE
    meta = read_metadata(path)
    if "arch" not in meta:
        raise ValueError(f"{path}: no model metadata (was it written by consistcam?)")
    model = create(meta["arch"], int(meta["num_classes"]), small_input=meta["small_input"] == "True")
    model.load_state_dict(load_tensor_file(path)[0])
    info = {"arch": meta["arch"], "classes": json.loads(meta["classes"]),
            "image_size": json.loads(meta.get("image_size", "null"))}
    return model.to(device).eval(), info
