"""``ecl``: explanation-consistency learning (Wu et al., IEEE TMM 2024; docs/methods.md).

Warm up with v = 1 for ``warmup`` epochs; then every ``update_every`` epochs score the training
set (explain, attack the background only, E = lam·S + (1 - lam)·P) and train on
mean_i(v_i · L_i) with v = 1 - E normalised to mean 1, matched to samples by id. With
``score_fraction`` < 1 the rounds after the first re-score a random subset and the other samples
keep their last E (v is still derived from every sample's E). Multi-label data:
each positive class of an image is scored against the background of all its objects and the
classes' E are reduced to one E per image (``multilabel_reduce``; consistcam.consistency.multilabel).

The schedule itself is :class:`consistcam.ECL` (consistcam.consistency.ecl), the object a plain
loop or the Lightning callback uses too; this method only hands it the trainer's model, scoring
loader and process group, and saves each round's fields in its folder of the run
(``consistency/epoch_XXX.safetensors``).
"""

from __future__ import annotations

from torch import Tensor

from consistcam.consistency.ecl import ECL as ECLSchedule
from consistcam.consistency.ecl import ECLConfig
from consistcam.run.layout import ECL_DIR, epoch_file
from consistcam.train.methods.base import Method, MethodContext, register_method


@register_method("ecl")
class ECL(Method):
    """Re-weights training towards samples whose explanations are not robust to background attacks."""

    Config = ECLConfig
    config: ECLConfig
    output_dir = ECL_DIR  # one epoch_XXX.safetensors per scoring round

    def setup(self, ctx: MethodContext) -> None:
        super().setup(ctx)
        self.schedule = ECLSchedule(ctx.num_samples, self.config, seed=ctx.seed, train_ids=ctx.train_ids,
                                    multilabel=ctx.task.multilabel, process_group=ctx.dist, device=ctx.device,
                                    progress=ctx.progress)

    # the schedule's state, read by tests and tools as the method's own
    @property
    def weights(self) -> Tensor:
        return self.schedule.weights

    @property
    def rounds(self) -> int:
        return self.schedule.rounds

    @property
    def last(self) -> dict[str, Tensor]:
        return self.schedule.last

    def due(self, epoch: int) -> bool:
        return self.schedule.due(epoch)

    def on_epoch_start(self, epoch: int) -> dict[str, float]:
        ctx, cfg = self.ctx, self.config
        keep = cfg.consistency.mask not in ("heatmap", "none")
        logs = self.schedule.on_epoch_start(ctx.module, lambda ids: ctx.scoring_loader(cfg.score_batch_size, keep,
                                                                                        ids=ids), epoch)
        if logs:
            ctx.save_tensors(f"{self.output_dir}/{epoch_file(epoch)}", self.schedule.fields)
        return logs

    def sample_weights(self, ids: Tensor) -> Tensor:
        return self.schedule.weights_for(ids)

    def state_dict(self) -> dict[str, Tensor]:
        return self.schedule.state_dict()

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        self.schedule.load_state_dict(state)
