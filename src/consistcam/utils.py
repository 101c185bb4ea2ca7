"""Small shared helpers: atomic file writes, progress bars, seeding, and the two collectives a
per-sample pass needs under DDP (here, below every user of them: consistcam.ECL and the trainer)."""

from __future__ import annotations

import os
import random
import sys
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor


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


CONTENT_HASH = "content_sha256"  # metadata key of a tensor file: sha256 of its data section (the tensor bytes)


class IntegrityError(ValueError):
    """A tensor file whose tensor bytes do not match the content hash written with them."""


def _split_tensor_file(raw: bytes) -> tuple[dict, bytes]:
    import json
    import struct

    if len(raw) < 8:
        raise ValueError(f"{len(raw)} bytes: too short for a safetensors file")
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    if not isinstance(header, dict):
        raise ValueError("the safetensors header is not a JSON object")
    return header, raw[8 + n:]


def tensor_file_bytes(tensors: dict[str, torch.Tensor], metadata: dict | None = None) -> bytes:
    """A safetensors file as bytes that depend on the tensors and metadata only: safetensors writes
    ``__metadata__`` in hash-map order, which changes between processes, so the header is rewritten
    with the metadata keys sorted (a checksum of two identical runs' files is then equal). The
    metadata gains :data:`CONTENT_HASH`, which :func:`load_tensor_file` checks."""
    import hashlib
    import json
    import struct

    from safetensors.torch import save

    header, data = _split_tensor_file(save(tensors, metadata=metadata or None))  # safetensors checks types
    meta = {**header.pop("__metadata__", {}), CONTENT_HASH: hashlib.sha256(data).hexdigest()}
    text = json.dumps({"__metadata__": dict(sorted(meta.items())), **header}, separators=(",", ":"),
                      ensure_ascii=False).encode()
    text += b" " * (-len(text) % 8)  # safetensors aligns the data section to 8 bytes
    return struct.pack("<Q", len(text)) + text + data


def load_tensor_file(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, metadata) of a safetensors file, its tensor bytes checked against the content hash
    written with them (one read, one hash; files without a hash, from before 0.x, load unchecked).
    A bit flip inside a tensor is an :class:`IntegrityError` naming the file, not a silent wrong model.
    Other damage raises what ``safetensors`` raises (callers turn it into their own message)."""
    import hashlib

    from safetensors.torch import load

    raw = Path(path).read_bytes()
    tensors = load(raw)  # first: a truncated or malformed file is safetensors' error, not a hash mismatch
    header, data = _split_tensor_file(raw)
    meta = header.get("__metadata__") or {}
    expected = meta.get(CONTENT_HASH)
    if expected is not None and hashlib.sha256(data).hexdigest() != expected:
        raise IntegrityError(f"{path}: the tensors do not match the content hash stored with them (bit flips or "
                             "an edit): the file is damaged; restore it or write it again (re-train / re-evaluate)")
    return tensors, dict(meta)


def atomic_save_tensors(tensors: dict[str, torch.Tensor], path: str | Path, metadata: dict | None = None) -> str:
    """Write a safetensors file atomically, byte-identical for identical contents (see tensor_file_bytes);
    returns the file's sha256 (hex), for manifests that must tell one version of the file from another."""
    import hashlib

    data = tensor_file_bytes(tensors, metadata)
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))
    return hashlib.sha256(data).hexdigest()


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


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands: rank, world size, local rank, and the process group (None: default)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    group: Any = None

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def of(cls, group=None) -> DistInfo:
        """This process in ``group`` (None: the default group) when torch.distributed is initialised,
        else one process: what a loop run by someone else (plain DDP, Lightning) is in right now."""
        if not (dist.is_available() and dist.is_initialized()):
            return cls()
        return cls(dist.get_rank(group), dist.get_world_size(group), group=group)


def all_reduce_sum(t: Tensor, info: DistInfo) -> Tensor:
    if info.enabled:
        dist.all_reduce(t, op=dist.ReduceOp.SUM, group=info.group)
    return t


def gather_cat(t: Tensor, info: DistInfo) -> Tensor:
    """Concatenate every rank's tensor along dim 0 (lengths may differ), rank order."""
    if not info.enabled:
        return t
    if t.dtype == torch.bool:  # not every backend gathers bools
        return gather_cat(t.to(torch.uint8), info).bool()
    n = torch.tensor([t.shape[0]], device=t.device)
    sizes = [torch.zeros_like(n) for _ in range(info.world_size)]
    dist.all_gather(sizes, n, group=info.group)
    longest = int(max(s.item() for s in sizes))
    padded = torch.zeros((longest, *t.shape[1:]), dtype=t.dtype, device=t.device)
    padded[: t.shape[0]] = t
    parts = [torch.zeros_like(padded) for _ in range(info.world_size)]
    dist.all_gather(parts, padded, group=info.group)
    return torch.cat([p[: int(s.item())] for p, s in zip(parts, sizes)])
