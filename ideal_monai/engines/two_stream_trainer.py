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

from ..losses import BidirectionalConsistencyLoss, MixedSupervisionLoss
from ..networks import split_streams
from ..transforms import BidirectionalCopyPaste, side_by_side
from ..utils.precision import autocast, resolve_precision
from ..utils.weights import unwrap
from .utils import backward_and_step, check_finite

logger = logging.getLogger(__name__)

#: The batch key of the strongly augmented view of ``"image"`` (same geometry, other intensities).
STRONG_IMAGE_KEY = "image_strong"


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

    **Pseudo-label supervision** (``pseudo_supervision`` given, with unlabeled data): a teacher (the
    EMA of the weights, or the network itself) predicts the unlabeled slices without gradient, in
    eval mode (its eval output: both streams' ensemble unless ``eval_stream`` picks one); its argmax is the pseudo-label ``y_u``, kept where its
    probability reaches ``pseudo_label_threshold``. With ``copy_paste`` the student sees only
    bidirectionally mixed slices (BCP), else the labeled and unlabeled slices side by side; where a
    batch carries ``"image_strong"`` (a strongly augmented view of the same slice, intensity only) the
    student sees it while the teacher saw ``"image"`` (weak-to-strong consistency)::

        L_sup    = sum_s 0.5 * (Dice + CE)(p_s, y)[ground-truth pixels]
        L_pseudo = sum_s 0.5 * (Dice + CE)(p_s, y_u)[confident pseudo-labeled pixels]
        L        = L_sup + w_u(t) * L_pseudo + lambda(t) * L_bcr        (L_bcr on the student's input)

    and ``engine.state.output`` also holds ``loss_pseudo`` and ``pseudo_weight``. ``L_sup`` is then the
    region loss of :class:`~ideal_monai.losses.MixedSupervisionLoss` (Dice pooled over the batch), not
    ``supervised_loss``; with ``copy_paste`` the output's ``label`` is the mixed target of the first
    ``B_l`` slices (ground truth outside the boxes, pseudo-labels inside).

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
        pseudo_supervision: a :class:`~ideal_monai.losses.MixedSupervisionLoss` to turn on
            pseudo-label supervision (above), or None.
        pseudo_label_weight: ``w_u(t)``: a callable of the iteration number or a constant.
        pseudo_label_threshold: confidence a pseudo-label needs, in ``[0, 1]``; None keeps all.
        teacher: the module whose eval-mode output (log-probabilities ``(B, C, H, W)``) gives the
            pseudo-labels, e.g. :attr:`~ideal_monai.handlers.WeightEMA.averaged_network`; None: the
            trained network itself.
        copy_paste: a :class:`~ideal_monai.transforms.BidirectionalCopyPaste`, or None (no mixing).
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
        pseudo_supervision: MixedSupervisionLoss | None = None,
        pseudo_label_weight: Callable[[int], float] | float = 0.5,
        pseudo_label_threshold: float | None = None,
        teacher: torch.nn.Module | None = None,
        copy_paste: BidirectionalCopyPaste | None = None,
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
        if pseudo_label_threshold is not None and not 0.0 <= float(pseudo_label_threshold) <= 1.0:
            raise ValueError(f"pseudo_label_threshold must be in [0, 1] or None, got {pseudo_label_threshold!r}")
        if copy_paste is not None and pseudo_supervision is None:
            raise ValueError("copy_paste needs pseudo_supervision (the loss of the mixed slices)")
        final_w_u = getattr(pseudo_label_weight, "lambda_max", pseudo_label_weight)
        if copy_paste is not None and not callable(final_w_u) and float(final_w_u) == 0.0:
            logger.warning("copy_paste without pseudo-label weight: the pasted unlabeled pixels get no pseudo-label "
                           "loss (set pseudo_label_weight > 0, BCP uses 0.5)")
        self.pseudo_supervision = pseudo_supervision
        self.pseudo_label_weight = pseudo_label_weight
        self.pseudo_label_threshold = pseudo_label_threshold
        self.teacher = teacher
        self.copy_paste = copy_paste
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

    def current_pseudo_weight(self) -> float:
        """``w_u(t)`` at the current iteration."""
        w = self.pseudo_label_weight
        return float(w(self.state.iteration) if callable(w) else w)

    @torch.no_grad()
    def pseudo_labels(self, x_u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The teacher's pseudo-labels of ``x_u (B, 1, H, W)``: ``(labels (B, 1, H, W) long, valid (B, 1, H, W) bool)``.

        The teacher runs in eval mode (its BatchNorm statistics and eval output); the trained
        network is put back in train mode by :meth:`step`.
        """
        teacher = self.teacher if self.teacher is not None else unwrap(self.network)
        teacher.eval()
        with autocast(self.precision, x_u.device):
            log_probs = teacher(x_u)
        confidence, labels = log_probs.float().exp().max(dim=1, keepdim=True)
        if self.pseudo_label_threshold is None:
            return labels, torch.ones_like(labels, dtype=torch.bool)
        return labels, confidence >= self.pseudo_label_threshold

    def _iteration(self, engine: TwoStreamTrainer, batchdata: dict) -> dict:
        return engine.step(batchdata)

    def step(self, batchdata: dict) -> dict:
        """One training step on a labeled batch (and the next unlabeled batch); returns the output dict.

        Ignite calls it through ``_iteration``; a benchmark may call it directly to time steps.
        """
        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        device = self.state.device
        non_blocking = self.non_blocking
        x_l = batchdata[Keys.IMAGE].to(device, non_blocking=non_blocking)
        y_l = batchdata[Keys.LABEL].to(device, non_blocking=non_blocking)
        unlabeled = self._next_unlabeled() if self.unlabeled_data_loader is not None else None
        self.state.output = {Keys.IMAGE: x_l, Keys.LABEL: y_l}
        lam = self.current_lambda()
        pseudo = self.pseudo_supervision is not None and unlabeled is not None
        w_u = self.current_pseudo_weight() if pseudo else 0.0

        if pseudo:
            x_u = unlabeled[Keys.IMAGE].to(device, non_blocking=non_blocking)
            y_u, valid_u = self.pseudo_labels(x_u)  # from the weak view
            # the student sees the strong views where the batches carry them (weak-to-strong)
            xs_l = _strong_view(batchdata, x_l, device, non_blocking)
            xs_u = _strong_view(unlabeled, x_u, device, non_blocking)
            mix = self.copy_paste if self.copy_paste is not None else side_by_side
            inputs, target, from_labeled, valid = mix(xs_l, y_l, xs_u, y_u, valid_u)
        else:
            inputs = x_l
            if unlabeled is not None:
                inputs = torch.cat([x_l, unlabeled[Keys.IMAGE].to(device, non_blocking=non_blocking)], dim=0)
        n_l = x_l.shape[0]
        self.network.train()
        self.optimizer.zero_grad(set_to_none=True)

        with autocast(self.precision, device):  # the network's forward only
            logits = split_streams(self.network(inputs), self.num_streams)  # S x (B, C, H, W)
        self.fire_event(IterationEvents.FORWARD_COMPLETED)
        # Losses in float32, outside autocast (softmax, Dice sums and CE on 16-bit logits lose digits).
        logits = [s.float() for s in logits]
        loss_pseudo = None
        if pseudo:
            terms = [self.pseudo_supervision.terms(s, target, from_labeled, valid) for s in logits]
            loss_sup = sum(0.5 * self.pseudo_supervision.labeled_weight * gt for gt, _ in terms)
            loss_pseudo = sum(0.5 * p for _, p in terms)
        else:
            loss_sup = sum(0.5 * self.supervised_loss(s[:n_l], y_l) for s in logits)
        loss_bcr = loss_sup * 0.0
        if self.num_streams > 1:
            loss_bcr = self.consistency_loss(logits[0], logits[1])
        loss = loss_sup + lam * loss_bcr
        if loss_pseudo is not None:
            loss = loss + w_u * loss_pseudo
        self.state.output[Keys.LOSS] = loss
        self.fire_event(IterationEvents.LOSS_COMPLETED)

        if check_finite(self, loss):
            backward_and_step(self, loss)
        self.fire_event(IterationEvents.MODEL_COMPLETED)
        output = {
            Keys.LOSS: loss.detach(),
            "loss_sup": loss_sup.detach(),
            "loss_bcr": loss_bcr.detach(),
            "lambda": torch.tensor(lam),
            Keys.PRED: logits[0][:n_l].detach(),
            Keys.LABEL: y_l,
        }
        if loss_pseudo is not None:
            output["loss_pseudo"] = loss_pseudo.detach()
            output["pseudo_weight"] = torch.tensor(w_u)
            output[Keys.LABEL] = target[:n_l]  # with copy_paste: the mixed target of the mostly labeled slices
        self.state.output = output
        return output


def _strong_view(batch: dict, weak: torch.Tensor, device, non_blocking: bool) -> torch.Tensor:
    """``batch["image_strong"]`` on the device when the loader made one, else the weak view itself."""
    strong = batch.get(STRONG_IMAGE_KEY)
    if strong is None:
        return weak
    strong = strong.as_tensor() if hasattr(strong, "as_tensor") else strong
    if strong.shape != weak.shape:
        raise ValueError(f"{STRONG_IMAGE_KEY} must have the image's shape {tuple(weak.shape)}, got {tuple(strong.shape)}")
    return strong.to(device, non_blocking=non_blocking)
