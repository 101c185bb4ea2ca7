"""``jtt``: Just Train Twice (Liu, Haghgoo, Chen, Raghunathan, Koh, Sagawa, Liang, Finn, ICML 2021;
reference code anniesch/jtt). No group labels.

Two phases in one run: ERM for ``identification_epochs`` (T) epochs; then, at the start of epoch T,
the identification model classifies the *un-augmented* training images (the method context's
scoring loader, eval mode) and its misclassified ones form the error set; from epoch T on each
error-set sample has weight ``lambda_up`` and every other sample 1, normalised to mean 1 over the
training set. With ``reset`` (the paper: the second model is trained from scratch) the model goes
back to its initial weights and the optimizer forgets its state at that point, so the final model
is trained for epochs - T epochs on the tail of the run's learning-rate schedule.

Where this differs from the reference: the reference *duplicates* the error set lambda_up times in
the training data (a longer epoch); here it is up-weighted in the loss at the same number of steps
as ERM (the same expected gradient, at ERM's cost). The reference's two runs have their own epoch
budgets and schedules; here both phases share one run's budget. The paper's settings (T of the
ERM epochs, lambda_up): Waterbirds 60 of 300, 100; CelebA 1 of 50, 50; MultiNLI and CivilComments
2, 6. ``RUN/jtt/error_set.safetensors`` keeps ids, labels, predictions, per-sample losses, the error
set and the weights (``consistcam diagnose`` reads it).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from consistcam.config import option, validate
from consistcam.models.state import preserved_state
from consistcam.run.layout import JTT_DIR, JTT_ERROR_SET_FILE
from consistcam.train.methods.base import Method, MethodContext, register_method


@dataclass
class JTTConfig:
    """Options of ``jtt``; defaults are the paper's CelebA setting (its only image data set trained
    for tens of epochs, as close as the paper comes to our short presets)."""

    identification_epochs: int = option(1, "T: epochs of ERM whose model picks the error set (the paper: 1 on "
                                        "CelebA, 60 of 300 on Waterbirds)", ge=1)
    lambda_up: float = option(50.0, "weight of an error-set sample relative to the others (the paper: 50 on "
                              "CelebA, 100 on Waterbirds, 6 on text)", ge=1.0)
    reset: bool = option(True, "restart the model from its initial weights (and the optimizer) after the "
                         "identification phase, as the paper's second model is trained from scratch")
    score_batch_size: int = option(250, "batch size of the pass that finds the error set", ge=1)

    def __post_init__(self) -> None:
        validate(self)


def upweight(errors: Tensor, lambda_up: float) -> Tensor:
    """Weights ``lambda_up`` on the error set, 1 elsewhere, normalised to mean 1 (the learning-rate
    scale of ERM; the ratio between the two is what the paper sets)."""
    w = torch.where(errors, torch.full_like(errors, lambda_up, dtype=torch.float32),
                    torch.ones_like(errors, dtype=torch.float32))
    return w / w.mean()


@register_method("jtt")
class JTT(Method):
    """Just Train Twice: ERM for T epochs, then up-weight the samples that model got wrong (no group labels)."""

    Config = JTTConfig
    config: JTTConfig
    single_label = True
    output_dir = JTT_DIR  # the error set (JTT_ERROR_SET_FILE)

    def setup(self, ctx: MethodContext) -> None:
        super().setup(ctx)
        self.weights = torch.ones(ctx.num_samples, device=ctx.device)
        self.identified = False
        # kept until the reset; checkpoints carry it, so a resume restarts from the same weights
        self.initial = {k: v.detach().clone() for k, v in ctx.module.state_dict().items()} if self.config.reset else {}

    def on_epoch_start(self, epoch: int) -> dict[str, float]:
        if self.identified or epoch < self.config.identification_epochs:
            return {}
        fields = self._error_set()
        self.weights = torch.ones_like(self.weights)
        self.weights[fields["ids"]] = fields["weights"].to(self.weights)
        self.identified = True
        self.ctx.save_tensors(f"{self.output_dir}/{JTT_ERROR_SET_FILE}", fields)
        if self.config.reset:
            self.ctx.module.load_state_dict(self.initial)
            if self.ctx.reset_optimizer is not None:
                self.ctx.reset_optimizer()
            self.initial = {}
        errors = fields["error"]
        return {"jtt/error_rate": errors.float().mean().item(), "jtt/errors": int(errors.sum()),
                "jtt/error_weight_share": (fields["weights"][errors].sum() / fields["weights"].sum()).item()}

    @torch.no_grad()
    def _error_set(self) -> dict[str, Tensor]:
        """ids, label, pred, loss, error and weights of every trained sample, in id order."""
        ctx = self.ctx
        parts: dict[str, list[Tensor]] = {"ids": [], "label": [], "pred": [], "loss": []}
        with preserved_state(ctx.module, eval_mode=True):
            for batch in ctx.scoring_loader(self.config.score_batch_size):
                images, labels = batch["image"].to(ctx.device), batch["label"].to(ctx.device)
                logits = ctx.module(images).float()
                parts["ids"].append(batch["id"].to(ctx.device))
                parts["label"].append(labels)
                parts["pred"].append(logits.argmax(1))
                parts["loss"].append(ctx.task.per_sample_loss(logits, labels))
        fields = {k: ctx.gather(torch.cat(v)) for k, v in parts.items()}
        order = fields["ids"].argsort()
        fields = {k: v[order] for k, v in fields.items()}
        fields["error"] = fields["pred"] != fields["label"]
        fields["weights"] = upweight(fields["error"], self.config.lambda_up)
        return fields

    def sample_weights(self, ids: Tensor) -> Tensor | None:
        return self.weights[ids] if self.identified else None

    def state_dict(self) -> dict[str, Tensor]:
        return {"weights": self.weights, "identified": torch.tensor(int(self.identified)),
                **{f"initial.{k}": v for k, v in self.initial.items()}}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        self.weights = state["weights"].to(self.ctx.device)
        self.identified = bool(state["identified"])
        self.initial = {k[len("initial."):]: v.to(self.ctx.device) for k, v in state.items()
                        if k.startswith("initial.")}
