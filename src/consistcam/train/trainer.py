"""The training loop: plain PyTorch; methods plug in as methods, side jobs as callbacks.

``Trainer(model, data, method, optimizer, schedule, LoopSettings(...), RunOutput(...))`` for full
control, or ``Trainer.from_config(cfg)`` to build everything from a validated :class:`TrainConfig`.
Runs resume exactly: the schedule is stateless, augmentation and shuffling are functions of (seed,
epoch), and the method's state travels in the checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from consistcam.config import ConfigError
from consistcam.consistency.ecl import multi_hot
from consistcam.data.images import check_image_size
from consistcam.explain.layers import check_layer_options
from consistcam.metrics.groups import alignment, worst_cell_accuracy
from consistcam.models import classifier_head, create, model_recipe
from consistcam.models.state import preserved_state
from consistcam.run.checkpoint import load_checkpoint
from consistcam.run.device import resolve_device, set_deterministic
from consistcam.run.init import InitInfo, file_sha256, freeze_backbone, load_init, resolve_init_path
from consistcam.run.layout import (
    CHECKPOINT_FILE,
    CONFIG_FILE,
    RUN_LOCAL_KEYS,
    TENSORBOARD_DIR,
    TRAIN_METRICS_FILE,
    config_differences,
)
from consistcam.run.status import (
    METHOD_DIR_KEY,
    discard_unstarted_run,
    prepare_new_run,
    read_metrics,
    read_status,
    remove_stale_temporaries,
    tensor_file_digests,
    write_status,
)
from consistcam.train.callbacks import Callback, Checkpointer, default_callbacks
from consistcam.train.config import TrainConfig
from consistcam.train.data import TrainData
from consistcam.train.distributed import barrier, broadcast_object, init_distributed
from consistcam.train.methods import METHODS, Method, MethodContext, build_method
from consistcam.train.task import Task, f1_from_counts, mean_average_precision, multilabel_counts, resolve_task
from consistcam.utils import (
    DistInfo,
    all_reduce_sum,
    atomic_write,
    fault_point,
    gather_cat,
    progress_bar,
    seed_everything,
)


class NonFiniteLossError(ValueError):
    """Training produced a NaN or infinite loss."""


@dataclass(frozen=True)
class Schedule:
    """Stateless learning rate: linear warm-up, then cosine, step or constant (resume needs no state)."""

    lr: float
    epochs: int
    kind: str = "cosine"
    warmup_epochs: float = 0.0
    step_size: int = 30
    gamma: float = 0.1

    @classmethod
    def from_config(cls, cfg: TrainConfig) -> Schedule:
        return cls(cfg.lr, cfg.epochs, cfg.schedule, cfg.warmup_epochs, cfg.step_size, cfg.gamma)

    def __call__(self, step: int, steps_per_epoch: int) -> float:
        epoch = step / steps_per_epoch
        if self.warmup_epochs > 0 and epoch < self.warmup_epochs:
            return self.lr * (step + 1) / (self.warmup_epochs * steps_per_epoch)
        if self.kind == "cosine":
            total = max(self.epochs - self.warmup_epochs, 1e-8)
            progress = min(1.0, (epoch - self.warmup_epochs) / total)
            return self.lr * 0.5 * (1 + math.cos(math.pi * progress))
        if self.kind == "step":
            return self.lr * self.gamma ** int(epoch // self.step_size)
        return self.lr


def model_param_groups(cfg: TrainConfig, model: nn.Module) -> list[dict]:
    """The model's parameter groups: one, unless fine-tuning options split the classifier head from
    the backbone (``backbone_lr_scale``, ``head_lr_scale``: each group's lr is the schedule's times its
    ``lr_scale``) or freeze the backbone (a linear probe: the head alone)."""
    if cfg.freeze == "none" and cfg.backbone_lr_scale == 1.0 and cfg.head_lr_scale == 1.0:
        return [{"params": list(model.parameters())}]
    head = freeze_backbone(model) if cfg.freeze == "backbone" else list(classifier_head(model)[1].parameters())
    head_ids = {id(p) for p in head}
    backbone = [p for p in model.parameters() if id(p) not in head_ids and p.requires_grad]
    groups = [{"params": backbone, "lr_scale": cfg.backbone_lr_scale}] if backbone else []
    return [*groups, {"params": head, "lr_scale": cfg.head_lr_scale}]


def build_optimizer(cfg: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    """SGD (Nesterov) or AdamW over the model's parameter groups (:func:`model_param_groups`); the
    :class:`Trainer` adds a method's own parameters as a further group after ``method.setup``
    (which creates them)."""
    params = model_param_groups(cfg, model)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                               nesterov=cfg.momentum > 0)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def apply_init(config: TrainConfig, model: nn.Module, resume: bool) -> InitInfo | None:
    """Load ``config.init`` into ``model`` and record the file's sha256 in the config (a given
    ``init_sha256`` must match). A resume takes the weights from its checkpoint, so it only checks
    the file when it is still there (the checkpoint's config then has to agree on the hash)."""
    if config.init is None:
        return None
    if resume:
        path = Path(config.init).expanduser()
        if path.exists():
            config.init_sha256 = file_sha256(resolve_init_path(path))
        return None
    info = load_init(model, config.init)
    if config.init_sha256 is not None and config.init_sha256 != info.sha256:
        raise ConfigError(f"init_sha256: {info.path} has sha256 {info.sha256}, not the {config.init_sha256} given")
    config.init_sha256 = info.sha256
    return info


@dataclass(frozen=True)
class LoopSettings:
    """How the loop runs (everything :class:`Trainer` needs besides its objects and the run folder).

    Args:
        epochs: epochs to train (a resume continues up to this many).
        batch_size, eval_batch_size: the global training batch (split across DDP ranks) and the
            per-process batch of the per-epoch evaluation.
        seed: augmentation and shuffling are functions of (seed, epoch).
        task: ``auto`` (multi-label exactly when the data has multi-hot labels), ``single`` or
            ``multilabel`` (sigmoid + BCE; see :func:`consistcam.train.task.resolve_task`).
        label_smoothing: of the base loss.
        amp: bfloat16 autocast (on CUDA only); channels_last: the model and images in that layout.
        sync_bn: BatchNorm statistics synchronised across DDP ranks.
        preload: ``off``, ``on`` or ``auto``: the training images as one tensor on the device
            (see :meth:`TrainData.preload`).
        progress: progress bars and the console's epoch records.
    """

    epochs: int
    batch_size: int = 128
    eval_batch_size: int = 256
    seed: int = 0
    task: str = "auto"
    label_smoothing: float = 0.0
    amp: bool = False
    channels_last: bool = False
    sync_bn: bool = False
    preload: str = "off"
    progress: bool = True

    @classmethod
    def from_config(cls, config: TrainConfig, progress: bool = True) -> LoopSettings:
        return cls(config.epochs, config.batch_size, config.eval_batch_size, config.seed, config.task,
                   config.label_smoothing, config.amp, config.channels_last, config.sync_bn, config.preload,
                   progress)


@dataclass(frozen=True)
class RunOutput:
    """Where and how a run is recorded.

    Args:
        run_dir: where callbacks and the method write (None: nothing is written).
        config: the :class:`TrainConfig` the trainer was built from (stored in checkpoints and
            config.yaml). Without it, a run folder's model.safetensors names the architecture ``create``
            built the model with; a model from elsewhere is refused when a Checkpointer would save it.
        callbacks: logging, checkpoints, console (None: all of :func:`default_callbacks`).
    """

    run_dir: Path | None = None
    config: TrainConfig | None = None
    callbacks: tuple[Callback, ...] | None = None

    def __post_init__(self) -> None:
        if self.run_dir is not None:
            object.__setattr__(self, "run_dir", Path(self.run_dir))
        if self.callbacks is not None:
            object.__setattr__(self, "callbacks", tuple(self.callbacks))


class Trainer:
    """Train ``model`` on ``data`` with ``method``.

    Args:
        model: a classifier taking images in [0, 1] (normalisation inside, see consistcam.models).
        data: the :class:`TrainData` (built once).
        method: the method (``build_method("ecl", {...})``).
        optimizer: any torch optimizer over the model's parameters; the method's own parameters
            (``method.parameters(model)`` after ``setup``) join it as a second group with its defaults.
        schedule: ``schedule(step, steps_per_epoch) -> lr`` (stateless), e.g. :class:`Schedule`.
        loop: epochs, batch sizes, seed, task, precision and layout: :class:`LoopSettings`.
        output: run folder, config and callbacks: :class:`RunOutput` (default: nothing written, the
            default callbacks).
        device: a ``torch.device`` is used as given (as :func:`~consistcam.run.device.resolve_device`
            returns it); a name (``auto``, ``cpu``, ``cuda:N``) is resolved here.
        dist: the process group's rank and size under DDP (default: one process).
    """

    def __init__(self, model: nn.Module, data: TrainData, method: Method, optimizer: torch.optim.Optimizer,
                 schedule, loop: LoopSettings, output: RunOutput | None = None, *,
                 device: str | torch.device = "auto", dist: DistInfo | None = None) -> None:
        output = output or RunOutput()
        self.device = device if isinstance(device, torch.device) else resolve_device(device)
        self.loop, self.run_dir, self.config = loop, output.run_dir, output.config
        self.callbacks = list(default_callbacks() if output.callbacks is None else output.callbacks)
        self.model_recipe = _recipe(model, self.config, data)
        if self.run_dir is not None and self.model_recipe is None and any(isinstance(cb, Checkpointer)
                                                                          for cb in self.callbacks):
            raise ValueError(f"Trainer: run_dir is set but {type(model).__name__} was not built by "
                             "consistcam.models.create and no config names its architecture, so the run's "
                             "model file could not be loaded again; build it with create() or pass "
                             "output=RunOutput(config=...)")
        self.dist = dist or DistInfo()
        self.is_main = self.dist.is_main
        self.module, self.model = self._place(model)  # the model itself, and what trains (DDP-wrapped)
        self.data, self.method, self.optimizer, self.schedule = data, method, optimizer, schedule
        spec = self.config.data if self.config is not None else "the training data"
        self.task = Task(multilabel=resolve_task(loop.task, data.multilabel, spec),
                         label_smoothing=loop.label_smoothing)
        self.ctx = self._method_context()
        self.method.setup(self.ctx)
        # modules whose parameters are all frozen (a linear probe's backbone) stay in eval mode in training
        self._frozen = [m for m in self.module.modules()
                        if (own := list(m.parameters(recurse=False))) and not any(p.requires_grad for p in own)]
        # what status.json records of the init file (kept across resumes, which read no init file)
        self.init_status: dict | None = None
        # after setup, which creates them (a head, prompts): a further group in the parameters' fixed order
        self._model_groups = len(self.optimizer.param_groups)
        if extra := list(self.method.parameters(self.module)):
            self.optimizer.add_param_group({"params": extra})
        # after setup: a method may only then know whether it reads boxes or masks
        self.preload_note = None if data.preloaded is not None else data.preload(loop.preload, self.device,
                                                                                 method.needs_locations)
        self.start_epoch = 0
        self.extended_from: int | None = None
        self.history: list[dict] = []

    def _place(self, model: nn.Module) -> tuple[nn.Module, nn.Module]:
        """The model on the device (channels-last, SyncBatchNorm as asked), and what trains: the model
        itself, or its DistributedDataParallel wrapper under DDP."""
        module = model.to(self.device)
        if self.loop.channels_last:
            module = module.to(memory_format=torch.channels_last)
        if not self.dist.enabled:
            return module, module
        if self.loop.sync_bn:
            module = nn.SyncBatchNorm.convert_sync_batchnorm(module)
        ids = [self.device.index] if self.device.type == "cuda" else None
        return module, nn.parallel.DistributedDataParallel(module, device_ids=ids, process_group=self.dist.group)

    def _method_context(self) -> MethodContext:
        data, dist = self.data, self.dist
        return MethodContext(
            model=self.model, device=self.device, task=self.task, num_samples=data.num_samples,
            train_ids=torch.tensor(data.indices, device=self.device), seed=self.loop.seed,
            progress=self.loop.progress and self.is_main, run_dir=self.run_dir, dist=dist,
            classes=tuple(data.classes or ()),
            scoring_loader_fn=lambda bs, keep, ids=None: data.scoring_loader(bs, keep, dist.rank, dist.world_size, ids),
            reset_optimizer=lambda: self.optimizer.state.clear(),  # late-bound: resume replaces the state dict
            epochs=self.loop.epochs, eval_splits=tuple(data.eval_sets),
            eval_loader_fn=lambda split, bs: data.eval_loader(split, bs, dist.rank, dist.world_size))

    # -- construction from a config ---------------------------------------------------------------
    @classmethod
    def from_config(cls, config: TrainConfig, progress: bool = True, resume: bool = False,
                    callbacks: Sequence[Callback] | None = None, overwrite: bool = False) -> Trainer:
        """Build data (once), model, optimizer, method and callbacks from ``config``; with
        ``resume``, continue the run in ``config.out`` exactly where its checkpoint ends. A folder
        that already holds a run is refused without ``resume`` (``overwrite`` replaces it)."""
        if config.freeze == "backbone" and config.init is None and not config.pretrained:
            raise ConfigError("freeze: backbone trains only the head of a random backbone; give init= or pretrained")
        device = resolve_device(config.device)  # fail before any data is read
        dist_info, device = init_distributed(device)
        if config.batch_size % dist_info.world_size:
            raise ConfigError(f"batch_size: the global batch {config.batch_size} must be a multiple of the "
                              f"{dist_info.world_size} processes")
        if config.image_size is not None:  # before any data is read or a folder is written
            check_image_size(config.image_size, max(config.batch_size, config.eval_batch_size), "image_size")
        run_dir = Path(config.out)
        method_dir = METHODS.get(config.method).output_dir
        if dist_info.enabled:  # rank 0 decides about the folder; every rank gets its verdict
            problem = None
            if dist_info.is_main:
                try:
                    resume = cls._prepare_folder(run_dir, resume, overwrite, method_dir)
                except (ValueError, FileNotFoundError) as err:
                    problem = err
            problem, resume = broadcast_object((problem, resume), dist_info)
            if problem is not None:
                raise problem
        else:
            resume = cls._prepare_folder(run_dir, resume, overwrite, method_dir)
        seed_everything(config.seed)
        if config.deterministic:
            set_deterministic()
        data = TrainData.from_spec(config.data, config.image_size, config.augment, subset=config.subset,
                                   skip_bad=config.skip_bad, workers=config.workers,
                                   pin_memory=device.type == "cuda")
        if dist_info.is_main:
            data.record_skipped(run_dir)
        model = create(config.arch, len(data.classes), config.pretrained, config.small_input)
        init_info = apply_init(config, model, resume)
        method = build_method(config.method, config.method_options)
        check_layer_options(model, method.config, config.method)
        optimizer = build_optimizer(config, model)
        trainer = cls(model, data, method, optimizer, Schedule.from_config(config),
                      LoopSettings.from_config(config, progress), RunOutput(run_dir, config, callbacks),
                      device=device, dist=dist_info)
        if init_info is not None:
            trainer.init_status = dataclasses.asdict(init_info)
        if init_info is not None and init_info.head_reinitialised and progress and dist_info.is_main:
            print(f"init: {init_info.path} (sha256 {init_info.sha256[:12]}...): classifier head "
                  f"{init_info.head_reinitialised} re-initialised for {len(data.classes)} classes", file=sys.stderr)
        if resume:
            trainer.resume()
        return trainer

    @staticmethod
    def _prepare_folder(run_dir: Path, resume: bool, overwrite: bool, method_dir: str | None = None) -> bool:
        """Check (and tidy) the run folder; returns whether there is a checkpoint to resume from.
        ``method_dir``: the folder of the training method's own files (``Method.output_dir``)."""
        if resume and not (run_dir / CHECKPOINT_FILE).is_file():
            if not (run_dir / CONFIG_FILE).is_file():
                raise FileNotFoundError(f"cannot resume: {run_dir / CHECKPOINT_FILE} not found")
            # killed before its first checkpoint: start over, dropping what the first epoch left
            for name in (TRAIN_METRICS_FILE, TENSORBOARD_DIR, *([method_dir] if method_dir else [])):
                path = run_dir / name
                shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
            return False
        if not resume:
            prepare_new_run(run_dir, overwrite)
        return resume

    @property
    def config_dict(self) -> dict:
        return self.config.to_dict() if self.config is not None else {}

    @property
    def classes(self) -> list[str]:
        return self.data.classes

    @property
    def eval_sets(self) -> dict:
        return self.data.eval_sets

    def eval_loader(self, split: str):
        """This rank's shard of an evaluation split (the whole split in one process)."""
        return self.data.eval_loader(split, self.loop.eval_batch_size, self.dist.rank, self.dist.world_size)

    # -- resume -------------------------------------------------------------------------------------
    def resume(self) -> None:
        """Restore model, optimizer and method from RUN/checkpoint.safetensors; the config must match
        the checkpoint's except for epochs, out, workers and device."""
        path = self.run_dir / CHECKPOINT_FILE
        status = read_status(self.run_dir)
        state = load_checkpoint(path, self.module, self.optimizer)
        self.init_status = status.get("init", self.init_status)
        if self.config is not None:
            if self.config.init is not None and self.config.init_sha256 is None:  # the file is gone: trust the run
                self.config.init_sha256 = dict(state["config"]).get("init_sha256")
            saved = {k: v for k, v in dict(state["config"]).items() if k not in RUN_LOCAL_KEYS}
            saved = TrainConfig.from_dict({**saved, "out": "x"}).to_dict()  # old layouts, defaults filled in
            diff = config_differences(saved, self.config.to_dict(), ignore_epochs=True)
            if diff:
                raise ValueError(f"cannot resume {self.run_dir}: config differs from the checkpoint's in {diff}")
        self.method.load_state_dict(state["strategy"])  # the checkpoint key, kept from earlier versions
        self.start_epoch = state["epoch"] + 1
        done = status.get("epochs", state["epoch"] + 1)
        if status["state"] == "complete" and self.loop.epochs > done:
            self.extended_from = done  # an explicit --epochs extension, recorded in status.json
        log = self.run_dir / TRAIN_METRICS_FILE
        if log.is_file():  # drop records of epochs after the checkpoint (a crash mid-epoch)
            self.history = [r for r in read_metrics(log) if r.get("epoch", -1) < self.start_epoch]
            if self.is_main:  # rank 0 alone writes the run folder
                text = "".join(json.dumps(r) + "\n" for r in self.history)
                atomic_write(log, lambda tmp: Path(tmp).write_text(text))
            barrier(self.dist)

    # -- loop ---------------------------------------------------------------------------------------
    def fit(self, stop_after: int | None = None) -> list[dict]:
        """Train up to ``epochs``; ``stop_after`` ends this call after that many epochs (as an
        interruption would: the run can be resumed)."""
        writes = self.run_dir is not None and self.is_main
        if writes and self.start_epoch >= self.loop.epochs and read_status(self.run_dir)["state"] == "complete":
            return self.history  # nothing to do: a complete run
        if writes:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            remove_stale_temporaries(self.run_dir)
            if self.config is not None:
                self.config.save_yaml(self.run_dir / CONFIG_FILE)
            write_status(self.run_dir, "running", epochs=self.loop.epochs, **self._status_info())
        for cb in self.callbacks:
            cb.on_fit_start(self)
        last = self.loop.epochs if stop_after is None else min(self.loop.epochs, self.start_epoch + stop_after)
        failed = False
        try:
            for epoch in range(self.start_epoch, last):
                fault_point(f"epoch{epoch}:start")
                record = self.run_epoch(epoch)
                self.history.append(record)
                for cb in self.callbacks:
                    cb.on_epoch_end(self, record)
                self.start_epoch = epoch + 1  # a later fit() call continues from here
                fault_point(f"epoch{epoch}:end")
        except Exception:
            failed = True
            raise
        finally:
            for cb in self.callbacks:
                cb.on_fit_end(self)
            if failed and writes:  # before its first checkpoint: not left `running` with nothing to resume
                discard_unstarted_run(self.run_dir)
        if writes and last == self.loop.epochs:
            done = max(self.loop.epochs, self.start_epoch)  # a resume with fewer --epochs than trained trains none
            write_status(self.run_dir, "complete", epochs=done, sha256=tensor_file_digests(self.run_dir),
                         **self._status_info())  # last, after model.safetensors
        return self.history

    def _status_info(self) -> dict:
        """What status.json records beside the state: an epoch extension, the input pipeline used, the
        folder of the method's own files."""
        info = {"extended_from": self.extended_from} if self.extended_from is not None else {}
        info[METHOD_DIR_KEY] = self.method.output_dir
        info["input_pipeline"] = "preloaded" if self.data.preloaded is not None else \
            f"dataloader ({self.preload_note})"
        if self.init_status is not None:
            info["init"] = self.init_status
        return info


    def run_epoch(self, epoch: int) -> dict:
        t0 = time.time()
        epoch_seed = self.loop.seed * 1000 + epoch
        torch.manual_seed(epoch_seed)  # augmentation randomness: a function of (seed, epoch) only
        self.ctx.epoch = epoch
        record = {"epoch": epoch, **self.method.on_epoch_start(epoch)}
        record.update(self.train_epoch(epoch, epoch_seed))
        record.update(self.method.on_epoch_end(epoch))
        for split in self.data.eval_sets:
            record.update({f"{split}/{k}": v for k, v in self.evaluate_split(self.eval_loader(split)).items()})
        record["time_s"] = round(time.time() - t0, 2)
        return record

    def _to_device(self, batch: dict) -> dict:
        out = {}
        for k, v in batch.items():
            if isinstance(v, torch.Tensor):
                out[k] = v.to(self.device, non_blocking=True)
            elif isinstance(v, list) and v and isinstance(v[0], torch.Tensor):
                out[k] = [t.to(self.device, non_blocking=True) for t in v]
            else:
                out[k] = v
        if self.loop.channels_last:
            out["image"] = out["image"].contiguous(memory_format=torch.channels_last)
        return out

    def train_epoch(self, epoch: int, seed: int) -> dict:
        self.model.train()
        for module in self._frozen:
            module.eval()
        loader = self.data.train_loader(self.loop.batch_size, seed, keep_locations=self.method.needs_locations,
                                        rank=self.dist.rank, world_size=self.dist.world_size,
                                        weights=self.method.sampling_weights())
        steps = len(loader)
        total_loss = torch.zeros((), device=self.device)
        first_bad = torch.full((), -1, device=self.device, dtype=torch.long)  # no host sync per step
        correct = torch.zeros((), device=self.device)
        logs: dict[str, torch.Tensor] = {}
        seen = 0
        use_amp = self.loop.amp and self.device.type == "cuda"
        for i, batch in enumerate(progress_bar(loader, desc=f"epoch {epoch}", enabled=self.loop.progress)):
            lr = self.schedule(epoch * steps + i, steps)
            for group in self.optimizer.param_groups:
                group["lr"] = lr * group.get("lr_scale", 1.0)
            batch = self._to_device(batch)
            n = len(batch["label"])
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=use_amp):
                out = self.method.loss(batch)
            bad = ~torch.isfinite(out.loss.detach())
            first_bad = torch.where(bad & (first_bad < 0), torch.full_like(first_bad, i), first_bad)
            self.optimizer.zero_grad(set_to_none=True)
            out.loss.backward()
            if self.dist.enabled:
                self._average_method_gradients()
            self.optimizer.step()
            total_loss += out.loss.detach() * n
            correct += self.task.correct(out.logits.detach(), batch["label"])
            for k, v in out.logs.items():
                logs[k] = logs.get(k, 0) + torch.as_tensor(v, device=self.device).detach().float() * n
            seen += n
        if self.dist.enabled:  # sums over the ranks: the record describes the global epoch
            keys = sorted(logs)
            packed = all_reduce_sum(torch.stack([total_loss, correct.float(), torch.tensor(float(seen),
                                                 device=self.device), *(logs[k] for k in keys)]), self.dist)
            total_loss, correct, seen = packed[0], packed[1], packed[2].item()
            logs = dict(zip(keys, packed[3:]))
            bad_any = all_reduce_sum((first_bad >= 0).float(), self.dist)
            if bad_any.item() > 0 and int(first_bad) < 0:
                first_bad = torch.zeros_like(first_bad)  # another rank hit it; stop together
        if int(first_bad) >= 0:  # the epoch's checkpoint is not written: the last good one stays
            raise NonFiniteLossError(f"epoch {epoch}, step {int(first_bad)}: the loss is not finite (NaN or inf); "
                                     "lower the learning rate or check the data. The run keeps its last good "
                                     "checkpoint; after a fix, --resume continues from there")
        record = {"train/loss": (total_loss / seen).item(), "train/acc": (correct / seen).item(), "lr": lr}
        record.update({f"train/{k}": (v / seen).item() for k, v in logs.items()})
        return record

    def _average_method_gradients(self) -> None:
        """DDP averages the model's gradients; a method's own parameters (second group) are averaged
        here, in one flat bucket: one collective per step instead of one per parameter."""
        grads = [p.grad for group in self.optimizer.param_groups[self._model_groups:] for p in group["params"]
                 if p.grad is not None]
        average_flat(grads, self.dist)

    @torch.no_grad()
    def evaluate_split(self, loader) -> dict[str, float | list[float]]:
        """Metrics of one evaluation split: ``acc``; multi-label adds ``mAP`` (macro, over classes with a
        positive), ``f1_macro`` and ``f1_per_class`` (threshold sigmoid 0.5), ``acc`` being exact match."""
        if not self.task.multilabel:
            return self.accuracy(loader)
        num_classes = len(self.data.classes)
        logits, labels = [torch.zeros(0, num_classes, device=self.device)], [torch.zeros(0, num_classes,
                                                                                         device=self.device)]
        with preserved_state(self.module, eval_mode=True):
            for batch in loader:
                logits.append(self.module(batch["image"].to(self.device)).float())
                labels.append(multi_hot(batch["label"].to(self.device), num_classes))
        logits, labels = gather_cat(torch.cat(logits), self.dist), gather_cat(torch.cat(labels), self.dist)
        f1 = f1_from_counts(multilabel_counts(logits, labels))
        return {"acc": (self.task.correct(logits, labels) / max(len(labels), 1)).item(),
                "mAP": mean_average_precision(logits, labels), "f1_macro": f1.mean().item(),
                "f1_per_class": [round(v, 4) for v in f1.tolist()]}

    @torch.no_grad()
    def accuracy(self, loader) -> dict[str, float]:
        """``acc``; on data whose images carry a background group (demo, shortcut) also
        ``worst_group_acc``, the lowest accuracy over the non-empty (class, background agrees /
        conflicts) cells: the figure group-robustness methods are chosen on, every epoch."""
        cells = 2 * len(self.data.classes)
        correct = torch.zeros(cells + 1, device=self.device)  # per cell, then the total
        seen = torch.zeros(cells + 1, device=self.device)
        grouped = True
        with preserved_state(self.module, eval_mode=True):
            for batch in loader:
                labels = batch["label"].to(self.device)
                right = self.module(batch["image"].to(self.device)).argmax(1) == labels
                grouped = grouped and "group" in batch
                cell = 2 * labels + alignment(labels, batch["group"].to(self.device)) if grouped \
                    else torch.full_like(labels, cells)
                correct += torch.bincount(cell, right.float(), minlength=cells + 1)
                seen += torch.bincount(cell, minlength=cells + 1).float()
        counts = all_reduce_sum(torch.cat([correct, seen]), self.dist)
        correct, seen = counts[: cells + 1], counts[cells + 1:]
        out = {"acc": (correct.sum() / seen.sum().clamp_min(1)).item()}
        if grouped and seen[:cells].sum() > 0:
            out["worst_group_acc"] = worst_cell_accuracy(correct[:cells], seen[:cells]).item()
        return out


def _recipe(model: nn.Module, config: TrainConfig | None, data: TrainData) -> dict | None:
    """What the run's model file records to rebuild the model: from the config, else from ``create``."""
    if config is not None:
        return {"arch": config.arch, "small_input": config.small_input, "image_size": config.image_size}
    made = model_recipe(model)
    return None if made is None else {**made, "image_size": data.image_size}


def average_flat(tensors: Sequence[torch.Tensor], dist_info: DistInfo) -> None:
    """Average tensors over the processes in place, with one all-reduce of their concatenation."""
    if not dist_info.enabled or not tensors:
        return
    flat = torch.cat([t.reshape(-1) for t in tensors])
    all_reduce_sum(flat, dist_info).div_(dist_info.world_size)
    for t, part in zip(tensors, flat.split([t.numel() for t in tensors])):
        t.copy_(part.view_as(t))


def train(config: TrainConfig, progress: bool = True, resume: bool = False) -> Trainer:
    trainer = Trainer.from_config(config, progress=progress, resume=resume)
    trainer.fit()
    return trainer
