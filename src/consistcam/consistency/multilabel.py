"""Explanation consistency for multi-label data: one score per (image, positive class), one per image.

An image with several objects has one explanation per positive class. Each (image, class) pair is
scored by :func:`~consistcam.consistency.explanation_consistency` (explain c, attack the background,
explain c again), with two multi-label choices (docs/methods.md, "ECL for multi-label data"):

* the background is the same for every class of an image: outside the union of *all* its objects
  (all boxes or the pixel mask; with ``mask="heatmap"`` the union of the foregrounds of the
  heatmaps of all its positive classes), so attacking one class's background never touches another
  object;
* the prediction term P compares the class's own sigmoid probability before and after the attack,
  as a two-outcome distribution (present / absent), with the configured P (``js`` or ``ratio``):
  softmax over the classes would tie the classes together, which a multi-label model does not do.

The pairs' E are reduced to one E per image (``mean``, or ``min``: the least consistent class
decides), from which the training weights v = 1 - E follow as for single-label data.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

import torch
from torch import Tensor, nn

from consistcam.attack import mask_from_heatmap
from consistcam.consistency.config import ConsistencyConfig, ExecutionConfig
from consistcam.consistency.score import explanation_consistency, scoring_batches
from consistcam.consistency.similarity import PREDICTION_CONSISTENCIES
from consistcam.explain import explain
from consistcam.models.state import preserved_state

REDUCTIONS = ("mean", "min")
IMAGE_KEYS = ("E", "S", "P", "flipped", "fg_area", "positives")
PAIR_KEYS = ("pair_ids", "pair_class", "pair_E", "pair_S", "pair_P", "pair_flipped")

__all__ = ["IMAGE_KEYS", "PAIR_KEYS", "REDUCTIONS", "class_prediction_consistency", "multilabel_consistency",
           "positive_pairs", "reduce_pairs", "score_multilabel_dataset"]


def positive_pairs(labels: Tensor, num_classes: int) -> tuple[Tensor, Tensor]:
    """(image row, class) of every positive: of multi-hot (N, C) labels, or of class ids (N,)."""
    if labels.dim() == 1:
        return torch.arange(len(labels), device=labels.device), labels.long()
    if labels.dim() != 2 or labels.shape[1] != num_classes:
        raise ValueError(f"labels must be (N,) class ids or (N, {num_classes}) multi-hot, got {tuple(labels.shape)}")
    rows, classes = (labels > 0.5).nonzero(as_tuple=True)
    return rows, classes


def class_prediction_consistency(p: Tensor, q: Tensor, kind: str = "js") -> Tensor:
    """P of one class per row from its sigmoid probabilities before (``p``) and after (``q``) the
    attack: the registered prediction consistency ``kind`` of the distributions (1 - p, p) and
    (1 - q, q), explained class = present. ``js``: 1 - JS/ln 2; ``ratio``: min(1, q / p)."""
    two = lambda x: torch.stack([1 - x, x], 1).float()  # noqa: E731
    present = torch.ones(len(p), dtype=torch.long, device=p.device)
    return PREDICTION_CONSISTENCIES.get(kind)(two(p), two(q), present)


def reduce_pairs(rows: Tensor, values: dict[str, Tensor], n: int, reduce: str = "mean") -> dict[str, Tensor]:
    """Per-image values from per-pair ones. ``mean``: every field averaged over the image's pairs;
    ``min``: E is the image's smallest pair E and S, P are that pair's. ``flipped`` is whether any
    pair flipped. Images without pairs get NaN (E, S, P, fg_area) and 0 (flipped, positives)."""
    if reduce not in REDUCTIONS:
        raise ValueError(f"multi-label reduction must be one of {', '.join(REDUCTIONS)}, got {reduce!r}")
    device = rows.device
    counts = torch.zeros(n, device=device).index_add_(0, rows, torch.ones(len(rows), device=device))
    scored = counts > 0

    def per_image(v: Tensor, how: str) -> Tensor:
        out = torch.zeros(n, device=device).scatter_reduce_(0, rows, v.float(), how, include_self=False)
        return torch.where(scored, out, torch.full_like(out, float("nan")))

    out = {"fg_area": per_image(values["fg_area"], "mean"), "positives": counts.long(),
           "flipped": per_image(values["flipped"], "amax").nan_to_num(0).bool()}
    if reduce == "mean":
        out.update({k: per_image(values[k], "mean") for k in ("E", "S", "P")})
        return out
    e_min = per_image(values["E"], "amin")
    is_min = values["E"].float() == e_min[rows]
    first = torch.full((n,), len(rows), device=device, dtype=torch.long)  # the first pair reaching the minimum
    first.scatter_reduce_(0, rows[is_min], torch.arange(len(rows), device=device)[is_min], "amin")
    pick = first.clamp_max(max(len(rows) - 1, 0))
    nan = torch.full((n,), float("nan"), device=device)
    out.update({k: torch.where(scored, values[k].float()[pick], nan) if len(rows) else nan for k in ("S", "P")})
    out["E"] = e_min
    return out


def _union_heatmap_foreground(model: nn.Module, images: Tensor, rows: Tensor, classes: Tensor,
                              cfg: ConsistencyConfig) -> Tensor:
    """(N, 1, H, W): the union over each image's pairs of their heatmap foregrounds (``tau``/``top_q``, dilated)."""
    heat = explain(model, images[rows], classes, explainer=cfg.explainer, layer=cfg.layer, **cfg.explainer_options)
    fg = mask_from_heatmap(heat, cfg.tau, cfg.top_q, cfg.dilation)
    flat = fg.flatten(1)
    union = torch.zeros(len(images), flat.shape[1], device=fg.device, dtype=fg.dtype)
    union.scatter_reduce_(0, rows[:, None].expand_as(flat), flat, "amax", include_self=True)
    return union.view(len(images), *fg.shape[1:])


def multilabel_consistency(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    config: ConsistencyConfig | None = None,
    *,
    reduce: str = "mean",
    boxes=None,
    masks: Tensor | None = None,
    generator: torch.Generator | None = None,
    channels_last: bool = True,
) -> dict[str, Tensor]:
    """E per (image, positive class) and per image for one batch, on the model's device.

    ``labels``: multi-hot (N, C) (or class ids (N,), taken as one-hot). With ``target="prediction"``
    the classes explained are those the model predicts (sigmoid > 0.5; its top class when none is).
    ``boxes``/``masks``: all objects of each image (their union is the foreground of every pair).
    Returns per-image tensors (N,) ``E, S, P, flipped, fg_area, positives`` (NaN E for an image
    without a positive) and per-pair tensors ``pair_row, pair_class, pair_E, pair_S, pair_P,
    pair_flipped``. Cost: the pairs' consistency passes, plus one forward of the attacked pairs for
    the sigmoid P (and one explained pass of the pairs for ``mask="heatmap"``); no parameter gradients.
    ``channels_last`` as for :func:`~consistcam.consistency.explanation_consistency`.
    """
    cfg = config or ConsistencyConfig()
    if reduce not in REDUCTIONS:
        raise ValueError(f"multi-label reduction must be one of {', '.join(REDUCTIONS)}, got {reduce!r}")
    n = len(images)
    with preserved_state(model, eval_mode=True), torch.no_grad():
        if cfg.target == "prediction":
            logits = model(images)
            predicted = logits > 0
            predicted[torch.arange(n, device=logits.device), logits.argmax(1)] |= ~predicted.any(1)
            labels = predicted.float()
        num_classes = labels.shape[1] if labels.dim() == 2 else int(labels.max().item()) + 1
        rows, classes = positive_pairs(labels, num_classes)
        if len(rows) == 0:
            empty = torch.zeros(0, device=images.device)
            return {**reduce_pairs(rows, {k: empty for k in ("E", "S", "P", "flipped", "fg_area")}, n, reduce),
                    "pair_row": rows, "pair_class": classes, "pair_E": empty, "pair_S": empty, "pair_P": empty,
                    "pair_flipped": empty.bool()}
        inner = dataclasses.replace(cfg, target="label")
        pair_boxes, pair_masks = None, None
        if cfg.mask == "heatmap":
            pair_masks = _union_heatmap_foreground(model, images, rows, classes, cfg)[rows]
            inner = dataclasses.replace(inner, mask="mask", dilation=0)  # dilated once, in the union
        elif cfg.mask != "none":
            index = rows.tolist()
            pair_boxes = [boxes[i] for i in index] if boxes is not None else None
            pair_masks = masks[rows] if masks is not None else None
        out = explanation_consistency(model, images[rows], classes, inner, boxes=pair_boxes, masks=pair_masks,
                                      generator=generator, return_images=True, channels_last=channels_last)
        adv_logits = out["logits"] if cfg.attack == "none" else model(out["adversarial"])
        z, z_adv = out["logits"].gather(1, classes[:, None])[:, 0], adv_logits.gather(1, classes[:, None])[:, 0]
    p_cls = class_prediction_consistency(z.float().sigmoid(), z_adv.float().sigmoid(), cfg.prediction)
    e = (cfg.lam * out["S"] + (1 - cfg.lam) * p_cls).clamp(0, 1)
    pairs = {"E": e, "S": out["S"], "P": p_cls, "flipped": (z > 0) != (z_adv > 0), "fg_area": out["fg_area"]}
    result = reduce_pairs(rows, pairs, n, reduce)
    result.update(pair_row=rows, pair_class=classes, pair_E=e, pair_S=out["S"], pair_P=p_cls,
                  pair_flipped=pairs["flipped"])
    return result


def score_multilabel_dataset(
    model: nn.Module,
    loader: Iterable,
    config: ConsistencyConfig | None = None,
    *,
    execution: ExecutionConfig | None = None,
    reduce: str = "mean",
    progress: bool = False,
    device: torch.device | str | None = None,
) -> dict[str, Tensor]:
    """Score every image of ``loader`` (dict batches of :func:`consistcam.data.collate`, multi-hot
    labels; boxes/mask when the mask source needs them). Returns, in the loader's order, ``ids`` and
    :data:`IMAGE_KEYS` of the images with at least one positive class, and :data:`PAIR_KEYS` of their
    pairs (``pair_ids`` = the image's id). Weights are left to the caller
    (:func:`~consistcam.consistency.consistency_weights` of ``E``): under DDP they must be computed
    after the shards are gathered. The attack's random start is seeded from ``config.seed``. Runs on
    the same BatchNorm-folded, channels-last copy as :func:`~consistcam.consistency.score_dataset`
    (``execution.fold_batchnorm``, ``execution.channels_last``)."""
    cfg, run = config or ConsistencyConfig(), execution or ExecutionConfig()
    parts: dict[str, list[Tensor]] = {k: [] for k in ("ids", *IMAGE_KEYS, *PAIR_KEYS)}
    for scorer, scfg, generator, (images, labels, ids, boxes, masks) in scoring_batches(model, loader, cfg, run,
                                                                                       progress, device):
        out = multilabel_consistency(scorer, images, labels, scfg, reduce=reduce, boxes=boxes, masks=masks,
                                     generator=generator, channels_last=run.channels_last)
        keep = out["positives"] > 0
        parts["ids"].append(ids[keep])
        for k in IMAGE_KEYS:
            parts[k].append(out[k][keep].detach())
        parts["pair_ids"].append(ids[out["pair_row"]])
        for k in PAIR_KEYS[1:]:
            parts[k].append(out[k].detach())
    if not parts["ids"]:
        raise ValueError("score_multilabel_dataset got an empty loader")
    return {k: torch.cat(v) for k, v in parts.items()}
