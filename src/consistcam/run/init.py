"""Initialising a model from a checkpoint file: the start of fine-tuning.

``load_init(model, path)`` takes a consistcam run folder or its ``model.safetensors``, or a
torchvision / timm state dict (``.safetensors``, or ``.pth`` / ``.pt`` / ``.bin`` / ``.ckpt`` read
with ``torch.load(weights_only=True)``, so a pickle that would run code is refused unexecuted).
The classifier head is re-initialised when its shape differs (another class count); any other
missing, unexpected or mis-shaped key is an error that names it, because a silently half-loaded
backbone trains and evaluates without complaint and only the results are wrong.
"""

from __future__ import annotations

import hashlib
import logging
import pickle
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from consistcam.models import classifier_head
from consistcam.run.layout import MODEL_FILE

log = logging.getLogger("consistcam.run")

PICKLE_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")
_NESTED = ("state_dict", "model", "model_state_dict", "module", "net")
_OPTIONAL = ("num_batches_tracked",)  # absent from old torchvision files; BatchNorm works without it


class InitError(ValueError):
    """An init file that cannot initialise this model; the message names the file and the key."""


@dataclass(frozen=True)
class InitInfo:
    path: str
    sha256: str
    loaded: int  # tensors copied into the model
    head_reinitialised: str | None  # the head's name when its shape differed, else None


def resolve_init_path(path: str | Path) -> Path:
    """A run folder means its model file; anything else must be a file with a known suffix."""
    p = Path(path).expanduser()
    if p.is_dir():
        p = p / MODEL_FILE
        if not p.is_file():
            raise InitError(f"init {path}: a folder without {MODEL_FILE} (not a finished consistcam run?)")
    if not p.is_file():
        raise InitError(f"init {p}: no such file")
    if p.suffix not in (".safetensors", *PICKLE_SUFFIXES):
        raise InitError(f"init {p}: unknown format {p.suffix!r}; expected .safetensors, "
                        f"{', '.join(PICKLE_SUFFIXES)} or a run folder")
    return p


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of an init file, unwrapped from the usual checkpoint nestings (``state_dict``,
    ``model``, ...) and DDP's ``module.`` prefix; never executes code from the file."""
    if path.suffix == ".safetensors":
        from consistcam.utils import load_tensor_file

        try:
            state: object = load_tensor_file(path)[0]
        except Exception as err:  # safetensors' own error types for damaged files
            raise InitError(f"init {path}: not a readable safetensors file ({err})") from None
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as err:
            found = re.search(r"(?i)unsupported global[^\n]*?(?=\.?\s*$|\.\s)", str(err), re.M)
            if found is None:  # not a pickle at all, or a damaged one (torch: "unsupported operand")
                raise InitError(f"init {path}: not a readable PyTorch file (not a weights-only pickle; "
                                "nothing was executed)") from None
            raise InitError(f"init {path}: refused, the file is a pickle that would run code or build objects "
                            f"other than tensors on load (not executed; {found.group(0).strip()})") from None
        except (RuntimeError, EOFError, OSError) as err:
            raise InitError(f"init {path}: not a readable PyTorch file ({type(err).__name__}: {err})") from None
    for _ in range(3):  # {"state_dict": {...}}, {"model": {"state_dict": ...}}
        if isinstance(state, Mapping) and not any(isinstance(v, torch.Tensor) for v in state.values()):
            inner = next((state[k] for k in _NESTED if isinstance(state.get(k), Mapping)), None)
            if inner is None:
                break
            state = inner
    if not isinstance(state, Mapping) or not state:
        raise InitError(f"init {path}: holds no state dict (a mapping of tensors)")
    tensors = {str(k): v for k, v in state.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise InitError(f"init {path}: holds no tensors")
    if all(k.startswith("module.") for k in tensors):
        tensors = {k[len("module."):]: v for k, v in tensors.items()}
    return tensors


def _match_keys(state: dict[str, torch.Tensor],
                target: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Map a file's keys onto the model's: as they are (a consistcam model file), or under the
    ``model.`` prefix of :class:`~consistcam.models.Normalize` (a bare torchvision / timm state dict),
    whichever matches more keys. Also returns each mapped key's name in the file, for messages."""
    prefixed = {f"model.{k}": v for k, v in state.items()}
    if sum(k in target for k in prefixed) > sum(k in target for k in state):
        return prefixed, {f"model.{k}": k for k in state}
    return dict(state), {k: k for k in state}


def load_init(model: nn.Module, path: str | Path) -> InitInfo:
    """Copy the weights of ``path`` into ``model`` in place (see the module docstring)."""
    p = resolve_init_path(path)
    digest = file_sha256(p)
    target = model.state_dict()
    state, in_file = _match_keys(read_state_dict(p), target)
    head_name, _ = classifier_head(model)
    head_keys = {k for k in target if k.startswith(head_name + ".")}
    reinit = None
    for key in sorted(head_keys & state.keys()):
        if tuple(state[key].shape) != tuple(target[key].shape):
            reinit = head_name
    if reinit is not None:
        for key in head_keys:
            state.pop(key, None)
    # the input statistics belong to the model recipe (Normalize), not to the backbone's weights
    stats = {k for k in target if k in ("mean", "std")}
    unexpected = sorted(in_file[k] for k in state if k not in target)
    missing = sorted(k for k in target if k not in state and k not in stats and (reinit is None or k not in head_keys)
                     and not k.endswith(_OPTIONAL))
    if unexpected or missing:
        parts = [f"{len(v)} {what} ({', '.join(v[:4])}{', ...' if len(v) > 4 else ''})"
                 for what, v in (("unexpected key" + "s" * (len(unexpected) > 1) + " in the file", unexpected),
                                 ("model key" + "s" * (len(missing) > 1) + " missing from the file", missing)) if v]
        raise InitError(f"init {p}: does not fit this model: {'; '.join(parts)}")
    for key, value in state.items():
        if tuple(value.shape) != tuple(target[key].shape):
            raise InitError(f"init {p}: {in_file[key]} has shape {tuple(value.shape)}, the model's {key} has "
                            f"{tuple(target[key].shape)}")
    model.load_state_dict(state, strict=False)
    if reinit is not None:
        log.info("init %s: classifier head %s re-initialised (the file's has another class count)", p, reinit)
    return InitInfo(path=str(p), sha256=digest, loaded=len(state), head_reinitialised=reinit)


def freeze_backbone(model: nn.Module) -> list[nn.Parameter]:
    """A linear probe: every parameter outside the classifier head stops requiring gradients.
    Returns the head's parameters (what the optimizer should train). Keeping the frozen part in
    eval mode (BatchNorm statistics) is the training loop's job: ``model.train()`` undoes it."""
    _, head = classifier_head(model)
    head_params = {id(p) for p in head.parameters()}
    for param in model.parameters():
        if id(param) not in head_params:
            param.requires_grad_(False)
    return list(head.parameters())
