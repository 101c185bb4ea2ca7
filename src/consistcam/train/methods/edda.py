"""``edda``: explanation-driven data augmentation (seed 003, "EDDA"; only the abstract is available).

The abstract's principle: if model and explainer are aligned, occluding the regions salient for the
prediction should lower the model's confidence, and occluding non-salient regions should not change
it. Each batch is therefore augmented with two occluded copies of every image, made from a Grad-CAM
heatmap of its label that is computed without a graph (the occlusion is data, not a path to train
through) in the model's current mode (``explain`` leaves modes and BatchNorm buffers as they were):

* *keep* copy: the ``fraction`` of pixels with the **lowest** heatmap values occluded; trained
  towards the label, CE(f(x_keep), y);
* *drop* copy: the same fraction with the **highest** values occluded; trained towards a soft
  target with less mass on the explained class, CE_soft(f(x_drop), q).

Loss = CE(f(x), y) + w_keep * CE(f(x_keep), y) + w_drop * CE_soft(f(x_drop), q).

Everything below is **our choice** (the paper's body is not available; docs/methods.md):

* occluded pixels per image: k = max(1, floor(fraction * H * W)), as ``sgt``; pixels ranked by
  heatmap value with ties broken by pixel index (the deletion metric's order), so the count is exact.
* q: uniform over the classes (``drop_mass`` unset): removing the evidence should remove the
  confidence, without pushing towards any other class. ``drop_mass = m`` puts m on the explained class
  and spreads 1 - m evenly over the others (m = 0: "not this class").
* fill: each image's per-channel mean (``fill=mean``). ``zero`` is the deletion metric's own
  baseline (training on it risks learning that artefact); ``blur`` is the insertion metric's blur.
* ``occlusion=random`` is the control the abstract compares with (non-explanation-driven
  augmentation): the same fraction and the same loss, regions picked by random scores instead of
  the heatmap. With ``w_drop = 0`` it is plain random occlusion (Cutout-style) keeping the label.
* ``warmup`` epochs of plain CE first (explanations of an untrained model are noise), 2 like ``ecl``.
* one forward over [x; x_keep; x_drop]: BatchNorm batch statistics include the occluded copies.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from consistcam.config import option, registered, validate
from consistcam.explain import EXPLAINERS, explain
from consistcam.explain.inputs import CheckedInputs
from consistcam.metrics.faithfulness import pixel_ranks
from consistcam.train.methods._shared import FILLS, masked_count, occlude
from consistcam.train.methods.base import Method, StepOutput, register_method


@dataclass
class EDDAConfig:
    """Options of ``edda``; every default is our choice (only the abstract of the method is known)."""

    fraction: float = option(0.25, "fraction of each image's pixels occluded in each copy; k = max(1, floor("
                                   "fraction * H * W)) pixels", gt=0.0, lt=1.0)
    w_keep: float = option(1.0, "weight of CE(least-salient-occluded copy, label); 0 drops the copy", ge=0.0)
    w_drop: float = option(1.0, "weight of the soft-target CE of the most-salient-occluded copy; 0 drops the copy",
                           ge=0.0)
    drop_mass: float | None = option(None, "target probability of the explained class on the most-salient-"
                                           "occluded copy, the rest spread evenly over the other classes; unset = "
                                           "uniform over all classes (1/C)", ge=0.0, le=1.0)
    occlusion: str = option("explanation", "how the occluded regions are chosen: explanation = by the heatmap; "
                                           "random = by random scores (the control: same fraction and loss)",
                            choices=("explanation", "random"))
    random_grid: int = option(0, "occlusion=random: side of the grid the random scores are drawn on before "
                                 "bilinear upsampling (blob-shaped regions like a CAM's); 0 = independent pixels",
                              ge=0)
    fill: str = option("mean", "occlusion value: mean = each image's per-channel mean, zero = black (the deletion "
                               "metric's baseline), blur = Gaussian blur (kernel 11, sigma 5: the insertion metric's)",
                       choices=FILLS)
    explainer: str = option("gradcam", "explainer of the heatmap", check=registered(EXPLAINERS))
    layer: str | None = option(None, "target layer (dotted name); default: the last spatial stage")
    target: str = option("label", "class explained (and whose confidence the drop copy lowers): label or prediction",
                         choices=("label", "prediction"))
    warmup: int = option(2, "epochs of plain CE before augmenting (as ecl's warmup)", ge=0)

    def __post_init__(self) -> None:
        validate(self)


def occlusion_masks(scores: Tensor, fraction: float) -> tuple[Tensor, Tensor]:
    """Boolean (N, 1, H, W) masks of the k lowest-scoring (``keep``) and k highest-scoring (``drop``)
    pixels of each image, k = max(1, floor(fraction * H * W)); ties go by pixel index."""
    ranks = pixel_ranks(scores)  # 0 = highest score
    n = ranks[0].numel()
    k = masked_count(fraction, n)
    return ranks >= n - k, ranks < k


def random_scores(images: Tensor, grid: int = 0) -> Tensor:
    """(N, 1, H, W) scores independent of the image: uniform noise per pixel, or on a ``grid`` x ``grid``
    lattice upsampled bilinearly (global RNG of the images' device, seeded by the trainer per epoch)."""
    n, _, h, w = images.shape
    if grid <= 0:
        return torch.rand(n, 1, h, w, device=images.device)
    coarse = torch.rand(n, 1, grid, grid, device=images.device)
    return F.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)


def soft_target(classes: Tensor, num_classes: int, mass: float | None = None) -> Tensor:
    """(N, C) target: uniform (``mass`` None), or ``mass`` on ``classes`` and the rest spread evenly."""
    if mass is None or num_classes < 2:
        return torch.full((len(classes), num_classes), 1.0 / num_classes, device=classes.device)
    rest = (1.0 - mass) / (num_classes - 1)
    target = torch.full((len(classes), num_classes), rest, device=classes.device)
    return target.scatter_(1, classes[:, None], mass)


def soft_cross_entropy(logits: Tensor, target: Tensor) -> Tensor:
    """mean_i(-sum_c q_ic log softmax(z_i)_c)."""
    return -(target * F.log_softmax(logits.float(), 1)).sum(1).mean()


@register_method("edda")
class EDDA(Method):
    """Adds explanation-driven occlusions: non-salient occluded keeps the label, salient occluded loses confidence."""

    Config = EDDAConfig
    single_label = True  # occlusions / masked views of one explained class per image
    config: EDDAConfig

    def scores(self, images: Tensor, labels: Tensor) -> tuple[Tensor, Tensor | None]:
        """What the occlusions rank, the heatmap (no graph) or random scores for the control, and the
        class explained (None: decided on the training forward, for ``random`` with ``target=prediction``)."""
        cfg = self.config
        if cfg.occlusion == "random":
            return random_scores(images, cfg.random_grid), labels if cfg.target == "label" else None
        # the unwrapped model (no DDP reducer for a pass without parameter gradients); the batch came from
        # the data pipeline, so explain's input check (a host sync per step) is skipped
        module = self.ctx.module
        if cfg.target == "label":
            return explain(module, CheckedInputs(images, labels), explainer=cfg.explainer, layer=cfg.layer), labels
        maps, logits = explain(module, CheckedInputs(images), explainer=cfg.explainer, layer=cfg.layer,
                               return_logits=True)
        return maps, logits.argmax(1)

    def terms(self, images: Tensor, labels: Tensor) -> dict[str, Tensor]:
        """Loss terms, clean ``logits``, the copies (``keep``, ``drop``) and their masks for one batch."""
        cfg, model, task = self.config, self.ctx.model, self.ctx.task
        n = len(images)
        if self.ctx.epoch < cfg.warmup or cfg.w_keep == cfg.w_drop == 0:
            logits = model(images)
            return {"ce": task.loss(logits, labels), "logits": logits}
        images, labels = images.detach(), task.targets_for_explanation(labels)  # single-label only
        scores, explained = self.scores(images, labels)
        keep_mask, drop_mask = occlusion_masks(scores, cfg.fraction)
        keep, drop = occlude(images, keep_mask, cfg.fill), occlude(images, drop_mask, cfg.fill)
        batch = [images] + [x for x, w in ((keep, cfg.w_keep), (drop, cfg.w_drop)) if w > 0]
        logits, *copies = model(torch.cat(batch)).split(n)
        probs = logits.detach().softmax(1)
        explained = probs.argmax(1) if explained is None else explained
        out = {"ce": task.loss(logits, labels), "logits": logits, "keep": keep, "drop": drop,
               "keep_mask": keep_mask, "drop_mask": drop_mask, "p_clean": probs.gather(1, labels[:, None]).mean()}
        if cfg.w_keep > 0:
            keep_logits = copies.pop(0)
            out["keep_loss"] = task.loss(keep_logits, labels)
            out["p_keep"] = keep_logits.detach().softmax(1).gather(1, labels[:, None]).mean()
        if cfg.w_drop > 0:
            drop_logits = copies.pop(0)
            out["drop_loss"] = soft_cross_entropy(drop_logits, soft_target(explained, logits.shape[1], cfg.drop_mass))
            out["p_drop"] = drop_logits.detach().softmax(1).gather(1, explained[:, None]).mean()
        return out

    def loss(self, batch: dict) -> StepOutput:
        cfg = self.config
        t = self.terms(batch["image"], batch["label"])
        zero = t["ce"].new_zeros(())
        loss = t["ce"] + cfg.w_keep * t.get("keep_loss", zero) + cfg.w_drop * t.get("drop_loss", zero)
        logs = {k: t[k].detach() for k in ("ce", "keep_loss", "drop_loss", "p_clean", "p_keep", "p_drop") if k in t}
        return StepOutput(loss, t["logits"], logs)
