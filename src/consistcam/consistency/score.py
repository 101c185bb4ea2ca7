"""Explanation consistency E(x, x_adv) per sample and the scoring pass over a data set.

The pass returns scores only: the training weights v made from them are ECL's
(:class:`~consistcam.consistency.ecl.ECL`, :func:`~consistcam.consistency.consistency_weights`)."""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from consistcam.attack import background_noise, foreground_mask, masked_attack
from consistcam.consistency.config import ConsistencyConfig, ExecutionConfig
from consistcam.consistency.inference import inference_copy
from consistcam.consistency.similarity import PREDICTION_CONSISTENCIES, SIMILARITIES
from consistcam.explain import explain
from consistcam.explain.inputs import check_inputs
from consistcam.models.state import preserved_state


def explanation_consistency(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    config: ConsistencyConfig | None = None,
    *,
    boxes=None,
    masks: Tensor | None = None,
    generator: torch.Generator | None = None,
    return_images: bool = False,
    channels_last: bool = True,
) -> dict[str, Tensor]:
    """E = lam · S(h, h_adv) + (1 - lam) · P(p, p_adv) for one batch, on the model's device.

    One class per image is explained *and* attacked: the label, or with ``target="prediction"`` the
    clean prediction. Cost: two explained forwards (each also gives the predictions) plus the attack's steps;
    no parameter gradients. Returns per-sample tensors E, S, P, pred, pred_adv, flipped,
    fg_area (and heatmap, heatmap_adv, foreground, adversarial, logits with ``return_images``).
    ``channels_last``: the explained forwards run on channels-last images (float rounding only;
    a scoring pass passes its :class:`ExecutionConfig`'s).

    Images and labels are checked once here, as by :func:`consistcam.explain.explain` (floats in
    [0, 1] in the model's dtype, integer labels of any integer dtype, also with ``target="prediction"``);
    the explanations and the attack inside reuse that check.
    """
    cfg = config or ConsistencyConfig()
    opts = {"channels_last": channels_last, **cfg.explainer_options}
    checked = check_inputs(model, images, labels, name="labels", ids_only=True)
    images = checked.images
    # Eval mode inside; on exit every sub-module gets back its own train/eval flag.
    with preserved_state(model, eval_mode=True):
        first = checked.replace(targets=None) if cfg.target == "prediction" else checked  # labels still range-checked
        heat, logits = explain(model, first, explainer=cfg.explainer, layer=cfg.layer, return_logits=True, **opts)
        pred = logits.argmax(1)
        classes = pred if cfg.target == "prediction" else checked.targets  # explained and attacked
        explained = checked.replace(targets=classes)
        fg = foreground_mask(cfg.mask, images, heatmaps=heat, boxes=boxes, masks=masks,
                             tau=cfg.tau, top_q=cfg.top_q, dilation=cfg.dilation)
        if cfg.attack == "none":
            adv = images
        elif cfg.attack == "noise":
            adv = background_noise(checked, fg, cfg.eps, cfg.norm, generator)
        else:
            steps, alpha, start = (1, cfg.eps, False) if cfg.attack == "fgsm" else (cfg.steps, cfg.alpha,
                                                                                  cfg.random_start)
            adv = masked_attack(model, explained, None, fg, eps=cfg.eps, alpha=alpha, steps=steps, norm=cfg.norm,
                                random_start=start, objective=cfg.objective, explainer=cfg.explainer,
                                layer=cfg.layer, reference_maps=heat, generator=generator, explainer_options=opts)
        if adv is images:  # no attack: the second explained forward would repeat the first exactly
            heat_adv, logits_adv = heat, logits
        else:
            heat_adv, logits_adv = explain(model, explained.replace(images=adv), explainer=cfg.explainer,
                                           layer=cfg.layer, return_logits=True, **opts)
    p, p_adv = logits.float().softmax(1), logits_adv.float().softmax(1)
    heat, heat_adv = heat.float(), heat_adv.float()  # under bf16 autocast the maps may come back in bf16
    s = SIMILARITIES.get(cfg.similarity)(heat, heat_adv)
    pc = PREDICTION_CONSISTENCIES.get(cfg.prediction)(p, p_adv, classes)
    e = (cfg.lam * s + (1 - cfg.lam) * pc).clamp(0, 1)
    pred_adv = logits_adv.argmax(1)
    out = {"E": e, "S": s, "P": pc, "pred": pred, "pred_adv": pred_adv, "flipped": pred != pred_adv,
           "fg_area": fg.flatten(1).mean(1)}
    if return_images:
        out.update(heatmap=heat, heatmap_adv=heat_adv, foreground=fg, adversarial=adv, logits=logits)
    return out


@dataclass
class ConsistencyScores:
    """Per-sample results of one scoring pass, sorted by sample id."""

    ids: Tensor
    E: Tensor
    S: Tensor
    P: Tensor
    pred: Tensor
    pred_adv: Tensor
    flipped: Tensor
    fg_area: Tensor

    def to_dict(self) -> dict[str, Tensor]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def save(self, path: str | Path) -> None:
        from consistcam.utils import atomic_save_tensors

        atomic_save_tensors({k: v.contiguous().cpu() for k, v in self.to_dict().items()}, path)

    @classmethod
    def load(cls, path: str | Path) -> ConsistencyScores:
        """The scores of a file written by :meth:`save` (the ``weights`` older versions saved with them are left)."""
        from consistcam.utils import load_tensor_file

        tensors = load_tensor_file(path)[0]
        return cls(**{f.name: tensors[f.name] for f in dataclasses.fields(cls)})

    def summary(self) -> dict[str, float]:
        return {"E_mean": self.E.mean().item(), "S_mean": self.S.mean().item(), "P_mean": self.P.mean().item(),
                "flip_rate": self.flipped.float().mean().item(), "fg_area": self.fg_area.mean().item()}


def unpack_batch(batch, device) -> tuple[Tensor, Tensor, Tensor, object, Tensor | None]:
    """(images, labels, ids, boxes, masks) from a loader's batch, moved to ``device``: a dict with
    'image', 'label', 'id' (boxes/mask optional), or an ``(images, labels, ids)`` tuple
    (:class:`consistcam.data.WithIds` over an (image, label) data set)."""
    if isinstance(batch, (tuple, list)) and len(batch) == 3:
        batch = dict(zip(("image", "label", "id"), batch))
    if not isinstance(batch, Mapping) or not {"image", "label", "id"} <= set(batch):
        raise TypeError("loader batches must be dicts with 'image', 'label' and 'id' (use consistcam.data.collate) "
                        "or (images, labels, ids) tuples (wrap the data set in consistcam.WithIds); got "
                        + type(batch).__name__)
    images = batch["image"].to(device, non_blocking=True)
    labels = batch["label"].to(device, non_blocking=True)
    ids = batch["id"].to(device, non_blocking=True)
    boxes = batch.get("boxes")
    masks = batch.get("mask")
    if masks is not None:
        masks = masks.to(device, non_blocking=True)
    return images, labels, ids, boxes, masks


def scoring_model(model: nn.Module, config: ConsistencyConfig, example: Tensor,
                  execution: ExecutionConfig | None = None) -> tuple[nn.Module, ConsistencyConfig]:
    """The model a scoring pass runs on and its config with the explained layer named.

    With ``execution.fold_batchnorm`` or ``execution.channels_last`` it is
    :func:`~consistcam.consistency.inference.inference_copy` of ``model`` (BatchNorm folded except
    into the explained layer itself, channels-last), else ``model``. The layer is resolved on
    ``model`` (``example``: one input batch) and passed on by name, since the copy keeps every module name."""
    run = execution or ExecutionConfig()
    if not (run.fold_batchnorm or run.channels_last):
        return model, config
    layer = config.layer
    if layer is None:
        from consistcam.explain.layers import find_target_layer

        try:
            layer = find_target_layer(model, check_inputs(model, example).images)
        except ValueError:  # no (N, C, h, w) layer (a transformer): explain() picks its own, nothing to keep
            layer = None
    try:
        clone = inference_copy(model, fold_batchnorm=run.fold_batchnorm, channels_last=run.channels_last, keep=layer)
    except (TypeError, RuntimeError, copy.Error):  # a model that cannot be deep-copied is scored as it is
        return model, config
    return clone, dataclasses.replace(config, layer=layer)


def scoring_uses_bf16(execution: ExecutionConfig, device: torch.device) -> bool:
    """Whether a scoring pass on ``device`` runs under bfloat16 autocast (``amp``: auto = CUDA only)."""
    return execution.amp == "bf16" or (execution.amp == "auto" and device.type == "cuda")


def scoring_autocast(execution: ExecutionConfig, device: torch.device) -> torch.autocast:
    """The autocast context of a scoring pass (a no-op unless :func:`scoring_uses_bf16`)."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=scoring_uses_bf16(execution, device))


def scoring_batches(model: nn.Module, loader: Iterable, config: ConsistencyConfig, execution: ExecutionConfig,
                    progress: bool, device: torch.device | str | None):
    """The batches of a scoring pass, each as ``(scorer, config, generator, (images, labels, ids,
    boxes, masks))``: on the device, images in the scorer's layout, ``scorer`` and ``config`` from
    :func:`scoring_model` (made once, from the first batch, which tells the default layer's name),
    and one generator seeded from ``config.seed`` for the attack's random starts."""
    from consistcam.utils import model_device, progress_bar

    device = torch.device(device) if device is not None else model_device(model)
    generator = torch.Generator(device=device).manual_seed(config.seed)
    scorer, cfg = None, config
    layout = torch.channels_last if execution.channels_last else torch.contiguous_format
    for batch in progress_bar(loader, desc="consistency", enabled=progress):
        images, labels, ids, boxes, masks = unpack_batch(batch, device)
        if scorer is None:
            scorer, cfg = scoring_model(model, config, images, execution)
        if images.dim() == 4:
            images = images.contiguous(memory_format=layout)
        yield scorer, cfg, generator, (images, labels, ids, boxes, masks)


def score_dataset(
    model: nn.Module,
    loader: Iterable,
    config: ConsistencyConfig | None = None,
    *,
    execution: ExecutionConfig | None = None,
    progress: bool = False,
    device: torch.device | str | None = None,
) -> ConsistencyScores:
    """Score every sample of ``loader`` (dict batches with 'image', 'label', 'id'; boxes/mask when
    the mask source needs them): E, S, P and the per-sample diagnostics, in id order.

    Memory holds only the per-sample numbers. The attack's random start is seeded from
    ``config.seed``, so a pass is reproducible. Training weights are made from the scores by the
    caller (ECL: :func:`~consistcam.consistency.consistency_weights` of ``E``).

    The pass runs on :func:`scoring_model`'s copy of ``model`` (``execution.fold_batchnorm``,
    ``execution.channels_last``; bf16 autocast with ``execution.amp``): the same function up to
    float rounding, made once per pass, about 1.5x faster on the CPU (docs/benchmarks.md);
    ``model`` itself is not touched.
    """
    cfg, run = config or ConsistencyConfig(), execution or ExecutionConfig()
    keys = ("E", "S", "P", "pred", "pred_adv", "flipped", "fg_area")
    parts: dict[str, list[Tensor]] = {k: [] for k in (*keys, "ids")}
    for scorer, scfg, generator, (images, labels, ids, boxes, masks) in scoring_batches(model, loader, cfg, run,
                                                                                       progress, device):
        with torch.no_grad(), scoring_autocast(run, images.device):
            out = explanation_consistency(scorer, images, labels, scfg, boxes=boxes, masks=masks, generator=generator,
                                          channels_last=run.channels_last)
        for k in keys:
            parts[k].append(out[k].detach())
        parts["ids"].append(ids)
    if not parts["ids"]:
        raise ValueError("score_dataset got an empty loader")
    cat = {k: torch.cat(v) for k, v in parts.items()}
    order = cat["ids"].argsort()
    return ConsistencyScores(**{k: v[order] for k, v in cat.items()})
