"""Ignite/MONAI handlers: atomic checkpoints, resumable training state, per-epoch seeding."""

from .errors import ErrorReporter
from .checkpoint import ModelSaver, TrainingCheckpoint
from .cohort_status import CohortStatus
from .ema import WeightEMA
from .epoch_log import EpochLogger
from .progress import LazySummaryWriter, ProgressBar
from .seeding import EpochSeeder

__all__ = ["CohortStatus", "ErrorReporter", "EpochLogger", "WeightEMA", "EpochSeeder", "LazySummaryWriter", "ProgressBar", "ModelSaver", "TrainingCheckpoint"]
