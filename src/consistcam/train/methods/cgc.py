"""``cgc``: Contrastive Grad-CAM Consistency (Pillai, Koohpayegani, Ouligian, Fong, Pirsiavash, CVPR 2022,
"Consistent Explanations by Contrastive Learning"; reference code UCDvision/CGC).

Per batch: a second view T(x) of every image (random resized crop, scale (0.08, 1), + horizontal flip);
differentiable maps G(x), G(T(x)) of the class predicted on x, at the last spatial stage; the crop
replayed on the first map, T(G(x)). InfoNCE pulls G(T(x_i)) towards T(G(x_i)) and away from the
second-view maps of the other images, G(T(x_j)). Loss = CE terms + lam * InfoNCE.

What the reference does, and where we differ (docs/methods.md):

* map: ``models/utils.py::compute_gradcam`` takes dy_c/dA * A summed over channels, then ReLU, at
  ``layer4``; that is our ``hirescam`` (``explain`` applies the ReLU before upsampling, as they do).
  Upsampled bilinearly to the input size, divided by its sum (+1e-8, then +1e-8), flattened and
  L2-normalised (``compute_gradcam_mask`` and ``normalize`` in ``models/resnet_multigpu_cgc.py``).
* class: the argmax on the un-cropped view, used for both maps (``target = np.argmax(images_outputs)``).
* InfoNCE (``NCESoftmaxLoss`` in ``train_eval_cgc.py``): logits [pos_i, neg_ij (j != i)] / tau, CE
  with the positive at index 0; tau = 0.5 and lam = 0.5 from their README command (the argparse
  defaults, t = 0.01 and lambda = 1000, are not what they train with).
* CE: the reference sums three CE terms, on an independently augmented view (RandomResizedCrop 224 +
  flip), on the un-augmented centre crop the maps start from, and on the crop T(x). Here the
  trainer's batch is already augmented, so it plays both of the first two roles: ``ce_views=both``
  gives CE(x) + CE(T(x)) (summed, as theirs). Deviation: two terms instead of three.
* forwards: the reference forwards x and T(x) separately, so train-mode BatchNorm normalises each view
  with its own batch statistics and the running statistics move once per view. ``forward=separate``
  (default) does the same; ``forward=joint`` forwards [x; T(x)] at once (one forward, statistics
  mixed over both views, one running-statistics update), which changes the InfoNCE gradient
  substantially in train mode (InfoNCE-gradient cosine to the reference 0.17-0.51 on a tiny ResNet;
  tests/reference/test_cgc_reference.py).
* second view: ``RandomResizedCrop.get_params`` on the centre crop (rejection sampling, 10 tries,
  centred fallback), same here (:mod:`consistcam.train.methods.crops`, whole-pixel boxes). The
  reference slices the box out of the image (``tvf.resized_crop``) and of the map (integer slicing +
  ``interpolate``) and resizes it bilinearly; ``apply_crop_flip(edges="clamp")`` does the same for the
  whole batch at once (sampling clamped to the box, equal to slicing up to float rounding).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from consistcam.config import option, validate
from consistcam.data.geometry import apply_crop_flip
from consistcam.explain import explain
from consistcam.explain.inputs import CheckedInputs
from consistcam.train.methods.base import Method, StepOutput, register_method
from consistcam.train.methods.crops import check_crop_scale, resized_crop_flip

GRADIENT_CAMS = ("hirescam", "gradcam", "gradcam++", "xgradcam", "layercam")


@dataclass
class CGCConfig:
    """Options of ``cgc``; defaults are the reference's README command (UCDvision/CGC)."""

    lam: float = option(0.5, "weight of the contrastive (InfoNCE) term: loss = CE + lam * L_cgc "
                             "(reference README --lambda 0.5)", ge=0.0)
    temperature: float = option(0.5, "InfoNCE temperature tau (reference README -t 0.5)", gt=0.0)
    crop_scale: tuple[float, float] = option((0.08, 1.0), "area fraction range of the second view's random "
                                                          "resized crop (reference: (0.08, 1))", check=check_crop_scale)
    flip_p: float = option(0.5, "probability of a horizontal flip of the second view (reference: 0.5)", ge=0.0, le=1.0)
    explainer: str = option("hirescam", "explainer of the trained map: hirescam = ReLU(sum_k dy/dA_k * A_k), the "
                                     "reference's map; other gradient CAMs are ablations", choices=GRADIENT_CAMS)
    target: str = option("prediction", "class explained: the prediction on the first view (reference) or the label",
                         choices=("prediction", "label"))
    ce_views: str = option("both", "views the cross-entropy is taken on: both = CE(x) + CE(T(x)) (the reference "
                                   "sums its CE terms), original = CE(x), augmented = CE(T(x))",
                           choices=("both", "original", "augmented"))
    forward: str = option("separate", "separate = one train-mode forward per view, so BatchNorm normalises each "
                                      "view with its own batch statistics (reference); joint = one forward of "
                                      "[x; T(x)] (statistics mixed over both views: a different gradient)",
                          choices=("separate", "joint"))

    def __post_init__(self) -> None:
        validate(self)


def info_nce(anchors: Tensor, positives: Tensor, temperature: float) -> Tensor:
    """InfoNCE of CGC: row i scores anchor i against its positive and against the other *anchors*
    (the second-view maps of the other images), mean over rows of CE with the positive as the label.

    ``anchors`` and ``positives`` are (N, D) and already L2-normalised.
    """
    n = anchors.shape[0]
    eye = torch.eye(n, dtype=torch.bool, device=anchors.device)
    pos = (anchors * positives).sum(1)
    logits = torch.where(eye, pos[:, None].expand(n, n), anchors @ anchors.T) / temperature
    return F.cross_entropy(logits, torch.arange(n, device=anchors.device))


def cgc_embedding(maps: Tensor, eps: float = 1e-8) -> Tensor:
    """(N, 1, H, W) non-negative maps -> (N, H*W) unit vectors, as the reference: divide by the sum
    (+eps), add eps (an all-zero map becomes uniform instead of undefined), L2-normalise."""
    flat = maps.flatten(1)
    flat = flat / (flat.sum(1, keepdim=True) + eps) + eps
    return F.normalize(flat, dim=1)


@contextlib.contextmanager
def keep_batchnorm_updates(model: nn.Module) -> Iterator[None]:
    """Let the train-mode forwards inside the block update BatchNorm running statistics.

    ``explain`` puts them back on exit (it is meant to be side-effect free); when its forward *is*
    the training forward, the statistics must move as a plain forward would move them. A forward
    hook records each BatchNorm's buffers right after it ran; they are written back (in place, through
    ``.data`` like ``preserved_state``) when the block ends without error.
    """
    updated: dict[nn.Module, list[Tensor]] = {}

    def record(module: nn.Module, _inputs: object, _output: object) -> None:
        updated[module] = [b.detach().clone() for b in module.buffers(recurse=False)]

    handles = [m.register_forward_hook(record) for m in model.modules()
               if isinstance(m, _BatchNorm) and m.training and m.track_running_stats]
    try:
        yield
    finally:
        for h in handles:
            h.remove()
    with torch.no_grad():
        for module, saved in updated.items():
            for buf, value in zip(module.buffers(recurse=False), saved, strict=True):
                buf.data.copy_(value)


def _predicted_on_first(n: int) -> Callable[[Tensor], Tensor]:
    """Target of ``explain``: each row's logit of the class predicted on the first ``n`` rows (the first
    view), repeated for the rows after them (the argmax carries no gradient)."""
    def targets(logits: Tensor) -> Tensor:
        classes = logits[:n].argmax(1)
        return logits.gather(1, classes.repeat(len(logits) // n)[:, None]).squeeze(1)
    return targets


@register_method("cgc")
class CGC(Method):
    """Trains Grad-CAM-style maps to follow crops and flips of the image (contrastive consistency)."""

    Config = CGCConfig
    single_label = True
    config: CGCConfig

    def terms(self, images: Tensor, labels: Tensor, transforms: Tensor | None = None) -> dict[str, Tensor]:
        """The loss terms of one batch: ``ce``, ``contrastive`` and the clean ``logits`` (N, C).

        ``transforms`` (N, 5) fixes the second view (default: drawn from the global RNG, which the
        trainer seeds per epoch).
        """
        cfg = self.config
        n = images.shape[0]
        if transforms is None:
            transforms = resized_crop_flip(n, images.shape[-2:], cfg.crop_scale, flip_p=cfg.flip_p,
                                           device=images.device)
        second = apply_crop_flip(images, transforms, edges="clamp")  # the reference's tvf.resized_crop
        if cfg.forward == "joint":
            maps, logits = self._maps(torch.cat([images, second]), labels.repeat(2) if cfg.target == "label"
                                      else _predicted_on_first(n))
        else:
            maps1, logits1 = self._maps(images, labels if cfg.target == "label" else _predicted_on_first(n))
            # the second view's map explains the class chosen on the first (reference: argmax, no gradient)
            maps2, logits2 = self._maps(second, labels if cfg.target == "label" else logits1.detach().argmax(1))
            maps, logits = torch.cat([maps1, maps2]), torch.cat([logits1, logits2])
        maps = maps.float()  # the embedding divides by sums: float32 also under bfloat16 autocast
        anchors = cgc_embedding(maps[n:])  # G(T(x))
        positives = cgc_embedding(apply_crop_flip(maps[:n], transforms, edges="clamp"))  # T(G(x))
        contrastive = info_nce(anchors, positives, cfg.temperature)
        views = {"both": (0, 1), "original": (0,), "augmented": (1,)}[cfg.ce_views]  # 0: x, 1: T(x); summed
        ce = sum(self.ctx.task.loss(logits[v * n:(v + 1) * n], labels) for v in views)
        return {"ce": ce, "contrastive": contrastive, "logits": logits[:n]}

    def _maps(self, images: Tensor, targets: Tensor | Callable[[Tensor], Tensor]) -> tuple[Tensor, Tensor]:
        """Differentiable maps and logits of one train-mode forward; BatchNorm running statistics move
        as a plain forward would move them (so two calls update them twice, as two forwards do)."""
        model = self.ctx.model
        with keep_batchnorm_updates(model):
            # explain() without its input check: the batch is already [0, 1] images, and the check's
            # host sync would stall every training step
            return explain(model, CheckedInputs(images, targets), explainer=self.config.explainer,
                           differentiable=True, normalize=False, return_logits=True)

    def loss(self, batch: dict) -> StepOutput:
        t = self.terms(batch["image"], batch["label"])
        loss = t["ce"] + self.config.lam * t["contrastive"]
        return StepOutput(loss, t["logits"], {"ce": t["ce"].detach(), "contrastive": t["contrastive"].detach()})
