"""The explainers: the registry, :func:`register_explainer`, and the CAM family. Each explainer only
says how it weighs the activations; the machinery is in ``api.py``.

Every explainer is a function that takes a :class:`CAMContext` and returns the raw (pre-ReLU) map
(N, h, w) at the layer's resolution. Formulas follow the papers; constants follow pytorch-grad-cam
where it has the method, so that results agree with it (tests check this). SISE and Ada-SISE
register in ``sise.py``; a package of your own registers through the entry-point group
``consistcam.explainers`` (:data:`ENTRY_POINT_GROUP`).
"""

from __future__ import annotations

import difflib
import numbers
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from consistcam._registry import Registry
from consistcam.explain._state import capture
from consistcam.explain.targets import TargetScore

Reshape = Callable[[Tensor], Tensor]


def no_reshape(t: Tensor) -> Tensor:
    """The default reshape_transform: CNN layers already emit (N, K, h, w) maps."""
    return t


@dataclass
class CAMContext:
    model: nn.Module
    layer: nn.Module
    images: Tensor
    score: TargetScore  # the scalar each image's map explains, from the logits
    activations: Tensor  # (N, K, h, w), after ``reshape``
    gradients: Tensor | None  # d(score)/d(activations), (N, K, h, w), after ``reshape``
    create_graph: bool
    options: dict
    reshape: Reshape = no_reshape  # layer output -> (N, K, h, w); applied alike to activations and gradients


@dataclass(frozen=True)
class Explainer:
    """What :func:`register_explainer` registers: the function and how ``explain()`` must call it.
    Calling it calls the function."""

    fn: Callable[[CAMContext], Tensor]
    needs_gradients: bool = True  # ``explain()`` fills ``ctx.gradients`` (one backward pass) before calling it
    options: tuple[str, ...] = ()  # the options of ``explain(**options)`` it reads (check_explainer_options knows them)

    def __call__(self, ctx: CAMContext) -> Tensor:
        return self.fn(ctx)


ENTRY_POINT_GROUP = "consistcam.explainers"


def _explainer_entry(name: str, obj: object) -> Explainer:
    """An entry point must name a function decorated with :func:`register_explainer`."""
    if not isinstance(obj, Explainer):
        raise TypeError(f"{obj!r} is not an explainer: decorate its function with "
                        "@consistcam.explain.register_explainer")
    return obj


# built-ins register on import; third-party packages through the entry-point group, loaded on first lookup
EXPLAINERS: Registry[Explainer] = Registry("explainer", ENTRY_POINT_GROUP, _explainer_entry)


def register_explainer(name: str, *aliases: str, needs_gradients: bool = True,
                       options: tuple[str, ...] = ()) -> Callable[[Callable[[CAMContext], Tensor]], Explainer]:
    """Function decorator: ``@register_explainer("gradcam", "grad-cam")`` on a function
    ``(CAMContext) -> Tensor`` adds it to :data:`EXPLAINERS` under ``name`` and ``aliases``, so that
    ``explain(..., explainer=name)`` and every config's ``explainer`` option take it.
    ``needs_gradients=False``: ``explain()`` skips the backward pass (``ctx.gradients`` is None);
    ``options``: the keyword options of ``explain()`` it reads from ``ctx.options``. Returns the
    registered :class:`Explainer` (callable like the function)."""

    def deco(fn: Callable[[CAMContext], Tensor]) -> Explainer:
        entry = Explainer(fn, needs_gradients, tuple(options))
        EXPLAINERS.add(name, entry, *aliases)
        return entry

    return deco


COUNT_OPTIONS = ("batch_size", "steps")  # chunk sizes and step counts: integers >= 1


def check_explainer_options(options: Mapping[str, object]) -> None:
    """Options no explainer knows (a typo) and non-positive counts are errors naming the option.
    An option of another explainer is allowed: one option set serves several explainers."""
    known = sorted({o for name in EXPLAINERS.names() for o in EXPLAINERS.get(name).options})
    for key, value in options.items():
        if key not in known:
            near = difflib.get_close_matches(str(key), known, n=2)
            hint = f"did you mean {', '.join(near)}?" if near else f"known: {', '.join(known)}"
            raise ValueError(f"unknown explainer option {key!r}; {hint}")
        if key in COUNT_OPTIONS and (isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1):
            raise ValueError(f"explainer option {key}: {key} must be >= 1, got {value!r}")


def _weighted(weights: Tensor, acts: Tensor) -> Tensor:
    return (weights[:, :, None, None] * acts).sum(1)


def target_gradients(logits: Tensor, score: Callable[[Tensor], Tensor], acts: Tensor, create_graph: bool) -> Tensor:
    """Gradient of each image's target score w.r.t. the activations (one autograd call, batched: the
    images are independent, so the gradient of the summed scores is every image's own gradient)."""
    (grads,) = torch.autograd.grad(score(logits).sum(), acts, create_graph=create_graph, retain_graph=create_graph)
    return grads


@register_explainer("gradcam", "grad-cam")
def gradcam(ctx: CAMContext) -> Tensor:
    return _weighted(ctx.gradients.mean((2, 3)), ctx.activations)


@register_explainer("hirescam")
def hirescam(ctx: CAMContext) -> Tensor:
    """Element-wise gradient x activation (Draelos & Carin), the map CGC trains with."""
    return (ctx.gradients * ctx.activations).sum(1)


@register_explainer("xgradcam", "xgrad-cam")
def xgradcam(ctx: CAMContext) -> Tensor:
    acts, grads = ctx.activations, ctx.gradients
    total = acts.sum((2, 3), keepdim=True)
    return _weighted((grads * acts / (total + 1e-7)).sum((2, 3)), acts)


@register_explainer("gradcam++", "gradcampp", "gradcamplusplus")
def gradcam_plus_plus(ctx: CAMContext) -> Tensor:
    acts, grads = ctx.activations, ctx.gradients
    g2 = grads.pow(2)
    g3 = g2 * grads
    total = acts.sum((2, 3), keepdim=True)
    alpha = g2 / (2 * g2 + total * g3 + 1e-6)
    alpha = torch.where(grads != 0, alpha, torch.zeros_like(alpha))
    return _weighted((grads.clamp_min(0) * alpha).sum((2, 3)), acts)


@register_explainer("layercam")
def layercam(ctx: CAMContext) -> Tensor:
    return (ctx.gradients.clamp_min(0) * ctx.activations).sum(1)


@register_explainer("scorecam", "score-cam", needs_gradients=False, options=("batch_size",))
def scorecam(ctx: CAMContext) -> Tensor:
    """Score-CAM: each channel, upsampled and min-max scaled, masks the input; the target scores of
    the N·K masked images (one batched stream, ``batch_size`` at a time) are soft-maxed over
    channels into weights. Upsampling uses ``align_corners=True`` as pytorch-grad-cam does."""
    acts, images = ctx.activations, ctx.images
    n, k = acts.shape[:2]
    batch_size = int(ctx.options.get("batch_size", 64))
    with torch.set_grad_enabled(ctx.create_graph):
        up = F.interpolate(acts, size=images.shape[-2:], mode="bilinear", align_corners=True)
        lo = up.amin((2, 3), keepdim=True)
        hi = up.amax((2, 3), keepdim=True)
        up = (up - lo) / (hi - lo + 1e-8)
        flat_score = ctx.score.repeat_interleave(k)
        flat_up = up.flatten(0, 1)
        scores = []
        for start in range(0, n * k, batch_size):
            stop = min(start + batch_size, n * k)
            idx = torch.arange(start, stop, device=images.device)
            masked = images[idx // k] * flat_up[start:stop, None]
            scores.append(flat_score(ctx.model(masked), start))
        weights = torch.cat(scores).view(n, k).to(acts.dtype).softmax(dim=1)
    return _weighted(weights, acts)


@register_explainer("integrated-gradcam", "integrated_gradcam", "igcam", options=("steps", "baseline"))
def integrated_gradcam(ctx: CAMContext) -> Tensor:
    """Integrated Grad-CAM (Sattarzadeh et al., ICASSP 2021), as the path integral of the Grad-CAM
    weights along the straight line from a baseline x' (black image) to x:

        alpha_k = int_0^1 GAP(dS_c/dA_k)(x' + t(x - x')) dt,
        map = ReLU(sum_k alpha_k (A_k(x) - A_k(x'))).

    The integral is a midpoint Riemann sum over ``steps`` points (default 16); each point is one
    batched forward/backward. (The authors' notebook sums per-step Grad-CAM maps instead; the
    integral form is the one stated in the paper's abstract and is what we test against.)
    """
    steps = int(ctx.options.get("steps", 16))  # >= 1: check_explainer_options
    x = ctx.images
    baseline = ctx.options.get("baseline")
    baseline = torch.zeros_like(x) if baseline is None else baseline.expand_as(x)
    alpha = torch.zeros(ctx.activations.shape[:2], device=x.device, dtype=ctx.activations.dtype)
    base_act = None
    with torch.enable_grad():
        for i in range(steps + 1):
            point = baseline if i == steps else baseline + ((i + 0.5) / steps) * (x - baseline)
            with capture(ctx.layer) as cap:
                logits = ctx.model(point)
            if i == steps:
                base_act = ctx.reshape(cap.activation)
                break
            grads = ctx.reshape(target_gradients(logits, ctx.score, cap.activation, ctx.create_graph))
            alpha = alpha + grads.mean((2, 3)) / steps
    if not ctx.create_graph:
        base_act = base_act.detach()
    return _weighted(alpha, ctx.activations - base_act)

