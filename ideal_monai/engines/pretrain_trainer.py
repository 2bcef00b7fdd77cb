"""Stage 1: self-supervised dense local contrastive pre-training as a MONAI ``Trainer``."""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Iterable, Sequence

import torch
from monai.engines import Trainer
from monai.engines.utils import IterationEvents
from monai.utils.enums import CommonKeys as Keys
from torch.optim.optimizer import Optimizer

from ..losses import DenseLocalContrastiveLoss
from ..utils.precision import autocast, resolve_precision
from ..utils.weights import unwrap
from .utils import backward_and_step, check_finite

logger = logging.getLogger(__name__)


class PretrainTrainer(Trainer):
    """Two-view dense contrastive pre-training of the encoder and projection head(s).

    Each batch (from :class:`~ideal_monai.transforms.RandPairedViewsd`) holds two views
    ``view_q``, ``view_k`` ``(B, 1, H, W)`` of the same slices and their dense correspondences
    ``match_qk``, ``match_kq`` ``(B, h, w)`` at the stride of the deepest dense level (extra levels
    read ``match_qk_s{stride}``). One iteration computes::

        L = dense_weight * 0.5 * (L_dense(q, k, match_qk) + L_dense(k, q, match_kq))
          + global_weight * L_global(g_q, g_k)

    and steps the optimizer. ``engine.state.output`` holds ``loss``, ``loss_dense``, ``loss_global``.

    Args:
        device, max_epochs, train_data_loader, epoch_length, non_blocking, train_handlers:
            as for ``monai.engines.SupervisedTrainer``.
        precision: ``fp32``, ``bf16``, ``fp16`` or ``auto`` (:func:`~ideal_monai.utils.precision.resolve_precision`):
            the forward pass runs under that autocast, the losses in float32; ``fp16`` steps
            through ``engine.scaler`` (a ``GradScaler``). Replaces MONAI's ``amp`` flag.
        network: a :class:`~ideal_monai.networks.PretrainNetwork` (optionally DDP-wrapped).
        optimizer: optimizer over ``network``'s parameters.
        dense_loss: the dense loss (default ``DenseLocalContrastiveLoss(temperature=0.1)``).
        global_loss: loss on the pooled projections, e.g. ``monai.losses.ContrastiveLoss``.
        dense_weight, global_weight: weights of the two terms (``dense_weight=0`` with a global loss
            is the paper's Global CL baseline). ``network`` must have exactly the heads whose weight
            is non-zero (dense heads for ``dense_weight``, the global head for ``global_weight``).
        momentum: if set (e.g. 0.99), keys come from an EMA copy of the network (MoCo-style), updated
            after each step; ``None`` (default) shares the weights between views.
        nonfinite: ``"stop"`` raises ``FloatingPointError`` on a NaN/Inf loss (the last good checkpoint
            stays), ``"skip"`` drops that batch and goes on.
    """

    def __init__(
        self,
        device: str | torch.device,
        max_epochs: int,
        train_data_loader: Iterable,
        network: torch.nn.Module,
        optimizer: Optimizer,
        dense_loss: Callable | None = None,
        global_loss: Callable | None = None,
        dense_weight: float = 1.0,
        global_weight: float = 0.0,
        momentum: float | None = None,
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
        net = unwrap(network)
        if dense_weight > 0 and not net.dense_heads:
            raise ValueError("dense_weight > 0 needs a network with dense heads")
        if global_weight > 0 and (global_loss is None or net.global_head is None):
            raise ValueError("global_weight > 0 needs a global_loss and a network with global_head=True")
        # A head whose term is off gets no gradient, which DDP refuses ("Expected to have finished
        # reduction in the prior iteration"): the network must have only the heads that are trained.
        if dense_weight == 0 and net.dense_heads:
            raise ValueError("dense_weight is 0: build the network without dense heads (dense_levels=[])")
        if global_weight == 0 and net.global_head is not None:
            raise ValueError("global_weight is 0: build the network without the global head (global_head=False)")
        self.precision = resolved
        logger.info("%s: precision %s (configured %r)", type(self).__name__, resolved, precision)
        self.network = network
        self.optimizer = optimizer
        self.dense_loss = dense_loss if dense_loss is not None else DenseLocalContrastiveLoss(temperature=0.1)
        self.global_loss = global_loss
        self.dense_weight = float(dense_weight)
        self.global_weight = float(global_weight)
        self.momentum = momentum
        self.nonfinite = nonfinite
        self.key_network = None
        if momentum is not None:
            self.key_network = copy.deepcopy(unwrap(network)).to(device)
            self.key_network.requires_grad_(False)

    @torch.no_grad()
    def _update_key_network(self) -> None:
        """EMA update ``k = m k + (1 - m) q`` of the momentum key network (buffers copied)."""
        online = unwrap(self.network)
        for p_k, p_q in zip(self.key_network.parameters(), online.parameters()):
            p_k.mul_(self.momentum).add_(p_q.detach(), alpha=1.0 - self.momentum)
        for b_k, b_q in zip(self.key_network.buffers(), online.buffers()):
            b_k.copy_(b_q)

    def _match(self, batch: dict, direction: str, stride: int, deepest: int) -> torch.Tensor:
        key = f"match_{direction}" if stride == deepest else f"match_{direction}_s{stride}"
        if key not in batch:
            raise KeyError(f"batch has no {key!r}: configure RandPairedViewsd for feature stride {stride}")
        return batch[key].to(self.state.device, non_blocking=self.non_blocking)

    def step(self, batchdata: dict) -> dict:
        """One pre-training step on ``batchdata`` (``view_q``, ``view_k``, the ``match_*`` maps); returns the
        output dict. Ignite calls it through ``_iteration``; a benchmark may call it directly to time steps."""
        return self._iteration(self, batchdata)

    def _iteration(self, engine: PretrainTrainer, batchdata: dict) -> dict:
        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        device = engine.state.device
        x_q = batchdata["view_q"].to(device, non_blocking=engine.non_blocking)
        x_k = batchdata["view_k"].to(device, non_blocking=engine.non_blocking)
        engine.state.output = {Keys.IMAGE: x_q}
        engine.network.train()
        engine.optimizer.zero_grad(set_to_none=True)

        with autocast(engine.precision, device):  # the networks' forward only
            if engine.key_network is None:
                # One forward over both views: one BN batch, one pass through DDP.
                out = engine.network(torch.cat([x_q, x_k], dim=0))
                b = x_q.shape[0]
                dense_q = [d[:b] for d in out["dense"]]
                dense_k = [d[b:] for d in out["dense"]]
                glob_q = out["global"][:b] if "global" in out else None
                glob_k = out["global"][b:] if "global" in out else None
            else:
                out_q = engine.network(x_q)
                with torch.no_grad():
                    out_k = engine.key_network(x_k)
                dense_q, dense_k = out_q["dense"], out_k["dense"]
                glob_q, glob_k = out_q.get("global"), out_k.get("global")
        engine.fire_event(IterationEvents.FORWARD_COMPLETED)

        # The losses run outside autocast on float32 features (the heads return float32 unit
        # vectors): the dense loss's logits are GEMMs that autocast would otherwise take to 16 bits.
        zero = x_q.sum() * 0.0
        loss_dense = zero
        if engine.dense_weight > 0:
            strides = unwrap(engine.network).dense_strides()
            terms = []
            for q, k, s in zip(dense_q, dense_k, strides):
                q, k = q.float(), k.float()
                m_qk = engine._match(batchdata, "qk", s, max(strides))
                m_kq = engine._match(batchdata, "kq", s, max(strides))
                terms.append(0.5 * (engine.dense_loss(q, k, m_qk) + engine.dense_loss(k, q, m_kq)))
            loss_dense = torch.stack(terms).mean()
        loss_global = zero
        if engine.global_weight > 0:
            loss_global = engine.global_loss(glob_q.float(), glob_k.float())
        loss = engine.dense_weight * loss_dense + engine.global_weight * loss_global
        engine.state.output[Keys.LOSS] = loss
        engine.fire_event(IterationEvents.LOSS_COMPLETED)

        if check_finite(engine, loss):
            backward_and_step(engine, loss)
            if engine.key_network is not None:
                engine._update_key_network()
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        engine.state.output = {
            Keys.LOSS: loss.detach(),
            "loss_dense": loss_dense.detach(),
            "loss_global": loss_global.detach(),
        }
        return engine.state.output
