"""``sgt``: saliency-guided training (Ismail, Corrada Bravo, Feizi, NeurIPS 2021, "Improving Deep
Learning Interpretability by Saliency Guided Training"; reference code ayaabdelsalam91/saliency_guided_training).

Per batch: the input gradient of the label's logit; the k lowest-saliency input features of each
image are replaced by random values drawn uniformly in the image's own [min, max]; loss =
CE(f(x), y) + lam * KL(p(x) || p(x_masked)). Features with small, noisy gradients are thereby
taught not to matter, which sharpens gradient saliency maps.

What the reference does (``Scripts/interpretable.py::train`` and ``Scripts/Helper.py`` at 925ad6f), and
where we differ (docs/methods.md has the table with measured effects):

* saliency: captum ``Saliency(model).attribute(x, target=label, abs=False).mean(1)`` with the model in
  eval mode, on the *normalised* input its data loader produces: the channel mean of the signed
  gradient, per pixel; ``--abs`` (off by default) takes its magnitude afterwards. Our models normalise
  inside, so the gradient w.r.t. [0, 1] pixels is multiplied by the model's ``Normalize`` std per
  channel (``saliency_input=normalized``, default: the reference's ranking); ``pixel`` ranks the
  pixel-space gradient, whose channel mean weights the channels by 1/std. Default ``saliency=abs``
  (the paper's "small gradients"); ``saliency=signed`` is the reference script's default.
* unit: for RGB (``isMNIST`` false) ``Helper.get_SingleMask``/``fill_SingleMask`` mask
  k = max(1, int(frac·H·W)) *pixels* (all channels) per image (``unit=pixel``); ``unit=feature``
  ranks every C·H·W value by its own gradient (the MNIST branch, for one channel the same thing).
* random values: ``fill_SingleMask`` draws uniformly in each channel's [min, max]
  (``value_range=channel``, default). Per channel, normalisation is affine, so the range taken on
  [0, 1] pixels is the same set of values. ``value_range=image`` (one [min, max] over all channels)
  is the MNIST branch's rule and has no RGB counterpart. ``fill=mean`` uses each channel's mean
  (``meanMask``).
* KL: ``KLDivLoss(reduction='batchmean')(log_softmax(f(x_masked)), softmax(f(x)))`` = KL(p(x) || p(x_masked)),
  gradient through both arguments, weight 1 (loss = Modelloss + KLloss); fraction 0.1 is the argparse
  default of ``train_CIFAR.py`` (``--featuresDroped``; a file only in the repository's history, deleted
  in 0e8d2e2; their MNIST README command uses 0.5). ``fill=random`` is the paper's masking and the
  README command's ``--RandomMasking``; the scripts' default without that flag is ``mean``.
* the saliency pass never fills parameter gradients: ``autograd.grad`` w.r.t. the input only, with
  parameters frozen for the eval-mode pass; the masked image is detached.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from consistcam.config import option, validate
from consistcam.models.state import preserved_state
from consistcam.train.methods._shared import masked_count, normalization
from consistcam.train.methods.base import Method, StepOutput, register_method


@dataclass
class SGTConfig:
    """Options of ``sgt``; defaults follow the reference's CIFAR script unless the help says otherwise."""

    fraction: float = option(0.1, "k: fraction of each image's input features masked, 0.1 = 10 % (reference "
                                  "train_CIFAR.py --featuresDroped 0.1); 0 turns masking and the KL term off",
                             ge=0.0, lt=1.0)
    lam: float = option(1.0, "weight of KL(p(x) || p(x_masked)) (reference: 1, the terms are added)", ge=0.0)
    unit: str = option("pixel", "what is ranked and masked: pixel = all channels of a pixel, ranked by the "
                                "channel-mean gradient (reference for RGB); feature = every channel value on its own",
                       choices=("pixel", "feature"))
    saliency: str = option("abs", "abs = gradient magnitude (the paper; reference --abs); signed = the raw "
                                  "gradient, lowest = most negative (reference script default)",
                           choices=("abs", "signed"))
    fill: str = option("random", "replacement: random = uniform in value_range (reference --RandomMasking); "
                                 "mean = each channel's mean (reference meanMask)", choices=("random", "mean"))
    value_range: str = option("channel", "range of the random values: channel = each channel's [min, max] "
                                         "(reference fill_SingleMask, its RGB path); image = [min, max] over all "
                                         "channels (its MNIST-only path)", choices=("channel", "image"))
    saliency_input: str = option("normalized", "input the saliency is the gradient w.r.t.: normalized = the "
                                               "model's normalised input (reference: its loader normalises), "
                                               "pixel = [0, 1] pixels (channels weighted by 1/std)",
                                 choices=("normalized", "pixel"))
    target: str = option("label", "class whose logit is differentiated: label (reference) or prediction",
                         choices=("label", "prediction"))
    saliency_mode: str = option("eval", "saliency pass: eval = a separate eval-mode forward (reference); train = "
                                        "reuse the training forward (train-mode BatchNorm, one forward fewer)",
                                choices=("eval", "train"))
    detach_target: bool = option(False, "stop the gradient through p(x) in the KL term (the reference lets it flow)")

    def __post_init__(self) -> None:
        validate(self)


def lowest_saliency_mask(gradient: Tensor, fraction: float, unit: str = "pixel", saliency: str = "abs") -> Tensor:
    """Boolean (N, C, H, W) mask of each image's k lowest-saliency features from the input gradient.

    ``unit=pixel`` ranks pixels by the channel-mean gradient and masks all their channels.
    """
    score = gradient.mean(1, keepdim=True) if unit == "pixel" else gradient
    if saliency == "abs":
        score = score.abs()
    flat = score.flatten(1)
    k = masked_count(fraction, flat.shape[1])
    mask = torch.zeros_like(flat, dtype=torch.bool)
    if k:
        mask.scatter_(1, flat.topk(k, dim=1, largest=False).indices, True)
    return mask.view_as(score).expand_as(gradient)


def fill_masked(images: Tensor, mask: Tensor, fill: str = "random", value_range: str = "image") -> Tensor:
    """Replace the masked features: uniform random values in each image's (or channel's) [min, max],
    or each channel's mean. Uses the global RNG of the images' device (seeded by the trainer)."""
    if fill == "mean":
        values = images.mean((2, 3), keepdim=True).expand_as(images)
    else:
        dims = (1, 2, 3) if value_range == "image" else (2, 3)
        lo, hi = images.amin(dims, keepdim=True), images.amax(dims, keepdim=True)
        values = lo + (hi - lo) * torch.rand_like(images)
    return torch.where(mask, values, images)


def kl_divergence(logits: Tensor, masked_logits: Tensor, detach_target: bool = False) -> Tensor:
    """KL(p(x) || p(x_masked)), summed over classes, mean over the batch (``KLDivLoss(batchmean)``)."""
    log_p = F.log_softmax(logits.detach() if detach_target else logits, 1)
    return F.kl_div(F.log_softmax(masked_logits, 1), log_p, reduction="batchmean", log_target=True)


def normalized_gradient(model: nn.Module, gradient: Tensor) -> Tensor:
    """Gradient w.r.t. [0, 1] pixels -> w.r.t. the normalised input (x_norm = (x - mean) / std, so
    d/dx_norm = std * d/dx), the input a reference that normalises in its data loader differentiates."""
    norm = normalization(model)
    return gradient if norm is None else gradient * norm.std.to(gradient)


def input_gradient(model: nn.Module, images: Tensor, targets: Tensor | None) -> Tensor:
    """d logit_target / d x per image in eval mode, parameters frozen: no ``.grad``, no BatchNorm
    update, modes restored (reference: captum ``Saliency`` between ``model.eval()`` and ``model.train()``)."""
    with preserved_state(model, freeze_params=True, eval_mode=True), torch.enable_grad():
        x = images.detach().requires_grad_(True)
        logits = model(x)
        t = logits.argmax(1) if targets is None else targets
        (grad,) = torch.autograd.grad(logits.gather(1, t[:, None]).sum(), x)
    return grad


@register_method("sgt")
class SGT(Method):
    """Masks each image's lowest-saliency features and keeps the prediction unchanged on the masked image."""

    Config = SGTConfig
    single_label = True
    config: SGTConfig

    def terms(self, images: Tensor, labels: Tensor) -> dict[str, Tensor]:
        """``ce``, ``kl``, the clean ``logits``, the ``masked`` images and their ``mask`` for one batch."""
        cfg, model, task = self.config, self.ctx.model, self.ctx.task
        targets = labels if cfg.target == "label" else None
        if cfg.fraction == 0:
            logits = model(images)
            zero = logits.new_zeros(())
            return {"ce": task.loss(logits, labels), "kl": zero, "logits": logits, "masked": images,
                    "mask": torch.zeros_like(images, dtype=torch.bool)}
        if cfg.saliency_mode == "eval":
            grad = input_gradient(self.ctx.module, images, targets)  # unwrapped: no DDP gradient sync
            logits = model(images)
        else:  # one train-mode forward gives the logits and, w.r.t. the input only, the saliency
            x = images.detach().requires_grad_(True)
            logits = model(x)
            t = logits.argmax(1) if targets is None else targets
            (grad,) = torch.autograd.grad(logits.gather(1, t[:, None]).sum(), x, retain_graph=True)
        if cfg.saliency_input == "normalized":
            grad = normalized_gradient(self.ctx.module, grad)
        mask = lowest_saliency_mask(grad.detach(), cfg.fraction, cfg.unit, cfg.saliency)
        masked = fill_masked(images.detach(), mask, cfg.fill, cfg.value_range)
        kl = kl_divergence(logits, model(masked), cfg.detach_target)
        return {"ce": task.loss(logits, labels), "kl": kl, "logits": logits, "masked": masked, "mask": mask}

    def loss(self, batch: dict) -> StepOutput:
        t = self.terms(batch["image"], batch["label"])
        return StepOutput(t["ce"] + self.config.lam * t["kl"], t["logits"],
                          {"ce": t["ce"].detach(), "kl": t["kl"].detach()})
