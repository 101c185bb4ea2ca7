"""SISE and Ada-SISE: multi-layer, perturbation-based explanations (seed 003).

SISE (Sattarzadeh et al., "Explaining Convolutional Neural Networks through Attribution-Based Input Sampling
and Block-Wise Feature Aggregation", AAAI 2021):

1. feature maps of the last layer of each convolutional block (:func:`~consistcam.explain.layers.find_block_layers`);
2. per layer, keep the maps whose spatially averaged gradient of the target score is positive
   (``> grad_threshold · max``, mu in the paper, 0 by default);
3. each kept map, upsampled (bilinear) and min-max scaled to [0, 1], masks the input; the layer's map is
   ``sum_k score(x * m_k) · m_k / sum(m_k)``, min-max scaled;
4. the layer maps are fused from shallow to deep: ``F = (F + V_l) * otsu(V_l)``, the deeper map's Otsu
   threshold gating what the shallower ones add (the authors' code uses a steep sigmoid around the threshold,
   temperature 100, and raises the threshold by 1.5 when that still leaves under 10 % of the pixels on).

Ada-SISE (Sudhakar et al., ICASSP 2021) changes step 2 and 4: a map is kept when its average gradient,
divided by the layer's largest, exceeds the Otsu threshold of the positive ones (an adaptive threshold
that drops most of the perturbation work), layer maps are ``sum_k score(x * m_k) · m_k``, and the
fusion gates with the hard Otsu binarisation (8-bit, as OpenCV's) of each deeper map.

As in both references the target is scored on the softmax output (``softmax=False``: on the raw logits;
a callable target then receives the probabilities). The N images' kept masks form one stream of masked
images evaluated ``batch_size`` at a time, so memory is bounded by ``batch_size`` images whatever the number
of maps; ``progress=True`` shows a tqdm bar. Deviations from the references, both for batching: a layer
without any kept map is left out of the fusion (the references would divide by zero), and constant feature
maps are skipped (their min-max mask is 0 everywhere, they add nothing).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from consistcam.explain._state import capture
from consistcam.explain.explainers import CAMContext, Reshape, no_reshape, register_explainer
from consistcam.explain.layers import find_block_layers, resolve_layer
from consistcam.explain.targets import TargetScore

__all__ = ["otsu_levels", "sise_maps"]


def _hist_dtype(device: torch.device) -> torch.dtype:
    return torch.float32 if device.type == "mps" else torch.float64


def otsu_levels(levels: Tensor, nbins: int = 256, valid: Tensor | None = None) -> Tensor:
    """Otsu's threshold per row of integer ``levels`` (R, M) in [0, nbins): the level t that maximises the
    between-class variance of {<= t} and {> t} (the first such t; 0 when no split separates anything),
    counting only the entries where ``valid`` is True. Batched: one histogram per row."""
    dtype = _hist_dtype(levels.device)
    weights = torch.ones_like(levels, dtype=dtype) if valid is None else valid.to(dtype)
    hist = torch.zeros(levels.shape[0], nbins, dtype=dtype, device=levels.device)
    hist.scatter_add_(1, levels.clamp(0, nbins - 1).long(), weights)
    level = torch.arange(nbins, dtype=dtype, device=levels.device)
    c0 = hist.cumsum(1)
    m0 = (hist * level).cumsum(1)
    c1 = c0[:, -1:] - c0
    m1 = m0[:, -1:] - m0
    ok = (c0 > 0) & (c1 > 0)
    var = torch.where(ok, c0 * c1 * (m0 / c0.clamp_min(1) - m1 / c1.clamp_min(1)) ** 2, torch.zeros_like(c0))
    return var.argmax(1)


def _sise_threshold(maps: Tensor, nbins: int = 256, tau: float = 1.5) -> Tensor:
    """The SISE authors' Otsu threshold of (R, H, W) maps in [0, 1]: pixels rounded to ``nbins`` levels, the
    split maximising the between-class variance, raised by ``tau`` when that leaves under 10 % of the pixels
    above the raised level. Returns (R,) thresholds in map units."""
    levels = torch.round(maps.flatten(1) * nbins).clamp_max(nbins - 1).long()
    t = otsu_levels(levels, nbins)
    any_split = levels.amax(1) > levels.amin(1)
    j = torch.where(any_split, t + 1, torch.zeros_like(t))  # the reference's split index: class 0 = levels < j
    k = torch.round(j.to(maps.dtype) * tau)
    above = (levels >= k[:, None]).sum(1)
    raise_it = above < 0.1 * levels.shape[1]
    return torch.where(raise_it, j * tau, j.to(maps.dtype)) / nbins


def _minmax(x: Tensor, eps: float = 0.0) -> Tensor:
    """Min-max scale over the last two dims; a constant map becomes zeros."""
    lo = x.amin((-2, -1), keepdim=True)
    span = x.amax((-2, -1), keepdim=True) - lo
    return torch.where(span > 0, (x - lo) / (span + eps), torch.zeros_like(x))


def _row_scores(score: TargetScore, outputs: Tensor, rows: Tensor) -> Tensor:
    """The target score of each masked image, row r belonging to image ``rows[r]``."""
    if score.ids is not None:
        return outputs.gather(1, score.ids[rows, None]).squeeze(1)
    if score.fn is not None:
        return score(outputs)
    return TargetScore(fns=[score.fns[i] for i in rows.tolist()])(outputs)


def _select(alpha: Tensor, adaptive: bool, grad_threshold: float) -> Tensor:
    """Which feature maps to keep, from their averaged gradients ``alpha`` (N, K)."""
    top = alpha.amax(1, keepdim=True)
    if not adaptive:
        return alpha > grad_threshold * top
    positive = top > 0
    rel = alpha / torch.where(positive, top, torch.ones_like(top))
    levels = (rel.clamp(0, 1) * 255).floor().long()  # the reference's uint8 cast of the positive scores
    t = otsu_levels(levels, 256, valid=rel > 0).to(rel.dtype) / 255
    return (rel > t[:, None]) & positive


def sise_maps(
    model: nn.Module,
    images: Tensor,
    score: TargetScore,
    layers: Sequence[nn.Module],
    reshapes: Sequence[Reshape] | None = None,
    *,
    adaptive: bool = False,
    batch_size: int = 64,
    grad_threshold: float = 0.0,
    softmax: bool = True,
    temperature: float = 100.0,
    create_graph: bool = False,
    progress: bool = False,
) -> Tensor:
    """SISE (``adaptive=False``) or Ada-SISE (``adaptive=True``) maps (N, H, W) of ``images`` for ``score``,
    from ``layers`` ordered shallow to deep (each with its reshape to (N, K, h, w)). ``temperature`` is the
    SISE fusion's sigmoid steepness (``math.inf``: hard Otsu binarisation). With ``create_graph`` the maps
    stay differentiable in the activations and the masked forward passes (the selection and thresholds are
    not). Unnormalised; :func:`~consistcam.explain.explain` min-max scales them."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if not layers:
        raise ValueError("SISE needs at least one layer")
    reshapes = list(reshapes) if reshapes is not None else [no_reshape] * len(layers)
    acts, kept = _kept_feature_maps(model, images, score, layers, reshapes, adaptive, grad_threshold, softmax,
                                    create_graph)
    with torch.set_grad_enabled(create_graph):
        vis = _masked_scores(model, images, score, acts, kept, adaptive, batch_size, softmax, progress)
        layer_maps = [_minmax(v) for v in vis.split(images.shape[0])]
        return _fuse(layer_maps, [keep.any(1) for keep in kept], adaptive, temperature)


def _kept_feature_maps(model: nn.Module, images: Tensor, score: TargetScore, layers: Sequence[nn.Module],
                       reshapes: Sequence[Reshape], adaptive: bool, grad_threshold: float, softmax: bool,
                       create_graph: bool) -> tuple[list[Tensor], list[Tensor]]:
    """Steps 1 and 2: each layer's (N, K, h, w) activations and the (N, K) mask of the feature maps kept
    (positive enough averaged gradient of the target score, not constant)."""
    with torch.enable_grad(), contextlib.ExitStack() as stack:
        caps = [stack.enter_context(capture(layer)) for layer in layers]
        logits = model(images)
    missing = [type(layer).__name__ for layer, c in zip(layers, caps) if c.activation is None]
    if missing:
        raise ValueError(f"layer(s) {', '.join(missing)} did not run in the forward pass")
    out = logits.softmax(1) if softmax else logits
    raw = [c.activation for c in caps]
    grads = torch.autograd.grad(score(out).sum(), raw, retain_graph=create_graph)
    acts, kept = [], []
    for i, (a, g, reshape) in enumerate(zip(raw, grads, reshapes)):
        a, g = reshape(a), reshape(g.detach())
        if not isinstance(a, Tensor) or a.dim() != 4:
            raise ValueError(f"SISE layer {i} ({type(layers[i]).__name__}) is not a (N, C, h, w) map")
        acts.append(a if create_graph else a.detach())
        flat = a.detach().flatten(2)
        nonconstant = flat.amax(2) > flat.amin(2)
        kept.append(_select(g.mean((2, 3)), adaptive, grad_threshold) & nonconstant)
    return acts, kept


def _masked_scores(model: nn.Module, images: Tensor, score: TargetScore, acts: list[Tensor], kept: list[Tensor],
                   adaptive: bool, batch_size: int, softmax: bool, progress: bool) -> Tensor:
    """Step 3 before scaling: (L * N, H, W), the score-weighted sum of the kept masks of each layer and image."""
    n, size = images.shape[0], images.shape[-2:]
    # One stream of (layer, image, map) rows over all layers, in near-equal chunks of at most batch_size (no
    # chunk of one image unless there is one row in all: a train-mode BatchNorm cannot take a batch of one).
    picks = [keep.nonzero(as_tuple=True) for keep in kept]
    layer_of = torch.cat([torch.full_like(i, li) for li, (i, _) in enumerate(picks)])
    img_of = torch.cat([i for i, _ in picks])
    chan_of = torch.cat([c for _, c in picks])
    total = img_of.numel()
    chunks = max(1, math.ceil(total / batch_size))
    bounds = [round(total * c / chunks) for c in range(chunks + 1)]
    sizes = [i.numel() for i, _ in picks]
    offsets = [sum(sizes[:li]) for li in range(len(acts))]
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, desc="ada-sise" if adaptive else "sise", unit="mask", leave=False)
    vis = images.new_zeros(len(acts) * n, *size)
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        if hi <= lo:
            continue
        parts = []
        for li, a in enumerate(acts):  # rows are ordered by layer: each layer is one contiguous slice
            s0, s1 = max(lo, offsets[li]), min(hi, offsets[li] + sizes[li])
            if s1 > s0:
                src = a[img_of[s0:s1], chan_of[s0:s1]][:, None]
                parts.append(F.interpolate(src, size=size, mode="bilinear", align_corners=False)[:, 0])
        m = _minmax(torch.cat(parts), eps=0.0 if adaptive else 1e-6)
        rows = img_of[lo:hi]
        outputs = model(images[rows] * m[:, None])
        sc = _row_scores(score, outputs.softmax(1) if softmax else outputs, rows).to(m.dtype)
        w = sc if adaptive else sc / (m.sum((1, 2)) + 1e-6)
        vis = vis.index_add(0, layer_of[lo:hi] * n + rows, w[:, None, None] * m)
        if bar is not None:
            bar.update(hi - lo)
    if bar is not None:
        bar.close()
    return vis


def _fuse(maps: list[Tensor], present: list[Tensor], adaptive: bool, temperature: float) -> Tensor:
    """Shallow-to-deep fusion: add each deeper layer's map, then gate by its Otsu mask (not the first)."""
    fused = torch.zeros_like(maps[0])
    for i, (v, here) in enumerate(zip(maps, present)):
        step = fused + v
        if i > 0:
            if adaptive:
                levels = (v.detach() * 255).floor().long().flatten(1)
                t = otsu_levels(levels, 256)
                gate = (levels > t[:, None]).view_as(v).to(v.dtype)
            else:
                thr = _sise_threshold(v.detach())[:, None, None].to(v.dtype)
                if math.isinf(temperature):
                    gate = (v > thr).to(v.dtype)
                else:
                    gate = torch.sigmoid((v - thr) * temperature)
            step = step * gate
        fused = torch.where(here[:, None, None], step, fused)
    return fused


def _layers(ctx: CAMContext) -> tuple[list[nn.Module], list[Reshape]]:
    """The ``layers`` option (modules or dotted names, shallow to deep; each gets ``reshape_transform``), or
    the last layer of each convolutional block up to the explained layer (the default layer or ``layer=``)."""
    chosen = ctx.options.get("layers")
    if chosen is not None:
        if isinstance(chosen, (str, nn.Module)):
            chosen = [chosen]
        modules = [resolve_layer(ctx.model, layer, ctx.images) for layer in chosen]
        return modules, [ctx.reshape] * len(modules)
    shallower = find_block_layers(ctx.model, ctx.images, ctx.layer, tuple(ctx.activations.shape[-2:]))
    modules = [ctx.model.get_submodule(name) for name in shallower]
    return [*modules, ctx.layer], [no_reshape] * len(modules) + [ctx.reshape]


def _options(ctx: CAMContext) -> dict:
    opts = ctx.options
    return dict(batch_size=int(opts.get("batch_size", 64)), softmax=bool(opts.get("softmax", True)),
                create_graph=ctx.create_graph, progress=bool(opts.get("progress", False)))


@register_explainer("sise", needs_gradients=False,
                    options=("layers", "batch_size", "grad_threshold", "temperature", "softmax", "progress"))
def sise(ctx: CAMContext) -> Tensor:
    """SISE through :func:`~consistcam.explain.explain`; options: ``layers``, ``batch_size`` (64),
    ``grad_threshold`` (0.0), ``temperature`` (100.0), ``softmax`` (True), ``progress`` (False)."""
    layers, reshapes = _layers(ctx)
    return sise_maps(ctx.model, ctx.images, ctx.score, layers, reshapes, adaptive=False,
                     grad_threshold=float(ctx.options.get("grad_threshold", 0.0)),
                     temperature=float(ctx.options.get("temperature", 100.0)), **_options(ctx))


@register_explainer("ada-sise", "adasise", "ada_sise", needs_gradients=False,
                    options=("layers", "batch_size", "softmax", "progress"))
def ada_sise(ctx: CAMContext) -> Tensor:
    """Ada-SISE through :func:`~consistcam.explain.explain`; options: ``layers``, ``batch_size`` (64),
    ``softmax`` (True), ``progress`` (False)."""
    layers, reshapes = _layers(ctx)
    return sise_maps(ctx.model, ctx.images, ctx.score, layers, reshapes, adaptive=True, **_options(ctx))
