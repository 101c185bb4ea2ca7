"""pytorch-grad-cam as the reference implementation, shared by the explain tests."""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

import pytest
import torch
from torch import Tensor, nn

from consistcam.explain import explain

pgc = pytest.importorskip("pytorch_grad_cam")
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget  # noqa: E402

REFERENCE = {
    "gradcam": pgc.GradCAM,
    "gradcam++": pgc.GradCAMPlusPlus,
    "xgradcam": pgc.XGradCAM,
    "layercam": pgc.LayerCAM,
    "hirescam": pgc.HiResCAM,
    "scorecam": pgc.ScoreCAM,
}
TARGETS = [3, 7, 0, 9]


def reference_maps(model: nn.Module, images: Tensor, method: str, targets: Sequence[int], layer: str = "layer4",
                   reshape_transform: Callable[[Tensor], Tensor] | None = None) -> Tensor:
    """pytorch-grad-cam's (N, 1, H, W) maps on a copy of ``model`` (it switches the model to eval)."""
    ref_model = copy.deepcopy(model)
    with REFERENCE[method](model=ref_model, target_layers=[ref_model.get_submodule(layer)],
                           reshape_transform=reshape_transform) as cam:
        if method == "scorecam":
            cam.batch_size = 64
        out = cam(input_tensor=images, targets=[ClassifierOutputTarget(t) for t in targets])
    return torch.from_numpy(out)[:, None]


def assert_matches_reference(model: nn.Module, images: Tensor, method: str, layer: str = "layer4", **kwargs) -> None:
    """Our maps for :data:`TARGETS` equal pytorch-grad-cam's to 1e-4 (both min-max scaled)."""
    ours = explain(model, images, torch.tensor(TARGETS), explainer=method, layer=layer, **kwargs)
    ref = reference_maps(model, images, method, TARGETS, layer, kwargs.get("reshape_transform"))
    assert ours.shape == ref.shape == (len(TARGETS), 1, *images.shape[-2:])
    assert ours.amax() > 0.99  # not a degenerate all-zero comparison
    assert (ours - ref).abs().max() <= 1e-4
