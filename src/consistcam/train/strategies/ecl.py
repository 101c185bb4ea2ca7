"""``ecl``: explanation-consistency learning (Wu et al., IEEE TMM 2024; docs/method.md).

Warm up with v = 1 for ``warmup`` epochs; then every ``update_every`` epochs score the training
set (explain, attack the background only, E = lam·S + (1 - lam)·P) and train on
mean_i(v_i · L_i) with v = 1 - E normalised to mean 1, matched to samples by id. With
``score_fraction`` < 1 the rounds after the first re-score a random subset and the other samples
keep their last E (v is still derived from every sample's E). Multi-label data:
each positive class of an image is scored against the background of all its objects and the
classes' E are reduced to one E per image (``multilabel_reduce``; consistcam.consistency.multilabel).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import Tensor

from consistcam.config import option, validate
from consistcam.consistency import ConsistencyConfig, consistency_weights, score_dataset
from consistcam.consistency.multilabel import REDUCTIONS, score_multilabel_dataset
from consistcam.train.strategies.base import Strategy, StrategyContext, register_strategy


@dataclass
class ECLConfig:
    """Options of ``ecl``; the scorer's own choices are under ``consistency``."""

    warmup: int = option(2, "epochs trained with v = 1 before the first scoring pass", ge=0)
    update_every: int = option(2, "epochs between scoring passes", ge=1)
    score_batch_size: int = option(250, "batch size of the scoring pass", ge=1)
    score_fraction: float = option(1.0, "share of the training set re-scored in each round after the first: a "
                                   "seeded random subset (the same on every rank); the others keep the E of "
                                   "their last scoring (single-label data)", gt=0.0, le=1.0)
    multilabel_reduce: str = option("mean", "multi-label data: one E per image from its positive classes' E "
                                    "(mean, or min: the least consistent class decides)", choices=REDUCTIONS)
    consistency: ConsistencyConfig = option(help="the consistency scorer (see docs/method.md)",
                                            default_factory=ConsistencyConfig)

    def __post_init__(self) -> None:
        validate(self)


@register_strategy("ecl")
class ECL(Strategy):
    """Re-weights training towards samples whose explanations are not robust to background attacks."""

    Config = ECLConfig
    config: ECLConfig

    def setup(self, ctx: StrategyContext) -> None:
        super().setup(ctx)
        if ctx.task.multilabel and self.config.score_fraction < 1:
            raise ValueError("ecl.score_fraction < 1 is for single-label data: multi-label rounds score every image")
        self.weights = torch.ones(ctx.num_samples, device=ctx.device)
        self.rounds = 0
        # every sample's fields from its last scoring (score_fraction < 1 merges a round into them);
        # scored_epoch is -1 for a sample never scored
        self.last: dict[str, Tensor] = {}

    def due(self, epoch: int) -> bool:
        cfg = self.config
        return epoch >= cfg.warmup and (epoch - cfg.warmup) % cfg.update_every == 0

    def on_epoch_start(self, epoch: int) -> dict[str, float]:
        if not self.due(epoch):
            return {}
        ctx = self.ctx
        cfg = self.config.consistency
        scorer = dataclasses.replace(cfg, seed=ctx.seed * 1000 + epoch)
        subset = self._subset(epoch) if self.rounds > 0 and self.config.score_fraction < 1 else None
        loader = ctx.scoring_loader(self.config.score_batch_size, keep_locations=cfg.mask not in ("heatmap", "none"),
                                    ids=subset)
        show = ctx.progress and ctx.is_main
        if ctx.task.multilabel:
            shard = score_multilabel_dataset(ctx.module, loader, scorer, reduce=self.config.multilabel_reduce,
                                             progress=show, device=ctx.device)
        else:  # the per-sample fields; v is derived below, over every rank's shard
            shard = score_dataset(ctx.module, loader, scorer, progress=show, device=ctx.device).to_dict()
            del shard["weights"]
        fields = self._gather_by_id(shard)
        if not len(fields["ids"]):
            raise ValueError("ecl: no training image has a positive class to score (all labels are empty)")
        if self.config.score_fraction < 1:
            fields = self._merge(fields, epoch)
        previous = self.weights[fields["ids"]] if self.rounds > 0 else None
        fields["weights"] = consistency_weights(fields["E"], floor=cfg.weight_floor, power=cfg.weight_power,
                                                previous=previous, ema=cfg.weight_ema, scheme=cfg.weight_scheme)
        self.weights = torch.ones_like(self.weights)  # images without a positive class (multi-label) keep 1
        self.weights[fields["ids"]] = fields["weights"].to(self.weights)
        self.rounds += 1
        ctx.save_tensors(f"consistency/epoch_{epoch:03d}.safetensors", fields)
        return {f"consistency/{k}": v for k, v in summary(fields).items()}

    def _subset(self, epoch: int) -> list[int]:
        """The sorted sample ids re-scored this round: a random ``score_fraction`` of the trained ids,
        drawn from (seed, epoch) alone, so every rank and every resume draws the same."""
        ids = self.ctx.train_ids.cpu()
        g = torch.Generator().manual_seed(self.ctx.seed * 1000 + epoch)
        k = max(1, round(self.config.score_fraction * len(ids)))
        return ids[torch.randperm(len(ids), generator=g)[:k]].sort().values.tolist()

    def _merge(self, fields: dict[str, Tensor], epoch: int) -> dict[str, Tensor]:
        """This round's fields written over every sample's last ones; returns the fields of every
        sample scored so far (id order) with ``scored_epoch``, the epoch each was last scored at."""
        n, ids = self.ctx.num_samples, fields["ids"]
        if not self.last:
            self.last = {k: torch.zeros(n, dtype=v.dtype, device=v.device) for k, v in fields.items() if k != "ids"}
            self.last["scored_epoch"] = torch.full((n,), -1, dtype=torch.long, device=ids.device)
        for k, v in fields.items():
            if k != "ids":
                self.last[k][ids] = v.to(self.last[k])
        self.last["scored_epoch"][ids] = epoch
        known = (self.last["scored_epoch"] >= 0).nonzero()[:, 0]
        return {"ids": known, **{k: v[known] for k, v in self.last.items()}}

    def _gather_by_id(self, shard: dict[str, Tensor]) -> dict[str, Tensor]:
        """Every rank's per-sample fields in sample-id order (per-pair fields, multi-label, in (id,
        class) order), so that all ranks derive the same v, normalised over the whole data set."""
        fields = {k: self.ctx.gather(v) for k, v in shard.items()}
        order = fields["ids"].argsort()
        out = {k: v[order] for k, v in fields.items() if not k.startswith("pair_")}
        if "pair_ids" in fields:
            key = fields["pair_ids"] * (int(fields["pair_class"].max().item()) + 1 if len(fields["pair_class"]) else 1)
            pair_order = (key + fields["pair_class"]).argsort()
            out.update({k: v[pair_order] for k, v in fields.items() if k.startswith("pair_")})
        return out

    def sample_weights(self, ids: Tensor) -> Tensor:
        return self.weights[ids]

    def state_dict(self) -> dict[str, Tensor]:
        return {"weights": self.weights, "rounds": torch.tensor(self.rounds),
                **{f"last.{k}": v for k, v in self.last.items()}}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        self.weights = state["weights"].to(self.ctx.device)
        self.rounds = int(state["rounds"])
        self.last = {k[len("last."):]: v.to(self.ctx.device) for k, v in state.items() if k.startswith("last.")}


def summary(fields: dict[str, Tensor]) -> dict[str, float]:
    """The scalars logged for a scoring round (means over the scored samples, extremes of v)."""
    return {"E_mean": fields["E"].mean().item(), "S_mean": fields["S"].mean().item(),
            "P_mean": fields["P"].mean().item(), "flip_rate": fields["flipped"].float().mean().item(),
            "fg_area": fields["fg_area"].mean().item(), "v_max": fields["weights"].max().item(),
            "v_min": fields["weights"].min().item()}
