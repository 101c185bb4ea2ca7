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
from consistcam.data.masks import object_mask
from consistcam.data.variants import compose_variant, fit_background
from consistcam.evaluation.forward import forward_model
from consistcam.models.state import preserved_state
from consistcam.utils import model_device, progress_bar

RELIANCE_VARIANTS = ("original", "only_fg", "no_fg", "mixed_same", "mixed_rand", "mixed_next")


class _Sources(Dataset):
    """Per image: its uint8 pixels, object mask and label, and the pixels and object mask of its
    background partner in each mixed variant (``load``: cached where the data set caches)."""

    def __init__(self, dataset: LocatedDataset, partners: dict[str, list[int]], n: int) -> None:
        self.dataset, self.partners, self.n = dataset, partners, n

    def __len__(self) -> int:
        return self.n

    def _read(self, index: int) -> tuple[Tensor, Tensor, int]:
        image, label, boxes, mask = self.dataset.load(index)
        return image, object_mask(tuple(image.shape[-2:]), boxes, mask), int(label)

    def __getitem__(self, index: int) -> dict:
        image, fg, label = self._read(index)
        return {"image": image, "fg": fg, "label": label,
                "partners": {v: self._read(p[index])[:2] for v, p in self.partners.items()}}


def _batch(samples: list[dict]) -> list[dict]:
    return samples


def _transformed(images: Tensor, transform) -> Tensor:
    return transform(tv_tensors.Image(images)).as_subclass(Tensor) if transform is not None else images


def _variant_images(variant: str, samples: list[dict], transform, device) -> Tensor:
    """The transformed variant of a batch: composited and transformed as one batch on ``device``
    when every image and partner has one size, else sample by sample (partners resized as in
    :class:`BackgroundVariant`)."""
    rows = [(s["image"], s["fg"], *s["partners"].get(variant, (None, None))) for s in samples]
    if len({tuple(t.shape[-2:]) for row in rows for t in row[::2] if t is not None}) == 1:
        columns = [torch.stack(c).to(device, non_blocking=True) if c[0] is not None else None for c in zip(*rows)]
        return _transformed(compose_variant(variant, *columns), transform)
    return torch.stack([_transformed(compose_variant(variant, image, fg, *fit_background(bg, bg_fg, image.shape[-2:])),
                                     transform) for image, fg, bg, bg_fg in rows]).to(device)


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
    accs = {v: MulticlassAccuracy(dataset.num_classes, average="micro").to(device) for v in variants}
    forward = None
    with preserved_state(model, eval_mode=True):
        for samples in progress_bar(loader, desc="background variants", enabled=progress):
            labels = torch.tensor([s["label"] for s in samples], device=device)
            for variant in variants:
                images = _variant_images(variant, samples, transform, device)
                if forward is None:
                    forward = forward_model(model, images)
                accs[variant].update(forward(images), labels)
    result = {f"bg/{v}": acc.compute().item() for v, acc in accs.items()}
    if "mixed_same" in variants and "mixed_rand" in variants:
        result["bg_gap"] = result["bg/mixed_same"] - result["bg/mixed_rand"]
    return result
