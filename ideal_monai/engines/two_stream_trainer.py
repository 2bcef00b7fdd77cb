"""Stage 2: semi-supervised fine-tuning with bidirectional consistency, as a MONAI ``Trainer``."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence

import torch
from monai.engines import Trainer
from monai.engines.utils import IterationEvents
from monai.losses import DiceCELoss
from monai.utils.enums import CommonKeys as Keys
from torch.optim.optimizer import Optimizer
from torch.utils.data.distributed import DistributedSampler

from ..losses import BidirectionalConsistencyLoss
from ..networks import split_streams
from ..utils.precision import autocast, resolve_precision
from ..utils.weights import unwrap
from .utils import backward_and_step, check_finite

logger = logging.getLogger(__name__)


class TwoStreamTrainer(Trainer):
    """Fine-tune a :class:`~ideal_monai.networks.DualDecoderUNet` on labeled + unlabeled slices.

    Each iteration takes a labeled batch ``(B_l, 1, H, W)`` with labels ``(B_l, 1, H, W)`` from
    ``train_data_loader`` and an unlabeled batch ``(B_u, 1, H, W)`` from ``unlabeled_data_loader``
    (cycled; re-shuffled every epoch, ``set_epoch`` called on a ``DistributedSampler``), runs both
    through the network in one forward (training mode returns the streams' logits concatenated
    along channels) and computes::

        L_sup = sum_s 0.5 * (CE(p_s, y) + Dice(p_s, y))       labeled slices
        L_bcr = CE(p1, argmax p2) + CE(p2, argmax p1)          all slices, targets without gradient
        L     = L_sup + lambda(t) * L_bcr

    With ``unlabeled_data_loader=None`` and/or a one-stream network it is the supervised baseline
    (``L_bcr`` needs two streams). ``engine.state.output`` holds ``loss``, ``loss_sup``,
    ``loss_bcr``, ``lambda`` and ``pred`` (the first stream's logits on the labeled batch).

    Args:
        device, max_epochs, train_data_loader, epoch_length, non_blocking, train_handlers:
            as for ``monai.engines.SupervisedTrainer``.
        precision: ``fp32``, ``bf16``, ``fp16`` or ``auto`` (:func:`~ideal_monai.utils.precision.resolve_precision`):
            the forward pass runs under that autocast, the losses in float32; ``fp16`` steps
            through ``engine.scaler`` (a ``GradScaler``). Replaces MONAI's ``amp`` flag.
        network: the (optionally DDP-wrapped) two-stream network.
        optimizer: its optimizer.
        unlabeled_data_loader: loader of unlabeled slice dicts (``"image"`` only), or None.
        supervised_loss: per-stream supervised loss (default ``DiceCELoss(to_onehot_y=True,
            softmax=True)``, i.e. CE + Dice; each stream's term is scaled by 0.5).
        consistency_loss: default :class:`BidirectionalConsistencyLoss`.
        consistency_weight: ``lambda(t)``: a callable of the iteration number (e.g.
            :class:`~ideal_monai.losses.ConsistencyWeightSchedule`) or a constant.
        nonfinite: ``"stop"`` or ``"skip"`` (see :func:`ideal_monai.engines.utils.check_finite`).
    """

    def __init__(
        self,
        device: str | torch.device,
        max_epochs: int,
        train_data_loader: Iterable,
        network: torch.nn.Module,
        optimizer: Optimizer,
        unlabeled_data_loader: Iterable | None = None,
        supervised_loss: Callable | None = None,
        consistency_loss: Callable | None = None,
        consistency_weight: Callable[[int], float] | float = 1.0,
        nonfinite: str = "stop",
        epoch_length: int | None = None,
        non_blocking: bool = False,
        train_handlers: Sequence | None = None,
        precision: str = "fp32",
    ) -> None:
        resolved = resolve_precision(precision, device)
        super().__init__(
            device=device,
            max_epochs=max_epochs,
            data_loader=train_data_loader,
            epoch_length=epoch_length,
            non_blocking=non_blocking,
            handlers=train_handlers,
            amp=resolved == "fp16",  # MONAI's Trainer.run then makes engine.scaler
            decollate=False,
        )
        self.precision = resolved
        logger.info("%s: precision %s (configured %r)", type(self).__name__, resolved, precision)
        self.network = network
        self.optimizer = optimizer
        self.num_streams = int(getattr(unwrap(network), "num_streams", 1))
        self.unlabeled_data_loader = unlabeled_data_loader if self.num_streams > 1 else None
        self.supervised_loss = supervised_loss if supervised_loss is not None else DiceCELoss(to_onehot_y=True, softmax=True)
        self.consistency_loss = consistency_loss if consistency_loss is not None else BidirectionalConsistencyLoss()
        self.consistency_weight = consistency_weight
        self.nonfinite = nonfinite
        self._unlabeled_iter = None
        self._unlabeled_passes = 0
        from ignite.engine import Events

        # A fresh unlabeled iterator each epoch: its shuffling then follows the epoch's seed,
        # which makes resumed runs reproduce uninterrupted ones.
        self.add_event_handler(Events.EPOCH_STARTED, self._restart_unlabeled)

    def _restart_unlabeled(self, engine: TwoStreamTrainer | None = None) -> None:
        self._unlabeled_iter = None

    def _next_unlabeled(self) -> dict:
        if self._unlabeled_iter is None:
            sampler = getattr(self.unlabeled_data_loader, "sampler", None)
            if isinstance(sampler, DistributedSampler):
                sampler.set_epoch(self.state.epoch * 1000 + self._unlabeled_passes)
            self._unlabeled_iter = iter(self.unlabeled_data_loader)
        try:
            return next(self._unlabeled_iter)
        except StopIteration:  # the unlabeled pool is cycled as often as the labeled loader needs
            self._unlabeled_passes += 1
            self._unlabeled_iter = None
            return self._next_unlabeled()

    def current_lambda(self) -> float:
        """``lambda(t)`` at the current iteration."""
        w = self.consistency_weight
        return float(w(self.state.iteration) if callable(w) else w)

    def _iteration(self, engine: TwoStreamTrainer, batchdata: dict) -> dict:
        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        device = engine.state.device
        x_l = batchdata[Keys.IMAGE].to(device, non_blocking=engine.non_blocking)
        y_l = batchdata[Keys.LABEL].to(device, non_blocking=engine.non_blocking)
        inputs = x_l
        if engine.unlabeled_data_loader is not None:
            x_u = engine._next_unlabeled()[Keys.IMAGE].to(device, non_blocking=engine.non_blocking)
            inputs = torch.cat([x_l, x_u], dim=0)
        n_l = x_l.shape[0]
        engine.state.output = {Keys.IMAGE: x_l, Keys.LABEL: y_l}
        engine.network.train()
        engine.optimizer.zero_grad(set_to_none=True)

        lam = engine.current_lambda()
        with autocast(engine.precision, device):  # the network's forward only
            logits = split_streams(engine.network(inputs), engine.num_streams)  # S x (B, C, H, W)
        engine.fire_event(IterationEvents.FORWARD_COMPLETED)
        # Losses in float32, outside autocast (softmax, Dice sums and CE on 16-bit logits lose digits).
        logits = [s.float() for s in logits]
        loss_sup = sum(0.5 * engine.supervised_loss(s[:n_l], y_l) for s in logits)
        loss_bcr = loss_sup * 0.0
        if engine.num_streams > 1:
            loss_bcr = engine.consistency_loss(logits[0], logits[1])
        loss = loss_sup + lam * loss_bcr
        engine.state.output[Keys.LOSS] = loss
        engine.fire_event(IterationEvents.LOSS_COMPLETED)

        if check_finite(engine, loss):
            backward_and_step(engine, loss)
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        engine.state.output = {
            Keys.LOSS: loss.detach(),
            "loss_sup": loss_sup.detach(),
            "loss_bcr": loss_bcr.detach(),
            "lambda": torch.tensor(lam),
            Keys.PRED: logits[0][:n_l].detach(),
            Keys.LABEL: y_l,
        }
        return engine.state.output
