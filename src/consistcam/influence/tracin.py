"""TracIn (Pruthi et al., NeurIPS 2020): the influence of a training sample z on a test sample z'
is the sum over saved checkpoints of  lr_i · <∇ℓ(w_i, z), ∇ℓ(w_i, z')>  (TracInCP, their Eq. 4).

One pass over the training data per checkpoint gives both the influence on every test sample and
every training sample's self-influence  Σ lr_i · ||∇ℓ(w_i, z)||²  (high for mislabelled, unusual
or hard samples, their Sec. 4.1). What a "loss" and a "gradient" are comes from a featurizer
``gradients(model, batch) -> (B, D)``: the classifier's cross-entropy here
(:func:`consistcam.influence.gradients.classifier_gradients`), the VAE's ELBO in
:mod:`consistcam.vae.tracin`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from consistcam.run.device import resolve_device
from consistcam.utils import progress_bar

Featurizer = Callable[[nn.Module, dict], Tensor]


@dataclass(frozen=True)
class TracInCheckpoint:
    """One saved model and the step size it stands for.

    ``model`` is a module or a function that loads it (so only one checkpoint is in memory at a
    time); ``lr`` is the learning rate around it and ``epochs`` how many epochs of training it
    represents (kept every N epochs: N). Its products are weighted by ``lr · epochs``: each sample
    is visited once per epoch, so this is the reference's lr · batch · iterations / N.
    """

    model: nn.Module | Callable[[], nn.Module]
    lr: float
    epochs: float = 1.0
    name: str = ""

    @property
    def weight(self) -> float:
        return self.lr * self.epochs

    def load(self) -> nn.Module:
        return self.model if isinstance(self.model, nn.Module) else self.model()


def kept_tracin_checkpoints(kept: dict[int, Path], loader: Callable[[Path], nn.Module],
                            last: int | None = None) -> list[TracInCheckpoint]:
    """The kept checkpoints ``{epoch: path}`` of a run (classifier or VAE) in epoch order, only the
    ``last`` few if given, each loaded lazily by ``loader`` and weighted by the learning rate and
    number of epochs stored in its metadata."""
    from consistcam.run.kept import read_kept

    out = []
    for epoch, path in list(kept.items())[-last if last else 0:]:
        info = read_kept(path)
        out.append(TracInCheckpoint(lambda p=path: loader(p), info.lr, info.interval_epochs, name=f"epoch {epoch}"))
    return out


@dataclass
class TracInResult:
    """Per training sample (in the order of ``ids``): ``self_influence`` (N,) and, when test
    samples were given, ``influence`` (N, T): the influence of training sample n on test sample t."""

    ids: Tensor
    self_influence: Tensor
    influence: Tensor | None = None

    def proponents(self, test: int, k: int = 10) -> tuple[Tensor, Tensor]:
        """(ids, scores) of the ``k`` training samples with the largest positive influence on test
        sample ``test``: training on them lowered its loss."""
        return self._ranked(test, k, descending=True)

    def opponents(self, test: int, k: int = 10) -> tuple[Tensor, Tensor]:
        """(ids, scores) of the ``k`` most negative influences: training on them raised its loss."""
        return self._ranked(test, k, descending=False)

    def _ranked(self, test: int, k: int, descending: bool) -> tuple[Tensor, Tensor]:
        if self.influence is None:
            raise ValueError("no test samples were scored (pass test_batch to tracin)")
        if not 0 <= test < self.influence.shape[1]:
            raise ValueError(f"test index {test} out of range: {self.influence.shape[1]} test samples")
        scores = self.influence[:, test]
        order = scores.argsort(descending=descending)[: min(k, len(scores))]
        return self.ids[order], scores[order]

    def most_self_influential(self, k: int = 10) -> tuple[Tensor, Tensor]:
        """(ids, scores) of the ``k`` training samples with the highest self-influence."""
        order = self.self_influence.argsort(descending=True)[: min(k, len(self.ids))]
        return self.ids[order], self.self_influence[order]


def _to(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device) if isinstance(v, Tensor) else v for k, v in batch.items()}


@torch.no_grad()
def tracin(checkpoints: Sequence[TracInCheckpoint], gradients: Featurizer, train_batches: Iterable[dict],
           test_batch: dict | None = None, *, device: str | torch.device = "auto",
           progress: bool = False) -> TracInResult:
    """TracInCP self-influence of every training sample and, with ``test_batch``, the influence of
    every training sample on every test sample.

    ``train_batches`` is iterated once per checkpoint (a DataLoader without shuffling: the same
    samples each time); each batch is a dict with the inputs ``gradients`` reads and an ``id``.
    Everything runs on ``device``; scores come back on the CPU in float64 sums.
    """
    if not checkpoints:
        raise ValueError("tracin: no checkpoints given (a run keeps them with --keep-checkpoints every=N)")
    device = resolve_device(device)
    ids: Tensor | None = None
    self_inf: Tensor | None = None
    influence: Tensor | None = None
    for ck in checkpoints:
        model = ck.load().to(device)
        with torch.enable_grad():
            test_g = gradients(model, _to(test_batch, device)) if test_batch is not None else None
        seen_ids, self_parts, inf_parts = [], [], []
        for batch in progress_bar(train_batches, desc=f"TracIn {ck.name}".strip(), enabled=progress):
            batch = _to(batch, device)
            with torch.enable_grad():
                g = gradients(model, batch)
            seen_ids.append(batch["id"].cpu())
            self_parts.append(g.square().sum(1).double().cpu())
            if test_g is not None:
                inf_parts.append((g @ test_g.T).double().cpu())
        this_ids = torch.cat(seen_ids)
        if ids is None:
            ids = this_ids
            self_inf = torch.zeros(len(ids), dtype=torch.float64)
            influence = torch.zeros(len(ids), len(test_g), dtype=torch.float64) if test_g is not None else None
        elif not torch.equal(ids, this_ids):
            raise ValueError("tracin: train_batches gave different samples for two checkpoints (shuffled loader?)")
        self_inf += ck.weight * torch.cat(self_parts)
        if influence is not None:
            influence += ck.weight * torch.cat(inf_parts)
    assert ids is not None and self_inf is not None
    return TracInResult(ids=ids, self_influence=self_inf, influence=influence)
