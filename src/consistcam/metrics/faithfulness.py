"""Faithfulness of heatmaps: insertion / deletion AUC (RISE, Petsiuk et al. 2018) and Average Drop /
Increase in Confidence (Grad-CAM++, Chattopadhyay et al. 2018), batched on the model's device.

All functions take images in [0, 1] (normalisation lives inside the model), heatmaps (B, 1, h, w)
at any resolution (resized to the image bilinearly) and target classes, and return per-image
values; the ``Metric`` classes accumulate them so that results merge across processes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import Metric
from torchvision.transforms.v2.functional import gaussian_blur

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


def _probabilities(model: nn.Module, images: Tensor, targets: Tensor) -> Tensor:
    return model(images).softmax(1).gather(1, targets[:, None]).squeeze(1)


def _resize(heatmaps: Tensor, images: Tensor) -> Tensor:
    heatmaps = heatmaps.reshape(len(images), 1, *heatmaps.shape[-2:]).float()
    if heatmaps.shape[-2:] != images.shape[-2:]:
        heatmaps = F.interpolate(heatmaps, size=images.shape[-2:], mode="bilinear", align_corners=False)
    return heatmaps


def pixel_ranks(heatmaps: Tensor) -> Tensor:
    """(B, 1, H, W) -> rank of each pixel in descending heatmap order (0 = most salient); ties are
    broken by pixel index (stable sort), so the order is deterministic."""
    flat = heatmaps.flatten(1)
    order = torch.sort(flat, dim=1, descending=True, stable=True).indices
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(flat.shape[1], device=flat.device).expand_as(order))
    return ranks.view(heatmaps.shape)


@torch.inference_mode()
def insertion_deletion(model: nn.Module, images: Tensor, heatmaps: Tensor, targets: Tensor, steps: int = 16,
                       blur_kernel: int = 11, blur_sigma: float = 5.0, return_curves: bool = False,
                       max_pixels: int | None = None):
    """Per-image insertion and deletion AUC of the target-class probability.

    Pixels are taken in heatmap order in ``steps`` equal parts (the last part takes the remainder).
    Deletion replaces them with 0 (black); insertion starts from the blurred image and reveals the
    original pixels. AUC by the trapezoid rule over the fraction of pixels, so both lie in [0, 1].

    All steps of the batch run in few large forwards of at most ``max_pixels`` pixels (default
    :func:`forward_pixels` of the device), with no host sync. The curves' shared ends are computed
    once: the clean image (deletion start = insertion end) and the black image (deletion end, one
    forward for the whole batch); so a batch of B images costs 2 * steps * B + 1 image forwards.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    heatmaps = _resize(heatmaps, images)
    ranks = pixel_ranks(heatmaps)
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
    ins_curve = torch.cat([*ins, clean.T]).T  # (B, steps + 1)
    del_curve = torch.cat([*dele, black.T]).T

    def auc(curve: Tensor) -> Tensor:
        return (curve[:, 1:] + curve[:, :-1]).sum(1) / (2 * steps)

    out = {"insertion": auc(ins_curve), "deletion": auc(del_curve)}
    if return_curves:
        out.update(insertion_curve=ins_curve, deletion_curve=del_curve)
    return out


def top_fraction_mask(heatmaps: Tensor, fraction: float) -> Tensor:
    """Binary mask keeping the ``fraction`` most salient pixels of each heatmap (ties by index)."""
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    ranks = pixel_ranks(heatmaps)
    keep = max(1, round(fraction * ranks[0].numel()))
    return (ranks < keep).to(heatmaps.dtype)


@torch.no_grad()
def confidence_change(model: nn.Module, images: Tensor, heatmaps: Tensor, targets: Tensor,
                      top_fraction: float | None = None, clean_probs: Tensor | None = None) -> dict[str, Tensor]:
    """Per-image Average Drop term max(0, o - p) / o and Increase in Confidence 1[p > o], with
    o the class probability on the image and p on the image multiplied by its heatmap (values in
    [0, 1], not renormalised), or by the binary mask of its top ``top_fraction`` pixels (ExCon)."""
    heatmaps = _resize(heatmaps, images)
    if top_fraction is not None:
        heatmaps = top_fraction_mask(heatmaps, top_fraction)
    with preserved_state(model, eval_mode=True):
        o = _probabilities(model, images, targets) if clean_probs is None else clean_probs
        p = _probabilities(model, images * heatmaps.clamp(0, 1), targets)
    return {"average_drop": (o - p).clamp(min=0) / o.clamp(min=1e-12), "increase_in_confidence": (p > o).float()}


class _MeanOf(Metric):
    """Streaming means of several per-image values (sums and a count: exact under DDP merging)."""

    keys: tuple[str, ...] = ()
    full_state_update = False

    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        for key in self.keys:
            self.add_state(key, default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("n", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def _add(self, values: dict[str, Tensor]) -> None:
        for key in self.keys:
            setattr(self, key, getattr(self, key) + values[key].double().sum())
        self.n += len(values[self.keys[0]])

    def compute(self) -> dict[str, Tensor]:
        out = {key: (getattr(self, key) / self.n.clamp(min=1)).float() for key in self.keys}
        return out


class InsertionDeletion(_MeanOf):
    """Mean insertion and deletion AUC and their difference (higher insertion, lower deletion = better)."""

    keys = ("insertion", "deletion")

    def __init__(self, steps: int = 16, blur_kernel: int = 11, blur_sigma: float = 5.0, **kw) -> None:
        super().__init__(**kw)
        self.steps, self.blur_kernel, self.blur_sigma = steps, blur_kernel, blur_sigma

    def update(self, model: nn.Module, images: Tensor, heatmaps: Tensor, targets: Tensor) -> None:
        self._add(insertion_deletion(model, images, heatmaps, targets, self.steps, self.blur_kernel, self.blur_sigma))

    def compute(self) -> dict[str, Tensor]:
        out = super().compute()
        out["ins_minus_del"] = out["insertion"] - out["deletion"]
        return out


class ConfidenceChange(_MeanOf):
    """Average Drop (x100 in the papers; a fraction here) and Increase in Confidence."""

    keys = ("average_drop", "increase_in_confidence")

    def __init__(self, top_fraction: float | None = None, **kw) -> None:
        super().__init__(**kw)
        self.top_fraction = top_fraction

    def update(self, model: nn.Module, images: Tensor, heatmaps: Tensor, targets: Tensor,
               clean_probs: Tensor | None = None) -> None:
        self._add(confidence_change(model, images, heatmaps, targets, self.top_fraction, clean_probs))
