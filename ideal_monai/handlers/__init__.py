"""Ignite/MONAI handlers: atomic checkpoints, resumable training state, per-epoch seeding."""

from .checkpoint import ModelSaver, TrainingCheckpoint, load_checkpoint_file, load_state_dict_checked, unwrap
from .progress import ProgressBar
from .seeding import EpochSeeder

__all__ = ["EpochSeeder", "ProgressBar", "ModelSaver", "TrainingCheckpoint", "load_checkpoint_file", "load_state_dict_checked", "unwrap"]
