"""``explain()``: the one entry point for heatmaps."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from consistcam.explain._state import capture
from consistcam.explain.explainers import (
    EXPLAINERS,
    CAMContext,
    Explainer,
    Reshape,
    check_explainer_options,
    no_reshape,
    target_gradients,
)
from consistcam.explain.inputs import CheckedInputs, check_inputs
from consistcam.explain.layers import resolve_layer, transformer_defaults
from consistcam.explain.targets import Targets, TargetScore, resolve_targets
from consistcam.models.state import preserved_state


def normalize_maps(maps: Tensor, eps: float = 1e-7) -> Tensor:
    """Min-max normalise each (1, H, W) map to [0, 1]; a constant map becomes all zeros."""
    lo = maps.amin((-2, -1), keepdim=True)
    hi = maps.amax((-2, -1), keepdim=True)
    return (maps - lo) / (hi - lo + eps)


def _forward(model: nn.Module, images: Tensor, channels_last: bool) -> Tensor:
    """``model(images)``, with ``channels_last`` on channels-last images (oneDNN's preferred layout;
    by default only for non-differentiable maps, so training losses keep their exact arithmetic).
    A model that ``view``s its feature maps as contiguous fails on that layout and is simply run
    again on the images as given."""
    if not channels_last or images.is_contiguous(memory_format=torch.channels_last):
        return model(images)
    try:
        return model(images.contiguous(memory_format=torch.channels_last))
    except RuntimeError:
        return model(images)


def list_explainers() -> list[str]:
    return EXPLAINERS.names()


def explain(
    model: nn.Module,
    images: Tensor | CheckedInputs,
    targets: Targets = None,
    explainer: str = "gradcam",
    layer: nn.Module | str | None = None,
    differentiable: bool = False,
    normalize: bool = True,
    return_logits: bool = False,
    reshape_transform: Reshape | None = None,
    channels_last: bool | None = None,
    relu: bool = True,
    **options,
) -> Tensor | tuple[Tensor, Tensor] | list[Tensor]:
    """Class-activation heatmaps for a batch, on the model's device.

    Args:
        model: a classifier returning logits (N, C); normalisation belongs inside it.
        images: (N, C, H, W) floats in [0, 1], in the model's parameter dtype (float64 images for a
            float32 model are refused, not cast), with the channel count of the model's first convolution;
            or :class:`~consistcam.explain.inputs.CheckedInputs` (with ``targets=None``), which skips the
            check: the calls inside an attack step or a consistency score.
        targets: ``None`` explains the predicted class; an int, or a tensor/sequence of N class ids,
            explains those; a callable maps the (N, C) logits to the (N,) scores to explain; a list of
            N callables maps each image's (C,) logits to its scalar score (pytorch-grad-cam's
            ``ClassifierOutputTarget`` works as is); a sequence of N sequences of class ids
            (multi-label) gives one map per image and class and returns a list of (K_i, 1, H, W) tensors.
        explainer: one of :func:`list_explainers` (``gradcam``, ``gradcam++``, ``xgradcam``,
            ``layercam``, ``hirescam``, ``scorecam``, ``integrated-gradcam``).
        layer: module or dotted name; default: the last spatial feature stage, found automatically.
        differentiable: keep the graph (``create_graph``) so a training loss or an attack can
            back-propagate through the map; parameter flags are left as the caller set them.
            Otherwise parameter gradients are switched off and the result is detached.
        normalize: min-max normalise each map to [0, 1] (after ReLU and upsampling); ``False``
            returns the raw (ReLU'd) maps at input size.
        return_logits: also return the logits of the explained forward pass (free: the
            consistency scorer uses them instead of a second forward).
        reshape_transform: maps the layer's output to (N, K, h, w) and is applied identically to its
            gradient, for layers that emit tokens (see :func:`vit_reshape_transform`); needs ``layer``.
        channels_last: run the forward on channels-last images (``None``: on the CPU when not
            ``differentiable``, where oneDNN convolutions are ~15 % faster in that layout); the maps
            differ from the contiguous layout's by float rounding only.
        relu: ReLU the layer-resolution map before upsampling (Grad-CAM as published). ``False`` keeps
            its negative evidence, as captum's ``LayerGradCam(relu_attributions=False)``, its default,
            which ExCon's authors explain with: after min-max normalisation the negative regions are the
            lowest instead of tied at zero.
        **options: explainer options (``batch_size`` for scorecam, ``steps``/``baseline`` for
            integrated-gradcam).

    Returns (N, 1, H, W) maps, or (maps, logits) with ``return_logits``.

    The model is left as it was: hooks removed (also on error), mode and ``requires_grad`` flags
    restored, BatchNorm running statistics unchanged even in train mode. Bad images or targets raise
    :class:`~consistcam.explain.inputs.InputError` (a ValueError and a TypeError) before any map is made.
    """
    entry = EXPLAINERS.get(explainer)  # an unknown explainer is named before the inputs are looked at
    check_explainer_options(options)
    checked = check_inputs(model, images, targets)
    if checked.counts is not None:
        if return_logits:
            raise ValueError("return_logits is not supported with per-image lists of targets")
        return _explain_each(model, checked, explainer, layer, differentiable, normalize, reshape_transform,
                             channels_last, relu, options)
    raw, logits = _raw_maps(model, checked, entry, layer, differentiable, reshape_transform, channels_last, options)
    raw = F.relu(raw) if relu else raw
    maps = F.interpolate(raw[:, None], size=checked.images.shape[-2:], mode="bilinear", align_corners=False)
    if normalize:
        maps = normalize_maps(maps)
    if not differentiable:
        maps, logits = maps.detach(), logits.detach()
    return (maps, logits) if return_logits else maps


def _explain_each(model: nn.Module, checked: CheckedInputs, explainer: str, layer, differentiable: bool,
                  normalize: bool, reshape_transform: Reshape | None, channels_last: bool | None, relu: bool,
                  options: dict) -> list[Tensor]:
    """:func:`explain` with per-image lists of targets: each image repeated once per target, one (K_i, 1, H, W)
    tensor of maps per image."""
    images, counts = checked.images, checked.counts
    if not sum(counts):
        return [images.new_zeros(0, 1, *images.shape[-2:]) for _ in counts]
    index = torch.repeat_interleave(torch.arange(len(counts), device=images.device),
                                    torch.tensor(counts, device=images.device))
    maps = explain(model, checked.replace(images=images[index], counts=None), None, explainer, layer,
                   differentiable, normalize, reshape_transform=reshape_transform,
                   channels_last=channels_last, relu=relu, **options)
    return list(maps.split(counts))


def _raw_maps(model: nn.Module, checked: CheckedInputs, entry: Explainer, layer: nn.Module | str | None,
              differentiable: bool, reshape_transform: Reshape | None, channels_last: bool | None,
              options: dict) -> tuple[Tensor, Tensor]:
    """The explainer's (N, h, w) maps at the layer's resolution, before ReLU and upsampling, and the logits."""
    images = checked.images
    # timm ViT/DeiT/Swin: default layer and token reshape chosen from the model type (layers.transformer_defaults)
    layer, reshape_transform = transformer_defaults(model, layer, reshape_transform, images)
    if reshape_transform is not None and layer is None:
        raise ValueError("reshape_transform needs layer= (a module or dotted name, e.g. 'blocks.11.norm1' of a timm "
                         "ViT): the automatic layer finder only looks for (N, C, h, w) outputs")
    reshape = reshape_transform or no_reshape
    layer_module = resolve_layer(model, layer, images)
    with preserved_state(model, freeze_params=not differentiable), torch.enable_grad():
        with capture(layer_module) as cap:
            fast = channels_last if channels_last is not None else (not differentiable and images.device.type == "cpu")
            logits = _forward(model, images, fast)
        acts = _layer_activations(logits, cap.activation, layer_module, reshape, bool(reshape_transform))
        checked.check_classes(logits.shape[1])
        targets = checked.targets
        score = TargetScore(ids=targets.long()) if isinstance(targets, Tensor) else resolve_targets(targets, logits)
        grads = None
        if entry.needs_gradients:
            grads = reshape(target_gradients(logits, score, cap.activation, differentiable))
            if not differentiable:
                grads = grads.detach()
        ctx = CAMContext(model, layer_module, images, score, acts if differentiable else acts.detach(), grads,
                         differentiable, options, reshape)
        return entry.fn(ctx), logits


def _layer_activations(logits: Tensor, activation: Tensor | None, layer_module: nn.Module, reshape: Reshape,
                       reshaped: bool) -> Tensor:
    """The layer's output as a (N, K, h, w) map (after ``reshape``); a clear error for logits that are not
    (N, C), a layer that did not run or an output that is not a map."""
    if logits.dim() != 2:
        raise ValueError(f"model must return logits of shape (N, C), got {tuple(logits.shape)}")
    if activation is None:
        raise ValueError(f"layer {type(layer_module).__name__} did not run in the forward pass")
    acts = reshape(activation)
    if not isinstance(acts, Tensor) or acts.dim() != 4:
        got = tuple(acts.shape) if isinstance(acts, Tensor) else type(acts).__name__
        hint = " after reshape_transform" if reshaped else "; pass reshape_transform= to make it one"
        raise ValueError(f"layer {type(layer_module).__name__} output {got} is not a (N, C, h, w) map{hint}")
    return acts
