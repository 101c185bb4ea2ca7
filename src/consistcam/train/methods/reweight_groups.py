"""``reweight_groups``: importance weighting by inverse group frequency (an oracle baseline).

Every training sample of cell g gets the weight N / (G' · n_g), N the training set size, n_g the
cell's size and G' the number of non-empty cells: each cell then carries the same total weight and
the mean weight is 1 (the learning-rate scale of ERM). This is the loss-weighting form of the
"upweighting" baseline of Sagawa et al. (ICLR 2020); ``form=sampling`` is its sampling form
instead, group-balanced sampling with replacement (Idrissi et al., CLeaR 2022: "SUBG"/"RWG" draw
each group equally often). It reads the group
annotations of the data (consistcam.train.methods.groups): an oracle, not a method that could
run on data without them.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from consistcam.config import option, validate
from consistcam.train.methods.base import Method, MethodContext, register_method
from consistcam.train.methods.groups import GROUPINGS, inverse_frequency_weights, num_groups, training_groups


@dataclass
class ReweightGroupsConfig:
    """Options of ``reweight_groups``."""

    grouping: str = option("class_alignment", "the cells: class x (background agrees / conflicts), as the "
                           "worst-group accuracy counts them, or class x background group", choices=GROUPINGS)
    score_batch_size: int = option(250, "batch size of the one pass that reads every training image's group", ge=1)
    form: str = option("loss", "loss: weight each sample's loss by N / (G' n_g); sampling: draw every epoch "
                       "with replacement, each cell equally often, unweighted loss", choices=("loss", "sampling"))

    def __post_init__(self) -> None:
        validate(self)


@register_method("reweight_groups")
class ReweightGroups(Method):
    """Weights every (class, background) cell equally: inverse group frequency (oracle group labels)."""

    Config = ReweightGroupsConfig
    config: ReweightGroupsConfig
    single_label = True

    def setup(self, ctx: MethodContext) -> None:
        super().setup(ctx)
        table, classes = training_groups(ctx, self.name, self.config.grouping, self.config.score_batch_size)
        # a function of the data alone: resume recomputes it, so there is no state to save
        self.weights = inverse_frequency_weights(table, num_groups(classes, self.config.grouping))

    def sample_weights(self, ids: Tensor) -> Tensor | None:
        return self.weights[ids] if self.config.form == "loss" else None

    def sampling_weights(self) -> Tensor | None:
        return self.weights if self.config.form == "sampling" else None
