"""MONAI trainers for the two IDEAL stages."""

from .pretrain_trainer import PretrainTrainer
from .two_stream_trainer import TwoStreamTrainer
from .utils import check_finite, first_loss, loss_terms

__all__ = ["PretrainTrainer", "TwoStreamTrainer", "check_finite", "first_loss", "loss_terms"]
