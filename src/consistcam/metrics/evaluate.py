"""One batched pass over a loader computing accuracy, localisation and consistency metrics."""

from __future__ import annotations

import torch
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from consistcam.attack import mask_from_boxes
from consistcam.consistency import ConsistencyConfig, explanation_consistency, unpack_batch
from consistcam.metrics.localization import EnergyPointingGame, MaskIoU, MeanMetric, PointingGame
from consistcam.utils import progress_bar


def object_masks(images, boxes, masks):
    """The ground-truth object mask of a batch: the pixel mask if given, else the union of boxes."""
    if masks is not None:
        return (masks > 0.5).float()
    if boxes is not None:
        return mask_from_boxes(boxes, images.shape[-2:], images.device)
    return None


@torch.no_grad()
def evaluate_model(
    model: nn.Module,
    loader,
    num_classes: int,
    explainer: str = "gradcam",
    consistency: ConsistencyConfig | None = None,
    pointing_tolerance: int | None = None,
    progress: bool = False,
    device=None,
    max_batches: int | None = None,
) -> dict[str, float]:
    """Top-1/top-5 accuracy; with object locations, energy inside the object, pointing game and
    mask IoU of ground-truth-class heatmaps; and the model's own explanation consistency E (the
    training criterion) on this data. Heatmaps come from the consistency pass (no extra forward)."""
    device = torch.device(device) if device is not None else next(model.parameters()).device
    cfg = consistency or ConsistencyConfig(explainer=explainer)
    top1 = MulticlassAccuracy(num_classes, top_k=1, average="micro").to(device)
    top5 = MulticlassAccuracy(num_classes, top_k=min(5, num_classes), average="micro").to(device)
    energy, iou, mean_e, flips = EnergyPointingGame().to(device), MaskIoU().to(device), MeanMetric().to(device), \
        MeanMetric().to(device)
    pointing = None
    generator = torch.Generator(device=device).manual_seed(cfg.seed)
    model.eval()
    for b, batch in enumerate(progress_bar(loader, desc="evaluate", enabled=progress)):
        if max_batches is not None and b >= max_batches:
            break
        images, labels, _, boxes, masks = unpack_batch(batch, device)
        out = explanation_consistency(model, images, labels, cfg, boxes=boxes, masks=masks, generator=generator,
                                      return_images=True)
        logits = out["logits"]  # the clean forward of the consistency pass, not a second one
        top1.update(logits, labels)
        top5.update(logits, labels)
        mean_e.update(out["E"])
        flips.update(out["flipped"].float())
        gt = object_masks(images, boxes, masks)
        if gt is not None:
            if pointing is None:
                tol = pointing_tolerance if pointing_tolerance is not None else round(15 * images.shape[-1] / 224)
                pointing = PointingGame(tol).to(device)
            energy.update(out["heatmap"], gt)
            pointing.update(out["heatmap"], gt)
            iou.update(out["heatmap"], gt)
    result = {"acc": top1.compute().item(), "acc_top5": top5.compute().item(), "consistency_E": mean_e.compute().item(),
              "adv_flip_rate": flips.compute().item()}
    if pointing is not None:
        result.update({k: v.item() for k, v in energy.compute().items()})
        result["pointing_game"] = pointing.compute().item()
        result["mask_iou@0.5"] = iou.compute().item()
    return result
