from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torchvision

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

GPU_SKIP_REASON = "needs a CUDA GPU (torch.cuda.is_available() is False)"


def pytest_collection_modifyitems(config, items):
    """Skip tests marked ``gpu`` on a machine without CUDA (CI), with the reason in the summary."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason=GPU_SKIP_REASON)
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


SHARED = Path(__file__).resolve().parents[1].parent / "shared"
TINY_IMAGENET = SHARED / "data" / "tiny-imagenet-10"


@pytest.fixture
def resnet18():
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).eval()
    return model


@pytest.fixture
def images():
    g = torch.Generator().manual_seed(1)
    return torch.rand(4, 3, 64, 64, generator=g)


def requires_tiny_imagenet():
    return pytest.mark.skipif(
        not (TINY_IMAGENET / "wnids.txt").exists(),
        reason=f"real data not found at {TINY_IMAGENET} (../shared/data is provided beside the repo in CI)",
    )
