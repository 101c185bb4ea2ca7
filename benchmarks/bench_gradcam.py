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


def _pytorch_grad_cam(model, x, targets) -> Callable[[], object]:
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    pgc = GradCAM(model=model, target_layers=[model.layer4])
    pgc_targets = [ClassifierOutputTarget(int(t)) for t in targets]
    return lambda: pgc(input_tensor=x, targets=pgc_targets)


def _torchcam(model, x, targets) -> Callable[[], object]:
    from torchcam.methods import GradCAM

    tc = GradCAM(model, target_layer="layer4")
    classes = targets.tolist()

    def call():
        maps = tc(classes, model(x))[0]
        return F.interpolate(maps[:, None], size=x.shape[-2:], mode="bilinear", align_corners=False)
    return call


def _captum(model, x, targets) -> Callable[[], object]:
    from captum.attr import LayerAttribution, LayerGradCam

    cap = LayerGradCam(model, model.layer4)

    def call():
        attr = cap.attribute(x, target=targets, relu_attributions=True)
        return LayerAttribution.interpolate(attr, x.shape[-2:], "bilinear")
    return call


# name: (module to look for, pip package, builder)
PEERS = {"pytorch-grad-cam": ("pytorch_grad_cam", "grad-cam", _pytorch_grad_cam),
         "torchcam": ("torchcam", "torchcam", _torchcam),
         "captum": ("captum", "captum", _captum)}


def peers(model, x, targets) -> tuple[dict[str, Callable[[], object]], list[str]]:
    """The peers' Grad-CAM calls, each on its own copy of the model (their hooks stay there), and a note for
    each peer that is missing or does not import (pytorch-grad-cam imports scikit-learn and scipy)."""
    calls: dict[str, Callable[[], object]] = {}
    missing: list[str] = []
    for name, (module, package, build) in PEERS.items():
        if not installed(module):
            missing.append(f"{name}: not installed (pip install {package})")
            continue
        try:
            calls[name] = build(copy.deepcopy(model), x, targets)
        except Exception as err:  # a broken install of a peer is a note, not the end of the benchmark
            missing.append(f"{name}: {type(err).__name__}: {err}")
    return calls, missing


def main() -> None:
    args, model, x, targets = resnet50_setup(__doc__)
    contenders = {OURS: lambda: explain(model, x, targets, explainer="gradcam")}
    if x.device.type == "cuda":  # is the channels-last forward (the CPU default) worth it on the GPU too?
        contenders[f"{OURS} channels_last"] = lambda: explain(model, x, targets, explainer="gradcam",
                                                              channels_last=True)
    others, missing = peers(model, x, targets)
    contenders.update(others)
    for note in missing:
        print(f"note: skipped {note}")
    medians = bench({k: synchronized(fn, x.device) for k, fn in contenders.items()}, repeats=args.repeats)
    report(f"Grad-CAM, resnet50, batch {args.batch}, {args.size} px, {x.device}", medians, OURS, args.batch)
    write_json(args.json, {"bench": "gradcam", "arch": "resnet50", "batch": args.batch, "size": args.size,
                           "repeats": args.repeats, **throughput(medians, args.batch, OURS), "skipped": missing,
                           "machine": machine(x.device)})


if __name__ == "__main__":
    main()
