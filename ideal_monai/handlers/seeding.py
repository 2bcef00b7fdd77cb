"""Per-epoch seeding, so a resumed run draws the same random numbers as an uninterrupted one."""

from __future__ import annotations

import random
from collections.abc import Sequence

import numpy as np
import ignite.distributed as idist
import torch
from ignite.engine import Engine, Events


class EpochSeeder:
    """At every epoch start, seed torch/numpy/python and each randomizable transform from ``(seed, epoch)``.

    With ``num_workers=0`` loaders this makes an epoch's shuffling and augmentations a function of
    the seed and the epoch number alone, so resuming from an epoch-end checkpoint reproduces the
    uninterrupted run exactly on CPU. Under DDP every rank draws its own augmentations: rank ``r``
    uses the base seed ``seed + 1000003 r``.

    Args:
        seed: base seed (None disables seeding).
        randomizables: objects with ``set_random_state(seed=...)`` (MONAI ``Compose`` / transforms).
    """

    def __init__(self, seed: int | None, randomizables: Sequence = ()):
        self.seed = seed
        self.randomizables = [r for r in randomizables if r is not None]

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self)

    def __call__(self, engine: Engine) -> None:
        if self.seed is None:
            return
        rank_seed = int(self.seed) + 1_000_003 * idist.get_rank()
        epoch_seed = (rank_seed * 100_003 + int(engine.state.epoch)) % (2**31 - 1)
        torch.manual_seed(epoch_seed)
        np.random.seed(epoch_seed)
        random.seed(epoch_seed)
        for i, r in enumerate(self.randomizables):
            r.set_random_state(seed=(epoch_seed + 7919 * (i + 1)) % (2**31 - 1))
        # Ignite keeps one data iterator across epochs when ``epoch_length`` differs from the
        # loader's length (``iterations_per_epoch``), so an epoch would continue the previous
        # epoch's shuffle, which a resumed run cannot reproduce. ``set_data`` with the same loader
        # starts a fresh pass, shuffled from the seed just set. Not in a resumed partial epoch
        # (mid-epoch checkpoint): there Ignite itself starts a pass for the remaining iterations.
        length = engine.state.epoch_length
        if engine.state.dataloader is not None and (length is None or engine.state.iteration % length == 0):
            engine.set_data(engine.state.dataloader)
