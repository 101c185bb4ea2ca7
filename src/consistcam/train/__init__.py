"""Trainer and strategies (erm, ecl)."""

from consistcam.train.checkpoint import load_checkpoint, load_model, save_checkpoint, save_model
from consistcam.train.config import TrainConfig
from consistcam.train.strategies import ECL, ERM, STRATEGIES, Strategy, build_strategy, weighted_cross_entropy
from consistcam.train.trainer import Trainer, learning_rate, train

__all__ = [
    "ECL",
    "ERM",
    "STRATEGIES",
    "Strategy",
    "TrainConfig",
    "Trainer",
    "build_strategy",
    "learning_rate",
    "load_checkpoint",
    "load_model",
    "save_checkpoint",
    "save_model",
    "train",
    "weighted_cross_entropy",
]
