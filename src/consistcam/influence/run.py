"""TracIn over a training run folder: its kept checkpoints, its training data, test images.

``consistcam influence`` is a thin wrapper over :func:`influence_for_run`. The checkpoints are the
ones a run keeps with ``--keep-checkpoints every=N`` (RUN/checkpoints/epoch_XXX.safetensors, with
the learning rate and the number of epochs each stands for in their metadata).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Subset

from consistcam.influence.gradients import classifier_gradients
from consistcam.influence.html import Row, write_grid_html
from consistcam.influence.tracin import TracInCheckpoint, TracInResult, kept_tracin_checkpoints, tracin
from consistcam.run.checkpoint import load_model, read_metadata
from consistcam.run.device import resolve_device
from consistcam.run.kept import KEPT_FORMAT, kept_checkpoints
from consistcam.run.layout import INFLUENCE_DIR, INFLUENCE_FILE, INFLUENCE_PAGE_FILE, KEPT_DIR, model_path, read_config
from consistcam.utils import atomic_save_tensors, load_tensor_file


def load_kept_model(path: str | Path) -> nn.Module:
    """A kept checkpoint's model, rebuilt by name and loaded from safetensors (no pickle)."""
    from consistcam.models import create

    meta = read_metadata(path)
    if meta.get("format") != KEPT_FORMAT:
        raise ValueError(f"{path}: not a kept consistcam checkpoint (format {meta.get('format')!r})")
    model = create(meta["arch"], int(meta["num_classes"]), small_input=meta["small_input"] == "True")
    model.load_state_dict(load_tensor_file(path)[0])
    return model.eval()


def run_checkpoints(run_dir: str | Path, last: int | None = None) -> list[TracInCheckpoint]:
    """The run's kept checkpoints in epoch order (only the ``last`` few if given), each weighted
    by its mean learning rate times the epochs it covers."""
    run_dir = Path(run_dir)
    kept = kept_checkpoints(run_dir)
    if not kept:
        raise FileNotFoundError(f"{run_dir / KEPT_DIR} holds no kept checkpoints: TracIn needs them; "
                                "train with --keep-checkpoints every=N (e.g. every=1 for short runs)")
    return kept_tracin_checkpoints(kept, load_kept_model, last)


@dataclass
class RunData:
    """The training images of a run without augmentation, in id order, and its class names."""

    train: Dataset
    classes: list[str]
    image_size: int | None
    spec: str

    def loader(self, batch_size: int) -> DataLoader:
        from consistcam.data import collate

        return DataLoader(self.train, batch_size=batch_size, shuffle=False, collate_fn=collate)


def run_data(run_dir: str | Path) -> RunData:
    """The run's training split as it was trained (same data spec, image size and subset), un-augmented."""
    from consistcam.data import build_dataset, build_transform

    cfg = read_config(run_dir, hint=f"is {run_dir} a run folder?")
    spec, size = cfg.get("data", "demo"), cfg.get("image_size")
    train = build_dataset(spec, "train", build_transform(size, "none"), skip_bad=True) if cfg.get("skip_bad") else \
        build_dataset(spec, "train", build_transform(size, "none"))
    train.keep_locations = False
    subset = cfg.get("subset")
    ds: Dataset = Subset(train, range(min(subset, len(train)))) if subset else train
    return RunData(ds, train.classes, size, spec)


def load_test_images(tests: Sequence[str], data: RunData) -> tuple[Tensor, Tensor | None, list[str]]:
    """Images from files (resized to the run's image size) or ``SPLIT:INDEX`` references into the
    run's data (``test:12``); returns (images (T, 3, H, W), labels (-1 where unknown), names)."""
    from consistcam.data import build_dataset, build_transform, read_rgb

    images, labels, names = [], [], []
    splits: dict[str, Dataset] = {}
    shape = tuple(data.train[0]["image"].shape[-2:])
    for item in tests:
        split, sep, index = item.rpartition(":")
        if not Path(item).exists() and sep and index.isdigit() and split:
            if split not in splits:
                try:
                    splits[split] = build_dataset(data.spec, split, build_transform(data.image_size, "none"))
                except (ValueError, FileNotFoundError) as err:
                    raise ValueError(f"--test {item!r}: cannot read split {split!r} of {data.spec} ({err})") from None
            ds = splits[split]
            if int(index) >= len(ds):
                raise ValueError(f"--test {item!r}: split {split!r} has {len(ds)} images")
            sample = ds[int(index)]
            images.append(sample["image"])
            labels.append(int(sample["label"]))
        else:
            if not Path(item).is_file():
                raise FileNotFoundError(f"--test {item!r}: no such image file (or SPLIT:INDEX of the run's data)")
            img = read_rgb(item).float().div(255)[None]
            if tuple(img.shape[-2:]) != shape:
                img = F.interpolate(img, size=shape, mode="bilinear", antialias=True, align_corners=False)
            images.append(img[0])
            labels.append(-1)
        names.append(item)
    return torch.stack(images), torch.tensor(labels), names


@torch.no_grad()
def predict(model: nn.Module, images: Tensor, device: torch.device) -> Tensor:
    from consistcam.models.state import preserved_state

    with preserved_state(model, eval_mode=True):
        return model(images.to(device)).argmax(1).cpu()


def influence_for_run(run: str | Path, tests: Sequence[str] = (), *, self_influence: bool = False, top: int = 10,
                      params: str = "last", projection: int | None = None, last: int | None = None, seed: int = 0,
                      batch_size: int = 256, device: str = "auto", out: str | Path | None = None,
                      progress: bool = False) -> tuple[TracInResult, Path]:
    """TracIn of a run: influence of every training sample on each test image (labelled with its
    true class for ``SPLIT:INDEX``, with the final model's prediction for files) and/or the
    self-influence ranking. Writes OUT/influence.safetensors and OUT/influence.html."""
    run_dir = Path(run)
    if not tests and not self_influence:
        raise ValueError("nothing to do: give --test IMAGES and/or --self")
    if top < 1:
        raise ValueError(f"--top must be >= 1, got {top}")
    checkpoints = run_checkpoints(run_dir, last)
    data = run_data(run_dir)
    dev = resolve_device(device, run_dir)
    test_batch, names = None, []
    if tests:
        images, labels, names = load_test_images(tests, data)
        final, _ = load_model(run_dir, dev) if model_path(run_dir).is_file() else \
            (checkpoints[-1].load().to(dev), None)
        labels = torch.where(labels < 0, predict(final, images, dev), labels)
        test_batch = {"image": images, "label": labels, "id": torch.arange(len(images))}
    result = tracin(checkpoints, classifier_gradients(params, projection, seed), data.loader(batch_size), test_batch,
                    device=dev, progress=progress)
    out_dir = Path(out) if out is not None else run_dir / INFLUENCE_DIR
    tensors = {"ids": result.ids, "self_influence": result.self_influence}
    if result.influence is not None:
        tensors.update(influence=result.influence, test_labels=test_batch["label"])
    meta = {"run": str(run_dir), "tests": json.dumps(names), "params": str(params),
            "projection": json.dumps(projection), "checkpoints": json.dumps([c.name for c in checkpoints]),
            "weights": json.dumps([c.weight for c in checkpoints])}
    atomic_save_tensors({k: v.contiguous() for k, v in tensors.items()}, out_dir / INFLUENCE_FILE, meta)
    rows = _rows(result, data, test_batch, names, top, self_influence)
    note = (f"TracInCP over {len(checkpoints)} checkpoints ({', '.join(c.name for c in checkpoints)}), "
            f"{params} parameters" + (f", random projection to {projection} dims" if projection else "")
            + ". Proponents lowered the test loss when trained on, opponents raised it.")
    page = write_grid_html(out_dir / INFLUENCE_PAGE_FILE, f"TracIn: {run_dir.name}", rows, note)
    return result, page


def _label(classes: list[str], c: int) -> str:
    return classes[c] if 0 <= c < len(classes) else str(c)


def _rows(result: TracInResult, data: RunData, test_batch: dict | None, names: list[str], top: int,
          self_influence: bool) -> list[Row]:
    rows = []
    position = {int(i): n for n, i in enumerate(result.ids)}
    for t, name in enumerate(names):
        label = int(test_batch["label"][t])
        rows.append(Row(f"test {name} (explained as {_label(data.classes, label)})",
                        [(test_batch["image"][t], f"test: {_label(data.classes, label)}")]))
        for kind, (ids, scores) in (("proponents", result.proponents(t, top)), ("opponents", result.opponents(t, top))):
            cells = []
            for i, s in zip(ids.tolist(), scores.tolist()):
                sample = data.train[position[i]]
                cells.append((sample["image"], f"#{i} {_label(data.classes, int(sample['label']))} {s:+.3g}"))
            rows.append(Row(f"top {len(cells)} {kind} of {name}", cells))
    if self_influence:
        ids, scores = result.most_self_influential(top)
        cells = []
        for i, s in zip(ids.tolist(), scores.tolist()):
            sample = data.train[position[i]]
            cells.append((sample["image"], f"#{i} {_label(data.classes, int(sample['label']))} {s:.3g}"))
        rows.append(Row(f"top {len(cells)} training samples by self-influence (mislabelled, unusual or hard)", cells))
    return rows
