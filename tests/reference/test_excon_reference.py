"""ExCon against a port of its authors' masked views and SupCon loss.

Origin: DarrenZhang01/ExCon at commit 2467c2f: ``ExCon/data_aug.py::aug_no_bbox_mc`` and
``ExCon/explainer.py`` (captum ``LayerGradCam`` + ``LayerAttribution.interpolate``; repository licence
Apache-2.0) and ``ExCon/losses.py::SupConLoss`` (adapted from HobbitLong/SupContrast, BSD 2-Clause,
Copyright (c) 2020 Yonglong Tian). Ported to torch on CPU (theirs: numpy for the mask, ``.cuda()``),
captum's Grad-CAM written out (layer gradient averaged over space, weighted channel sum, no ReLU).
The reference works on normalised inputs; the port runs the inner network on (x - mean) / std. Both
sides get the same model, images, labels and crop boxes, and each makes its map and views its own way.
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

SIZE, N, CLASSES = 32, 8, 4


# ---- port of the reference (DarrenZhang01/ExCon 2467c2f; Apache-2.0, SupConLoss BSD-2 Yonglong Tian) ----
def ref_layer_grad_cam(model, layer, inputs, target, size, relu_attributions=False):
    """captum ``LayerGradCam.attribute`` (default relu_attributions=False) + ``LayerAttribution.interpolate``."""
    with layer_outputs(layer) as acts:
        out = model(inputs)
    (grads,) = torch.autograd.grad(out.gather(1, target[:, None]).sum(), acts[0])
    cam = (grads.mean((2, 3), keepdim=True) * acts[0]).sum(1, keepdim=True)
    cam = F.relu(cam) if relu_attributions else cam
    return F.interpolate(cam, size, mode="bilinear").squeeze(1).detach()


def ref_aug_no_bbox_mc(inputs, input_batch2, targets, explanation, model, tau, backup, n_cls):
    """Masked first views where the masked image is classified correctly, else the backup crop with the
    masked image appended to both batches under a background label (``--negative_pair=1``)."""
    explanation = explanation - explanation.amin((1, 2), keepdim=True)
    explanation = explanation / (explanation.amax((1, 2), keepdim=True) + 1e-8)
    drop = (explanation <= tau)[:, None].expand_as(inputs)
    augmented = torch.where(drop, torch.zeros_like(inputs), inputs)
    with torch.no_grad():
        preds_aug = model(augmented).argmax(1)
    new_inputs, new_targets = torch.zeros_like(inputs), targets.clone()
    flag = torch.zeros(len(targets), dtype=torch.bool)  # 1: rejected
    for i in range(len(targets)):
        if preds_aug[i] == targets[i]:  # whatever the prediction on the original
            new_inputs[i] = augmented[i]
        else:
            new_inputs[i] = backup[i]
            flag[i] = True
            new_inputs = torch.cat((new_inputs, augmented[i:i + 1]), dim=0)
            input_batch2 = torch.cat((input_batch2, augmented[i:i + 1]), dim=0)
            new_targets = torch.cat((new_targets, torch.tensor([n_cls])), dim=0)
    return new_inputs, input_batch2, new_targets, flag, drop[:, 0]


def ref_sup_con_loss(features, labels, actual_bsz, temperature=0.1, base_temperature=0.07):
    """``SupConLoss.forward`` with contrast_mode 'all' and ``opt.background_anchor == 0``."""
    batch_size = features.shape[0]
    labels = labels.contiguous().view(-1, 1)
    mask = torch.eq(labels, labels.T).float()
    mask[actual_bsz:] = 0
    mask[:, actual_bsz:] = 0
    contrast_count = features.shape[1]
    contrast_feature = torch.cat(torch.unbind(features, dim=1), dim=0)
    anchor_feature, anchor_count = contrast_feature, contrast_count
    anchor_dot_contrast = torch.div(torch.matmul(anchor_feature, contrast_feature.T), temperature)
    logits_max, _ = torch.max(anchor_dot_contrast, dim=1, keepdim=True)
    logits = anchor_dot_contrast - logits_max.detach()
    mask = mask.repeat(anchor_count, contrast_count)
    logits_mask = torch.scatter(torch.ones_like(mask), 1, torch.arange(batch_size * anchor_count).view(-1, 1), 0)
    mask = mask * logits_mask
    exp_logits = torch.exp(logits) * logits_mask
    log_prob = logits - torch.log(exp_logits.sum(1, keepdim=True))
    denominator = mask.sum(1)
    denominator[denominator == 0] = 1
    mean_log_prob_pos = (mask * log_prob).sum(1) / denominator
    loss = -(temperature / base_temperature) * mean_log_prob_pos
    return loss.view(anchor_count, batch_size).mean() * (batch_size / actual_bsz)
# ---- end of the port ----


def _case(mode: str, seed: int = 0):
    torch.manual_seed(seed)
    model = create("cc_resnet10", CLASSES).train(mode == "train")
    g = torch.Generator().manual_seed(seed + 1)
    images, labels = torch.rand(N, 3, SIZE, SIZE, generator=g), torch.randint(0, CLASSES, (N,), generator=g)
    crops = resized_crop_flip(2 * N, (SIZE, SIZE), (0.2, 1.0), generator=g)
    strategy = build_method("excon", {})
    strategy.setup(MethodContext(model=model, device=torch.device("cpu"), task=Task(), num_samples=N,
                                   train_ids=torch.arange(N)))
    return model, strategy, images, labels, crops


def _normalized(model, x):
    return (x - model.mean) / model.std


def _reference_views(twin, images, labels, crops):
    """The reference's views of the batch, made its way: the map at its layer (``layer4[-1].conv2`` of a
    ResNet of BasicBlocks) without ReLU, the random views sliced and resized image by image."""
    net = twin.model
    explanation = ref_layer_grad_cam(net, net.layer4[-1].conv2, _normalized(twin, images), labels, (SIZE, SIZE))
    backup, view2 = ref_resized_crop_flip(torch.cat([images, images]), *pixel_boxes(crops, (SIZE, SIZE))).split(N)
    return ref_aug_no_bbox_mc(_normalized(twin, images), _normalized(twin, view2), labels, explanation, net, 0.5,
                              _normalized(twin, backup), CLASSES), view2


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_masked_views_and_negatives_match_the_reference(mode, seed):
    """Each side explains and crops its own way; the masks agree on > 99 % of the pixels (all of them
    on these seeds: the same map up to float rounding), so the kept flags, views and negatives match."""
    model, strategy, images, labels, crops = _case(mode, seed)
    twin = copy.deepcopy(model)
    v = strategy.views(images, labels, crops)
    (view1, batch2, new_labels, flag, drop), view2 = _reference_views(twin, images, labels, crops)
    agree = ((v["masked"] != images).any(1) == drop).float().mean().item()
    assert agree > 0.99
    assert torch.equal(v["kept"], ~flag)
    r = len(new_labels) - N
    assert torch.allclose(_normalized(twin, v["view1"]), view1[:N], atol=1e-4)
    assert torch.allclose(v["view2"], view2, atol=1e-5)
    assert torch.allclose(_normalized(twin, v["negatives"]), view1[N:], atol=1e-4)
    assert torch.allclose(batch2[N:], view1[N:]) and torch.equal(new_labels[N:], torch.full((r,), CLASSES))


def test_the_test_batches_have_kept_and_rejected_images():
    """Otherwise the test above would not compare the backup crops, or the negatives, at all."""
    rejected = []
    for seed in range(3):
        model, _, images, labels, crops = _case("train", seed)
        rejected.append(_reference_views(model, images, labels, crops)[0][3].sum().item())
    assert 0 < min(rejected) and max(rejected) < N and sum(rejected) > 0


def test_the_former_map_disagrees_with_the_reference():
    """What the relu and layer defaults change: explain's former map (ReLU, after the block) keeps
    another mask on this untrained model (docs/methods.md)."""
    model, strategy, images, labels, crops = _case("train")
    former = build_method("excon", {"relu": True, "layer": "model.layer4"})
    former.setup(strategy.ctx)
    drop = _reference_views(copy.deepcopy(model), images, labels, crops)[0][4]
    assert ((former.views(images, labels, crops)["masked"] != images).any(1) == drop).float().mean() < 0.9


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_supcon_loss_and_gradient_match_the_reference_on_the_same_views(mode):
    model, strategy, images, labels, crops = _case(mode)
    twin, head = copy.deepcopy(model), copy.deepcopy(strategy.head)
    t = strategy.terms(images, labels, crops)
    v = t["views"]
    r = len(v["negatives"])
    first, second = torch.cat([v["view1"], v["negatives"]]), torch.cat([v["view2"], v["negatives"]])
    with layer_outputs(twin.model.avgpool) as pooled:  # SupConResNet: encoder, then the MLP head
        twin(torch.cat([first, second]))
    z = F.normalize(head(pooled[0].flatten(1)), dim=1)
    f1, f2 = z.split(N + r)
    ref_labels = torch.cat([labels, torch.full((r,), CLASSES)])
    ref = ref_sup_con_loss(torch.stack([f1, f2], 1), ref_labels, actual_bsz=N)
    assert t["supcon"].item() == pytest.approx(ref.item(), rel=1e-5)
    params = list(model.parameters()) + list(strategy.head.parameters())
    g_ours = flat_grad(t["supcon"], params)
    g_ref = flat_grad(ref, list(twin.parameters()) + list(head.parameters()))
    assert cosine(g_ours, g_ref) > 0.99999 and relative_error(g_ours, g_ref) < 1e-4
