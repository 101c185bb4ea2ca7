"""ECL's schedule as an object any training loop can call: :class:`ECL` (exported as ``consistcam.ECL``).

Explanation-consistency learning (Wu et al., IEEE TMM 2024; docs/methods.md) is more than the scorer:
warm up with v = 1 for ``warmup`` epochs, then every ``update_every`` epochs score the training set
(explain, attack the background only, E = lam·S + (1 - lam)·P), match the scores to samples by id,
gather them across processes, derive the tempered weights v = 1 - E (mean 1, EMA over rounds) and
train on mean_i(v_i · L_i); resume needs every piece of that state. This object is that glue, and the
only copy of it: consistcam's own ``ecl`` method (consistcam.train.methods.ecl) and the
Lightning callback (consistcam.lightning) call it too. It sits in consistency/, below train/, so a
plain loop gets it from ``import consistcam`` without the trainer.

The scoring loader must yield the *un-augmented* training images, in batches of either

* dicts with ``image`` (N, C, H, W floats in [0, 1], what the model takes), ``label`` (class ids, or
  multi-hot rows with ``multilabel=True``) and ``id`` (each sample's index in 0 .. num_samples - 1;
  consistcam's data sets yield these, plus ``boxes``/``mask`` where ``consistency.mask`` needs them), or
* tuples ``(images, labels, ids)``: :class:`consistcam.data.WithIds` adds the ids to any map-style
  data set of ``(image, label)`` pairs.

Under DDP each rank's loader yields a disjoint shard (e.g. ``Subset(ds, range(rank, n, world))``; no
padding sampler: an id seen twice is an error) and the scores are gathered over ``process_group``,
so every rank derives the same v.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from consistcam.config import option, validate
from consistcam.consistency.config import ConsistencyConfig, ExecutionConfig, WeightConfig
from consistcam.consistency.multilabel import REDUCTIONS, score_multilabel_dataset
from consistcam.consistency.score import score_dataset
from consistcam.consistency.weights import consistency_weights
from consistcam.utils import DistInfo, gather_cat, model_device

# what ``on_epoch_start`` scores: the batches themselves, or a function of the sample ids to score
# (a sorted list; None = every trained sample), which ``score_fraction`` < 1 needs
ScoreLoader = Iterable | Callable[[list[int] | None], Iterable]


@dataclass
class ECLConfig:
    """Options of ECL (the ``ecl`` method's section of a training config): the schedule here, the
    scorer's choices under ``consistency``, the weights v made from its scores under ``weights``, how
    the scoring pass runs under ``execution``."""

    warmup: int = option(2, "epochs trained with v = 1 before the first scoring pass", ge=0)
    update_every: int = option(2, "epochs between scoring passes", ge=1)
    score_batch_size: int = option(250, "batch size of the scoring pass", ge=1)
    score_fraction: float = option(1.0, "share of the training set re-scored in each round after the first: a "
                                   "seeded random subset (the same on every rank); the others keep the E of "
                                   "their last scoring (single-label data)", gt=0.0, le=1.0)
    multilabel_reduce: str = option("mean", "multi-label data: one E per image from its positive classes' E "
                                    "(mean, or min: the least consistent class decides)", choices=REDUCTIONS)
    consistency: ConsistencyConfig = option(help="the consistency scorer: how E is computed (README.md: "
                                                 "ecl.consistency.*)",
                                            default_factory=ConsistencyConfig)
    weights: WeightConfig = option(help="the training weights v made from E", default_factory=WeightConfig)
    execution: ExecutionConfig = option(help="how the scoring pass runs (E changes by float rounding only)",
                                        default_factory=ExecutionConfig)
    # where the options of weights and execution were when all three parts were ``consistency``
    # (configs written before still load: consistcam.config.upgrade)
    RENAMED: ClassVar[dict[str, str]] = {
        **{f"consistency.weight_{k}": f"weights.{k}" for k in ("floor", "power", "scheme", "ema")},
        **{f"consistency.{k}": f"execution.{k}" for k in ("fold_batchnorm", "channels_last", "amp")}}

    def __post_init__(self) -> None:
        validate(self)


def multi_hot(labels: Tensor, num_classes: int) -> Tensor:
    """Multi-hot float (N, C) labels from class ids (N,); multi-hot labels pass through as floats."""
    if labels.dim() == 1:
        return F.one_hot(labels.long(), num_classes).float()
    return labels.float()


def per_sample_loss(logits: Tensor, labels: Tensor, multilabel: bool = False, label_smoothing: float = 0.0) -> Tensor:
    """(N,) losses L_i that ECL re-weights: cross-entropy, or (``multilabel``) binary cross-entropy
    averaged over the classes (class ids taken as one-hot). The trainer's Task uses this too."""
    if multilabel:
        target = multi_hot(labels, logits.shape[1]).to(logits.dtype)
        if label_smoothing:
            target = target * (1 - label_smoothing) + 0.5 * label_smoothing
        return F.binary_cross_entropy_with_logits(logits, target, reduction="none").mean(1)
    return F.cross_entropy(logits, labels, reduction="none", label_smoothing=label_smoothing)


class ECL:
    """Explanation-consistency learning inside someone else's training loop.

    Call :meth:`on_epoch_start` before each epoch trains (it scores when a round is due) and use
    :meth:`loss` (or :meth:`weights_for`) in each step; :meth:`state_dict` goes into your checkpoint.

    Args:
        num_samples: the training set's size; sample ids are 0 .. num_samples - 1.
        config: the schedule, the scorer, the weights and how a pass runs (:class:`ECLConfig`; default: its defaults).
        seed: the attack's random start in round e is seeded with ``seed * 1000 + e`` (and the
            ``score_fraction`` subset with the same), so a run is reproducible and resumable.
        train_ids: the ids trained on, if not all (the pool ``score_fraction`` draws from).
        multilabel: multi-hot labels: each positive class is scored (consistency/multilabel.py).
        process_group: the torch.distributed group to gather scores over (None: the default group
            when torch.distributed is initialised, else one process), or a
            :class:`consistcam.utils.DistInfo`.
        device: where v lives and scoring runs (None: the model's device at the first round).
        progress: a progress bar over the scoring pass (rank 0 only).
    """

    def __init__(self, num_samples: int, config: ECLConfig | None = None, *, seed: int = 0,
                 train_ids: Sequence[int] | Tensor | None = None, multilabel: bool = False,
                 process_group: Any = None, device: torch.device | str | None = None,
                 progress: bool = False) -> None:
        if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
            raise ValueError(f"ECL: num_samples must be the training set's size (an int >= 1), got {num_samples!r}")
        if config is not None and not isinstance(config, ECLConfig):
            raise TypeError(f"ECL: config must be a consistcam.ECLConfig, got {type(config).__name__}")
        self.config = config if config is not None else ECLConfig()
        if multilabel and self.config.score_fraction < 1:
            raise ValueError("ecl.score_fraction < 1 is for single-label data: multi-label rounds score every image")
        self.num_samples, self.seed, self.multilabel, self.progress = num_samples, seed, multilabel, progress
        self.train_ids = (torch.arange(num_samples) if train_ids is None
                          else torch.as_tensor(train_ids, dtype=torch.long).cpu())
        if len(self.train_ids) and not 0 <= int(self.train_ids.min()) <= int(self.train_ids.max()) < num_samples:
            raise ValueError(f"ECL: train_ids must lie in 0 .. num_samples - 1 = {num_samples - 1}")
        self.process_group = process_group
        self.device = torch.device(device) if device is not None else None
        self.weights = torch.ones(num_samples, device=self.device)  # v of every sample id (1 until scored)
        self.rounds = 0
        # every sample's fields from its last scoring (score_fraction < 1 merges a round into them);
        # scored_epoch is -1 for a sample never scored
        self.last: dict[str, Tensor] = {}
        self.fields: dict[str, Tensor] = {}  # the last round's per-sample fields (ids, E, S, P, ..., weights)

    @property
    def dist(self) -> DistInfo:
        """Where this process stands now (resolved at each round: Lightning joins its group after setup)."""
        group = self.process_group
        return group if isinstance(group, DistInfo) else DistInfo.of(group)

    def due(self, epoch: int) -> bool:
        """Whether a scoring round runs at the start of ``epoch`` (0-based)."""
        cfg = self.config
        return epoch >= cfg.warmup and (epoch - cfg.warmup) % cfg.update_every == 0

    def ids_to_score(self, epoch: int) -> list[int] | None:
        """The sorted sample ids the round at ``epoch`` scores: None (every trained sample) in the
        first round or with ``score_fraction`` = 1, else a random ``score_fraction`` of ``train_ids``
        drawn from (seed, epoch) alone, so every rank and every resume draws the same."""
        if self.rounds == 0 or self.config.score_fraction >= 1:
            return None
        ids = self.train_ids
        g = torch.Generator().manual_seed(self.seed * 1000 + epoch)
        k = max(1, round(self.config.score_fraction * len(ids)))
        return ids[torch.randperm(len(ids), generator=g)[:k]].sort().values.tolist()

    def on_epoch_start(self, model: nn.Module, loader: ScoreLoader, epoch: int) -> dict[str, float]:
        """Before ``epoch`` trains: score the training set if a round is due and update v.

        ``loader`` yields the un-augmented training images (this module's docstring says in what
        batches; under DDP this rank's shard), or is a function ``ids -> such batches`` of the
        sorted ids to score (None: all), which ``score_fraction`` < 1 needs. ``model`` may be wrapped
        in DistributedDataParallel (the module itself is scored; its train/eval flags come back).
        Returns the round's summary (``consistency/E_mean``, ``v_min``, ...), empty if none ran.
        """
        if not self.due(epoch):
            return {}
        subset = self.ids_to_score(epoch)
        if callable(loader):
            batches = loader(subset)
        elif subset is None:
            batches = loader
        else:
            raise ValueError("ECL.on_epoch_start: with score_fraction < 1, loader must be a function of the sample "
                             "ids to score (ids -> batches), not a fixed iterable")
        module = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
        device = self.device or model_device(module)
        info, cfg = self.dist, self.config
        scorer = dataclasses.replace(cfg.consistency, seed=self.seed * 1000 + epoch)
        show = self.progress and info.is_main
        if self.multilabel:
            shard = score_multilabel_dataset(module, batches, scorer, execution=cfg.execution,
                                             reduce=cfg.multilabel_reduce, progress=show, device=device)
        else:  # the per-sample fields; v is derived below, over every rank's shard
            shard = score_dataset(module, batches, scorer, execution=cfg.execution, progress=show,
                                  device=device).to_dict()
        fields = self._gather_by_id(shard, info)
        if not len(fields["ids"]):
            raise ValueError("ecl: no training image has a positive class to score (all labels are empty)")
        self._check_ids(fields["ids"])
        if cfg.score_fraction < 1:
            fields = self._merge(fields, epoch)
        self.weights = self.weights.to(device)
        previous = self.weights[fields["ids"]] if self.rounds > 0 else None
        w = cfg.weights
        fields["weights"] = consistency_weights(fields["E"], floor=w.floor, power=w.power, previous=previous,
                                                ema=w.ema, scheme=w.scheme)
        self.weights = torch.ones_like(self.weights)  # images without a positive class (multi-label) keep 1
        self.weights[fields["ids"]] = fields["weights"].to(self.weights)
        self.rounds += 1
        self.fields = fields
        return {f"consistency/{k}": v for k, v in summary(fields).items()}

    def _check_ids(self, ids: Tensor) -> None:
        """Ids out of range or seen twice (overlapping DDP shards, a padding sampler) would mis-weight."""
        if int(ids.min()) < 0 or int(ids.max()) >= self.num_samples:
            raise ValueError(f"ECL: the scoring loader yielded sample id {int(ids.max())}, outside 0 .. num_samples"
                             f" - 1 = {self.num_samples - 1}")
        repeated = ids[1:][ids[1:] == ids[:-1]]  # ids are sorted
        if len(repeated):
            raise ValueError(f"ECL: the scoring loader(s) yielded sample id {int(repeated[0])} more than once; under "
                             "DDP the ranks' shards must not overlap (no padding sampler)")

    def _merge(self, fields: dict[str, Tensor], epoch: int) -> dict[str, Tensor]:
        """This round's fields written over every sample's last ones; returns the fields of every
        sample scored so far (id order) with ``scored_epoch``, the epoch each was last scored at."""
        n, ids = self.num_samples, fields["ids"]
        if not self.last:
            self.last = {k: torch.zeros(n, dtype=v.dtype, device=v.device) for k, v in fields.items() if k != "ids"}
            self.last["scored_epoch"] = torch.full((n,), -1, dtype=torch.long, device=ids.device)
        for k, v in fields.items():
            if k != "ids":
                self.last[k][ids] = v.to(self.last[k])
        self.last["scored_epoch"][ids] = epoch
        known = (self.last["scored_epoch"] >= 0).nonzero()[:, 0]
        return {"ids": known, **{k: v[known] for k, v in self.last.items()}}

    @staticmethod
    def _gather_by_id(shard: dict[str, Tensor], info: DistInfo) -> dict[str, Tensor]:
        """Every rank's per-sample fields in sample-id order (per-pair fields, multi-label, in (id,
        class) order), so that all ranks derive the same v, normalised over the whole data set."""
        fields = {k: gather_cat(v, info) for k, v in shard.items()}
        order = fields["ids"].argsort()
        out = {k: v[order] for k, v in fields.items() if not k.startswith("pair_")}
        if "pair_ids" in fields:
            key = fields["pair_ids"] * (int(fields["pair_class"].max().item()) + 1 if len(fields["pair_class"]) else 1)
            pair_order = (key + fields["pair_class"]).argsort()
            out.update({k: v[pair_order] for k, v in fields.items() if k.startswith("pair_")})
        return out

    def weights_for(self, ids: Tensor) -> Tensor:
        """v of the batch's samples (1 before the first round), on ``ids``' device."""
        return self.weights[ids.to(self.weights.device)].to(ids.device)

    def loss(self, logits: Tensor, labels: Tensor, ids: Tensor, label_smoothing: float = 0.0) -> Tensor:
        """mean_i(v_i · L_i) over the batch: L = cross-entropy (binary cross-entropy averaged over
        the classes with ``multilabel``); any other per-sample loss: ``(weights_for(ids) * L).mean()``."""
        if len(ids) != len(logits):
            raise ValueError(f"ECL.loss: ids has {len(ids)} entries but logits has {len(logits)} rows")
        per_sample = per_sample_loss(logits, labels, self.multilabel, label_smoothing)
        return (self.weights_for(ids.to(logits.device)) * per_sample).mean()

    def state_dict(self) -> dict[str, Tensor]:
        """Everything resume needs, as tensors (a safetensors checkpoint can hold them)."""
        return {"weights": self.weights, "rounds": torch.tensor(self.rounds),
                **{f"last.{k}": v for k, v in self.last.items()}}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        missing = {"weights", "rounds"} - set(state)
        if missing:
            raise ValueError(f"ECL.load_state_dict: the state lacks {sorted(missing)} (not an ECL state_dict?)")
        if state["weights"].shape != (self.num_samples,):
            raise ValueError(f"ECL.load_state_dict: the state has {tuple(state['weights'].shape)} weights, this ECL "
                             f"has num_samples={self.num_samples}")
        device = self.device or state["weights"].device
        self.weights = state["weights"].to(device)
        self.rounds = int(state["rounds"])
        self.last = {k[len("last."):]: v.to(device) for k, v in state.items() if k.startswith("last.")}


def summary(fields: dict[str, Tensor]) -> dict[str, float]:
    """The scalars logged for a scoring round (means over the scored samples, extremes of v)."""
    return {"E_mean": fields["E"].mean().item(), "S_mean": fields["S"].mean().item(),
            "P_mean": fields["P"].mean().item(), "flip_rate": fields["flipped"].float().mean().item(),
            "fg_area": fields["fg_area"].mean().item(), "v_max": fields["weights"].max().item(),
            "v_min": fields["weights"].min().item()}


__all__ = ["ECL", "ECLConfig", "ScoreLoader", "multi_hot", "per_sample_loss", "summary"]
