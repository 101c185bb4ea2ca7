"""Batched Grad-CAM throughput: consistcam vs pytorch-grad-cam, torchcam and captum.

torchvision resnet50 (random weights), batch 16, 160 px, CPU, eval mode; each call produces the
upsampled (N, H, W) maps for given target classes. Run: .venv/bin/python benchmarks/bench_gradcam.py
"""

from __future__ import annotations

import copy

import torch.nn.functional as F

from _common import bench, report, resnet50_setup
from consistcam.explain import explain


def main() -> None:
    args, model, x, targets = resnet50_setup(__doc__)

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
