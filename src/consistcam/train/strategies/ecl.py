"""``ecl``: explanation-consistency learning (Wu et al., IEEE TMM 2024; docs/method.md).

Warm up with v = 1 for ``warmup`` epochs; then every ``update_every`` epochs score the training
set (explain, attack the background only, E = lam·S + (1 - lam)·P) and train on
mean_i(v_i · L_i) with v = 1 - E normalised to mean 1, matched to samples by id.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import Tensor

from consistcam.config import option, validate
from consistcam.consistency import ConsistencyConfig, ConsistencyScores, consistency_weights, score_dataset
from consistcam.train.strategies.base import Strategy, StrategyContext, register_strategy


@dataclass
class ECLConfig:
    """Options of ``ecl``; the scorer's own choices are under ``consistency``."""

    warmup: int = option(2, "epochs trained with v = 1 before the first scoring pass", ge=0)
    update_every: int = option(2, "epochs between scoring passes", ge=1)
    score_batch_size: int = option(250, "batch size of the scoring pass", ge=1)
    consistency: ConsistencyConfig = option(help="the consistency scorer (see docs/method.md)",
                                            default_factory=ConsistencyConfig)

    def __post_init__(self) -> None:
        validate(self)


@register_strategy("ecl")
class ECL(Strategy):
    """Re-weights training towards samples whose explanations are not robust to background attacks."""

    Config = ECLConfig
    single_label = True
    config: ECLConfig

    def setup(self, ctx: StrategyContext) -> None:
        super().setup(ctx)
        self.weights = torch.ones(ctx.num_samples, device=ctx.device)
        self.rounds = 0

    def due(self, epoch: int) -> bool:
        cfg = self.config
        return epoch >= cfg.warmup and (epoch - cfg.warmup) % cfg.update_every == 0

    def on_epoch_start(self, epoch: int) -> dict[str, float]:
        if not self.due(epoch):
            return {}
        ctx = self.ctx
        cfg = self.config.consistency
        scorer = dataclasses.replace(cfg, seed=ctx.seed * 1000 + epoch)
        loader = ctx.scoring_loader(self.config.score_batch_size, keep_locations=cfg.mask not in ("heatmap", "none"))
        shard = score_dataset(ctx.module, loader, scorer, progress=ctx.progress and ctx.is_main, device=ctx.device)
        # every rank gathers all shards, so all hold the same v, normalised over the whole data set
        fields = {k: ctx.gather(v) for k, v in shard.to_dict().items() if k != "weights"}
        order = fields["ids"].argsort()
        fields = {k: v[order] for k, v in fields.items()}
        previous = self.weights[fields["ids"]] if self.rounds > 0 else None
        weights = consistency_weights(fields["E"], floor=cfg.weight_floor, power=cfg.weight_power, previous=previous,
                                      ema=cfg.weight_ema)
        scores = ConsistencyScores(weights=weights, **fields)
        self.weights = torch.ones_like(self.weights)
        self.weights[scores.ids] = scores.weights.to(self.weights)
        self.rounds += 1
        ctx.save_tensors(f"consistency/epoch_{epoch:03d}.safetensors", scores.to_dict())
        return {f"consistency/{k}": v for k, v in scores.summary().items()}

    def sample_weights(self, ids: Tensor) -> Tensor:
        return self.weights[ids]

    def state_dict(self) -> dict[str, Tensor]:
        return {"weights": self.weights, "rounds": torch.tensor(self.rounds)}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        self.weights = state["weights"].to(self.ctx.device)
        self.rounds = int(state["rounds"])
