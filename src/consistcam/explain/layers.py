"""Finding the layer to explain: by module, by dotted name, or automatically."""

from __future__ import annotations

import dataclasses
import functools
import math
import weakref

import torch
from torch import Tensor, nn

from consistcam.config import ConfigError
from consistcam.models.state import preserved_state

_SKIP = (
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool2d,
    nn.AvgPool2d,
    nn.MaxPool2d,
    nn.Identity,
    nn.Dropout,
    nn.Dropout2d,
    nn.Flatten,
)
_cache: weakref.WeakKeyDictionary[nn.Module, dict[tuple[int, ...], str]] = weakref.WeakKeyDictionary()


def get_layer(model: nn.Module, name: str) -> nn.Module:
    """Return the submodule called ``name`` with an error that lists close names."""
    try:
        return model.get_submodule(name)
    except AttributeError:
        names = [n for n, _ in model.named_modules() if n]
        tail = name.split(".")[-1]
        close = [n for n in names if n.endswith(tail)][:8] or names[-8:]
        raise ValueError(
            f"{type(model).__name__} has no layer {name!r}; for example: {', '.join(close)}"
        ) from None


def check_layer_options(model: nn.Module, options, where: str) -> None:
    """Resolve every layer a method names (``layer``/``layers`` fields and explainer options, at any
    depth) against the model before epoch 0: a typo would otherwise fail at the first scoring pass,
    or never when warm-up outlasts the run. ``where`` names the options in the error (``ecl``)."""
    items = ({f.name: getattr(options, f.name) for f in dataclasses.fields(options)}
             if dataclasses.is_dataclass(options) else options if isinstance(options, dict) else {})
    for key, value in items.items():
        path = f"{where}.{key}"
        if key in ("layer", "layers") and value is not None:
            for name in [value] if isinstance(value, str) else value if isinstance(value, (list, tuple)) else ():
                if isinstance(name, str):
                    try:
                        get_layer(model, name)
                    except ValueError as err:
                        raise ConfigError(f"{path}: {err}") from None
        else:
            check_layer_options(model, value, path)


def _hooked_dry_run(model: nn.Module, modules, hook, example: Tensor) -> None:
    """One forward of ``example``'s first image in eval mode without gradients, with the forward
    ``hook`` on each of ``modules``: how the layer finders look at a model. Hooks are always removed
    and the model's train/eval flags restored."""
    handles = []
    try:
        for m in modules:
            handles.append(m.register_forward_hook(hook))
        with preserved_state(model, eval_mode=True), torch.no_grad():
            model(example[:1])
    finally:
        for h in handles:
            h.remove()


def find_target_layer(model: nn.Module, example: Tensor) -> str:
    """Name of the last spatial feature stage: the last module (outermost on ties) to finish with a
    (N, C, h, w) output, h·w > 1, that is not pooling/identity/dropout.

    One dry forward on one image finds it for torchvision and timm CNNs alike (ResNet ``layer4``,
    VGG/DenseNet/MobileNet/EfficientNet/ConvNeXt ``features``, timm ``stages``/``bn2``).
    """
    key = tuple(example.shape[1:])
    hit = _cache.get(model, {}).get(key)
    if hit is not None:
        return hit
    names = {m: n for n, m in model.named_modules() if n}
    last: list[str] = []

    def hook(module: nn.Module, _i: object, out: object) -> None:
        if (
            isinstance(out, Tensor)
            and out.dim() == 4
            and out.shape[-1] * out.shape[-2] > 1
            and not isinstance(module, _SKIP)
            and module in names
        ):
            last.append(names[module])

    _hooked_dry_run(model, names, hook, example)
    if not last:
        raise ValueError(
            f"could not find a spatial feature layer in {type(model).__name__} for input shape "
            f"{tuple(example.shape[1:])}; pass layer= (a module or a dotted name)"
        )
    _cache.setdefault(model, {})[key] = last[-1]
    return last[-1]


SHORTCUT_NAMES = frozenset({"downsample", "shortcut", "skip"})  # torchvision / timm names of residual shortcuts


def last_convolution(model: nn.Module, stage: str) -> str:
    """Dotted name of the last ``nn.Conv2d`` registered under ``stage`` outside its residual shortcuts
    (ResNet ``layer4`` -> ``layer4.1.conv2``; Bottleneck ``layer4.2.conv3``): the layer ExCon's authors
    explain, a conv output before its block's BatchNorm, residual add and ReLU. ``stage`` itself when it
    holds no convolution (a transformer block)."""
    convs = [name for name, m in get_layer(model, stage).named_modules()
             if isinstance(m, nn.Conv2d) and not SHORTCUT_NAMES & set(name.split("."))]
    return f"{stage}.{convs[-1]}" if convs and convs[-1] else stage


def resolve_layer(model: nn.Module, layer: nn.Module | str | None, example: Tensor) -> nn.Module:
    if layer is None:
        return get_layer(model, find_target_layer(model, example))
    if isinstance(layer, str):
        return get_layer(model, layer)
    if isinstance(layer, nn.Module):
        if not any(m is layer for m in model.modules()):
            raise ValueError(f"layer {type(layer).__name__} is not a submodule of {type(model).__name__}")
        return layer
    raise TypeError(f"layer must be a module, a dotted name or None, not {type(layer).__name__}")


def vit_reshape_transform(tokens: Tensor, grid: tuple[int, int] | None = None, num_prefix_tokens: int = 1) -> Tensor:
    """Vision-transformer tokens (N, P + h·w, D) -> a (N, D, h, w) map, the P prefix tokens (class,
    registers) dropped, so CAM methods can weigh token channels like conv channels.

    ``grid`` = (h, w) of the patch grid; default: the square grid the token count implies.
    Pass it to :func:`consistcam.explain.explain` as ``reshape_transform`` together with ``layer=``
    (e.g. ``functools.partial(vit_reshape_transform, num_prefix_tokens=model.num_prefix_tokens)``).
    """
    if tokens.dim() != 3:
        raise ValueError(f"vit_reshape_transform expects tokens (N, L, D), got {tuple(tokens.shape)}")
    n, length, dim = tokens.shape
    patches = length - num_prefix_tokens
    if grid is None:
        side = math.isqrt(max(patches, 0))
        if side * side != patches or patches == 0:
            raise ValueError(f"{patches} patch tokens ({length} minus {num_prefix_tokens} prefix) do not form a square "
                             "grid; pass grid=(h, w) or the right num_prefix_tokens")
        grid = (side, side)
    h, w = grid
    if h * w != patches:
        raise ValueError(f"grid {h}x{w} does not match {patches} patch tokens ({length} minus {num_prefix_tokens})")
    return tokens[:, num_prefix_tokens:].reshape(n, h, w, dim).permute(0, 3, 1, 2)


_block_cache: weakref.WeakKeyDictionary[nn.Module, dict[tuple, list[str]]] = weakref.WeakKeyDictionary()


def _plausible_map(shape: tuple[int, ...], size: tuple[int, int]) -> bool:
    """A (N, C, h, w) feature map of an (H, W) image: h, w > 0 and (about) the same stride on both axes, which
    rules out channels-last tensors such as Swin's (N, h, w, C)."""
    (h, w), (big_h, big_w) = shape[-2:], size
    return len(shape) == 4 and h > 0 and w > 0 and abs(h * big_w - w * big_h) <= big_h + big_w


def find_block_layers(model: nn.Module, example: Tensor, deepest: nn.Module,
                      deepest_size: tuple[int, int]) -> list[str]:
    """Names of the last layer of each convolutional block before ``deepest``, shallow to deep (SISE's layer
    selection, Sattarzadeh et al. 2021: the layers right before each downsampling).

    A block is a run of layers at one spatial resolution; its last layer is the last module (outermost on
    ties) to finish with a (N, C, h, w) output at that resolution. Only resolutions finer than
    ``deepest_size`` (the deepest layer's map after any reshape) count; pooling/identity/dropout modules and
    modules that run more than once per forward (a reused ``ReLU``) are skipped. One dry forward on one image,
    cached per model, input shape and deepest layer.
    """
    names = {m: n for n, m in model.named_modules() if n}
    if deepest not in names:
        raise ValueError(f"layer {type(deepest).__name__} is not a submodule of {type(model).__name__}")
    key = (tuple(example.shape[1:]), names[deepest], tuple(deepest_size))
    hit = _block_cache.get(model, {}).get(key)
    if hit is not None:
        return list(hit)
    size = (example.shape[-2], example.shape[-1])
    order: list[tuple[str, tuple[int, int]]] = []
    calls: dict[str, int] = {}
    done = [False]

    def hook(module: nn.Module, _i: object, out: object) -> None:
        name = names.get(module)
        if name is None or done[0]:
            return
        calls[name] = calls.get(name, 0) + 1
        if module is deepest:
            done[0] = True
        elif isinstance(out, Tensor) and out.dim() == 4 and not isinstance(module, _SKIP) and _plausible_map(
                tuple(out.shape), size):
            order.append((name, (out.shape[-2], out.shape[-1])))

    _hooked_dry_run(model, names, hook, example)
    if not done[0]:
        raise ValueError(f"layer {names[deepest]!r} did not run in the forward pass of {type(model).__name__}")
    area = deepest_size[0] * deepest_size[1]
    last: dict[tuple[int, int], str] = {}  # resolution -> last layer to finish there (dicts keep first-seen order)
    for name, hw in order:
        if calls[name] == 1 and hw[0] * hw[1] > area:
            last.pop(hw, None)
            last[hw] = name
    blocks = sorted(last.values(), key=[n for n, _ in order].index)
    _block_cache.setdefault(model, {})[key] = blocks
    return list(blocks)


# --- vision transformers: default layer and reshape_transform, chosen from the model type -----------------------


def swin_reshape_transform(tokens: Tensor) -> Tensor:
    """Swin's channels-last (N, h, w, C) layout (timm >= 0.9) -> (N, C, h, w); (N, h·w, C) tokens of a square
    grid (older timm) are re-gridded first."""
    if tokens.dim() == 3:
        n, length, dim = tokens.shape
        side = math.isqrt(length)
        if side * side != length:
            raise ValueError(f"{length} Swin tokens do not form a square grid; pass reshape_transform=")
        tokens = tokens.reshape(n, side, side, dim)
    if tokens.dim() != 4:
        raise ValueError(f"swin_reshape_transform expects (N, h, w, C) or (N, L, C), got {tuple(tokens.shape)}")
    return tokens.permute(0, 3, 1, 2)


_transformer_cache: weakref.WeakKeyDictionary[nn.Module, tuple | None] = weakref.WeakKeyDictionary()


def _timm_transformer(model: nn.Module) -> tuple[str, nn.Module, str] | None:
    """(dotted prefix, module, 'vit' | 'swin') of the first timm ViT/DeiT or Swin inside ``model`` (e.g. under
    our ``Normalize`` wrapper), else None. timm is only looked at when it is already imported."""
    import sys

    if sys.modules.get("timm.models") is None:
        return None
    if model in _transformer_cache:
        return _transformer_cache[model]
    kinds = []
    for mod_name, cls_names, kind in (("vision_transformer", ("VisionTransformer",), "vit"),
                                      ("swin_transformer", ("SwinTransformer",), "swin"),
                                      ("swin_transformer_v2", ("SwinTransformerV2",), "swin")):
        module = sys.modules.get(f"timm.models.{mod_name}")
        for cls_name in cls_names:
            cls = getattr(module, cls_name, None) if module is not None else None
            if isinstance(cls, type):
                kinds.append((cls, kind))
    found = next(((name, m, kind) for name, m in model.named_modules() for cls, kind in kinds if isinstance(m, cls)),
                 None)
    _transformer_cache[model] = found
    return found


def _swin_default(model: nn.Module, prefix: str, swin: nn.Module, example: Tensor) -> str:
    """The last block's ``norm1`` of the last Swin stage whose grid is larger than 1x1 at this input size."""
    key = ("swin", tuple(example.shape[1:]))
    hit = _cache.get(model, {}).get(key)
    if hit is not None:
        return hit
    stages = list(swin.layers)
    sizes: dict[int, tuple[int, ...]] = {}
    index = {stage: i for i, stage in enumerate(stages)}
    _hooked_dry_run(model, stages, lambda m, _i, o: sizes.__setitem__(index[m], tuple(o.shape)), example)
    spatial = [i for i, shape in sizes.items() if len(shape) == 4 and shape[1] * shape[2] > 1]
    i = max(spatial) if spatial else len(stages) - 1
    head = f"{prefix}." if prefix else ""
    name = f"{head}layers.{i}.blocks.{len(stages[i].blocks) - 1}.norm1"
    _cache.setdefault(model, {})[key] = name
    return name


def transformer_defaults(model: nn.Module, layer: nn.Module | str | None, reshape_transform, example: Tensor):
    """``(layer, reshape_transform)`` for timm ViT/DeiT/Swin models, unchanged for anything else.

    Default layer (as pytorch-grad-cam's tutorial): ViT/DeiT ``blocks[-1].norm1`` (the tokens entering the last
    attention, which is where the class token reads the patches); Swin the last block's ``norm1`` of the last
    stage with a grid larger than 1x1. Default reshape: ViT/DeiT tokens to the patch grid with the
    ``num_prefix_tokens`` class/distillation/register tokens dropped; Swin channels-last to channels-first.
    An explicit ``layer`` outside the token stages (e.g. ``patch_embed.proj``) gets no reshape.
    """
    if layer is not None and reshape_transform is not None:
        return layer, reshape_transform
    found = _timm_transformer(model)
    if found is None:
        return layer, reshape_transform
    prefix, net, kind = found
    head = f"{prefix}." if prefix else ""
    if layer is None:
        layer = f"{head}blocks.{len(net.blocks) - 1}.norm1" if kind == "vit" else _swin_default(model, prefix, net,
                                                                                                 example)
    if reshape_transform is not None:
        return layer, reshape_transform
    name = layer if isinstance(layer, str) else next((n for n, m in model.named_modules() if m is layer), "")
    rel = name[len(head):] if name.startswith(head) else name
    if kind == "vit" and (rel.startswith("blocks.") or rel in ("norm", "norm_pre")):
        grid = None
        patch = getattr(net, "patch_embed", None)
        if patch is not None and hasattr(patch, "dynamic_feat_size") and getattr(net, "dynamic_img_size", False):
            grid = tuple(patch.dynamic_feat_size(tuple(example.shape[-2:])))
        elif patch is not None and getattr(patch, "grid_size", None) is not None:
            grid = tuple(patch.grid_size)
        return layer, functools.partial(vit_reshape_transform, grid=grid, num_prefix_tokens=net.num_prefix_tokens)
    if kind == "swin" and (rel.startswith("layers.") or rel == "norm"):
        return layer, swin_reshape_transform
    return layer, None
