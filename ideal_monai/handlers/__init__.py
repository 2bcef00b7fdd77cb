"""Ignite/MONAI handlers: atomic checkpoints, resumable training state, per-epoch seeding."""

from .errors import ErrorReporter
from .checkpoint import ModelSaver, TrainingCheckpoint, load_checkpoint_file, load_state_dict_checked, unwrap
from .ema import WeightEMA
from .epoch_log import EpochLogger
from .progress import LazySummaryWriter, ProgressBar
from .seeding import EpochSeeder

__all__ = ["ErrorReporter", "EpochLogger", "WeightEMA", "EpochSeeder", "LazySummaryWriter", "ProgressBar", "ModelSaver", "TrainingCheckpoint", "load_checkpoint_file", "load_state_dict_checked", "unwrap"]
