"""The forward passes of the faithfulness protocol: insertion / deletion curves (RISE, Petsiuk et al.
2018) and the class probability on the image multiplied by its heatmap (Average Drop / Increase in
Confidence, Grad-CAM++, Chattopadhyay et al. 2018), batched on the model's device.

All functions take images in [0, 1] (normalisation lives inside the model), heatmaps (B, 1, h, w)
at any resolution (resized to the image bilinearly) and target classes, and restore the model's
train/eval flags. What they return are tensors the :mod:`consistcam.metrics` leaves accumulate
(:class:`~consistcam.metrics.InsertionDeletion`, :class:`~consistcam.metrics.ConfidenceChange`);
:func:`insertion_deletion` and :func:`confidence_change` give the per-image values at once.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.transforms.v2.functional import gaussian_blur

from consistcam.metrics.faithfulness import curve_auc, drop_and_increase, pixel_ranks, top_fraction_mask
from consistcam.models.state import preserved_state

# Most pixels (images x height x width) one forward of the faithfulness protocols takes: the
# insertion/deletion inputs of a batch are built and run in chunks of this size, so memory stays
# bounded for any batch size and step count. On the CPU larger forwards ran no faster (about 500
# images at 32 px suffice, docs/benchmarks.md); a GPU wants as many as it can run at once.
FORWARD_PIXELS = {"cpu": 1 << 19, "cuda": 1 << 23}


def forward_pixels(device: torch.device | str) -> int:
    """The pixel budget of one forward on ``device`` (:data:`FORWARD_PIXELS`; the CPU's for others)."""
    return FORWARD_PIXELS.get(torch.device(device).type, FORWARD_PIXELS["cpu"])


def _softmax(model: nn.Module, images: Tensor, max_images: int) -> Tensor:
    """Class probabilities (N, K), the forward split into pieces of at most ``max_images``."""
    return torch.cat([model(x).softmax(1) for x in images.split(max_images)])


def resize_maps(heatmaps: Tensor, images: Tensor) -> Tensor:
    """Heatmaps as (B, 1, H, W) floats at the images' size (bilinear)."""
    heatmaps = heatmaps.reshape(len(images), 1, *heatmaps.shape[-2:]).float()
    if heatmaps.shape[-2:] != images.shape[-2:]:
        heatmaps = F.interpolate(heatmaps, size=images.shape[-2:], mode="bilinear", align_corners=False)
    return heatmaps


@torch.inference_mode()
def insertion_deletion_curves(model: nn.Module, images: Tensor, heatmaps: Tensor, targets: Tensor, steps: int = 16,
                              blur_kernel: int = 11, blur_sigma: float = 5.0,
                              max_pixels: int | None = None) -> tuple[Tensor, Tensor]:
    """Per-image insertion and deletion curves of the target-class probability, (B, steps + 1) each.

    Pixels are taken in heatmap order in ``steps`` equal parts (the last part takes the remainder).
    Deletion replaces them with 0 (black); insertion starts from the blurred image and reveals the
    original pixels. Point k is the probability after k parts.

    All steps of the batch run in few large forwards of at most ``max_pixels`` pixels (default
    :func:`forward_pixels` of the device), with no host sync. The curves' shared ends are computed
    once: the clean image (deletion start = insertion end) and the black image (deletion end, one
    forward for the whole batch); so a batch of B images costs 2 * steps * B + 1 image forwards.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    ranks = pixel_ranks(resize_maps(heatmaps, images))
    b, n = len(images), ranks[0].numel()
    max_images = max(1, (max_pixels or forward_pixels(images.device)) // n)
    counts = torch.linspace(0, n, steps + 1, device=images.device).round().long()
    blurred = gaussian_blur(images, [blur_kernel, blur_kernel], [blur_sigma, blur_sigma])
    column = targets[:, None]
    with preserved_state(model, eval_mode=True):
        ends = _softmax(model, torch.cat([images, blurred, images.new_zeros(1, *images.shape[1:])]), max_images)
        clean, start = ends[:b].gather(1, column), ends[b:2 * b].gather(1, column)
        black = ends[2 * b:].expand(b, -1).gather(1, column)
        dele, ins = [clean.T], [start.T]  # rows: steps; columns: images
        inner = counts[1:-1]  # the steps between the ends, a chunk of them per forward
        per_chunk = max(1, max_images // (2 * b))
        for chunk in inner.split(per_chunk):
            taken = ranks[None] < chunk[:, None, None, None, None]  # (k, B, 1, H, W)
            x = torch.cat([torch.where(taken, 0.0, images), torch.where(taken, images, blurred)]).flatten(0, 1)
            probs = _softmax(model, x, max_images).gather(1, column.repeat(2 * len(chunk), 1)).view(2, -1, b)
            dele.append(probs[0])
            ins.append(probs[1])
    return torch.cat([*ins, clean.T]).T, torch.cat([*dele, black.T]).T


def insertion_deletion(model: nn.Module, images: Tensor, heatmaps: Tensor, targets: Tensor, steps: int = 16,
                       blur_kernel: int = 11, blur_sigma: float = 5.0, return_curves: bool = False,
                       max_pixels: int | None = None) -> dict[str, Tensor]:
    """Per-image insertion and deletion AUC (:func:`insertion_deletion_curves`, trapezoid rule over
    the fraction of pixels, both in [0, 1]); ``return_curves`` adds the curves."""
    ins, dele = insertion_deletion_curves(model, images, heatmaps, targets, steps, blur_kernel, blur_sigma, max_pixels)
    out = {"insertion": curve_auc(ins), "deletion": curve_auc(dele)}
    if return_curves:
        out.update(insertion_curve=ins, deletion_curve=dele)
    return out


@torch.no_grad()
def class_probability(model: nn.Module, images: Tensor, targets: Tensor) -> Tensor:
    """(B,) probability of each image's target class, in eval mode (the model's flags restored)."""
    with preserved_state(model, eval_mode=True):
        return model(images).softmax(1).gather(1, targets[:, None]).squeeze(1)


def masked_probability(model: nn.Module, images: Tensor, heatmaps: Tensor, targets: Tensor,
                       top_fraction: float | None = None) -> Tensor:
    """(B,) target-class probability on each image multiplied by its heatmap (values in [0, 1], not
    renormalised), or by the binary mask of its top ``top_fraction`` pixels (ExCon)."""
    heatmaps = resize_maps(heatmaps, images)
    if top_fraction is not None:
        heatmaps = top_fraction_mask(heatmaps, top_fraction)
    return class_probability(model, images * heatmaps.clamp(0, 1), targets)


def confidence_change(model: nn.Module, images: Tensor, heatmaps: Tensor, targets: Tensor,
                      top_fraction: float | None = None, clean_probs: Tensor | None = None) -> dict[str, Tensor]:
    """Per-image Average Drop term and Increase in Confidence (:func:`~consistcam.metrics.drop_and_increase`)
    of :func:`masked_probability` against the clean probability (``clean_probs`` when given)."""
    clean = class_probability(model, images, targets) if clean_probs is None else clean_probs
    return drop_and_increase(clean, masked_probability(model, images, heatmaps, targets, top_fraction))
