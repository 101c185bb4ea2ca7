"""Finding the layer to explain: by module, by dotted name, or automatically."""

from __future__ import annotations

import math
import weakref

import torch
from torch import Tensor, nn

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
    handles = []

    def hook(module: nn.Module, _i: object, out: object) -> None:
        if (
            isinstance(out, Tensor)
            and out.dim() == 4
            and out.shape[-1] * out.shape[-2] > 1
            and not isinstance(module, _SKIP)
            and module in names
        ):
            last.append(names[module])

    try:
        for m in names:
            handles.append(m.register_forward_hook(hook))
        with preserved_state(model, eval_mode=True), torch.no_grad():
            model(example[:1])
    finally:
        for h in handles:
            h.remove()
    if not last:
        raise ValueError(
            f"could not find a spatial feature layer in {type(model).__name__} for input shape "
            f"{tuple(example.shape[1:])}; pass layer= (a module or a dotted name)"
        )
    _cache.setdefault(model, {})[key] = last[-1]
    return last[-1]


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
