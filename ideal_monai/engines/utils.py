"""Small helpers shared by the trainers."""

from __future__ import annotations

import logging

import torch
import torch.distributed as dist
from ignite.engine import Engine

logger = logging.getLogger(__name__)


def check_finite(engine: Engine, loss: torch.Tensor) -> bool:
    """True when ``loss`` is finite. Otherwise apply ``engine.nonfinite``: ``"skip"`` logs and returns
    False (the batch is dropped); ``"stop"`` raises ``FloatingPointError`` so training ends before a
    bad step reaches the weights, leaving the last good checkpoint in place.

    Under ``torch.distributed`` every rank must take the same branch: DDP's backward all-reduces the
    gradients, so one rank skipping its backward (or leaving) while the others wait in it would
    hang them all. The ranks therefore agree first (one-element all-reduce, MIN of "finite"): a
    non-finite loss on any rank skips or stops the step on every rank.
    """
    finite = torch.isfinite(loss.detach()).all()
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        agreed = finite.to(dtype=torch.int32).reshape(1)  # on the loss's device (NCCL needs CUDA tensors)
        dist.all_reduce(agreed, op=dist.ReduceOp.MIN)
        if bool(agreed):  # one host sync per step, as without distribution
            return True
    elif bool(finite):
        return True
    local_ok = bool(finite)
    where = f"at epoch {engine.state.epoch}, iteration {engine.state.iteration}"
    msg = (f"non-finite loss ({float(loss.detach()):g}) {where}" if not local_ok
           else f"non-finite loss on another process (rank {dist.get_rank()} had {float(loss.detach()):g}) {where}")
    if getattr(engine, "nonfinite", "stop") == "skip":
        engine.state.skipped_batches = getattr(engine.state, "skipped_batches", 0) + 1
        logger.warning("%s: batch skipped", msg)
        return False
    raise FloatingPointError(f"{msg}; training stopped, the last checkpoint is kept (lower the learning rate, or set nonfinite='skip')")


def backward_and_step(engine: Engine, loss: torch.Tensor) -> None:
    """``loss.backward()`` then ``engine.optimizer.step()``, through ``engine.scaler`` when there is one.

    MONAI's ``Trainer.run`` creates ``engine.scaler`` (a ``GradScaler``) when the trainer was built
    with ``amp=True``, which the trainers here do for ``precision="fp16"`` only: float16 gradients
    underflow without loss scaling, bfloat16 and float32 ones do not.
    """
    from monai.engines.utils import IterationEvents

    scaler = getattr(engine, "scaler", None)
    if scaler is not None:
        scaler.scale(loss).backward()
        engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
        scaler.step(engine.optimizer)
        scaler.update()
        return
    loss.backward()
    engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
    engine.optimizer.step()


def loss_terms(output: dict) -> dict[str, float]:
    """The scalar loss terms of a trainer's ``engine.state.output`` (for Stats/TensorBoard handlers)."""
    return {k: float(v) for k, v in output.items() if k.startswith("loss") or k == "lambda"}


def first_loss(output: dict) -> float:
    """``output["loss"]`` as a float (the ``output_transform`` of StatsHandler/progress bars)."""
    return float(output["loss"])


def build_optimizer(name: str, params, lr: float, momentum: float = 0.9, weight_decay: float = 0.0):
    """``"sgd"`` (momentum, the paper's default family) or ``"adam"`` / ``"adamw"``, from one config key."""
    key = str(name).lower()
    if key == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum or 0.0, weight_decay=weight_decay)
    if key == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if key == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    from ..errors import IdealInputError

    raise IdealInputError("--optimizer", f"expected 'sgd', 'adam' or 'adamw', got {name!r}")
