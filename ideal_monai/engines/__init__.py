"""MONAI trainers for the two IDEAL stages."""

from .pretrain_trainer import PretrainTrainer
from .two_stream_trainer import TwoStreamTrainer
from .utils import build_optimizer, check_finite, first_loss, loss_terms

__all__ = ["PretrainTrainer", "TwoStreamTrainer", "build_optimizer", "check_finite", "first_loss", "loss_terms"]
