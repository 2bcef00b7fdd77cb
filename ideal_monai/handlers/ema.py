"""An exponential moving average (EMA) of the trained weights, for evaluation and export.

SGD with a high learning rate and a strong consistency term leaves the final weights wherever the
last few noisy steps took them; the average of the recent weights is usually the better network.
The average is kept by ``torch.optim.swa_utils.AveragedModel`` (BatchNorm running statistics are
averaged too, ``use_buffers=True``), with the usual warm-up of the decay so that the first steps'
random weights do not linger: ``decay_t = min(decay, (1 + t) / (10 + t))`` after ``t`` updates.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
from ignite.engine import Engine, Events
from torch.optim.swa_utils import AveragedModel

from ..errors import IdealInputError
from ..utils.atomic import atomic_save_torch
from ..utils.weights import is_rank0, load_checkpoint_file, unwrap

logger = logging.getLogger(__name__)

__all__ = ["WeightEMA", "ema_update"]


def ema_update(decay: float):
    """A ``multi_avg_fn`` for ``AveragedModel``: warmed-up EMA of float tensors, integers copied.

    ``num_averaged`` (a tensor) counts the updates so far; the first update copies (``AveragedModel``
    does that itself), the ``t``-th moves the average by ``1 - min(decay, (1 + t) / (10 + t))``.
    """

    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], num_averaged) -> None:
        t = float(num_averaged)
        d = min(float(decay), (1.0 + t) / (10.0 + t))
        for a, c in zip(averaged, current):
            if a.is_floating_point():
                a.lerp_(c, 1.0 - d)
            else:  # BatchNorm's num_batches_tracked
                a.copy_(c)

    return update


class WeightEMA:
    """Keep an EMA copy of ``network``, updated after every optimizer step; save, resume and export it.

    ``averaged_network`` is a plain module of the same class (float32, on the network's device).
    With ``export_path`` its weights are written there (atomically, rank 0) when the run completes,
    with the same keys as the trained network's ``model_final.pt``. To resume the average with the
    training, give the handler itself to :class:`~ideal_monai.handlers.TrainingCheckpoint`'s
    ``save_dict`` (it has ``state_dict`` / ``load_state_dict``): weights, optimizer and average then
    land in one atomic file, as the bundle's ``train.json`` does. Alternatively, with ``state_path``,
    the average is saved in a file of its own at every epoch end and restored at start when it belongs
    to the iteration the trainer resumed at (attach it after the ``TrainingCheckpoint``); a run killed
    between the two saves then restarts the average from the current weights.

    Args:
        network: the trained (optionally DDP-wrapped) network.
        decay: the EMA decay per iteration (e.g. 0.999: a horizon of ~1,000 iterations); 0 keeps a
            copy of the current weights.
        export_path: where to write the averaged weights at the end (``models/model_ema.pt``).
        state_path: optional file of its own for the resumable state of the average.
        resume: load ``state_path`` at start when it exists.
    """

    def __init__(self, network: torch.nn.Module, decay: float = 0.999, export_path: str | os.PathLike | None = None,
                 state_path: str | os.PathLike | None = None, resume: bool = True) -> None:
        if isinstance(decay, bool) or not 0.0 <= float(decay) < 1.0:
            raise IdealInputError("ema_decay", f"must be in [0, 1), got {decay!r}")
        self.network = network
        self.decay = float(decay)
        self.export_path = Path(export_path) if export_path else None
        self.state_path = Path(state_path) if state_path else None
        self.resume = resume
        self.model = AveragedModel(unwrap(network), multi_avg_fn=ema_update(self.decay), use_buffers=True)
        self.model.requires_grad_(False)

    @property
    def averaged_network(self) -> torch.nn.Module:
        """The averaged network (same class and state_dict keys as the trained one)."""
        return self.model.module

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self.load)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.update)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.save)
        engine.add_event_handler(Events.COMPLETED, self.save)
        engine.add_event_handler(Events.COMPLETED, self.export)

    @torch.no_grad()
    def update(self, engine: Engine | None = None) -> None:
        self.model.update_parameters(unwrap(self.network))

    def state_dict(self) -> dict:
        return self.model.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state)

    def save(self, engine: Engine) -> None:
        if self.state_path is None or not is_rank0():
            return
        state = {"ema": {k: v.detach().cpu() for k, v in self.state_dict().items()},
                 "iteration": int(engine.state.iteration)}
        atomic_save_torch(state, self.state_path)

    def load(self, engine: Engine) -> None:
        if not (self.resume and self.state_path is not None and self.state_path.exists()):
            return
        if engine.state.iteration == 0:  # the trainer starts over (no checkpoint): so does the average
            logger.info("%s ignored: training starts at iteration 0", self.state_path)
            return
        state = load_checkpoint_file(self.state_path)
        if int(state.get("iteration", -1)) != int(engine.state.iteration):
            logger.warning("%s is from iteration %s, training resumed at %d: the average restarts from the current "
                           "weights", self.state_path, state.get("iteration"), engine.state.iteration)
            return
        try:
            self.load_state_dict(state["ema"])
        except (KeyError, RuntimeError) as e:
            raise IdealInputError(self.state_path, f"does not match the network: {str(e).splitlines()[0][:120]}") from None

    def export(self, engine: Engine | None = None) -> None:
        if self.export_path is None or not is_rank0():
            return
        atomic_save_torch({k: v.detach().cpu() for k, v in self.averaged_network.state_dict().items()}, self.export_path)
        logger.info("saved %s", self.export_path)
