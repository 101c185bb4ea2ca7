"""Background reliance (ImageNet-9 Backgrounds Challenge protocol, Xiao et al. ICLR 2021): accuracy
on background variants of a data set with boxes or masks, and BG-gap = acc(mixed_same) -
acc(mixed_rand). The variants are those of :class:`consistcam.data.BackgroundVariant` (seeded
partners), built batched: each batch of images is read once, every variant is composited from it
on the model's device (:func:`consistcam.data.variants.compose_variant`), transformed as a batch and
run on the folded forward copy of the model."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from torchmetrics.classification import MulticlassAccuracy
from torchvision import tv_tensors

from consistcam.data import BackgroundVariant, LocatedDataset
from consistcam.data.masks import mask_from_boxes, object_mask
from consistcam.data.variants import compose_variant, fit_background
from consistcam.evaluation.forward import forward_model
from consistcam.models.state import preserved_state
from consistcam.utils import model_device, progress_bar

RELIANCE_VARIANTS = ("original", "only_fg", "no_fg", "mixed_same", "mixed_rand", "mixed_next")


class _Sources(Dataset):
    """Per image: its ``load`` (uint8 pixels, label, boxes, mask; cached where the data set caches)
    and the ``load`` of its background partner in each mixed variant."""

    def __init__(self, dataset: LocatedDataset, partners: dict[str, list[int]], n: int) -> None:
        self.dataset, self.partners, self.n = dataset, partners, n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> dict:
        return {"self": self.dataset.load(index),
                "partners": {v: self.dataset.load(p[index]) for v, p in self.partners.items()}}


def _batch(samples: list[dict]) -> list[dict]:
    return samples


def _objects(loads: list[tuple], size: tuple[int, int], device) -> Tensor:
    """(N, H, W) bool object masks of N loads of one size, as :func:`object_mask` gives them one by
    one: the pixel mask where a sample has one, else the union of its boxes (rasterised in one call)."""
    out = torch.zeros(len(loads), *size, dtype=torch.bool, device=device)
    boxed = [i for i, (_, _, _, mask) in enumerate(loads) if mask is None]
    masked = [i for i, (_, _, _, mask) in enumerate(loads) if mask is not None]
    if boxed:
        boxes = [loads[i][2].reshape(-1, 4) for i in boxed]
        out[boxed] = (mask_from_boxes(boxes, size)[:, 0] > 0.5).to(device)  # padded on the host: one copy
    if masked:
        out[masked] = torch.stack([loads[i][3].reshape(size) for i in masked]).to(device) > 0
    return out


def _transformed(images: Tensor, transform) -> Tensor:
    return transform(tv_tensors.Image(images)).as_subclass(Tensor) if transform is not None else images


class _Batch:
    """One batch of :class:`_Sources` items; :meth:`variant` gives each variant, transformed."""

    def __init__(self, samples: list[dict], device) -> None:
        self.samples, self.device = samples, device
        self.loads = [s["self"] for s in samples]
        self.labels = torch.tensor([int(load[1]) for load in self.loads], device=device)
        self.own: tuple[Tensor, Tensor] | None = None  # the batch's images and object masks, stacked once

    def _stacked(self, loads: list[tuple], size: tuple[int, int]) -> tuple[Tensor, Tensor]:
        return torch.stack([load[0] for load in loads]).to(self.device, non_blocking=True), \
            _objects(loads, size, self.device)

    def variant(self, variant: str, transform) -> Tensor:
        """Composited and transformed as one batch on the device when every image and partner
        has one size, else sample by sample (partners resized as in :class:`BackgroundVariant`)."""
        partners = [s["partners"][variant] for s in self.samples] if variant in self.samples[0]["partners"] else []
        sizes = {tuple(load[0].shape[-2:]) for load in self.loads + partners}
        if len(sizes) == 1:
            (size,) = sizes
            if self.own is None:
                self.own = self._stacked(self.loads, size)
            bg = self._stacked(partners, size) if partners else (None, None)
            return _transformed(compose_variant(variant, *self.own, *bg), transform)
        rows = []
        for i, (image, _, boxes, mask) in enumerate(self.loads):
            bg = bg_fg = None
            if partners:
                bg, _, bg_boxes, bg_mask = partners[i]
                bg, bg_fg = fit_background(bg, object_mask(tuple(bg.shape[-2:]), bg_boxes, bg_mask),
                                           tuple(image.shape[-2:]))
            fg = object_mask(tuple(image.shape[-2:]), boxes, mask)
            rows.append(_transformed(compose_variant(variant, image, fg, bg, bg_fg), transform))
        return torch.stack(rows).to(self.device)


@torch.inference_mode()
def background_reliance(model: nn.Module, dataset: LocatedDataset, transform=None,
                        variants: tuple[str, ...] = RELIANCE_VARIANTS, seed: int = 0, batch_size: int = 200,
                        subset: int | None = None, device=None, progress: bool = False,
                        num_workers: int = 0) -> dict[str, float]:
    """{"bg/<variant>": accuracy, ..., "bg_gap": acc(mixed_same) - acc(mixed_rand)}.

    ``transform`` must be deterministic (an evaluation transform): it is applied to a whole batch
    of variant images at once."""
    device = torch.device(device) if device is not None else model_device(model)
    n = min(subset, len(dataset)) if subset else len(dataset)
    partners = {v: BackgroundVariant(dataset, v, seed=seed).partner for v in variants if v.startswith("mixed")}
    loader = DataLoader(_Sources(dataset, partners, n), batch_size=batch_size, collate_fn=_batch,
                        num_workers=num_workers)
    # no argument validation (a host sync per update): labels are the data set's class ids
    accs = {v: MulticlassAccuracy(dataset.num_classes, average="micro", validate_args=False).to(device)
            for v in variants}
    forward = None
    with preserved_state(model, eval_mode=True):
        for samples in progress_bar(loader, desc="background variants", enabled=progress):
            batch = _Batch(samples, device)
            for variant in variants:
                images = batch.variant(variant, transform)
                if forward is None:
                    forward = forward_model(model, images)
                accs[variant].update(forward(images), batch.labels)
    result = {f"bg/{v}": acc.compute().item() for v, acc in accs.items()}
    if "mixed_same" in variants and "mixed_rand" in variants:
        result["bg_gap"] = result["bg/mixed_same"] - result["bg/mixed_rand"]
    return result
