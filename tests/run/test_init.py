"""Fine-tuning from a file: what is loaded, what is refused, and what is recorded."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import save_file

from consistcam.models import classifier_head, create
from consistcam.run.init import InitError, freeze_backbone, load_init
from consistcam.run.layout import MODEL_FILE


def _bare(num_classes: int, seed: int = 0) -> torch.nn.Module:
    """A bare state-dict producer, as torchvision or timm would save it (no Normalize wrapper)."""
    torch.manual_seed(seed)
    return create("cc_resnet10", num_classes).model


def test_torchvision_style_state_dict_replaces_the_head(tmp_path):
    src = _bare(17)
    path = tmp_path / "backbone.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in src.state_dict().items()}}, path)  # DDP + nesting
    torch.manual_seed(1)
    model = create("cc_resnet10", 5)
    head_before = model.model.fc.weight.clone()
    info = load_init(model, path)
    assert info.head_reinitialised == "model.fc" and info.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert torch.equal(model.model.fc.weight, head_before)  # the fresh head is kept
    for k, v in src.state_dict().items():
        if not k.startswith("fc."):
            assert torch.equal(model.model.state_dict()[k], v), k
    same = create("cc_resnet10", 17)
    assert load_init(same, path).head_reinitialised is None
    assert torch.equal(same.model.fc.weight, src.fc.weight)  # same class count: the head comes too


def test_run_folder_and_model_file(tmp_path):
    src = create("cc_resnet10", 4)
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(tmp_path / MODEL_FILE))
    model = create("cc_resnet10", 4)
    info = load_init(model, tmp_path)  # a run folder means its model file
    assert info.path.endswith(MODEL_FILE) and info.loaded == len(src.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), src.state_dict().values()))


@pytest.mark.parametrize("edit, match", [
    (lambda sd: sd.update({"layer9.weight": torch.zeros(1)}), r"1 unexpected key in the file \(layer9.weight\)"),
    (lambda sd: sd.pop("layer2.0.conv1.weight"), r"1 model key missing from the file \(model.layer2.0.conv1.weight\)"),
    (lambda sd: sd.update({"conv1.weight": torch.zeros(8, 3, 3, 3)}), r"conv1.weight has shape \(8, 3, 3, 3\)"),
])
def test_keys_that_do_not_fit_are_named(tmp_path, edit, match):
    sd = dict(_bare(5).state_dict())
    edit(sd)
    torch.save(sd, tmp_path / "w.pt")
    with pytest.raises(InitError, match=match):
        load_init(create("cc_resnet10", 5), tmp_path / "w.pt")


def test_a_pickle_that_runs_code_is_refused_unexecuted(tmp_path):
    marker = tmp_path / "pwned"
    code = (
        "import os, sys, torch\n"
        "class Evil:\n"
        "    def __reduce__(self):\n"
        f"        return (os.system, ('touch {marker}',))\n"
        f"torch.save({{'state_dict': Evil()}}, {str(tmp_path / 'evil.pth')!r})\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    with pytest.raises(InitError, match=r"evil.pth: refused, the file is a pickle that would run code"):
        load_init(create("cc_resnet10", 5), tmp_path / "evil.pth")
    assert not marker.exists()


@pytest.mark.parametrize("name, content, match", [
    ("w.npz", b"x", "unknown format '.npz'"),
    ("w.pth", b"not a zip", "not a readable PyTorch file"),
    ("w.safetensors", b"\x00" * 3, "not a readable safetensors file"),
])
def test_unreadable_files_are_named(tmp_path, name, content, match):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(InitError, match=match):
        load_init(create("cc_resnet10", 5), tmp_path / name)
    with pytest.raises(InitError, match="no such file"):
        load_init(create("cc_resnet10", 5), tmp_path / "missing.pth")


def test_classifier_head_of_torchvision_and_timm_models():
    assert classifier_head(create("resnet18", 3))[0] == "model.fc"
    assert classifier_head(create("vgg11", 3))[0] == "model.classifier.6"
    pytest.importorskip("timm")
    assert classifier_head(create("timm:resnet18", 3))[0] == "model.fc"
    assert classifier_head(create("cc_vit_tiny", 3))[0] == "model.head"


def test_freeze_backbone_leaves_only_the_head_trainable():
    model = create("cc_resnet10", 3)
    head = freeze_backbone(model)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable == ["model.fc.weight", "model.fc.bias"] and len(head) == 2
