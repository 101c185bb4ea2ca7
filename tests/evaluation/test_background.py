"""Batched background variants against the per-sample data set they replace in the evaluation."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader

from consistcam.data import BackgroundVariant, DemoShapes, build_dataset, build_transform, collate
from consistcam.data.base import LocatedDataset
from consistcam.evaluation import RELIANCE_VARIANTS, background_reliance
from consistcam.evaluation.background import _Batch, _Sources
from tests.helpers import TinyNet


class Boxed(LocatedDataset):
    """Random images with one or two boxes each and no pixel masks, of the given sizes in turn
    (two sizes: no batch can be stacked untransformed)."""

    has_boxes = True

    def __init__(self, sizes: tuple[int, ...]) -> None:
        super().__init__(None)
        self.classes = ["a", "b"]
        self.labels = [i % 2 for i in range(8)]
        g = torch.Generator().manual_seed(0)
        self.images = [torch.randint(0, 256, (3, s, s), generator=g, dtype=torch.uint8) for s in sizes * 8][:8]

    def __len__(self) -> int:
        return 8

    def load(self, index: int):
        s = self.images[index].shape[-1]
        boxes = torch.tensor([[2.0, 3.0, s - 5.0, s - 2.0], [0.5, 1.0, 4.0, 6.5]])[: 1 + index % 2]
        return self.images[index], self.labels[index], boxes, None


@pytest.mark.parametrize("data", ["demo", "shortcut", "boxed", "two_sizes"])
def test_batched_variants_are_the_per_sample_variants(data):
    ds = {"demo": lambda: DemoShapes("test", n=40, num_classes=3, size=24, seed=1),
          "shortcut": lambda: build_dataset("shortcut:demo:n=80,n_test=40,num_classes=3,size=24", "test"),
          "boxed": lambda: Boxed((20,)), "two_sizes": lambda: Boxed((20, 24))}[data]()
    transform = build_transform(16)  # a resize: batched and per-sample resizing must agree
    n = min(len(ds), 40)
    partners = {v: BackgroundVariant(ds, v, seed=2).partner for v in RELIANCE_VARIANTS if v.startswith("mixed")}
    sources = _Sources(ds, partners, n)
    batch = _Batch([sources[i] for i in range(n)], "cpu")
    for variant in RELIANCE_VARIANTS:
        per_sample = BackgroundVariant(ds, variant, seed=2, transform=transform)
        expected = collate([per_sample[i] for i in range(n)])["image"]
        assert torch.equal(batch.variant(variant, transform), expected), variant


def test_background_reliance_equals_the_per_sample_loop():
    torch.manual_seed(0)
    model = TinyNet(3).eval()
    with torch.no_grad():
        for m in model.modules():  # non-trivial BatchNorm statistics, for the folded copy to fold
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
    ds = DemoShapes("test_correlated", n=60, num_classes=3, size=24, seed=3)
    transform = build_transform()
    got = background_reliance(model, ds, transform, seed=4, batch_size=16, subset=50)
    for variant in RELIANCE_VARIANTS:
        view = torch.utils.data.Subset(BackgroundVariant(ds, variant, seed=4, transform=transform), range(50))
        correct = sum((model(b["image"]).argmax(1) == b["label"]).sum().item()
                      for b in DataLoader(view, batch_size=16, collate_fn=collate))
        assert got[f"bg/{variant}"] == pytest.approx(correct / 50, abs=1e-6), variant
    assert got["bg_gap"] == pytest.approx(got["bg/mixed_same"] - got["bg/mixed_rand"])
    assert not any(p.requires_grad is False for p in model.parameters())  # the model is not frozen
