"""``excon``: explanation-driven supervised contrastive learning (Zhang, Jang, Trabelsi, Li, Sanner, Jeong,
Shim, "ExCon: Explanation-driven Supervised Contrastive Learning for Image Classification", arXiv 2111.14271;
reference code DarrenZhang01/ExCon, built on HobbitLong/SupContrast).

Per batch: a Grad-CAM map of each image's label, min-max normalised; the pixels with map <= 0.5 are
set to "zero" to make a content-preserving masked view. Where the masked view is classified
correctly it is the first contrastive view, otherwise a random crop stands in and the masked image
joins as a negative only. SupCon pulls together the projected views of the same class.

What the reference does (``main_supcon.py::train_encoder``, ``data_aug.py::aug_no_bbox_mc``,
``losses.py::SupConLoss``, README commands), and where we differ (docs/methods.md):

* views: ``TwoCropTransform`` gives the un-augmented image (explained and masked), a random view
  and a backup random view (RandomResizedCrop scale (0.2, 1), flip, colour jitter, grayscale). Here the
  trainer's batch (default augmentation: a flip) plays the un-augmented image; both random views are
  random resized crops + flips of it (``crop_scale``); colour jitter and grayscale are not applied.
* map: captum ``LayerGradCam`` of the *label* at a fixed layer, the last convolution of a late block
  (``explainer.py``: ResNet-18 ``layer4[1].conv2``, ``layer2[1].conv2`` on CIFAR; ResNet-50, which the
  README commands train, ``layer4[2].conv3`` / ``layer2[3].conv3``): a conv output before that
  block's BatchNorm, residual add and ReLU. Upsampled bilinearly, min-max normalised per image,
  threshold 0.5 (``explanation <= tau``). Ours: ``explain`` with ``relu=False`` (captum's default
  ``relu_attributions=False``) at ``layer``, by default the last convolution of the last spatial stage
  outside the shortcut (:func:`consistcam.explain.last_convolution`: their ImageNet-size choice for
  ResNet-18/50; their CIFAR choice, a ``layer2`` conv, is reachable through ``layer``).
* "zero": the reference zeroes *normalised* inputs, i.e. paints the data set's mean colour. Our
  models normalise inside, so ``fill=normalized_zero`` paints the model's ``Normalize`` mean (0 when
  the model has none); ``zero`` would be black.
* which masked views count: the reference keeps a masked view when the *masked* image is classified
  correctly (whatever the clean prediction); otherwise the backup crop is used and, with
  ``--negative_pair=1 --background_anchor=0`` (both README commands), the masked image is added to
  both views as a "background" sample that is never an anchor nor a positive, only a negative in
  the denominators. ``keep=masked`` (default) and ``negatives=true`` reproduce this; ``keep=clean``
  requires a correct clean prediction instead, ``both`` requires both. The two predictions come from
  forwards in the model's current (train) mode, as theirs, but BatchNorm buffers are left unchanged
  (theirs: the explanation and both prediction forwards update the running statistics too). The
  SupCon batch is theirs, [view1; negatives; view2; negatives] in one forward, so train-mode
  BatchNorm statistics are taken over the same images.
* SupCon: ``SupConLoss(temperature=0.1)`` (README ``--temp=0.1``; argparse default 0.07) with
  ``base_temperature=0.07``, so the loss is scaled by 0.1/0.07; ``contrast_mode='all'``, positives =
  same label excluding self, mean over anchors.
* head: SupContrast's ``mlp`` head, Linear(d, d) - ReLU - Linear(d, 128), L2-normalised, on the
  pooled features (the input of the model's last ``nn.Linear``). The method owns it; the trainer
  trains it through ``Method.parameters(model)`` (second optimizer group) and it is saved in
  ``state_dict``.
* classifier: the reference trains the encoder with SupCon only and, after every encoder epoch, a
  linear classifier with CE on frozen encoder features (a separate pass). ``classifier=probe`` does the
  same within each step: CE on the model's last Linear applied to *detached* features of the clean
  images, loss = CE + lam * SupCon. ``joint`` lets CE train the encoder too.
* ``warmup``: epochs of plain SupCon (no masked views) before explanations are used (``--exp_epochs``:
  0 in the Tiny ImageNet command, 50 in the CIFAR-100 one).

Rejected samples vary in number, so building the negatives costs one host sync per step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from consistcam.config import option, registered, validate
from consistcam.data.geometry import apply_crop_flip
from consistcam.explain import EXPLAINERS, explain, find_target_layer, get_layer, last_convolution
from consistcam.explain.inputs import CheckedInputs
from consistcam.models.state import preserved_state
from consistcam.train.methods._shared import classifier_inputs, classifier_layer, normalization, occlude
from consistcam.train.methods.base import Method, MethodContext, StepOutput, register_method
from consistcam.train.methods.crops import check_crop_scale, resized_crop_flip


@dataclass
class ExConConfig:
    """Options of ``excon``; defaults are the reference's README commands (DarrenZhang01/ExCon)."""

    temperature: float = option(0.1, "SupCon temperature (reference README --temp=0.1)", gt=0.0)
    base_temperature: float = option(0.07, "SupCon base temperature: the loss is scaled by temperature / "
                                           "base_temperature (reference SupConLoss default 0.07)", gt=0.0)
    lam: float = option(1.0, "weight of SupCon: loss = CE + lam * SupCon (reference: separate losses)", ge=0.0)
    projection_dim: int = option(128, "output size of the MLP projection head (SupContrast feat_dim 128)", ge=1)
    threshold: float = option(0.5, "pixels whose normalised map is <= threshold are filled (reference tau 0.5)",
                              ge=0.0, le=1.0)
    fill: str = option("normalized_zero", "value of the masked pixels: normalized_zero = 0 after the model's "
                                          "normalisation, i.e. its mean colour (reference, which zeroes normalised "
                                          "inputs); zero = black; mean = each image's channel mean; blur",
                       choices=("normalized_zero", "zero", "mean", "blur"))
    keep: str = option("masked", "when the masked view is used: masked = the masked image is classified "
                                 "correctly (reference); clean = the clean image is; both", choices=("masked", "clean",
                                                                                                     "both"))
    negatives: bool = option(True, "rejected masked images join as negatives, never anchors or positives "
                                   "(reference README --negative_pair=1 --background_anchor=0)")
    warmup: int = option(0, "epochs of plain SupCon before masked views are used (reference --exp_epochs: 0 "
                            "Tiny ImageNet, 50 CIFAR-100)", ge=0)
    crop_scale: tuple[float, float] = option((0.2, 1.0), "area fraction range of the random resized crops of "
                                                         "the random views (reference: (0.2, 1))",
                                             check=check_crop_scale)
    flip_p: float = option(0.5, "probability of a horizontal flip of the random views (reference: 0.5)",
                           ge=0.0, le=1.0)
    explainer: str = option("gradcam", "explainer of the mask (reference: Grad-CAM)", check=registered(EXPLAINERS))
    layer: str | None = option(None, "target layer (dotted name); default: the last convolution of the last "
                                     "spatial stage outside its shortcut, e.g. layer4.1.conv2 (reference)")
    relu: bool = option(False, "ReLU the map before upsampling; the reference does not (captum LayerGradCam's "
                               "default relu_attributions=False)")
    target: str = option("label", "class explained: label (reference) or prediction", choices=("label", "prediction"))
    classifier: str = option("probe", "how CE trains: probe = the last Linear on detached features, the encoder "
                                      "learns from SupCon only (reference); joint = CE trains the encoder too",
                             choices=("probe", "joint"))

    def __post_init__(self) -> None:
        validate(self)


def projection_head(dim: int, out_dim: int = 128) -> nn.Sequential:
    """SupContrast's ``mlp`` head: Linear(d, d) - ReLU - Linear(d, out_dim) (L2-normalised by the caller)."""
    return nn.Sequential(nn.Linear(dim, dim), nn.ReLU(inplace=True), nn.Linear(dim, out_dim))


def sup_con_loss(features: Tensor, labels: Tensor, anchors: Tensor | None = None, temperature: float = 0.1,
                 base_temperature: float = 0.07) -> Tensor:
    """Supervised contrastive loss (Khosla et al., NeurIPS 2020, L_out^sup) over all M rows of
    ``features`` (M, D), L2-normalised: for each anchor i, -mean over positives p (same label, p != i)
    of log(exp(z_i.z_p / t) / sum_{a != i} exp(z_i.z_a / t)), times t / base_t, mean over anchors.

    ``anchors`` (M,) bool marks the rows that may be anchors or positives; the others (ExCon's
    rejected masked images) only enter the denominators. An anchor without positives adds 0.
    """
    z = features.float()
    eye = torch.eye(len(z), dtype=torch.bool, device=z.device)
    sim = z @ z.T / temperature
    log_prob = sim - torch.logsumexp(sim.masked_fill(eye, float("-inf")), 1, keepdim=True)
    valid = torch.ones(len(z), dtype=torch.bool, device=z.device) if anchors is None else anchors
    positives = (labels[:, None] == labels[None]) & valid[:, None] & valid[None] & ~eye
    mean_log_prob = (log_prob * positives).sum(1) / positives.sum(1).clamp(min=1)
    per_anchor = -(temperature / base_temperature) * mean_log_prob
    return (per_anchor * valid).sum() / valid.sum().clamp(min=1)


def mask_below(model: nn.Module, images: Tensor, maps: Tensor, threshold: float = 0.5,
               fill: str = "normalized_zero") -> Tensor:
    """Fill the pixels whose normalised map is <= ``threshold``; ``normalized_zero`` paints the value the
    model's :class:`Normalize` maps to 0 (its mean), or 0 when it has none."""
    mask = maps <= threshold
    if fill != "normalized_zero":
        return occlude(images, mask, fill)
    norm = normalization(model)
    value = norm.mean.to(images) if norm is not None else images.new_zeros(())
    return torch.where(mask, value, images)


@register_method("excon")
class ExCon(Method):
    """Supervised contrastive learning whose positive view keeps only the explained (salient) pixels."""

    Config = ExConConfig
    single_label = True  # occlusions / masked views of one explained class per image
    config: ExConConfig

    def __init__(self, config: ExConConfig | None = None) -> None:
        super().__init__(config)
        self.head: nn.Sequential | None = None

    def parameters(self, model: nn.Module) -> list[nn.Parameter]:
        """The projection head (built by ``setup``)."""
        if self.head is None:
            raise RuntimeError("excon builds its projection head in setup(): call it before parameters()")
        return list(self.head.parameters())

    def setup(self, ctx: MethodContext) -> None:
        """Builds the projection head (its width is the model's feature size), on the CPU first: its
        initial weights do not depend on the device."""
        super().setup(ctx)
        self.classifier = classifier_layer(ctx.model)
        self.head = projection_head(self.classifier.in_features, self.config.projection_dim).to(ctx.device)

    def views(self, images: Tensor, labels: Tensor, crops: Tensor | None = None) -> dict[str, Tensor | None]:
        """The contrastive views of one batch.

        Returns ``view1`` (masked where kept, else the backup crop), ``view2`` (a random crop),
        ``negatives`` (rejected masked images), ``kept`` (N,) bool, ``masked`` (None before ``warmup``
        ends), the clean ``logits`` and the clean ``features`` (detached). ``crops`` (2N, 5) fixes the
        backup and second crops (default: drawn from the global RNG, seeded per epoch by the trainer).
        """
        # passes without parameter gradients use the unwrapped model (no DDP reducer involved)
        cfg, model = self.config, self.ctx.module
        n = len(images)
        images, labels = images.detach(), self.ctx.task.targets_for_explanation(labels)  # single-label only
        if crops is None:
            crops = resized_crop_flip(2 * n, images.shape[-2:], cfg.crop_scale, flip_p=cfg.flip_p, device=images.device)
        # torchvision's resized_crop, as the reference's RandomResizedCrop: the box sliced out and resized
        backup, view2 = apply_crop_flip(torch.cat([images, images]), crops, edges="clamp").split(n)
        explaining = self.ctx.epoch >= cfg.warmup
        layer = None
        if explaining:  # the layer finder's dry run stays outside the explained forward
            layer = get_layer(model, cfg.layer or last_convolution(model, find_target_layer(model, images)))
        with classifier_inputs(self.classifier) as seen:
            if explaining:
                targets = labels if cfg.target == "label" else None
                # a batch of the data pipeline: no input check
                maps, logits = explain(model, CheckedInputs(images, targets), explainer=cfg.explainer, layer=layer,
                                       relu=cfg.relu, return_logits=True)
            else:
                with torch.no_grad(), preserved_state(model):
                    logits = model(images)
        out = {"logits": logits.detach(), "features": seen[0].detach(), "view2": view2}
        if not explaining:
            kept = torch.zeros(n, dtype=torch.bool, device=images.device)
            return {**out, "view1": backup, "kept": kept, "masked": None, "negatives": images[:0]}
        masked = mask_below(model, images, maps, cfg.threshold, cfg.fill)
        kept = torch.ones(n, dtype=torch.bool, device=images.device)
        if cfg.keep in ("clean", "both"):
            kept &= logits.argmax(1) == labels
        if cfg.keep in ("masked", "both"):
            with torch.no_grad(), preserved_state(model):
                kept &= model(masked).argmax(1) == labels
        view1 = torch.where(kept[:, None, None, None], masked, backup)
        negatives = masked[~kept] if cfg.negatives else images[:0]
        return {**out, "view1": view1, "kept": kept, "masked": masked, "negatives": negatives}

    def terms(self, images: Tensor, labels: Tensor, crops: Tensor | None = None) -> dict[str, Tensor]:
        """``ce``, ``supcon``, the clean ``logits`` and the ``views`` of one batch."""
        cfg, task = self.config, self.ctx.task
        n = len(images)
        v = self.views(images, labels, crops)
        joint = cfg.classifier == "joint"
        r = len(v["negatives"])
        # the reference's batch: [view1; negatives; view2; negatives], the negatives forwarded with each
        # view, so train-mode BatchNorm statistics are taken over the same images
        parts = [v["view1"], v["negatives"], v["view2"], v["negatives"]] + ([images] if joint else [])
        with classifier_inputs(self.classifier) as seen:
            out = self.ctx.model(torch.cat(parts))
        z = F.normalize(self.head(seen[0][:2 * (n + r)]), dim=1)
        neg_labels = labels.new_full((r,), -1)
        anchors = torch.cat([labels.new_ones(n, dtype=torch.bool), labels.new_zeros(r, dtype=torch.bool)])
        supcon = sup_con_loss(z, torch.cat([labels, neg_labels, labels, neg_labels]), anchors.repeat(2),
                              cfg.temperature, cfg.base_temperature)
        logits = out[2 * (n + r):] if joint else self.classifier(v["features"])
        return {"ce": task.loss(logits, labels), "supcon": supcon, "logits": logits, "views": v}

    def loss(self, batch: dict) -> StepOutput:
        t = self.terms(batch["image"], batch["label"])
        v = t["views"]
        logs = {"ce": t["ce"].detach(), "supcon": t["supcon"].detach(), "kept": v["kept"].float().mean(),
                "negatives": torch.as_tensor(len(v["negatives"]) / len(v["kept"]))}
        return StepOutput(t["ce"] + self.config.lam * t["supcon"], t["logits"], logs)

    def state_dict(self) -> dict[str, Tensor]:
        return {f"head.{k}": v for k, v in self.head.state_dict().items()}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        unknown = sorted(k for k in state if not k.startswith("head."))
        if unknown:
            raise ValueError(f"method 'excon' has no state {unknown}")
        self.head.load_state_dict({k.removeprefix("head."): v for k, v in state.items()})
