"""Batched Grad-CAM throughput: consistcam vs pytorch-grad-cam, torchcam and captum.

torchvision resnet50 (random weights), batch 16, 160 px, CPU, eval mode; each call produces the
upsampled (N, H, W) maps for given target classes. Run: .venv/bin/python benchmarks/bench_gradcam.py
"""

from __future__ import annotations

import argparse
import copy

import torch
import torch.nn.functional as F
import torchvision

from _common import bench, report
from consistcam.explain import explain


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--size", type=int, default=160)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    torch.manual_seed(0)
    model = torchvision.models.resnet50().eval()
    x = torch.rand(args.batch, 3, args.size, args.size)
    targets = torch.randint(0, 1000, (args.batch,))

    from captum.attr import LayerAttribution, LayerGradCam
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    from torchcam.methods import GradCAM as TorchCamGradCAM

    pgc_model = copy.deepcopy(model)
    pgc = GradCAM(model=pgc_model, target_layers=[pgc_model.layer4])
    pgc_targets = [ClassifierOutputTarget(int(t)) for t in targets]
    tc_model = copy.deepcopy(model)
    tc = TorchCamGradCAM(tc_model, target_layer="layer4")
    cap_model = copy.deepcopy(model)
    cap = LayerGradCam(cap_model, cap_model.layer4)

    def torchcam_call():
        out = tc_model(x)
        maps = tc(targets.tolist(), out)[0]
        return F.interpolate(maps[:, None], size=x.shape[-2:], mode="bilinear", align_corners=False)

    def captum_call():
        attr = cap.attribute(x, target=targets, relu_attributions=True)
        return LayerAttribution.interpolate(attr, x.shape[-2:], "bilinear")

    contenders = {
        "consistcam": lambda: explain(model, x, targets, method="gradcam"),
        "pytorch-grad-cam": lambda: pgc(input_tensor=x, targets=pgc_targets),
        "torchcam": torchcam_call,
        "captum": captum_call,
    }
    medians = bench(contenders, repeats=args.repeats)
    report(f"Grad-CAM, resnet50, batch {args.batch}, {args.size} px, CPU", medians, "consistcam", args.batch)


if __name__ == "__main__":
    main()
