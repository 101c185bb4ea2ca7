from __future__ import annotations

import socket
import time

import pytest
import torch

from consistcam.models import IMAGENET_MEAN, IMAGENET_STD, Normalize, create, list_models


def test_create_small_input_and_normalisation():
    m = create("resnet18", 7, small_input=True)
    assert isinstance(m, Normalize)
    assert m.model.conv1.stride == (1, 1) and m.model.conv1.kernel_size == (3, 3)
    assert m(torch.rand(2, 3, 32, 32)).shape == (2, 7)
    x = torch.rand(2, 3, 8, 8)
    inner = m.model.eval()
    assert torch.allclose(m.eval()(x), inner((x - m.mean) / m.std))


def test_registered_and_timm_models():
    assert "cc_resnet10" in list_models()
    assert create("cc_resnet10", 3)(torch.rand(1, 3, 32, 32)).shape == (1, 3)
    pytest.importorskip("timm")
    assert create("timm:resnet10t", 4).eval()(torch.rand(1, 3, 32, 32)).shape == (1, 4)


def test_timm_models_normalise_with_their_own_statistics():
    pytest.importorskip("timm")
    vit = create("timm:vit_tiny_patch16_224", 3)  # pretrained_cfg: mean = std = 0.5
    assert vit.mean.flatten().tolist() == [0.5] * 3 and vit.std.flatten().tolist() == [0.5] * 3
    resnet = create("timm:resnet10t", 3)
    assert resnet.mean.flatten().tolist() == pytest.approx(IMAGENET_MEAN)
    assert resnet.std.flatten().tolist() == pytest.approx(IMAGENET_STD)
    explicit = create("timm:vit_tiny_patch16_224", 3, mean=(0.1, 0.2, 0.3), std=(1.0, 2.0, 3.0))
    assert explicit.mean.flatten().tolist() == pytest.approx([0.1, 0.2, 0.3])
    assert explicit.std.flatten().tolist() == pytest.approx([1.0, 2.0, 3.0])
    assert create("resnet18", 3).mean.flatten().tolist() == pytest.approx(IMAGENET_MEAN)


def test_unknown_names_are_clear():
    with pytest.raises(ValueError, match="unknown model 'resnet999'"):
        create("resnet999", 3)
    with pytest.raises(ValueError, match="small_input is supported for ResNet-style"):
        create("vgg11", 3, small_input=True)


def test_pretrained_offline_fails_fast_and_clearly(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    seen = []
    monkeypatch.setattr(socket, "setdefaulttimeout", seen.append)  # a library must not change it
    before = socket.getdefaulttimeout()
    t = time.time()
    try:
        create("resnet18", 3, pretrained=True)
    except RuntimeError as err:
        assert "pretrained weights" in str(err) and "resnet18" in str(err)
    else:  # pragma: no cover - a machine with internet access downloads the weights
        pytest.skip("weights could be downloaded: this machine is online")
    assert time.time() - t < 60
    assert seen == [] and socket.getdefaulttimeout() == before
