"""``create(name, num_classes, ...)``: torchvision, timm (``timm:`` prefix) and our small models,
all taking images in [0, 1] with normalisation inside the model."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from consistcam._registry import Registry

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MODELS: Registry = Registry("model")


class Normalize(nn.Module):
    """Wraps a classifier so it takes images in [0, 1]: attacks and explainers then work in pixel
    space and epsilon means what it says."""

    def __init__(self, model: nn.Module, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD):
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return self.model((x - self.mean) / self.std)


class _Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + identity)


class SmallResNet(nn.Module):
    """A ResNet for 32-64 px images on a CPU: 3x3 stride-1 stem, four stages of BasicBlocks with
    ``widths`` channels (strides 1, 2, 2, 2), torchvision attribute names (``layer4``, ``fc``)."""

    def __init__(self, num_classes: int, widths: Sequence[int] = (32, 64, 128, 256),
                 blocks: Sequence[int] = (1, 1, 1, 1)):
        super().__init__()
        self.conv1 = nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        cin = widths[0]
        for i, (w, n) in enumerate(zip(widths, blocks)):
            layers = [_Block(cin if j == 0 else w, w, (1 if i == 0 else 2) if j == 0 else 1) for j in range(n)]
            setattr(self, f"layer{i + 1}", nn.Sequential(*layers))
            cin = w
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.avgpool(x).flatten(1))


MODELS.add("cc_resnet10", lambda num_classes: SmallResNet(num_classes))
MODELS.add("cc_resnet18", lambda num_classes: SmallResNet(num_classes, blocks=(2, 2, 2, 2)))
MODELS.add("cc_resnet10_wide", lambda num_classes: SmallResNet(num_classes, widths=(64, 128, 256, 512)))


def _timm(name: str, **kwargs):
    """A registered builder for a timm model made for 32-64 px inputs (random init; timm is imported lazily)."""

    def build(num_classes: int) -> nn.Module:
        return _create_timm(name, False, num_classes, kwargs)

    return build


# Small vision transformers for 32-64 px images (CPU-sized; no pretrained weights at these patch sizes).
# ViT/DeiT: patch 4 (an 8x8 grid at 32 px, 16x16 at 64 px; dynamic_img_size lets one model take both).
MODELS.add("cc_vit_tiny", _timm("vit_tiny_patch16_224", img_size=32, patch_size=4, dynamic_img_size=True))
MODELS.add("cc_deit_tiny", _timm("deit_tiny_distilled_patch16_224", img_size=32, patch_size=4,
                                 dynamic_img_size=True))
# Swin: patch 2, window 4, four stages of one block (16, 8, 4, 2 tokens a side at 32 px).
MODELS.add("cc_swin_tiny", _timm("swin_tiny_patch4_window7_224", img_size=32, patch_size=2, window_size=4,
                                 embed_dim=48, depths=(1, 1, 1, 1), num_heads=(2, 2, 4, 8)))


def _parse_timm_name(spec: str) -> tuple[str, dict]:
    """``NAME`` or ``NAME:key=value,...`` (values parsed as YAML: ``img_size=32,patch_size=4``)."""
    name, sep, tail = spec.rpartition(":")
    if not sep or "=" not in tail:
        return spec, {}
    import yaml

    kwargs = {}
    for item in tail.split(","):
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise ValueError(f"timm model options must be key=value pairs, got {item!r} in {spec!r}")
        kwargs[key.strip()] = yaml.safe_load(value)
    return name, kwargs


def _create_timm(name: str, pretrained: bool, num_classes: int, kwargs: dict) -> nn.Module:
    try:
        import timm
    except ImportError as err:
        raise ImportError("timm models need `pip install consistcam[timm]`") from err
    try:
        model = timm.create_model(name, pretrained=pretrained, num_classes=num_classes, **kwargs)
    except TypeError as err:  # an option the architecture does not take
        raise ValueError(f"timm model {name!r} does not accept {sorted(kwargs)}: {err}") from err
    except RuntimeError as err:
        if not pretrained or "Unknown model" in str(err):
            raise ValueError(f"unknown timm model {name!r}") from err
        raise _offline_error(f"timm:{name}", err) from err
    except OSError as err:
        raise _offline_error(f"timm:{name}", err) from err
    # Attention through timm's explicit softmax(QK^T)V instead of the fused kernel: PyTorch's fused CPU attention
    # has no second derivative, which differentiable explanations (CGC's loss, explanation attacks) need.
    for module in model.modules():
        if hasattr(module, "fused_attn"):
            module.fused_attn = False
    return model


def _offline_error(name: str, err: Exception) -> RuntimeError:
    return RuntimeError(
        f"could not load pretrained weights for {name!r} ({type(err).__name__}: {err}). Offline? Put the weights "
        f"in the torch hub cache ({torch.hub.get_dir()}) or the Hugging Face cache, or use pretrained=False."
    )


def _small_input_stem(model: nn.Module, name: str) -> None:
    """Replace a 7x7 stride-2 stem and its max-pool by a 3x3 stride-1 conv (for 32-64 px images)."""
    conv, pool = getattr(model, "conv1", None), getattr(model, "maxpool", None)
    if not isinstance(conv, nn.Conv2d) or pool is None:
        raise ValueError(f"small_input is supported for ResNet-style models (conv1 + maxpool); {name!r} has none")
    model.conv1 = nn.Conv2d(conv.in_channels, conv.out_channels, 3, 1, 1, bias=False)
    model.maxpool = nn.Identity()


def list_models(pattern: str = "*") -> list[str]:
    """Our registered models; any torchvision name and any ``timm:<name>`` also work."""
    return MODELS.names(pattern)


def create(
    name: str,
    num_classes: int,
    pretrained: bool = False,
    small_input: bool = False,
    normalize: bool = True,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> nn.Module:
    """Build a classifier by name, wrapped in :class:`Normalize` (inputs in [0, 1]).

    ``name``: one of :func:`list_models` (including small ViT/DeiT/Swin for 32-64 px: ``cc_vit_tiny``,
    ``cc_deit_tiny``, ``cc_swin_tiny``), a torchvision model name (``resnet50``), or ``timm:<name>``, optionally
    with timm options: ``timm:vit_tiny_patch16_224:img_size=64,patch_size=8``.
    ``mean``/``std`` default to the statistics the weights were trained with: a timm
    model's ``pretrained_cfg`` (e.g. 0.5 for ViTs and Inception), ImageNet's otherwise.
    ``pretrained`` loads weights through torchvision's/timm's own mechanisms and fails with a clear
    message when offline (network timeouts are left to the process: a library must not change them).
    """
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if name in MODELS:
        if pretrained:
            raise ValueError(f"{name!r} has no pretrained weights")
        model = MODELS.get(name)(num_classes)
    elif name.startswith("timm:"):
        timm_name, kwargs = _parse_timm_name(name[5:])
        model = _create_timm(timm_name, pretrained, num_classes, kwargs)
    else:
        import torchvision

        known = torchvision.models.list_models()
        if name not in known:
            raise ValueError(f"unknown model {name!r}; ours: {', '.join(list_models())}; torchvision has "
                             f"{len(known)} (e.g. resnet18, resnet50, vgg16); timm models need the 'timm:' prefix")
        if pretrained:
            try:
                model = torchvision.models.get_model(name, weights="DEFAULT")
            except (OSError, RuntimeError) as err:
                raise _offline_error(name, err) from err
            _replace_head(model, num_classes, name)
        else:
            model = torchvision.models.get_model(name, weights=None, num_classes=num_classes)
    if small_input:
        _small_input_stem(model, name)
    if not normalize:
        return model
    cfg = getattr(model, "pretrained_cfg", None) or {}  # timm: the statistics its weights expect
    mean = cfg.get("mean", IMAGENET_MEAN) if mean is None else mean
    std = cfg.get("std", IMAGENET_STD) if std is None else std
    wrapped = Normalize(model, mean, std)
    wrapped._consistcam_recipe = {"arch": name, "small_input": bool(small_input)}
    return wrapped


def model_recipe(model: nn.Module) -> dict | None:
    """``{"arch", "small_input"}`` of a model :func:`create` built (normalised), which is what a saved
    model file needs to be rebuilt by name; None for any other model."""
    return getattr(model, "_consistcam_recipe", None)


def classifier_head(model: nn.Module) -> tuple[str, nn.Module]:
    """(qualified name, module) of the final linear classifier: timm's ``get_classifier()`` where it
    exists, else the last ``nn.Linear`` of ``fc`` / ``classifier`` / ``head`` / ``heads`` (torchvision,
    ours). Looks inside :class:`Normalize`. Fine-tuning re-initialises it, a linear probe trains it alone."""
    prefix, inner = ("model.", model.model) if isinstance(model, Normalize) else ("", model)
    get = getattr(inner, "get_classifier", None)
    if callable(get):
        head = get()
        for name, module in inner.named_modules():
            if module is head and isinstance(head, nn.Linear):
                return prefix + name, head
    for attr in ("fc", "classifier", "head", "heads"):
        head = getattr(inner, attr, None)
        if isinstance(head, nn.Linear):
            return prefix + attr, head
        if isinstance(head, nn.Sequential) and len(head) and isinstance(head[-1], nn.Linear):
            return f"{prefix}{attr}.{len(head) - 1}", head[-1]
    raise ValueError(f"no linear classifier head found in {type(inner).__name__} (looked for get_classifier(), "
                     "fc, classifier, head, heads)")


def _replace_head(model: nn.Module, num_classes: int, name: str) -> None:
    try:
        qualified, head = classifier_head(model)
    except ValueError:
        raise ValueError(f"do not know how to replace the classifier head of {name!r}") from None
    parent_name, _, attr = qualified.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, attr, nn.Linear(head.in_features, num_classes))
