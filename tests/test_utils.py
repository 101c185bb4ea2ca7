"""Shared helpers: tensor files are byte-identical for identical contents."""

from __future__ import annotations

import hashlib

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from consistcam.utils import atomic_save_tensors


def test_tensor_files_are_byte_identical_whatever_the_metadata_order(tmp_path):
    # safetensors writes __metadata__ in hash-map order: every call used to differ (issue 25, point 7)
    tensors = {"w": torch.arange(6.0).view(2, 3), "ids": torch.tensor([3, 1])}
    meta = {k: str(i) for i, k in enumerate("zyxwvutsrq")}
    digests = set()
    for i in range(8):
        path = tmp_path / f"f{i}.safetensors"
        atomic_save_tensors(tensors, path, dict(reversed(meta.items())) if i % 2 else meta)
        digests.add(hashlib.sha256(path.read_bytes()).hexdigest())
    assert len(digests) == 1
    back = load_file(str(path))
    assert all(torch.equal(back[k], tensors[k]) for k in tensors)
    with safe_open(str(path), framework="pt") as f:
        assert {k: v for k, v in f.metadata().items() if k != "content_sha256"} == meta


def test_load_tensor_file_checks_the_content_hash(tmp_path):
    from safetensors.torch import save_file

    from consistcam.utils import IntegrityError, load_tensor_file

    path = tmp_path / "t.safetensors"
    atomic_save_tensors({"w": torch.arange(8.0)}, path, {"epoch": "2"})
    tensors, meta = load_tensor_file(path)
    assert torch.equal(tensors["w"], torch.arange(8.0)) and meta["epoch"] == "2"
    data = bytearray(path.read_bytes())
    data[-5] ^= 0x01  # one bit inside the tensor bytes
    path.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match=r"t.safetensors: the tensors do not match the content hash"):
        load_tensor_file(path)
    save_file({"w": torch.ones(2)}, str(tmp_path / "old.safetensors"))  # written without a hash: loads
    assert torch.equal(load_tensor_file(tmp_path / "old.safetensors")[0]["w"], torch.ones(2))
