"""CGC against a port of its authors' loss.

Origin: UCDvision/CGC at commit a66d872 (MIT licence, Copyright (c) 2022 UCDvision):
``models/utils.py`` (``compute_gradcam``, ``compute_gradcam_mask``, ``perform_gradcam_aug``),
``models/resnet_multigpu_cgc.py::ResNet.forward`` (the CGC loss) and ``train_eval_cgc.py::NCESoftmaxLoss``.
Ported to CPU and to any input size (theirs: ``.cuda()``, 224 px); the CE term on their extra
independently augmented view is left out (the trainer's batch plays that role, docs/methods.md).

Both sides get the same model, images, labels and crop boxes (torchvision's whole-pixel i, j, h, w and
flip flags); each makes T(x) and the crop of the map its own way: the reference slices and resizes one
image at a time, the strategy clamps a batched ``grid_sample`` to the box. They agree to float rounding.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from consistcam.models import create
from consistcam.train.methods import MethodContext, build_method
from consistcam.train.methods.crops import resized_crop_flip
from consistcam.train.methods.lico import layer_outputs
from consistcam.train.task import Task
from tests.reference.compare import cosine, flat_grad, pixel_boxes, ref_resized_crop_flip, relative_error

SIZE, N, LAM, TAU = 32, 8, 0.5, 0.5


# ---- port of the reference (MIT, UCDvision/CGC a66d872) ----
def ref_compute_gradcam(output, feats, target):
    one_hot = torch.zeros_like(output)
    one_hot[torch.arange(len(output)), target] = 1
    (dy_dz1,) = torch.autograd.grad(torch.sum(one_hot * output), feats, retain_graph=True, create_graph=True)
    return F.relu((dy_dz1 * feats).sum(dim=1))


def ref_compute_gradcam_mask(images_outputs, images_feats, target, size):
    eps = 1e-8
    mask = ref_compute_gradcam(images_outputs, images_feats, target).unsqueeze(1)
    mask = F.interpolate(mask, size=size, mode="bilinear").squeeze(1)
    mask_sum = mask.sum(dim=[1, 2]).unsqueeze(-1).unsqueeze(-1)
    return (mask / (mask_sum + eps)) + eps


def ref_perform_gradcam_aug(orig_mask, i, j, h, w, hor_flip, size):
    out = torch.zeros_like(orig_mask)
    for b in range(len(orig_mask)):
        crop = orig_mask[b][i[b]:i[b] + h[b], j[b]:j[b] + w[b]]
        crop = F.interpolate(crop[None, None], size=size, mode="bilinear")[0, 0]
        out[b] = crop.flip(-1) if hor_flip[b] else crop
    return out


def ref_cgc_loss(forward_vanilla, images, aug_images, params, targets, temperature):
    """``ResNet.forward``: separate forwards of the image and of its crop; returns (xe_loss, sim_loss)."""
    size = images.shape[-2:]
    images_outputs, images_feats = forward_vanilla(images)
    target = images_outputs.detach().argmax(-1)
    orig_mask = ref_compute_gradcam_mask(images_outputs, images_feats, target, size)
    aug_outputs, aug_feats = forward_vanilla(aug_images)
    aug_mask = ref_compute_gradcam_mask(aug_outputs, aug_feats, target, size)
    orig_aug_mask = ref_perform_gradcam_aug(orig_mask, *params, size)
    aug_mask = aug_mask.flatten(1) / aug_mask.flatten(1).norm(2, dim=1, keepdim=True)
    orig_aug_mask = orig_aug_mask.flatten(1) / orig_aug_mask.flatten(1).norm(2, dim=1, keepdim=True)
    xe_loss = F.cross_entropy(images_outputs, targets) + F.cross_entropy(aug_outputs, targets)
    pos = (aug_mask * orig_aug_mask).sum(1)
    bsize = pos.shape[0]
    neg = torch.mm(aug_mask, aug_mask.transpose(1, 0))
    neg = neg[(1 - torch.eye(bsize)).bool()].view(-1, bsize - 1)
    out = torch.cat((pos.view(bsize, 1), neg), dim=1) / temperature  # NCESoftmaxLoss
    return xe_loss, F.cross_entropy(out, torch.zeros(bsize, dtype=torch.long))
# ---- end of the port ----


def _case(seed: int = 0, n: int = N):
    torch.manual_seed(seed)
    model = create("cc_resnet10", 4)
    g = torch.Generator().manual_seed(seed + 1)
    images, labels = torch.rand(n, 3, SIZE, SIZE, generator=g), torch.randint(0, 4, (n,), generator=g)
    transforms = resized_crop_flip(n, (SIZE, SIZE), generator=g)
    return model, images, labels, transforms, pixel_boxes(transforms, (SIZE, SIZE))


def _project(model, images, labels, transforms, **options):
    strategy = build_method("cgc", {"lam": LAM, "temperature": TAU, **options})
    strategy.setup(MethodContext(model=model, device=torch.device("cpu"), task=Task(), num_samples=len(images),
                                   train_ids=torch.arange(len(images))))
    return strategy.terms(images, labels, transforms)


def _reference(model, images, labels, params):
    """The reference's loss terms, its second view made its own way (``tvf.resized_crop`` + ``hflip``)."""
    def forward_vanilla(x):
        with layer_outputs(model.model.layer4) as feats:
            return model(x), feats[0]

    return ref_cgc_loss(forward_vanilla, images, ref_resized_crop_flip(images, *params), params, labels, TAU)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_default_loss_and_gradient_match_the_reference(mode, seed):
    """Each side builds T(x) and T(G(x)) its own way from the same boxes; they agree to float32 rounding."""
    model, images, labels, transforms, params = _case(seed)
    model.train(mode == "train")
    twin = copy.deepcopy(model)
    ours = _project(model, images, labels, transforms)
    xe, sim = _reference(twin, images, labels, params)
    assert ours["ce"].item() == pytest.approx(xe.item(), rel=1e-5)
    assert ours["contrastive"].item() == pytest.approx(sim.item(), rel=1e-5)
    for ours_loss, ref_loss in ((ours["contrastive"], sim), (ours["ce"] + LAM * ours["contrastive"], xe + LAM * sim)):
        g_ours = flat_grad(ours_loss, list(model.parameters()))
        g_ref = flat_grad(ref_loss, list(twin.parameters()))
        assert cosine(g_ours, g_ref) > 0.999
        assert relative_error(g_ours, g_ref) < 1e-3
    for (name, buf), ref in zip(model.named_buffers(), twin.buffers(), strict=True):  # one update per view
        assert torch.allclose(buf, ref, atol=1e-6), name


def test_joint_forward_changes_the_train_mode_gradient():
    """The option the project used to default to: one forward of [x; T(x)]. Same loss in eval mode;
    in train mode BatchNorm mixes the views' statistics and the InfoNCE gradient turns away from the
    reference's (what docs/methods.md reports)."""
    model, images, labels, transforms, params = _case()
    twin = copy.deepcopy(model)
    ours = _project(model.train(), images, labels, transforms, forward="joint")
    _, sim = _reference(twin.train(), images, labels, params)
    g_ours = flat_grad(ours["contrastive"], list(model.parameters()))
    assert cosine(g_ours, flat_grad(sim, list(twin.parameters()))) < 0.9
    model, images, labels, transforms, params = _case()  # fresh running statistics
    twin = copy.deepcopy(model.eval())
    ours = _project(model, images, labels, transforms, forward="joint")
    _, sim = _reference(twin.eval(), images, labels, params)
    assert ours["contrastive"].item() == pytest.approx(sim.item(), rel=1e-5)
    g_ours = flat_grad(ours["contrastive"], list(model.parameters()))
    assert cosine(g_ours, flat_grad(sim, list(twin.parameters()))) > 0.999
