"""Multi-GPU / multi-node training with ``torchrun`` + DistributedDataParallel.

The bundle's override files ``configs/multi_gpu_pretrain.json`` and ``configs/multi_gpu_train.json``
wire these helpers into ``pretrain.json`` / ``train.json`` (and ``multi_gpu_inference.json`` /
``multi_gpu_function.json`` share a cohort's cases out, see :mod:`ideal_monai.cohort`)::

    torchrun --standalone --nproc_per_node=N -m monai.bundle run finetune \\
        --config_file "['configs/train.json','configs/multi_gpu_train.json']"

- :func:`setup` starts the process group once (``nccl`` when CUDA is available, ``gloo`` on CPU)
  from the ``torchrun`` environment and returns this process's device (``cuda:LOCAL_RANK`` or CPU).
  The helpers below call it first, so the order in which a config evaluates them does not matter.
  Rank and world size are read with ``ignite.distributed`` (``idist.get_rank()`` /
  ``idist.get_world_size()``: 0 and 1 without a process group); the configs' per-rank seeds use
  them inside a trainer's handlers, which the trainer resolves after its ``device``.
- :func:`wrap_ddp` wraps a network in ``DistributedDataParallel`` (it broadcasts rank 0's weights, so
  the momentum key encoder that :class:`~ideal_monai.engines.PretrainTrainer` copies from it, and
  updates from the synchronised weights, is the same on every rank).
- :func:`train_sampler` / :func:`eval_sampler` shard a dataset: training shards are disjoint
  (``drop_last``: at most ``world_size - 1`` slices are left out of an epoch, a different few each
  epoch); validation shards are disjoint and complete (uneven sizes; MONAI metrics gather them).
- :func:`rank_zero_handlers` drops console/TensorBoard/progress/MLflow handlers on ranks > 0 and
  puts :class:`ReduceOutput` in front, so rank 0 logs losses averaged over all ranks.
- Negatives from all ranks: ``DenseLocalContrastiveLoss(gather=True)`` (``--gather_negatives True``).

Without ``torchrun`` (no ``WORLD_SIZE`` > 1 in the environment) everything degrades to the
single-process behaviour: no process group, no wrapper, plain samplers.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import ignite.distributed as idist
import torch
import torch.distributed as dist
from ignite.engine import Engine, Events

logger = logging.getLogger(__name__)

__all__ = ["setup", "started", "cleanup", "backend", "wrap_ddp", "train_sampler", "eval_sampler", "rank_zero_handlers",
           "ReduceOutput", "dump_shards"]


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
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and dist.is_available() and not dist.is_initialized():
        be = backend()
        dist.init_process_group(backend=be, device_id=device if be == "nccl" else None)
        logger.info("process group started: backend %s, rank %d of %d", be, dist.get_rank(), dist.get_world_size())
    return device


def started() -> bool:
    """Start the process group (:func:`setup`) and say whether this process is one of several (``torchrun``)."""
    setup()
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def cleanup() -> None:
    """Destroy the process group (the ``finalize`` step of the multi-GPU configs)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        idist.sync()  # bind idist to the group (it may not have looked yet), so finalize() destroys it
        idist.finalize()  # destroys the group; idist then reads one process again


def wrap_ddp(network: torch.nn.Module, device: torch.device | str | None = None, **kwargs) -> torch.nn.Module:
    """``network`` on ``device`` wrapped in ``DistributedDataParallel`` (unchanged without a group)."""
    default = setup()  # the group must exist before DDP is built
    dev = default if device is None else torch.device(device)
    network = network.to(dev)
    if idist.get_world_size() == 1:
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
    setup()
    world = idist.get_world_size()
    if dataset is None or world == 1:
        return None
    from torch.utils.data.distributed import DistributedSampler

    return DistributedSampler(dataset, num_replicas=world, rank=idist.get_rank(), shuffle=shuffle, seed=int(seed),
                              drop_last=len(dataset) >= world)


def eval_sampler(dataset):
    """Validation sharding: disjoint, complete, uneven shards in order (None without a group)."""
    setup()
    if dataset is None or idist.get_world_size() == 1:
        return None
    from monai.data import DistributedSampler

    return DistributedSampler(dataset, even_divisible=False, shuffle=False, num_replicas=idist.get_world_size(),
                              rank=idist.get_rank())


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
    setup()
    handlers = [h for h in (handlers or []) if h is not None]
    if idist.get_rank() > 0:
        handlers = [h for h in handlers if type(h).__name__ not in RANK0_HANDLER_NAMES]
    if reduce_output and idist.get_world_size() > 1:
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
        if idist.get_world_size() == 1 or not isinstance(out, dict):
            return
        keys = sorted(k for k, v in out.items() if (k.startswith("loss")) and torch.is_tensor(v) and v.numel() == 1)
        if not keys:
            return
        device = out[keys[0]].device
        buf = torch.stack([out[k].detach().float().reshape(()).to(device) for k in keys])
        buf = idist.all_reduce(buf) / idist.get_world_size()
        for k, v in zip(keys, buf):
            out[k] = v


def dump_shards(output_dir: str | os.PathLike, **samplers) -> None:
    """Write ``<output_dir>/shards_rank<r>.json``: the indices each sampler gives this rank this epoch.

    A diagnostic (the distributed tests use it from a ``finalize`` step): it shows which items of
    each dataset this rank trained on in the last epoch. ``None`` samplers are written as ``null``.
    """
    import json
    from pathlib import Path

    setup()
    out = {name: (None if s is None else [int(i) for i in s]) for name, s in samplers.items()}
    path = Path(output_dir) / f"shards_rank{idist.get_rank()}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out), encoding="utf-8")
