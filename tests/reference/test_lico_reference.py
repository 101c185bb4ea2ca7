"""LICO's manifold alignment and optimal transport against a port of its authors' code.

Origin: ymLeiFDU/LICO at commit 12fee2a: ``utils/label_mapping.py::pdists`` / ``sim_matrix_pre``,
``models/wideresnet_prompt.py::WideResNet._emb_SimMatrix`` and the OT lines of ``forward``,
``models/modules/sinkhorn_distance.py::SinkhornDistance`` (itself adapted from gpeyre/SinkhornAutoDiff)
and ``main.py`` (``nn.KLDivLoss(log_target=False, reduction='batchmean')``). The repository carries no
licence file; the port restates those functions for this test only (CPU instead of ``.cuda()``).

Both sides get the strategy's own inputs: the pooled image features, the labels' prompt features,
tau, the projected local features and the label prompts' content tokens, from one ``terms`` call on a
model in train or in eval mode. The reference computes plan *and* cost under ``torch.no_grad()``, so
its OT term has no gradient; the gradient compared is that of its value with the plan held fixed,
sum(P* C(x, y)), which is what the strategy differentiates (docs/methods.md).
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from consistcam.models import create
from consistcam.models.text import encoder_problem
from consistcam.train.methods import MethodContext, build_method
from consistcam.train.methods._shared import classifier_inputs
from consistcam.train.methods.lico import sinkhorn_plan, transport_loss
from consistcam.train.task import Task
from tests.reference.compare import cosine, flat_grad, relative_error


# ---- port of the reference (ymLeiFDU/LICO 12fee2a; no licence file) ----
def ref_pdists(a):
    a = F.normalize(a, dim=1)
    prod = torch.mm(a, a.t())
    norm = prod.diag().unsqueeze(1).expand_as(prod)
    return (norm + norm.t() - 2 * prod).clamp(min=1e-4).sqrt()


def ref_manifold_alignment(emb, text_features, temp):
    """``_emb_SimMatrix`` (image), ``sim_matrix_pre`` (text, rows of the labels), ``kl(emb_matrix.log(), ...)``."""
    emb_matrix = F.softmax(ref_pdists(emb) / temp, dim=1)
    label_distribution = F.softmax(ref_pdists(text_features) / temp, dim=1)
    return nn.KLDivLoss(log_target=False, reduction="batchmean")(emb_matrix.log(), label_distribution)


def ref_sinkhorn(x, y, eps=0.1, max_iter=100, thresh=1e-3):
    """``SinkhornDistance.forward`` for one sample (x (n, D), y (m, D)): returns (pi, C)."""
    C = torch.sum(torch.abs(x.unsqueeze(-2) - y.unsqueeze(-3)) ** 2, -1)
    mu = torch.full((x.shape[-2],), 1.0 / x.shape[-2])
    nu = torch.full((y.shape[-2],), 1.0 / y.shape[-2])
    u, v = torch.zeros_like(mu), torch.zeros_like(nu)

    def M(C, u, v):
        return (-C + u.unsqueeze(-1) + v.unsqueeze(-2)) / eps

    for _ in range(max_iter):
        u1 = u
        u = eps * (torch.log(mu + 1e-8) - torch.logsumexp(M(C, u, v), dim=-1)) + u
        v = eps * (torch.log(nu + 1e-8) - torch.logsumexp(M(C, u, v).transpose(-2, -1), dim=-1)) + v
        err = (u - u1).abs().sum(-1).mean()
        if err.item() < thresh:
            break
    return torch.exp(M(C, u, v)), C


def ref_w_loss(feature_maps, text_features_w, eps, max_iter, thresh=1e-3):
    """``w_loss = torch.sum(P * C, dim=(-2, -1)).mean()`` after ``F.normalize`` of both point sets; the plan
    under ``no_grad`` as theirs, the cost recomputed with the graph (their cost has none)."""
    losses = []
    for x, y in zip(feature_maps, text_features_w):
        x, y = F.normalize(x, dim=-1), F.normalize(y, dim=-1)
        with torch.no_grad():
            P, _ = ref_sinkhorn(x, y, eps, max_iter, thresh)
        losses.append(torch.sum(P * torch.sum(torch.abs(x.unsqueeze(-2) - y.unsqueeze(-3)) ** 2, -1)))
    return torch.stack(losses).mean()
# ---- end of the port ----


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    if encoder_problem("hf:.") is not None:
        pytest.skip("transformers not installed (lico extra)")
    from tests.train.test_lico import _tiny_clip  # the random two-layer CLIP of the strategy's own tests

    folder = tmp_path_factory.mktemp("tiny_clip")
    _tiny_clip(folder)
    return folder


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_manifold_alignment_and_transport_match_the_reference_on_the_strategy_inputs(tiny_clip, mode):
    torch.manual_seed(0)
    model = create("cc_resnet10", 4).train(mode == "train")
    strategy = build_method("lico", {"class_names": ("disk", "square", "triangle", "cross"), "n_ctx": 2,
                                       "text_encoder": f"clip:{tiny_clip}", "ot_tol": 0.0})
    strategy.setup(MethodContext(model=model, device=torch.device("cpu"), task=Task(), num_samples=6,
                                   train_ids=torch.arange(6)))
    twin = copy.deepcopy(model)
    g = torch.Generator().manual_seed(3)
    images, labels = torch.rand(6, 3, 16, 16, generator=g), torch.tensor([0, 1, 2, 3, 0, 1])
    t = strategy.terms(images, labels)
    with classifier_inputs(twin.model.fc) as pooled:
        twin(images)
    text = strategy.text_features()
    tau = strategy.temperature.clamp(min=0.01)
    ma = ref_manifold_alignment(pooled[0], text.sentence[labels], tau)
    # a KL of ~0.006 between near-equal softmaxes: float32 cancellation puts its relative error near
    # 1e-5 and how near depends on the CPU's kernels (1.15e-5 on one CI VM), so 1e-4 with the gradient
    assert t["ma"].item() == pytest.approx(ma.item(), rel=1e-4)
    shared = [strategy.context, strategy.temperature, *strategy.encoder.parameters()]
    g_ours = flat_grad(t["ma"], list(model.parameters()) + shared)
    g_ref = flat_grad(ma, list(twin.parameters()) + shared)
    assert cosine(g_ours, g_ref) > 0.99999 and relative_error(g_ours, g_ref) < 1e-4

    # OT on the same point sets: the h*w projected local vectors and the content tokens of each label's prompt
    local = strategy.projection(t["local"].flatten(2).transpose(1, 2))
    tokens = [text.tokens[y][text.content[y]] for y in labels]
    w = ref_w_loss(local, tokens, 0.1, 100, thresh=0.0)  # fixed iteration count on both sides
    assert t["ot"].item() == pytest.approx(w.item(), rel=1e-5)
    g_ours = flat_grad(t["ot"], list(model.parameters()) + shared + list(strategy.projection.parameters()))
    g_ref = flat_grad(w, list(model.parameters()) + shared + list(strategy.projection.parameters()))
    assert cosine(g_ours, g_ref) > 0.99999 and relative_error(g_ours, g_ref) < 1e-4


def test_sinkhorn_plan_matches_the_reference_with_and_without_early_stopping():
    g = torch.Generator().manual_seed(4)
    x, y = F.normalize(torch.randn(3, 9, 8, generator=g), dim=2), F.normalize(torch.randn(3, 5, 8, generator=g), dim=2)
    cost = (2 - 2 * x @ y.transpose(1, 2)).clamp(min=0)
    ours = sinkhorn_plan(cost, eps=0.1, iters=100, tol=0)
    for b in range(3):
        ref, ref_cost = ref_sinkhorn(x[b], y[b], 0.1, 100, thresh=0.0)
        assert torch.allclose(cost[b], ref_cost, atol=1e-6)
        assert torch.allclose(ours[b], ref, atol=1e-6)
    # the default stopping rule (theirs: checked every iteration; ours: every 10th) moves the value < 1e-3
    early = transport_loss(x, y, eps=0.1, iters=100, tol=1e-3)
    ref_early = ref_w_loss(x, y, 0.1, 100, thresh=1e-3)
    assert early.item() == pytest.approx(ref_early.item(), rel=1e-3)
