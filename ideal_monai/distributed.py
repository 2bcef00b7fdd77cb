"""Multi-GPU / multi-node training with ``torchrun`` + DistributedDataParallel.

The bundle's override files ``configs/multi_gpu_pretrain.json`` and ``configs/multi_gpu_train.json``
wire these helpers into ``pretrain.json`` / ``train.json``::

    torchrun --standalone --nproc_per_node=N -m monai.bundle run finetune \\
        --config_file "['configs/train.json','configs/multi_gpu_train.json']"

- :func:`setup` starts the process group once (``nccl`` when CUDA is available, ``gloo`` on CPU)
  from the ``torchrun`` environment and returns this process's device (``cuda:LOCAL_RANK`` or CPU).
  Every other helper calls it, so the order in which a config evaluates them does not matter.
- :func:`wrap_ddp` wraps a network in ``DistributedDataParallel`` (it broadcasts rank 0's weights, so
  the momentum key encoder that :class:`~ideal_monai.engines.PretrainTrainer` copies from it, and
  updates from the synchronised weights, is the same on every rank).
- :func:`train_sampler` / :func:`eval_sampler` shard a dataset: training shards are disjoint
  (``drop_last``: at most ``world_size - 1`` slices are left out of an epoch, a different few each
  epoch); validation shards are disjoint and complete (uneven sizes; MONAI metrics gather them).
- :func:`rank_zero_handlers` drops console/TensorBoard/progress/MLflow handlers on ranks > 0 and
  puts :class:`ReduceOutput` in front, so rank 0 logs losses averaged over all ranks.
- :class:`GatheredDenseLocalContrastiveLoss` optionally takes negatives from all ranks.

Without ``torchrun`` (no ``WORLD_SIZE`` > 1 in the environment) everything degrades to the
single-process behaviour: no process group, no wrapper, plain samplers.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence

import torch
import torch.distributed as dist
from ignite.engine import Engine, Events

from .losses import DenseLocalContrastiveLoss
from .losses.dense_contrastive import dense_info_nce

logger = logging.getLogger(__name__)

__all__ = ["setup", "cleanup", "is_distributed", "rank", "world_size", "is_rank0", "backend", "wrap_ddp",
           "train_sampler", "eval_sampler", "rank_zero_handlers", "ReduceOutput", "GatheredDenseLocalContrastiveLoss", "dump_shards"]


def _env_world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def backend() -> str:
    """``nccl`` when CUDA is available, else ``gloo`` (``IDEAL_MONAI_DIST_BACKEND`` overrides)."""
    return os.environ.get("IDEAL_MONAI_DIST_BACKEND") or ("nccl" if torch.cuda.is_available() else "gloo")


def setup() -> torch.device:
    """Initialise the process group from the ``torchrun`` environment (once) and return the device.

    The device is ``cuda:LOCAL_RANK`` (also made the current CUDA device) when CUDA is available,
    else ``cpu``. Without ``torchrun`` no group is started and the device is ``cuda:0`` / ``cpu``.
    """
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if _env_world_size() > 1 and dist.is_available() and not dist.is_initialized():
        be = backend()
        dist.init_process_group(backend=be, device_id=device if be == "nccl" else None)
        logger.info("process group started: backend %s, rank %d of %d", be, dist.get_rank(), dist.get_world_size())
    return device


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    setup()
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    setup()
    return dist.get_world_size() if is_distributed() else 1


def is_rank0() -> bool:
    return rank() == 0


def cleanup() -> None:
    """Destroy the process group (the ``finalize`` step of the multi-GPU configs)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def wrap_ddp(network: torch.nn.Module, device: torch.device | str | None = None, **kwargs) -> torch.nn.Module:
    """``network`` on ``device`` wrapped in ``DistributedDataParallel`` (unchanged without a group)."""
    dev = torch.device(device) if device is not None else setup()
    setup()
    network = network.to(dev)
    if not is_distributed():
        return network
    if dev.type == "cuda":
        kwargs.setdefault("device_ids", [dev])
        kwargs.setdefault("output_device", dev)
    return torch.nn.parallel.DistributedDataParallel(network, **kwargs)


def train_sampler(dataset, shuffle: bool = True, seed: int = 0):
    """A ``DistributedSampler`` giving each rank a disjoint shard (None without a process group).

    ``drop_last=True`` keeps the shards disjoint and equal in size (no padding by repetition); only
    a dataset smaller than the world size is padded so every rank still gets one item.
    """
    if dataset is None or not is_distributed():
        return None
    from torch.utils.data.distributed import DistributedSampler

    n = len(dataset)
    return DistributedSampler(dataset, num_replicas=world_size(), rank=rank(), shuffle=shuffle, seed=int(seed),
                              drop_last=n >= world_size())


def eval_sampler(dataset):
    """Validation sharding: disjoint, complete, uneven shards in order (None without a group)."""
    if dataset is None or not is_distributed():
        return None
    from monai.data import DistributedSampler

    return DistributedSampler(dataset, even_divisible=False, shuffle=False, num_replicas=world_size(), rank=rank())


#: Handlers kept on rank 0 only (by class name, so optional packages need not be imported).
RANK0_HANDLER_NAMES = ("StatsHandler", "TensorBoardStatsHandler", "TensorBoardImageHandler", "ProgressBar",
                       "MLFlowHandler", "ClearMLStatsHandler", "ClearMLImageHandler", "LearningRateLogger", "EpochLogger",
                       "ValidationOverlays")


def rank_zero_handlers(handlers: Sequence | None, reduce_output: bool = True) -> list:
    """``handlers`` for this rank: logging handlers only on rank 0, plus a :class:`ReduceOutput`.

    :class:`ReduceOutput` is inserted right after a leading ``ErrorReporter`` (which must stay first),
    so every later handler sees the loss terms averaged over ranks. Checkpoint handlers already
    write on rank 0 only; validation must run on every rank (its metric is gathered from all).
    """
    handlers = [h for h in (handlers or []) if h is not None]
    if is_distributed() and rank() > 0:
        handlers = [h for h in handlers if type(h).__name__ not in RANK0_HANDLER_NAMES]
    if reduce_output and is_distributed():
        pos = 1 if handlers and type(handlers[0]).__name__ == "ErrorReporter" else 0
        handlers.insert(pos, ReduceOutput())
    return handlers


class ReduceOutput:
    """At every ``ITERATION_COMPLETED``, average the scalar loss terms of ``engine.state.output`` over ranks.

    The trainers report each rank's loss on its own shard; after this handler ``loss``, ``loss_*``
    are the mean over ranks, i.e. the global-batch loss when every rank's loss is a mean over an
    equally sized local batch. Non-scalar entries are left alone.
    """

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        out = engine.state.output
        if not is_distributed() or not isinstance(out, dict):
            return
        keys = sorted(k for k, v in out.items() if (k.startswith("loss")) and torch.is_tensor(v) and v.numel() == 1)
        if not keys:
            return
        device = out[keys[0]].device
        buf = torch.stack([out[k].detach().float().reshape(()).to(device) for k in keys])
        dist.all_reduce(buf, op=dist.ReduceOp.SUM)
        buf /= dist.get_world_size()
        for k, v in zip(keys, buf):
            out[k] = v


class _GatherWithLocalGrad(torch.autograd.Function):
    """All-gather along dim 0. Backward sums the gradient over ranks and returns this rank's part.

    Every rank's loss has a gradient wrt every rank's keys; summing them before slicing gives each
    rank the full gradient of its own keys, so DDP's average is the gradient of the global-batch loss.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.rank, ctx.n = dist.get_rank(), x.shape[0]
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.rank * ctx.n:(ctx.rank + 1) * ctx.n]


class GatheredDenseLocalContrastiveLoss(DenseLocalContrastiveLoss):
    """:class:`~ideal_monai.losses.DenseLocalContrastiveLoss` whose negatives may come from all ranks.

    With ``gather=True`` under DDP, the key maps of all ranks are all-gathered, so each query is
    classified among ``world_size * B * S`` keys, like a single process with the global batch. The
    gathered keys keep their gradient: backward all-reduces the gradient of the gathered keys and
    each rank keeps the part of its own keys, so with DDP's gradient averaging the step is that of
    the global-batch loss (up to BatchNorm, whose statistics stay per rank).
    Trade-off: more (and harder) negatives and the single-GPU loss, at the cost of one all-gather
    and one all-reduce of ``world_size * B * S * C`` floats per direction and step, and a
    ``world_size``-times wider logits matrix (loss compute and memory grow linearly with the number
    of ranks). Off (default): each rank contrasts only its own ``B * S`` keys, no communication, the
    loss is that of a ``B``-image batch (lower, fewer negatives), which the paper's per-GPU batch
    setting corresponds to.

    Args:
        gather: gather negatives from all ranks (only active when a process group with > 1 rank runs).
        temperature, chunk_size: as for the base class (only ``reduction="mean"`` is supported here).
    """

    def __init__(self, temperature: float = 0.1, chunk_size: int | None = None, gather: bool = False) -> None:
        super().__init__(temperature=temperature, chunk_size=chunk_size, reduction="mean")
        self.gather = bool(gather)

    def forward(self, query: torch.Tensor, key: torch.Tensor, match: torch.Tensor | None = None) -> torch.Tensor:
        if not (self.gather and is_distributed()):
            return super().forward(query, key, match)
        if query.shape != key.shape or query.ndim < 3:
            return super().forward(query, key, match)  # the base class raises the shape error
        import torch.nn.functional as F

        b, c = query.shape[:2]
        spatial = tuple(query.shape[2:])
        s = math.prod(spatial)
        target = self._global_targets(match, b, spatial, query.device)
        work_dtype = query.dtype if query.dtype in (torch.float32, torch.float64) else torch.float32
        q = F.normalize(query.to(work_dtype).flatten(2).transpose(1, 2).reshape(b * s, c), dim=1)
        k = F.normalize(key.to(work_dtype).flatten(2).transpose(1, 2).reshape(b * s, c), dim=1)
        k_all = _GatherWithLocalGrad.apply(k)  # (world * B * S, C); this rank's rows at rank * B * S
        valid = (target >= 0).nonzero().squeeze(1)
        if valid.numel() == 0:
            return query.sum() * 0 + key.sum() * 0
        target = target[valid] + dist.get_rank() * b * s
        per_query = dense_info_nce(q[valid], k_all, target, self.temperature, self.chunk_size)
        return per_query.mean()


def dump_shards(output_dir: str | os.PathLike, **samplers) -> None:
    """Write ``<output_dir>/shards_rank<r>.json``: the indices each sampler gives this rank this epoch.

    A diagnostic (the distributed tests use it from a ``finalize`` step): it shows which items of
    each dataset this rank trained on in the last epoch. ``None`` samplers are written as ``null``.
    """
    import json
    from pathlib import Path

    out = {name: (None if s is None else [int(i) for i in s]) for name, s in samplers.items()}
    path = Path(output_dir) / f"shards_rank{rank()}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out), encoding="utf-8")
