"""The training loop: plain PyTorch, strategies plug in, runs resume exactly."""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Subset

from consistcam.consistency import ConsistencyScores
from consistcam.data import build_dataset, build_transform, collate, eval_splits
from consistcam.models import create
from consistcam.train.checkpoint import load_checkpoint, save_checkpoint, save_model
from consistcam.train.config import TrainConfig
from consistcam.train.strategies import build_strategy
from consistcam.utils import progress_bar, seed_everything


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def learning_rate(config: TrainConfig, step: int, steps_per_epoch: int) -> float:
    """Stateless schedule (linear warm-up, then cosine/step/constant): resuming needs no state."""
    epoch = step / steps_per_epoch
    if config.warmup_epochs > 0 and epoch < config.warmup_epochs:
        return config.lr * (step + 1) / (config.warmup_epochs * steps_per_epoch)
    if config.schedule == "cosine":
        total = max(config.epochs - config.warmup_epochs, 1e-8)
        progress = min(1.0, (epoch - config.warmup_epochs) / total)
        return config.lr * 0.5 * (1 + math.cos(math.pi * progress))
    if config.schedule == "step":
        return config.lr * config.gamma ** int(epoch // config.step_size)
    return config.lr


class Trainer:
    """Train ``config.method`` on ``config.data``; everything lands in ``config.out``."""

    def __init__(self, config: TrainConfig, progress: bool = True, resume: bool = False) -> None:
        self.config = config
        self.progress = progress
        self.device = resolve_device(config.device)
        self.run_dir = Path(config.out)
        seed_everything(config.seed)
        cfg = config
        data_kw = {"skip_bad": True} if cfg.skip_bad else {}
        self.train_set = build_dataset(cfg.data, "train", build_transform(cfg.image_size, cfg.augment), **data_kw)
        if self.train_set.multilabel:
            raise ValueError(f"{cfg.data}: multi-label data sets can be evaluated (mAP) but training them is not "
                             "supported yet (the strategies use a single-label cross-entropy)")
        self.train_set.keep_locations = False  # the loss never reads them; dropping them triples loading speed
        self.classes = self.train_set.classes
        self.num_ids = len(self.train_set)
        indices = list(range(min(cfg.subset, self.num_ids))) if cfg.subset else list(range(self.num_ids))
        self.train_ids = torch.tensor(indices, device=self.device)
        self._train_view = Subset(self.train_set, indices) if cfg.subset else self.train_set
        eval_tf = build_transform(cfg.image_size, "none")
        scoring = build_dataset(cfg.data, "train", eval_tf, **data_kw)
        scoring.keep_locations = cfg.consistency_config().mask not in ("heatmap", "none")
        self._scoring_view = Subset(scoring, indices) if cfg.subset else scoring
        self.eval_sets = {split: build_dataset(cfg.data, split, eval_tf, **data_kw) for split in eval_splits(cfg.data)}
        self._record_skipped()
        self.model = create(cfg.arch, len(self.classes), cfg.pretrained, cfg.small_input).to(self.device)
        if cfg.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        params = self.model.parameters()
        if cfg.optimizer == "sgd":
            self.optimizer = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                                             nesterov=cfg.momentum > 0)
        else:
            self.optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.strategy = build_strategy(cfg.method)
        self.strategy.setup(self)
        self.start_epoch = 0
        self.history: list[dict] = []
        if resume:
            self._resume()
        self._writer = None

    # -- data ---------------------------------------------------------------------------------
    def _record_skipped(self) -> None:
        """List every file skipped under ``skip_bad`` in RUN/skipped.txt (split, file, reason)."""
        rows = [(split, where, why) for split, ds in (("train", self.train_set), *self.eval_sets.items())
                for where, why in ds.skipped.items]
        if rows:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            text = "".join(f"{split}\t{where}\t{why}\n" for split, where, why in rows)
            (self.run_dir / "skipped.txt").write_text(text)
            print(f"warning: skipped {len(rows)} bad file(s); listed in {self.run_dir / 'skipped.txt'}",
                  file=sys.stderr)

    def _loader(self, dataset, batch_size: int, shuffle: bool, seed: int | None = None) -> DataLoader:
        g = torch.Generator().manual_seed(seed) if seed is not None else None
        return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, collate_fn=collate, generator=g,
                          num_workers=self.config.workers, pin_memory=self.device.type == "cuda",
                          persistent_workers=False)

    def scoring_loader(self) -> DataLoader:
        """The training images without augmentation, for the consistency pass."""
        return self._loader(self._scoring_view, self.config.score_batch_size, shuffle=False)

    def eval_loader(self, split: str) -> DataLoader:
        return self._loader(self.eval_sets[split], self.config.eval_batch_size, shuffle=False)

    # -- run directory --------------------------------------------------------------------------
    @property
    def writer(self):
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(str(self.run_dir / "tb"))
        return self._writer

    def save_scores(self, scores: ConsistencyScores, epoch: int) -> None:
        scores.save(self.run_dir / "consistency" / f"epoch_{epoch:03d}.safetensors")

    def _log(self, record: dict) -> None:
        self.history.append(record)
        with open(self.run_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
        for k, v in record.items():
            if isinstance(v, (int, float)) and k != "epoch":
                self.writer.add_scalar(k, v, record["epoch"])
        self.writer.flush()

    def _resume(self) -> None:
        path = self.run_dir / "checkpoint.safetensors"
        if not path.is_file():
            raise FileNotFoundError(f"cannot resume: {path} not found")
        state = load_checkpoint(path, self.model, self.optimizer)
        saved = {k: v for k, v in state["config"].items() if k not in ("epochs", "out", "workers", "device")}
        mine = {k: v for k, v in self.config.to_dict().items() if k in saved}
        if saved != mine:
            diff = sorted(k for k in saved if saved[k] != mine.get(k))
            raise ValueError(f"cannot resume {self.run_dir}: config differs from the checkpoint's in {diff}")
        self.strategy.load_state_dict(state["strategy"])
        self.start_epoch = state["epoch"] + 1
        log = self.run_dir / "metrics.jsonl"
        if log.is_file():  # drop records of epochs after the checkpoint (a crash mid-epoch)
            lines = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
            self.history = [r for r in lines if r.get("epoch", -1) < self.start_epoch]
            log.write_text("".join(json.dumps(r) + "\n" for r in self.history))

    # -- loop -----------------------------------------------------------------------------------
    def fit(self, stop_after: int | None = None) -> list[dict]:
        """Train up to ``config.epochs``; ``stop_after`` ends this call after that many epochs (as an
        interruption would: the run can be resumed)."""
        cfg = self.config
        self.run_dir.mkdir(parents=True, exist_ok=True)
        cfg.save_yaml(self.run_dir / "config.yaml")
        last = cfg.epochs if stop_after is None else min(cfg.epochs, self.start_epoch + stop_after)
        for epoch in range(self.start_epoch, last):
            t0 = time.time()
            epoch_seed = cfg.seed * 1000 + epoch
            torch.manual_seed(epoch_seed)  # augmentation randomness: a function of (seed, epoch) only
            record = {"epoch": epoch, **self.strategy.on_epoch_start(epoch)}
            record.update(self.train_epoch(epoch, epoch_seed))
            for split in self.eval_sets:
                record[f"{split}/acc"] = self.accuracy(self.eval_loader(split))
            record["time_s"] = round(time.time() - t0, 2)
            self._log(record)
            save_checkpoint(self.run_dir / "checkpoint.safetensors", self.model, self.optimizer,
                            self.strategy.state_dict(), epoch, cfg.to_dict())
            save_model(self.run_dir / "model.safetensors", self.model, cfg.arch, len(self.classes), cfg.small_input,
                       self.classes, cfg.image_size)
            if self.progress:
                shown = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in record.items()}
                print(json.dumps(shown), flush=True)
        if self._writer is not None:
            self._writer.close()
        return self.history

    def train_epoch(self, epoch: int, seed: int) -> dict:
        cfg = self.config
        self.model.train()
        loader = self._loader(self._train_view, cfg.batch_size, shuffle=True, seed=seed)
        steps = len(loader)
        total_loss = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device)
        seen = 0
        use_amp = cfg.amp and self.device.type == "cuda"
        for i, batch in enumerate(progress_bar(loader, desc=f"epoch {epoch}", enabled=self.progress)):
            lr = learning_rate(cfg, epoch * steps + i, steps)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            images = batch["image"].to(self.device, non_blocking=True)
            if cfg.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            labels = batch["label"].to(self.device, non_blocking=True)
            ids = batch["id"].to(self.device, non_blocking=True)
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=use_amp):
                loss, logits = self.strategy.loss(self.model, images, labels, ids)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            total_loss += loss.detach() * len(labels)
            correct += (logits.detach().argmax(1) == labels).sum()
            seen += len(labels)
        return {"train/loss": (total_loss / seen).item(), "train/acc": (correct / seen).item(), "lr": lr}

    @torch.no_grad()
    def accuracy(self, loader: DataLoader) -> float:
        was = self.model.training
        self.model.eval()
        correct = torch.zeros((), device=self.device)
        seen = 0
        for batch in loader:
            logits = self.model(batch["image"].to(self.device))
            correct += (logits.argmax(1) == batch["label"].to(self.device)).sum()
            seen += len(batch["label"])
        self.model.train(was)
        return (correct / max(seen, 1)).item()


def train(config: TrainConfig, progress: bool = True, resume: bool = False) -> Trainer:
    trainer = Trainer(config, progress=progress, resume=resume)
    trainer.fit()
    return trainer
