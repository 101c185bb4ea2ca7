"""Trainer, methods (erm, ecl, ...) and callbacks; the checkpoint functions are re-exported from
consistcam.run (the run-folder layout lives there)."""

from consistcam.run.checkpoint import load_checkpoint, load_model, save_checkpoint, save_model
from consistcam.train.callbacks import Callback, Checkpointer, ConsolePrinter, JsonlLogger, TensorBoardLogger
from consistcam.train.config import TrainConfig
from consistcam.train.data import TrainData
from consistcam.train.methods import (
    ECL,
    ERM,
    METHODS,
    ECLConfig,
    Method,
    MethodContext,
    StepOutput,
    build_method,
    register_method,
)
from consistcam.train.task import Task, weighted_cross_entropy
from consistcam.train.trainer import LoopSettings, RunOutput, Schedule, Trainer, build_optimizer, train

__all__ = [
    "ECL",
    "ERM",
    "METHODS",
    "Callback",
    "Checkpointer",
    "ConsolePrinter",
    "ECLConfig",
    "JsonlLogger",
    "LoopSettings",
    "RunOutput",
    "Schedule",
    "StepOutput",
    "Method",
    "MethodContext",
    "Task",
    "TensorBoardLogger",
    "TrainConfig",
    "TrainData",
    "Trainer",
    "build_optimizer",
    "build_method",
    "load_checkpoint",
    "load_model",
    "register_method",
    "save_checkpoint",
    "save_model",
    "train",
    "weighted_cross_entropy",
]
