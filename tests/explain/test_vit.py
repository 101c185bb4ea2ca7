"""Vision transformers: explain() picks the layer and the token reshape from the timm model type, agrees with
pytorch-grad-cam given its reshape_transform, and ECL / CGC train a small ViT on the demo set."""

from __future__ import annotations

import json

import pytest
import torch

from consistcam.cli import main
from consistcam.explain import explain
from consistcam.explain.layers import swin_reshape_transform, transformer_defaults
from consistcam.models import create
from tests.explain.pgc_reference import TARGETS, reference_maps

timm = pytest.importorskip("timm")

METHODS = ["gradcam", "gradcam++", "xgradcam", "layercam", "hirescam"]


def _sharpen(model):
    with torch.no_grad():  # timm's small head init gives ~1e-4 maps, where the min-max epsilon would dominate
        model.head.weight.mul_(100) if hasattr(model.head, "weight") else model.head.fc.weight.mul_(100)
    return model.eval()


@pytest.fixture(scope="module")
def vit():
    torch.manual_seed(0)
    return _sharpen(timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=10, img_size=32,
                                      patch_size=8, depth=3))


@pytest.fixture(scope="module")
def swin():
    torch.manual_seed(1)
    return _sharpen(timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, num_classes=10, img_size=32,
                                      patch_size=1, window_size=4, embed_dim=24, depths=(1, 1, 1, 1),
                                      num_heads=(1, 2, 2, 4)))


def pgc_vit_reshape(tensor, height=4, width=4):
    """pytorch-grad-cam's ViT reshape_transform (its tutorial), for a 4x4 patch grid."""
    result = tensor[:, 1:, :].reshape(tensor.size(0), height, width, tensor.size(2))
    return result.transpose(2, 3).transpose(1, 2)


def pgc_swin_reshape(tensor):
    """pytorch-grad-cam's Swin reshape_transform, for timm's channels-last blocks: (N, h, w, C) -> (N, C, h, w)."""
    return tensor.transpose(2, 3).transpose(1, 2)


def _assert_close_to_reference(model, images, method, layer, reshape):
    ours = explain(model, images, torch.tensor(TARGETS), explainer=method)  # layer and reshape chosen automatically
    ref = reference_maps(model, images, method, TARGETS, layer, reshape)
    assert ours.shape == ref.shape == (4, 1, 32, 32)
    assert ours.amax() > 0.99
    assert (ours - ref).abs().max() <= 1e-4, (ours - ref).abs().max()


@pytest.mark.parametrize("method", METHODS)
def test_vit_default_layer_and_reshape_match_pytorch_grad_cam(vit, method):
    torch.manual_seed(2)
    _assert_close_to_reference(vit, torch.rand(4, 3, 32, 32), method, "blocks.2.norm1", pgc_vit_reshape)


@pytest.mark.parametrize("method", METHODS)
def test_swin_default_layer_and_reshape_match_pytorch_grad_cam(swin, method):
    torch.manual_seed(2)
    # at 32 px with patch 1 the stages are 32, 16, 8 and 4 tokens a side: the last stage (4x4) is the default
    _assert_close_to_reference(swin, torch.rand(4, 3, 32, 32), method, "layers.3.blocks.0.norm1", pgc_swin_reshape)


def test_defaults_inside_our_wrapper_and_distillation_tokens():
    torch.manual_seed(0)
    model = create("cc_deit_tiny", 4).eval()  # Normalize(VisionTransformerDistilled): class + distillation token
    x = torch.rand(2, 3, 32, 32)
    layer, reshape = transformer_defaults(model, None, None, x)
    assert layer == "model.blocks.11.norm1"
    assert reshape.keywords == {"grid": (8, 8), "num_prefix_tokens": 2}
    tokens = torch.arange(2 * 66 * 3.0).view(2, 66, 3)
    assert torch.equal(reshape(tokens)[:, :, 0, 0], tokens[:, 2])  # the first patch, after both prefix tokens
    maps = explain(model, x, explainer="gradcam")
    assert maps.shape == (2, 1, 32, 32) and torch.isfinite(maps).all()
    # one cc_vit_tiny takes 32 and 64 px (dynamic image size): the grid follows the input
    vit = create("cc_vit_tiny", 4).eval()
    assert transformer_defaults(vit, None, None, torch.rand(1, 3, 64, 64))[1].keywords["grid"] == (16, 16)
    assert explain(vit, torch.rand(1, 3, 64, 64)).shape == (1, 1, 64, 64)
    # an explicit layer outside the token stages gets no reshape; an explicit reshape is kept
    assert transformer_defaults(vit, "model.patch_embed.proj", None, x) == ("model.patch_embed.proj", None)
    assert transformer_defaults(vit, None, swin_reshape_transform, x)[1] is swin_reshape_transform
    # models that are not timm transformers are left alone
    assert transformer_defaults(create("cc_resnet10", 4), None, None, x) == (None, None)


def test_swin_reshape_transform_layouts():
    nhwc = torch.rand(2, 3, 3, 5)
    assert torch.equal(swin_reshape_transform(nhwc), nhwc.permute(0, 3, 1, 2))
    tokens = nhwc.reshape(2, 9, 5)  # older timm: (N, h*w, C)
    assert torch.equal(swin_reshape_transform(tokens), nhwc.permute(0, 3, 1, 2))
    with pytest.raises(ValueError, match="square grid"):
        swin_reshape_transform(torch.rand(2, 8, 5))


def test_timm_options_in_the_model_name():
    m = create("timm:vit_tiny_patch16_224:img_size=64,patch_size=8,depth=2", 3).eval()
    assert len(m.model.blocks) == 2 and m(torch.rand(1, 3, 64, 64)).shape == (1, 3)
    with pytest.raises(ValueError, match="does not accept"):
        create("timm:resnet10t:img_size=32", 3)
    with pytest.raises(ValueError, match="key=value"):
        create("timm:vit_tiny_patch16_224:img_size=32,4", 3)


@pytest.mark.parametrize("method", ["ecl", "cgc"])
def test_small_vit_trains_one_epoch_on_the_demo_set(tmp_path, method):
    out = tmp_path / method
    args = ["train", "--data", "demo:n=256", "--arch", "timm:vit_tiny_patch16_224:img_size=32,patch_size=8,depth=2",
            "--method", method, "--epochs", "1", "--batch-size", "64", "--out", str(out), "--quiet", "--seed", "0"]
    if method == "ecl":
        args += ["--set", "ecl.warmup=0", "--set", "ecl.consistency.steps=2"]  # score (explain + attack) at once
    assert main(args) == 0
    record = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert torch.isfinite(torch.tensor(record["train/loss"]))
    if method == "ecl":
        assert list((out / "consistency").glob("epoch_*.safetensors")), "no scoring round ran"
