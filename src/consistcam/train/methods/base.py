"""What a training method plugs into: :class:`Method`, its narrow :class:`MethodContext`, the
registry that pairs each method's name with its class and its own config dataclass.

A method never sees the trainer. It gets the model, the device, the task's base loss, the epoch,
the process group (DDP) and a way to get the un-augmented training images and to save artefacts;
it answers ``loss(batch) -> StepOutput`` and may act between epochs. Everything it needs to resume
goes through ``state_dict``/``load_state_dict`` (tensors only: checkpoints are safetensors).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from consistcam._registry import Registry
from consistcam.config import from_dict
from consistcam.run.status import method_dir_problem
from consistcam.train.task import Task
from consistcam.utils import DistInfo, gather_cat


class StepOutput(NamedTuple):
    """What ``Method.loss`` returns: the scalar loss to back-propagate, the logits of the batch's
    clean images (for training accuracy) and scalar logs (averaged over the epoch)."""

    loss: Tensor
    logits: Tensor
    logs: dict[str, Tensor | float] = {}


@dataclass
class MethodContext:
    """The narrow view of a training run a method gets."""

    model: nn.Module
    device: torch.device
    task: Task
    num_samples: int  # sample ids are 0 .. num_samples - 1
    train_ids: Tensor  # the ids trained on (all, or a subset), on ``device``
    seed: int = 0
    epoch: int = 0
    progress: bool = False
    dist: DistInfo = field(default_factory=DistInfo)  # rank, world size and process group under DDP
    run_dir: Path | None = None
    classes: tuple[str, ...] = ()  # the training data's class names in label order (empty if unknown)
    scoring_loader_fn: Callable[[int, bool, list[int] | None], DataLoader] | None = field(default=None, repr=False)
    epochs: int = 0  # the run's number of epochs (the last is ``epochs - 1``)
    eval_splits: tuple[str, ...] = ()  # the held-out splits the run evaluates on
    eval_loader_fn: Callable[[str, int], DataLoader] | None = field(default=None, repr=False)
    # forgets the optimizer's state (momentum, Adam moments): a method that restarts the model from
    # its initial weights mid-run (jtt) restarts the optimizer with it
    reset_optimizer: Callable[[], None] | None = field(default=None, repr=False)

    @property
    def module(self) -> nn.Module:
        """The model itself (unwrapped from DistributedDataParallel): for passes without parameter
        gradients (scoring, explaining), which must not trigger DDP's gradient synchronisation."""
        return self.model.module if isinstance(self.model, nn.parallel.DistributedDataParallel) else self.model

    @property
    def process_group(self) -> Any:
        return self.dist.group

    @property
    def is_main(self) -> bool:
        """Rank 0 (or the only process): the one that writes files."""
        return self.dist.is_main

    def scoring_loader(self, batch_size: int, keep_locations: bool = False, ids: list[int] | None = None) -> DataLoader:
        """The training images without augmentation, in id order, with boxes/masks if asked; only
        the sample ids ``ids`` (sorted) if given (under DDP: this rank's shard; combine per-sample
        results with :meth:`gather`)."""
        if self.scoring_loader_fn is None:
            raise RuntimeError("this context has no training data attached")
        return self.scoring_loader_fn(batch_size, keep_locations, ids)

    def eval_loader(self, split: str, batch_size: int) -> DataLoader:
        """The images of the held-out ``split`` (one of ``eval_splits``), without augmentation, in
        order (under DDP: this rank's contiguous shard; :meth:`gather` restores the order)."""
        if self.eval_loader_fn is None:
            raise RuntimeError("this context has no evaluation data attached")
        return self.eval_loader_fn(split, batch_size)

    def gather(self, t: Tensor) -> Tensor:
        """Every rank's rows of ``t`` concatenated (identity in one process)."""
        return gather_cat(t, self.dist)

    def save_tensors(self, relative_path: str, tensors: Mapping[str, Tensor]) -> Path | None:
        """Write tensors atomically under the run folder (main process only; no-op without a folder)."""
        if self.run_dir is None or not self.is_main:
            return None
        from consistcam.utils import atomic_save_tensors

        path = self.run_dir / relative_path
        atomic_save_tensors({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, path)
        return path


@dataclass
class NoOptions:
    """A method without options of its own."""


class Method:
    """Base class: plain (optionally per-sample weighted) empirical risk minimisation.

    Subclasses set ``name`` and ``Config`` (a dataclass of :func:`consistcam.config.option` fields)
    and override the hooks they need. ``needs_locations`` asks the trainer to keep boxes/masks in
    the training batches (they cost ~3x in loading, so they are dropped otherwise). ``output_dir``
    names the folder under the run folder that the method's own files go to (``ctx.save_tensors``);
    the trainer records it in ``status.json``, so the report, ``consistcam diagnose`` and
    ``--overwrite`` find them (:func:`consistcam.run.status.method_dir`).
    """

    name: ClassVar[str] = "base"
    Config: ClassVar[type] = NoOptions
    needs_locations: ClassVar[bool] = False
    single_label: ClassVar[bool] = False  # explains one class per image: refuses multi-label data
    output_dir: ClassVar[str | None] = None  # the folder of the method's own files (None: it writes none)

    def __init__(self, config: Any = None) -> None:
        self.config = config if config is not None else self.Config()
        self.ctx: MethodContext | None = None

    def parameters(self, model: nn.Module) -> list[nn.Parameter]:
        """Trainable parameters the method owns besides the model's (e.g. a projection head), in a
        fixed order; the trainer asks once, after ``setup`` (which creates them), and adds them to the
        optimizer as a second parameter group. Their values must also be in ``state_dict`` for resume."""
        return []

    def setup(self, ctx: MethodContext) -> None:
        """Called once before training (and before ``load_state_dict`` on resume); creates the
        method's own trainable modules, on ``ctx.device``."""
        if self.single_label and ctx.task.multilabel:
            raise ValueError(f"{self.name} explains one class per image; multi-label training is not supported by it")
        self.ctx = ctx

    def on_epoch_start(self, epoch: int) -> dict[str, float]:
        """Between epochs (before ``epoch`` trains); returns scalars to log for that epoch."""
        return {}

    def on_epoch_end(self, epoch: int) -> dict[str, float]:
        return {}

    def sample_weights(self, ids: Tensor) -> Tensor | None:
        """Per-sample loss weights for the batch's ids (None: all 1)."""
        return None

    def sampling_weights(self) -> Tensor | None:
        """How the next epoch draws its samples: one non-negative number per sample id (0: never
        drawn), the epoch then drawing as many ids as it trains on, with replacement, in proportion
        to them; None (the default): every sample once, shuffled. Asked before every epoch."""
        return None

    def loss(self, batch: dict) -> StepOutput:
        ctx = self.ctx
        logits = ctx.model(batch["image"])
        return StepOutput(ctx.task.loss(logits, batch["label"], self.sample_weights(batch["id"])), logits)

    def state_dict(self) -> dict[str, Tensor]:
        return {}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        if state:
            raise ValueError(f"method {self.name!r} has no state to restore, got {sorted(state)}")


ENTRY_POINT_GROUP = "consistcam.strategies"  # the name plug-ins were published under


def _method_class(name: str, cls: Any) -> type[Method]:
    """Check that ``cls`` is a Method subclass with a dataclass ``Config`` and name it ``name``."""
    if not (isinstance(cls, type) and issubclass(cls, Method)):
        raise TypeError(f"{cls!r} is not a subclass of consistcam.train.methods.Method")
    if not dataclasses.is_dataclass(cls.Config):
        raise TypeError(f"{cls.__name__}.Config must be a dataclass")
    if cls.output_dir is not None and (problem := method_dir_problem(cls.output_dir)):
        raise TypeError(f"{cls.__name__}.output_dir: {problem}")
    cls.name = name
    return cls


# built-ins register on import; third-party packages through the entry-point group, loaded on first lookup
METHODS: Registry[type[Method]] = Registry("training method", ENTRY_POINT_GROUP, _method_class)


def register_method(name: str, *aliases: str) -> Callable[[type[Method]], type[Method]]:
    """Class decorator: ``@register_method("ecl")`` on a Method subclass with its ``Config``."""

    def deco(cls: type[Method]) -> type[Method]:
        METHODS.add(name, _method_class(name, cls), *aliases)
        return cls

    return deco


def method_config(name: str, options: Mapping | Any | None = None) -> Any:
    """The validated config dataclass of method ``name`` from a mapping (errors name ``name.key``)."""
    cls = METHODS.get(name)
    if isinstance(options, cls.Config):
        return options
    return from_dict(cls.Config, options or {}, METHODS.canonical(name))


def build_method(name: str, options: Mapping | Any | None = None) -> Method:
    return METHODS.get(name)(method_config(name, options))
