"""Background reliance (ImageNet-9 Backgrounds Challenge protocol, Xiao et al. ICLR 2021): accuracy
on background variants of a data set with boxes or masks, and BG-gap = acc(mixed_same) -
acc(mixed_rand). The variants come from :class:`consistcam.data.BackgroundVariant` (seeded)."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import DataLoader, Subset
from torchmetrics.classification import MulticlassAccuracy

from consistcam.data import BackgroundVariant, LocatedDataset, collate
from consistcam.models.state import preserved_state
from consistcam.utils import model_device, progress_bar

RELIANCE_VARIANTS = ("original", "only_fg", "no_fg", "mixed_same", "mixed_rand", "mixed_next")


@torch.no_grad()
def background_reliance(model: nn.Module, dataset: LocatedDataset, transform=None,
                        variants: tuple[str, ...] = RELIANCE_VARIANTS, seed: int = 0, batch_size: int = 200,
                        subset: int | None = None, device=None, progress: bool = False,
                        num_workers: int = 0) -> dict[str, float]:
    """{"bg/<variant>": accuracy, ..., "bg_gap": acc(mixed_same) - acc(mixed_rand)}."""
    device = torch.device(device) if device is not None else model_device(model)
    result: dict[str, float] = {}
    with preserved_state(model, eval_mode=True):
        for variant in variants:
            ds = BackgroundVariant(dataset, variant, seed=seed, transform=transform)
            view = Subset(ds, range(min(subset, len(ds)))) if subset else ds
            acc = MulticlassAccuracy(dataset.num_classes, average="micro").to(device)
            loader = DataLoader(view, batch_size=batch_size, collate_fn=collate, num_workers=num_workers)
            for batch in progress_bar(loader, desc=f"bg {variant}", enabled=progress):
                acc.update(model(batch["image"].to(device)), batch["label"].to(device))
            result[f"bg/{variant}"] = acc.compute().item()
    if "mixed_same" in variants and "mixed_rand" in variants:
        result["bg_gap"] = result["bg/mixed_same"] - result["bg/mixed_rand"]
    return result
