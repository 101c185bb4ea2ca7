"""Batched Grad-CAM throughput: consistcam vs pytorch-grad-cam, torchcam and captum.

torchvision resnet50 (random weights), eval mode, batch 16 at 160 px by default (``--batch``, ``--size``),
on the CPU or a CUDA GPU (``--device``); each call produces the upsampled (N, H, W) maps for given target
classes and, on a GPU, ends with ``torch.cuda.synchronize``. A peer that is not installed is skipped with
a note. Run (from the repo root):

    PYTHONPATH=src python benchmarks/bench_gradcam.py [--device cuda --batch 64 --size 224] [--json out.jsonl]
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch.nn.functional as F

from _common import bench, installed, machine, report, resnet50_setup, synchronized, throughput, write_json
from consistcam.explain import explain

OURS = "consistcam"


def peers(model, x, targets) -> tuple[dict[str, Callable[[], object]], list[str]]:
    """The installed peers' Grad-CAM calls, each on its own copy of the model (their hooks stay there),
    and the names of the missing ones."""
    calls: dict[str, Callable[[], object]] = {}
    missing: list[str] = []
    if installed("pytorch_grad_cam"):
        try:
            from pytorch_grad_cam import GradCAM
            from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
        except ImportError as err:  # the package imports scikit-learn and scipy eagerly
            missing.append(f"pytorch-grad-cam ({err})")
        else:
            pgc_model = copy.deepcopy(model)
            pgc = GradCAM(model=pgc_model, target_layers=[pgc_model.layer4])
            pgc_targets = [ClassifierOutputTarget(int(t)) for t in targets]
            calls["pytorch-grad-cam"] = lambda: pgc(input_tensor=x, targets=pgc_targets)
    else:
        missing.append("pytorch-grad-cam (pip install grad-cam)")
    if installed("torchcam"):
        from torchcam.methods import GradCAM as TorchCamGradCAM

        tc_model = copy.deepcopy(model)
        tc = TorchCamGradCAM(tc_model, target_layer="layer4")
        classes = targets.tolist()

        def torchcam_call():
            maps = tc(classes, tc_model(x))[0]
            return F.interpolate(maps[:, None], size=x.shape[-2:], mode="bilinear", align_corners=False)
        calls["torchcam"] = torchcam_call
    else:
        missing.append("torchcam (pip install torchcam)")
    if installed("captum"):
        from captum.attr import LayerAttribution, LayerGradCam

        cap_model = copy.deepcopy(model)
        cap = LayerGradCam(cap_model, cap_model.layer4)

        def captum_call():
            attr = cap.attribute(x, target=targets, relu_attributions=True)
            return LayerAttribution.interpolate(attr, x.shape[-2:], "bilinear")
        calls["captum"] = captum_call
    else:
        missing.append("captum (pip install captum)")
    return calls, missing


def main() -> None:
    args, model, x, targets = resnet50_setup(__doc__)
    contenders = {OURS: lambda: explain(model, x, targets, method="gradcam")}
    others, missing = peers(model, x, targets)
    contenders.update(others)
    for note in missing:
        print(f"note: skipped {note}: not installed")
    medians = bench({k: synchronized(fn, x.device) for k, fn in contenders.items()}, repeats=args.repeats)
    report(f"Grad-CAM, resnet50, batch {args.batch}, {args.size} px, {x.device}", medians, OURS, args.batch)
    write_json(args.json, {"bench": "gradcam", "arch": "resnet50", "batch": args.batch, "size": args.size,
                           "repeats": args.repeats, **throughput(medians, args.batch, OURS), "skipped": missing,
                           "machine": machine(x.device)})


if __name__ == "__main__":
    main()
