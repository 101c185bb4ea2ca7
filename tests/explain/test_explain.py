from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from consistcam.explain import explain, find_target_layer, last_convolution, list_explainers
from consistcam.models import create
from tests.explain.pgc_reference import REFERENCE, TARGETS, assert_matches_reference


@pytest.mark.parametrize("method", sorted(REFERENCE))
def test_matches_pytorch_grad_cam(resnet18, method):
    torch.manual_seed(2)
    assert_matches_reference(resnet18, torch.rand(4, 3, 64, 64), method)


@pytest.mark.parametrize("method", ["gradcam", "gradcam++", "layercam"])
def test_matches_pytorch_grad_cam_on_mobilenet(method):
    # A non-ResNet CNN (inverted residuals, hard-swish, squeeze-excitation) through its last feature stage.
    # Fresh BatchNorm statistics (mean 0, var 1) shrink its random activations to ~1e-11 maps, which
    # pytorch-grad-cam's double min-max scaling and our single one treat differently: calibrate them.
    torch.manual_seed(0)
    model = torchvision.models.mobilenet_v3_small(num_classes=10)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = None
    with torch.no_grad():
        model.train()(torch.rand(16, 3, 128, 128))
    assert_matches_reference(model.eval(), torch.rand(4, 3, 128, 128), method, layer="features.12")


def test_every_method_runs_and_is_normalised(resnet18, images):
    for method in list_explainers():
        maps = explain(resnet18, images, explainer=method, steps=4, batch_size=128)
        assert maps.shape == (4, 1, 64, 64), method
        assert maps.min() >= 0 and maps.max() <= 1, method
        assert torch.isfinite(maps).all(), method


def test_unknown_method_lists_known(resnet18, images):
    with pytest.raises(ValueError, match="known: .*gradcam"):
        explain(resnet18, images, explainer="nope")


def test_default_layer_found_for_common_backbones():
    x = torch.rand(1, 3, 64, 64)
    expected = {
        "resnet18": "layer4",
        "vgg11": "features",
        "densenet121": "features",
        "mobilenet_v3_small": "features",
        "efficientnet_b0": "features",
        "convnext_tiny": "features",
    }
    for name, layer in expected.items():
        model = torchvision.models.get_model(name, num_classes=5)
        assert find_target_layer(model, x) == layer, name


def test_default_layer_found_for_timm():
    timm = pytest.importorskip("timm")
    x = torch.rand(1, 3, 64, 64)
    assert find_target_layer(timm.create_model("resnet18", num_classes=5), x) == "layer4"
    assert find_target_layer(timm.create_model("convnext_atto", num_classes=5), x) == "stages"


def test_no_spatial_layer_is_a_clear_error():
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
    with pytest.raises(ValueError, match="Sequential"):
        explain(mlp, torch.rand(2, 3, 2, 2))


def test_bad_layer_name_and_targets(resnet18, images):
    with pytest.raises(ValueError, match="no layer 'layer9'"):
        explain(resnet18, images, layer="layer9")
    with pytest.raises(ValueError, match=r"\[0, 10\)"):
        explain(resnet18, images, torch.tensor([0, 1, 2, 10]))
    with pytest.raises(ValueError, match="4 integer class ids"):
        explain(resnet18, images, torch.tensor([0, 1]))


def test_predicted_class_is_default(resnet18, images):
    pred = resnet18(images).argmax(1)
    assert torch.equal(explain(resnet18, images), explain(resnet18, images, pred))


def test_batching_does_not_mix_images(resnet18, images):
    batched = explain(resnet18, images, torch.tensor(TARGETS))
    single = torch.cat([explain(resnet18, images[i : i + 1], torch.tensor([TARGETS[i]])) for i in range(4)])
    assert (batched - single).abs().max() < 1e-5


def test_multilabel_targets_give_one_map_per_class(resnet18, images):
    maps = explain(resnet18, images, [[1, 2], [3], [4, 5, 6], [0]])
    assert [m.shape[0] for m in maps] == [2, 1, 3, 1]
    assert torch.allclose(maps[0][1:2], explain(resnet18, images[:1], torch.tensor([2])), atol=1e-5)


def _integrated_reference(model, x, target, steps, layer="layer4"):
    return explain(model, x, target, explainer="integrated-gradcam", normalize=False, steps=steps, layer=layer)


def test_integrated_gradcam_converges_to_its_integral(resnet18, images):
    # layer3: behind it the head is non-linear, so the gradient changes along the path (behind
    # layer4 of a ResNet it is constant and every step count is exact).
    # Random BN biases: a fresh ResNet has none, is positively homogeneous, and then gradients are
    # constant along the ray from the black baseline whatever the layer.
    g = torch.Generator().manual_seed(3)
    for m in resnet18.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.bias.data = 0.5 * torch.randn(m.bias.shape, generator=g)
    target = torch.tensor(TARGETS)
    exact = _integrated_reference(resnet18, images, target, 256, "layer3")
    errors = [(_integrated_reference(resnet18, images, target, s, "layer3") - exact).abs().max().item()
              for s in (1, 4, 16)]
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] < 0.05 * exact.abs().max().item()


def test_integrated_gradcam_one_step_equals_handwritten(resnet18, images):
    # With one midpoint step the integral is GAP(grad at x/2) weighting A(x) - A(0).
    target = torch.tensor(TARGETS)
    feats = {}
    handle = resnet18.layer4.register_forward_hook(lambda m, i, o: feats.__setitem__("a", o))
    half = (images / 2).requires_grad_(False)
    with torch.enable_grad():
        logits = resnet18(half)
        grad = torch.autograd.grad(logits.gather(1, target[:, None]).sum(), feats["a"])[0]
    with torch.no_grad():
        a_x = resnet18.layer4(resnet18.layer3(resnet18.layer2(resnet18.layer1(
            resnet18.maxpool(resnet18.relu(resnet18.bn1(resnet18.conv1(images))))))))
        resnet18(torch.zeros_like(images))
        a_0 = feats["a"]
    handle.remove()
    raw = torch.relu((grad.mean((2, 3))[:, :, None, None] * (a_x - a_0)).sum(1, keepdim=True))
    expected = torch.nn.functional.interpolate(raw, size=(64, 64), mode="bilinear", align_corners=False)
    ours = _integrated_reference(resnet18, images, target, 1)
    assert (ours - expected).abs().max() < 1e-5 * max(1.0, expected.abs().max().item())


def test_relu_false_is_captums_layer_gradcam_without_relu(resnet18, images):
    """ExCon's authors explain with captum's default ``relu_attributions=False``; ``relu=False`` is that map."""
    from captum.attr import LayerAttribution, LayerGradCam

    targets = torch.tensor([0, 1, 2, 3])
    raw = explain(resnet18, images, targets, layer="layer4.1.conv2", relu=False, normalize=False)
    cam = LayerGradCam(resnet18, resnet18.layer4[1].conv2).attribute(images, targets, relu_attributions=False)
    assert torch.allclose(raw, LayerAttribution.interpolate(cam, (64, 64), "bilinear"), atol=1e-5)
    assert (raw < 0).any()  # negative evidence kept: the ReLU'd map differs exactly there
    relu = explain(resnet18, images, targets, layer="layer4.1.conv2", normalize=False)
    assert torch.allclose(relu, F.interpolate(F.relu(cam), (64, 64), mode="bilinear"), atol=1e-5)


def test_last_convolution_is_the_last_main_path_conv_of_the_stage():
    assert last_convolution(torchvision.models.resnet18(), "layer4") == "layer4.1.conv2"
    assert last_convolution(create("cc_resnet10", 2), "model.layer4") == "model.layer4.0.conv2"  # not downsample
    bottleneck = nn.Sequential(torchvision.models.resnet.Bottleneck(8, 2))
    assert last_convolution(bottleneck, "0") == "0.conv3"
    assert last_convolution(nn.Sequential(nn.Conv2d(3, 4, 3)), "0") == "0"
    assert last_convolution(nn.Sequential(nn.Linear(3, 4)), "0") == "0"  # no conv: the stage itself
