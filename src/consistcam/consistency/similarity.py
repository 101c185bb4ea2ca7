"""Heatmap similarity S and prediction consistency P, batched: (N, ...) x (N, ...) -> (N,) in [0, 1].

Conventions for degenerate maps (all zeros or constant): two identical degenerate maps are fully
similar (1); a degenerate map against an informative one scores 0 (0.5 for Pearson's midpoint).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from consistcam._registry import Registry

SIMILARITIES: Registry = Registry("heatmap similarity")
PREDICTION_CONSISTENCIES: Registry = Registry("prediction consistency")


def _flat(h: Tensor) -> Tensor:
    return h.flatten(1).float()


@SIMILARITIES.register("cosine")
def cosine_similarity(h: Tensor, g: Tensor) -> Tensor:
    """Cosine of the flattened maps; maps are non-negative, so it lies in [0, 1]."""
    a, b = _flat(h), _flat(g)
    na, nb = a.norm(dim=1), b.norm(dim=1)
    both_zero = (na == 0) & (nb == 0)
    cos = (a * b).sum(1) / (na * nb).clamp_min(1e-12)
    return torch.where(both_zero, torch.ones_like(cos), cos.clamp(0, 1))


@SIMILARITIES.register("pearson")
def pearson_similarity(h: Tensor, g: Tensor) -> Tensor:
    """Pearson correlation rescaled from [-1, 1] to [0, 1]."""
    a, b = _flat(h), _flat(g)
    a = a - a.mean(1, keepdim=True)
    b = b - b.mean(1, keepdim=True)
    na, nb = a.norm(dim=1), b.norm(dim=1)
    r = (a * b).sum(1) / (na * nb).clamp_min(1e-12)
    r = torch.where((na == 0) & (nb == 0), torch.ones_like(r), r)
    return ((r + 1) / 2).clamp(0, 1)


def _gaussian_window(size: int, sigma: float, device, dtype) -> Tensor:
    x = torch.arange(size, device=device, dtype=dtype) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :])[None, None]


@SIMILARITIES.register("ssim")
def ssim_similarity(h: Tensor, g: Tensor, window: int = 11, sigma: float = 1.5) -> Tensor:
    """Mean SSIM (Wang et al. 2004; Gaussian window 11, sigma 1.5, data range 1, 'valid' borders),
    clipped at 0 (negative structure = no similarity). Maps are (N, 1, H, W) in [0, 1]."""
    if h.dim() == 3:
        h, g = h[:, None], g[:, None]
    h, g = h.float(), g.float()
    size = min(window, h.shape[-1], h.shape[-2])
    w = _gaussian_window(size, sigma, h.device, h.dtype)
    c1, c2 = 0.01**2, 0.03**2
    mu_h, mu_g = F.conv2d(h, w), F.conv2d(g, w)
    var_h = F.conv2d(h * h, w) - mu_h**2
    var_g = F.conv2d(g * g, w) - mu_g**2
    cov = F.conv2d(h * g, w) - mu_h * mu_g
    ssim = ((2 * mu_h * mu_g + c1) * (2 * cov + c2)) / ((mu_h**2 + mu_g**2 + c1) * (var_h + var_g + c2))
    return ssim.flatten(1).mean(1).clamp(0, 1)


@SIMILARITIES.register("iou", "topq-iou")
def topq_iou_similarity(h: Tensor, g: Tensor, top_q: float = 0.25) -> Tensor:
    """IoU of the top-``top_q`` pixel sets of the two maps."""
    a, b = _flat(h), _flat(g)
    k = max(1, math.ceil(top_q * a.shape[1]))
    ma = torch.zeros_like(a).scatter_(1, a.topk(k, dim=1).indices, 1.0)
    mb = torch.zeros_like(b).scatter_(1, b.topk(k, dim=1).indices, 1.0)
    inter = (ma * mb).sum(1)
    return inter / (ma + mb - ma * mb).sum(1)


@SIMILARITIES.register("l1", "normalized-l1")
def l1_similarity(h: Tensor, g: Tensor) -> Tensor:
    """1 - ½‖h/Σh - g/Σg‖₁: one minus the total-variation distance of the maps as distributions."""
    a, b = _flat(h), _flat(g)
    sa, sb = a.sum(1, keepdim=True), b.sum(1, keepdim=True)
    pa = torch.where(sa > 0, a / sa.clamp_min(1e-12), torch.full_like(a, 1 / a.shape[1]))
    pb = torch.where(sb > 0, b / sb.clamp_min(1e-12), torch.full_like(b, 1 / b.shape[1]))
    return (1 - 0.5 * (pa - pb).abs().sum(1)).clamp(0, 1)


@PREDICTION_CONSISTENCIES.register("js")
def js_consistency(p: Tensor, q: Tensor, labels: Tensor | None = None) -> Tensor:
    """1 - JS(p ‖ q) / ln 2 for probability vectors (N, C): 1 for identical predictions."""
    m = 0.5 * (p + q)
    kl_pm = torch.xlogy(p, p).sum(1) - torch.xlogy(p, m).sum(1)
    kl_qm = torch.xlogy(q, q).sum(1) - torch.xlogy(q, m).sum(1)
    return (1 - 0.5 * (kl_pm + kl_qm) / math.log(2)).clamp(0, 1)


@PREDICTION_CONSISTENCIES.register("ratio")
def ratio_consistency(p: Tensor, q: Tensor, labels: Tensor | None = None) -> Tensor:
    """min(1, q_y / p_y): how much of the target class's probability survives."""
    if labels is None:
        labels = p.argmax(1)
    py = p.gather(1, labels[:, None]).squeeze(1)
    qy = q.gather(1, labels[:, None]).squeeze(1)
    return (qy / py.clamp_min(1e-12)).clamp(0, 1)
