"""Ignite/MONAI handlers: atomic checkpoints, resumable training state, per-epoch seeding."""

from .errors import ErrorReporter
from .checkpoint import ModelSaver, TrainingCheckpoint
from .ema import WeightEMA
from .progress import LazySummaryWriter, ProgressBar
from .seeding import EpochSeeder

__all__ = ["ErrorReporter", "WeightEMA", "EpochSeeder", "LazySummaryWriter", "ProgressBar", "ModelSaver", "TrainingCheckpoint"]
