"""Training strategies: how a method turns a batch into a loss, and what it does between epochs.

A strategy never touches the loop; the trainer calls ``on_epoch_start`` and ``loss``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from consistcam._registry import Registry
from consistcam.consistency import ConsistencyScores, score_dataset

STRATEGIES: Registry = Registry("training method")


def weighted_cross_entropy(logits: Tensor, labels: Tensor, weights: Tensor | None = None,
                           label_smoothing: float = 0.0) -> Tensor:
    """mean_i(v_i · CE_i): the loss of the paper, Loss = Σ v_i L_i, as a batch mean."""
    per_sample = F.cross_entropy(logits, labels, reduction="none", label_smoothing=label_smoothing)
    return per_sample.mean() if weights is None else (weights * per_sample).mean()


class Strategy:
    name = "base"

    def setup(self, trainer) -> None:
        self.trainer = trainer

    def on_epoch_start(self, epoch: int) -> dict:
        return {}

    def sample_weights(self, ids: Tensor) -> Tensor | None:
        return None

    def loss(self, model, images: Tensor, labels: Tensor, ids: Tensor) -> tuple[Tensor, Tensor]:
        logits = model(images)
        weights = self.sample_weights(ids)
        return weighted_cross_entropy(logits, labels, weights, self.trainer.config.label_smoothing), logits

    def state_dict(self) -> dict[str, Tensor]:
        return {}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        pass


@STRATEGIES.register("erm")
class ERM(Strategy):
    """Plain empirical risk minimisation: every weight is 1."""

    name = "erm"


@STRATEGIES.register("ecl")
class ECL(Strategy):
    """Explanation-consistency learning (Wu et al. 2024): warm up with v = 1 for ``ecl_warmup``
    epochs, then every ``update_every`` epochs score the training set (background-attacked
    explanation consistency E) and train on v = 1 - E (mean 1), matched to samples by id."""

    name = "ecl"

    def setup(self, trainer) -> None:
        super().setup(trainer)
        self.weights = torch.ones(trainer.num_ids, device=trainer.device)
        self.rounds = 0

    def due(self, epoch: int) -> bool:
        cfg = self.trainer.config
        return epoch >= cfg.ecl_warmup and (epoch - cfg.ecl_warmup) % cfg.update_every == 0

    def on_epoch_start(self, epoch: int) -> dict:
        if not self.due(epoch):
            return {}
        t = self.trainer
        cfg = t.config.consistency_config(seed=t.config.seed * 1000 + epoch)
        previous = self.weights[t.train_ids] if self.rounds > 0 else None
        scores: ConsistencyScores = score_dataset(t.model, t.scoring_loader(), cfg, previous_weights=previous,
                                                  progress=t.progress, device=t.device)
        self.weights = torch.ones_like(self.weights)
        self.weights[scores.ids] = scores.weights.to(self.weights)
        self.rounds += 1
        t.save_scores(scores, epoch)
        return {f"consistency/{k}": v for k, v in scores.summary().items()}

    def sample_weights(self, ids: Tensor) -> Tensor:
        return self.weights[ids]

    def state_dict(self) -> dict[str, Tensor]:
        return {"weights": self.weights, "rounds": torch.tensor(self.rounds)}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        self.weights = state["weights"].to(self.trainer.device)
        self.rounds = int(state["rounds"])


def build_strategy(name: str) -> Strategy:
    return STRATEGIES.get(name)()
