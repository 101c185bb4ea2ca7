"""Small shared helpers: atomic file writes, progress bars, seeding."""

from __future__ import annotations

import os
import random
import sys
import tempfile
from collections.abc import Iterable
from pathlib import Path

import torch


def atomic_write(path: str | Path, write) -> None:
    """Write through a temporary file in the same folder, then rename: a crash never leaves a
    half-written file under ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        fault_point(f"write:{path.name}")
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file the usual permissions
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def tensor_file_bytes(tensors: dict[str, torch.Tensor], metadata: dict | None = None) -> bytes:
    """A safetensors file as bytes that depend on the tensors and metadata only: safetensors writes
    ``__metadata__`` in hash-map order, which changes between processes, so the header is rewritten
    with the metadata keys sorted (a checksum of two identical runs' files is then equal)."""
    import json
    import struct

    from safetensors.torch import save

    raw = save(tensors, metadata=metadata or None)
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    if "__metadata__" in header:
        header = {"__metadata__": dict(sorted(header["__metadata__"].items())),
                  **{k: v for k, v in header.items() if k != "__metadata__"}}
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    text += b" " * (-len(text) % 8)  # safetensors aligns the data section to 8 bytes
    return struct.pack("<Q", len(text)) + text + raw[8 + n:]


def atomic_save_tensors(tensors: dict[str, torch.Tensor], path: str | Path, metadata: dict | None = None) -> str:
    """Write a safetensors file atomically, byte-identical for identical contents (see tensor_file_bytes);
    returns the file's sha256 (hex), for manifests that must tell one version of the file from another."""
    import hashlib

    data = tensor_file_bytes(tensors, metadata)
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))
    return hashlib.sha256(data).hexdigest()


def atomic_torch_save(obj, path: str | Path) -> None:
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def progress_bar(iterable: Iterable, desc: str = "", enabled: bool = True, total: int | None = None, **kw):
    """A tqdm bar on a terminal; silent (the plain iterable) when disabled or not on a TTY."""
    if not enabled or not sys.stderr.isatty():
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, total=total, leave=False, dynamic_ncols=True, **kw)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
    try:
        import numpy as np

        np.random.seed(seed % 2**32)
    except ImportError:  # pragma: no cover
        pass


def model_device(model: torch.nn.Module) -> torch.device:
    """The device of a model's first parameter or buffer (CPU for a model that has neither)."""
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


_fault_hits: dict[str, int] = {}


def fault_point(name: str) -> None:
    """Fault injection for the crash tests: ``CONSISTCAM_KILL_AT=name[#k]`` kills this process with
    SIGKILL the k-th time (default 1st) execution passes the point ``name``. Unset: a dict lookup."""
    target = os.environ.get("CONSISTCAM_KILL_AT")
    if not target:
        return
    point, _, count = target.partition("#")
    if point != name:
        return
    _fault_hits[name] = _fault_hits.get(name, 0) + 1
    if _fault_hits[name] == int(count or 1):
        import signal

        os.kill(os.getpid(), signal.SIGKILL)
