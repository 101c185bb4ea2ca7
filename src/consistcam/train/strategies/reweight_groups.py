"""``reweight_groups``: importance weighting by inverse group frequency (an oracle baseline).

Every training sample of cell g gets the weight N / (G' · n_g), N the training set size, n_g the
cell's size and G' the number of non-empty cells: each cell then carries the same total weight and
the mean weight is 1 (the learning-rate scale of ERM). This is the loss-weighting form of the
"upweighting" baseline of Sagawa et al. (ICLR 2020) and of group-balanced training (Idrissi et al.,
CLeaR 2022, whose sampling form this trainer's fixed loader does not offer). It reads the group
annotations of the data (consistcam.train.strategies.groups): an oracle, not a method that could
run on data without them.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from consistcam.config import option, validate
from consistcam.train.strategies.base import Strategy, StrategyContext, register_strategy
from consistcam.train.strategies.groups import GROUPINGS, group_counts, num_groups, training_groups


@dataclass
class ReweightGroupsConfig:
    """Options of ``reweight_groups``."""

    grouping: str = option("class_alignment", "the cells: class x (background agrees / conflicts), as the "
                           "worst-group accuracy counts them, or class x background group", choices=GROUPINGS)
    score_batch_size: int = option(250, "batch size of the one pass that reads every training image's group", ge=1)

    def __post_init__(self) -> None:
        validate(self)


def inverse_frequency_weights(table: Tensor, groups: int) -> Tensor:
    """Per-sample weights N / (G' · n_g) from the group of each id (-1: not trained, weight 0)."""
    counts = group_counts(table, groups)
    trained = table >= 0
    per_group = trained.sum() / ((counts > 0).sum() * counts.clamp_min(1))
    return per_group[table.clamp_min(0)] * trained


@register_strategy("reweight_groups")
class ReweightGroups(Strategy):
    """Weights every (class, background) cell equally: inverse group frequency (oracle group labels)."""

    Config = ReweightGroupsConfig
    config: ReweightGroupsConfig
    single_label = True

    def setup(self, ctx: StrategyContext) -> None:
        super().setup(ctx)
        table, classes = training_groups(ctx, self.name, self.config.grouping, self.config.score_batch_size)
        # a function of the data alone: resume recomputes it, so there is no state to save
        self.weights = inverse_frequency_weights(table, num_groups(classes, self.config.grouping))

    def sample_weights(self, ids: Tensor) -> Tensor:
        return self.weights[ids]
