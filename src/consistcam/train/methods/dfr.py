"""``dfr``: Deep Feature Reweighting, last-layer retraining on group-balanced held-out data
(Kirichenko, Izmailov, Wilson, ICLR 2023; reference code PolinaKirichenko/deep_feature_reweighting,
``dfr_evaluate_spurious.py``, MIT licence).

The model trains as ERM for every epoch; after the last one, the classifier head alone is fitted
again on the penultimate features of the ``split`` images (val by default), read with their group
annotations (an *oracle*, as Group DRO, but on held-out data only):

1. **Tuning** (``dfr_on_validation_tune``): the split is cut in two halves at random; on a
   group-balanced subset of the second half (every non-empty cell cut to the smallest cell's size)
   an ℓ1-regularised logistic regression is fitted for each C of ``c_grid``, and the C with the best
   worst-group accuracy on the first half wins (the first in grid order on ties).
2. **Final fit** (``dfr_on_validation_eval``): ``retrains`` fits with that C, each on another random
   group-balanced subset of the whole split; the head becomes their mean coefficients and intercepts.

As in the reference, the features are standardised with the mean and standard deviation of the
whole split (``standardize``), which is folded into the new head (W / σ, b − W μ / σ), so the model
keeps its architecture. The regression is multinomial, fitted by FISTA on
``sum_i CE_i + ||W||_1 / C`` (intercept not penalised): scikit-learn's ``saga`` objective; the
reference's ``liblinear`` fits one-vs-rest models instead (the same for two classes).

What the in-training ``val`` figures of the last epoch mean: the head was fitted on val, so they are
no longer held-out figures; test and test_correlated stay held out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from consistcam.config import option, validate
from consistcam.metrics.groups import worst_cell_accuracy as worst_group
from consistcam.models.factory import classifier_head
from consistcam.models.state import preserved_state
from consistcam.train.methods._shared import classifier_inputs
from consistcam.train.methods.base import Method, MethodContext, register_method
from consistcam.train.methods.groups import GROUPINGS, group_index, num_groups

C_GRID = (1.0, 0.7, 0.3, 0.1, 0.07, 0.03, 0.01)  # the reference's C_OPTIONS
CHECK_EVERY = 25  # FISTA steps between two convergence tests (each a device-to-host read)


def _check_grid(grid: tuple[float, ...]) -> str | None:
    return None if grid and all(c > 0 for c in grid) else "expected a non-empty list of positive numbers"


@dataclass
class DFRConfig:
    """Options of ``dfr``; defaults are the reference's (``C_OPTIONS``, ``num_retrains=20`` for the final
    fit, ``preprocess=True``, ``balance_dfr_val=True``, ``notrain_dfr_val=True``)."""

    split: str = option("val", "the held-out split whose images and group labels the head is fitted on")
    grouping: str = option("class_alignment", "the cells balanced and scored: class x (background agrees / "
                           "conflicts) or class x background group", choices=GROUPINGS)
    c_grid: tuple[float, ...] = option(C_GRID, "inverse l1 strengths C tried, chosen on the split's first half",
                                       check=_check_grid)
    retrains: int = option(20, "fits on random group-balanced subsets averaged into the final head", ge=1)
    standardize: bool = option(True, "standardise the features with the split's mean and std (folded into the head)")
    max_iter: int = option(2000, "FISTA iterations per fit at most", ge=1)
    tol: float = option(1e-6, "stop a fit when the relative change of its weights in one step falls below this "
                        "(tested every 25 steps)", gt=0.0)
    feature_batch_size: int = option(250, "batch size of the one pass that reads the split's features", ge=1)

    def __post_init__(self) -> None:
        validate(self)


def fit_l1_logistic(x: Tensor, y: Tensor, num_classes: int, c: float, max_iter: int = 2000,
                    tol: float = 1e-6) -> tuple[Tensor, Tensor]:
    """(W (K, D), b (K,)) minimising ``sum_i CE(W x_i + b, y_i) + ||W||_1 / c`` by FISTA (proximal
    gradient with momentum; step 1/L with L = ||[X 1]||_2^2 / 2, a bound on the softmax loss's
    curvature). Full batch, float64, on ``x``'s device."""
    x, dev = x.double(), x.device
    n, d = x.shape
    onehot = torch.nn.functional.one_hot(y.long(), num_classes).double()
    aug = torch.cat([x, torch.ones(n, 1, dtype=x.dtype, device=dev)], 1)
    step = 2.0 / max(torch.linalg.matrix_norm(aug, ord=2).item() ** 2, 1e-12)
    theta = torch.zeros(d + 1, num_classes, dtype=x.dtype, device=dev)  # rows: features, then the intercept
    z, t = theta.clone(), 1.0
    for i in range(max_iter):
        grad = aug.T @ (torch.softmax(aug @ z, 1) - onehot)
        nxt = z - step * grad
        w = nxt[:d]
        nxt[:d] = w.sign() * (w.abs() - step / c).clamp_min(0)  # soft threshold: the l1 term's prox
        t_next = (1 + math.sqrt(1 + 4 * t * t)) / 2
        z = nxt + ((t - 1) / t_next) * (nxt - theta)
        # the stopping test reads a number back from the device: every CHECK_EVERY steps, not every step
        done = i % CHECK_EVERY == CHECK_EVERY - 1 and bool((nxt - theta).norm() <= tol * nxt.norm().clamp_min(1e-12))
        theta, t = nxt, t_next
        if done:
            break
    return theta[:d].T.contiguous(), theta[d].contiguous()


def balanced_subset(cells: Tensor, generator: torch.Generator) -> Tensor:
    """Indices of a random group-balanced subset: every non-empty cell cut to the smallest one's size."""
    present = cells.unique()
    members = [torch.nonzero(cells == g).flatten() for g in present.tolist()]
    keep = min(len(m) for m in members)
    picks = [m[torch.randperm(len(m), generator=generator)[:keep].to(m.device)] for m in members]
    return torch.cat(picks).sort().values


def worst_cell_accuracy(pred: Tensor, y: Tensor, cells: Tensor) -> float:
    """The lowest accuracy over the non-empty cells (counted in one pass, no per-cell host read)."""
    total = torch.bincount(cells)
    correct = torch.bincount(cells, weights=(pred == y).double(), minlength=len(total))
    return worst_group(correct, total).item()


@register_method("dfr")
class DFR(Method):
    """ERM, then the head refitted on group-balanced held-out data (oracle group labels of ``split``)."""

    Config = DFRConfig
    config: DFRConfig
    single_label = True

    def setup(self, ctx: MethodContext) -> None:
        super().setup(ctx)
        if ctx.eval_loader_fn is None or self.config.split not in ctx.eval_splits:
            raise ValueError(f"dfr fits the head on split {self.config.split!r}, which this data does not have "
                             f"(splits: {', '.join(ctx.eval_splits) or 'none'}); set dfr.split")
        _, head = classifier_head(ctx.module)  # a model without a linear head fails here, before any epoch
        if head.bias is None:
            raise ValueError("dfr refits the head's weights and bias; this model's head has no bias")

    def on_epoch_end(self, epoch: int) -> dict[str, float]:
        if epoch != self.ctx.epochs - 1:
            return {}
        x, y, cells = self._features()
        return self.refit_head(x, y, cells)

    def _features(self) -> tuple[Tensor, Tensor, Tensor]:
        """The split's penultimate features, labels and cells (gathered over the processes)."""
        ctx, cfg = self.ctx, self.config
        _, head = classifier_head(ctx.module)
        xs, ys, gs = [], [], []
        with torch.no_grad(), preserved_state(ctx.module, eval_mode=True), classifier_inputs(head) as seen:
            for batch in ctx.eval_loader(cfg.split, cfg.feature_batch_size):
                if "group" not in batch:
                    raise ValueError(f"dfr needs the background group of every {cfg.split} image (an oracle "
                                     "annotation: the demo and shortcut data sets carry it); this data has none")
                ctx.module(batch["image"].to(ctx.device))
                xs.append(seen.pop().float())
                ys.append(batch["label"].to(ctx.device))
                gs.append(batch["group"].to(ctx.device))
        x, y, g = (ctx.gather(torch.cat(t)) for t in (xs, ys, gs))
        return x, y, group_index(y, g, head.out_features, cfg.grouping)

    def refit_head(self, x: Tensor, y: Tensor, cells: Tensor) -> dict[str, float]:
        """Tune C on the two halves, fit ``retrains`` balanced heads with it, install their mean."""
        cfg = self.config
        _, head = classifier_head(self.ctx.module)
        k = head.out_features
        num_groups(k, cfg.grouping)  # checks the grouping against the head's classes
        mu = x.mean(0) if cfg.standardize else torch.zeros_like(x[0])
        sigma = x.std(0) if cfg.standardize else torch.ones_like(x[0])
        sigma = torch.where(sigma > 1e-8, sigma, torch.ones_like(sigma))  # a constant feature: as StandardScaler
        z = (x - mu) / sigma
        g = torch.Generator().manual_seed(self.ctx.seed)
        order = torch.randperm(len(y), generator=g).to(y.device)
        held, fit = order[: len(y) // 2], order[len(y) // 2:]
        part = fit[balanced_subset(cells[fit], g)]
        scores = []
        for c in cfg.c_grid:
            w, b = fit_l1_logistic(z[part], y[part], k, c, cfg.max_iter, cfg.tol)
            scores.append(worst_cell_accuracy((z[held].double() @ w.T + b).argmax(1), y[held], cells[held]))
        best = cfg.c_grid[max(range(len(scores)), key=lambda i: (scores[i], -i))]
        fits = [fit_l1_logistic(z[s], y[s], k, best, cfg.max_iter, cfg.tol)
                for s in (balanced_subset(cells, g) for _ in range(cfg.retrains))]
        w = torch.stack([f[0] for f in fits]).mean(0)
        b = torch.stack([f[1] for f in fits]).mean(0)
        self.fitted = (w, b)  # in standardised coordinates, for inspection
        with torch.no_grad():
            weight = w / sigma.double()
            head.weight.copy_(weight.to(head.weight))
            head.bias.copy_((b - weight @ mu.double()).to(head.bias))
        return {"dfr/C": best, "dfr/tune_worst_group_acc": max(scores), "dfr/balanced_size": len(part),
                "dfr/nonzero": float((w != 0).double().mean())}
