"""Crash-safe checkpoints: atomic model exports and a resumable full training checkpoint.

MONAI's ``CheckpointSaver`` writes in place (``atomic=False``), so a kill during a save can leave a
truncated ``model.pt``. These handlers write to a temporary file and rename it, and load with
``weights_only=True``.
"""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events

from ..errors import IdealInputError
from ..release import write_model_settings
from ..utils.atomic import atomic_save_torch, remove_stale_temporaries
from ..utils.weights import is_rank0, load_checkpoint_file, load_state_dict_checked, unwrap

logger = logging.getLogger(__name__)


class ModelSaver:
    """Save ``network``'s flat state_dict atomically (DDP unwrapped, rank 0 only).

    Args:
        save_dir: output folder (created).
        network: the module to save.
        filename: file name inside ``save_dir`` (e.g. ``model.pt``); ``{iteration}`` in it is replaced
            by the trainer's iteration (e.g. ``model_iter{iteration:06d}.pt`` for snapshots).
        when: ``"completed"`` (end of run), ``"epoch"`` (every epoch end, also the end of run),
            ``"iterations"`` (every ``every`` iterations: snapshots for convergence curves), or
            ``"best"`` (attach to an evaluator: saves when its key metric improved this epoch).
        every: the iteration interval of ``when="iterations"``.
        model_settings: the settings the weights depend on (patch size, spacing, network widths; see
            :mod:`ideal_monai.release`), written beside them as ``model_settings.json`` with every save, so
            inference reads the weights at their own geometry. Only saved weights bring it: a run that fails
            before its first save leaves nothing behind.
    """

    def __init__(self, save_dir: str | os.PathLike, network: torch.nn.Module, filename: str = "model.pt",
                 when: str = "completed", every: int = 0, model_settings: Mapping | None = None):
        if when not in ("completed", "epoch", "iterations", "best"):
            raise ValueError(f"when must be 'completed', 'epoch', 'iterations' or 'best', got {when!r}")
        if when == "iterations" and not int(every) > 0:
            raise ValueError(f"when='iterations' needs every > 0, got {every!r}")
        self.save_dir = Path(save_dir)
        self.filename = filename
        self.network = network
        self.when = when
        self.every = int(every)
        self.model_settings = dict(model_settings) if model_settings else None

    @property
    def path(self) -> Path:
        """The file of an unnumbered save (``{iteration}`` not in ``filename``)."""
        return self.save_dir / self.filename

    def attach(self, engine: Engine) -> None:
        if self.when == "best":
            engine.add_event_handler(Events.EPOCH_COMPLETED, self._save_if_best)
            return
        if self.when == "iterations":
            engine.add_event_handler(Events.ITERATION_COMPLETED(every=self.every), self.save, logging.DEBUG)
            return
        if self.when == "epoch":
            engine.add_event_handler(Events.EPOCH_COMPLETED, self.save, logging.DEBUG)
        engine.add_event_handler(Events.COMPLETED, self.save)

    def _save_if_best(self, engine: Engine) -> None:
        if getattr(engine.state, "best_metric_epoch", -1) == engine.state.epoch:
            self.save(engine, logging.DEBUG)  # the epoch's log line says it is the best

    def save(self, engine: Engine | None = None, log_level: int = logging.INFO) -> None:
        """Write the weights; the periodic saves log at DEBUG so the console keeps one line per epoch."""
        if not is_rank0():
            return
        state = {k: v.detach().cpu() for k, v in unwrap(self.network).state_dict().items()}
        iteration = engine.state.iteration if engine is not None else 0
        path = self.save_dir / self.filename.format(iteration=iteration)
        atomic_save_torch(state, path)
        if self.model_settings:
            write_model_settings(self.save_dir, self.model_settings)
        logger.log(log_level, "saved %s", path)


class TrainingCheckpoint:
    """Resumable full training checkpoint, saved atomically at every epoch end.

    At ``Events.STARTED`` it loads ``path`` when present (weights, optimizer, scheduler, iteration,
    epoch and RNG states) so re-running an interrupted command continues where it stopped. The
    configured ``max_epochs`` wins over the stored one, so a finished run can be extended.

    Args:
        path: the checkpoint file (e.g. ``models/finetune_checkpoint.pt``).
        save_dict: name -> object with ``state_dict()``/``load_state_dict()`` (network,
            optimizer, lr_scheduler...). DDP-wrapped networks are unwrapped.
        save_interval: epochs between saves.
        resume: load an existing checkpoint at start (False: ignore it and overwrite).
        evaluator: the validation engine whose ``best_metric`` / ``best_metric_epoch`` are kept too,
            so a resumed run does not take its first validation for a new best and overwrite
            ``model.pt`` with a worse network (optional; older checkpoints without them still load).
        optional: names in ``save_dict`` a checkpoint may lack (written before they were added, e.g.
            ``"ema"``): the object then keeps its fresh state and a warning says so.
    """

    def __init__(self, path: str | os.PathLike, save_dict: dict[str, Any], save_interval: int = 1, resume: bool = True,
                 evaluator: Engine | None = None, optional: Sequence[str] = ()):
        self.path = Path(path)
        self.save_dict = save_dict
        self.save_interval = max(1, int(save_interval))
        self.resume = resume
        self.evaluator = evaluator
        self.optional = set(optional)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self.load)
        engine.add_event_handler(Events.EPOCH_COMPLETED(every=self.save_interval), self.save)
        engine.add_event_handler(Events.COMPLETED, self.save)

    def save(self, engine: Engine) -> None:
        if not is_rank0():
            return
        state = {name: (unwrap(obj) if isinstance(obj, torch.nn.Module) else obj).state_dict()
                 for name, obj in self.save_dict.items()}
        state["engine"] = {"epoch": engine.state.epoch, "iteration": engine.state.iteration}
        if self.evaluator is not None:
            state["evaluator"] = {"best_metric": float(getattr(self.evaluator.state, "best_metric", -1)),
                                  "best_metric_epoch": int(getattr(self.evaluator.state, "best_metric_epoch", -1))}
        state["rng"] = {
            "torch": torch.get_rng_state(),
            "numpy": torch.as_tensor(np.random.get_state()[1].astype(np.int64)),
            "numpy_pos": torch.tensor(np.random.get_state()[2]),
            "python": torch.tensor(random.getstate()[1], dtype=torch.int64),
        }
        atomic_save_torch(state, self.path)

    def load(self, engine: Engine) -> None:
        if is_rank0():  # half-written temporaries of a run killed during a save
            for p in remove_stale_temporaries(self.path.parent):
                logger.info("removed %s, left by an interrupted save", p)
        if not (self.resume and self.path.exists()):
            return
        state = load_checkpoint_file(self.path)
        missing = [name for name in self.save_dict if name not in state and name not in self.optional]
        if missing or "engine" not in state:
            raise IdealInputError(self.path, f"checkpoint lacks entries {missing or ['engine']}; was it written by another run?")
        for name, obj in self.save_dict.items():
            if name not in state:
                logger.warning("%s has no %r (written by an older version): it starts afresh", self.path, name)
                continue
            if isinstance(obj, torch.nn.Module):
                load_state_dict_checked(obj, state[name], self.path)
            else:
                try:
                    obj.load_state_dict(state[name])
                except (ValueError, KeyError, RuntimeError) as e:
                    raise IdealInputError(self.path, f"cannot restore {name!r}: {str(e).splitlines()[0][:120]}") from None
        engine.state.epoch = int(state["engine"]["epoch"])
        engine.state.iteration = int(state["engine"]["iteration"])
        if self.evaluator is not None and isinstance(state.get("evaluator"), dict):
            self.evaluator.state.best_metric = float(state["evaluator"]["best_metric"])
            self.evaluator.state.best_metric_epoch = int(state["evaluator"]["best_metric_epoch"])
        rng = state.get("rng")
        if rng:
            torch.set_rng_state(rng["torch"])
            np.random.set_state(("MT19937", rng["numpy"].numpy().astype(np.uint32), int(rng["numpy_pos"])))
            random.setstate((3, tuple(int(v) for v in rng["python"].tolist()), None))
        logger.info("resumed from %s at epoch %d (iteration %d)", self.path, engine.state.epoch, engine.state.iteration)
