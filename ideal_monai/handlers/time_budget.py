"""A wall-clock budget for a training run, and a log of what the run did within it.

Used by the ACDC quality benchmark (:mod:`ideal_monai.benchmarks.acdc`) to give every arm the same
time on a CPU. The budget is a *hard stop*: the schedules (poly learning rate, consistency
ramp-up) follow the configured ``max_epochs * iterations_per_epoch``, so a benchmark first plans
that count from a measured step time and this handler only ends a run that would overrun it.

It needs no change to the bundle configs: append it to a trainer's handler list with an extra
config file merged after the main one (MONAI's ``+`` merge key)::

    {"+train#handlers": [{"_target_": "ideal_monai.handlers.time_budget.TimeBudget",
                          "seconds": 600, "log_path": "runs/arm/train_log.json"}]}

    python -m monai.bundle run finetune --config_file "['configs/train.json','time_budget.json']" ...

(``+pretraining#handlers`` for ``pretrain.json``.)
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from pathlib import Path

from ignite.engine import Engine, Events
from ignite.handlers import TimeLimit

from ..utils.atomic import atomic_write_text

logger = logging.getLogger(__name__)


class TimeBudget(TimeLimit):
    """Ignite's ``TimeLimit``, counted from ``Events.STARTED``, plus a log of what the run did.

    ``TimeLimit`` terminates the engine after an iteration once its limit has passed. On top of it:

    - time counts from ``Events.STARTED`` (after the datasets were cached, since they are built when
      the config is parsed), not from the handler's construction; it includes everything the
      engine runs: iterations, data loading, per-epoch handlers and validation. A run ends at most
      one iteration (plus the ``COMPLETED`` handlers, e.g. the final model save) past the budget;
      ``Events.COMPLETED`` still fires after the stop, so final checkpoints are written as usual;
    - ``seconds`` may be fractional, or ``None`` to only log;
    - the stop message goes through this module's logger (the bundle's logging config), and the
      run is summarised in a JSON file (:meth:`summary`).

    Args:
        seconds: the budget; ``None`` only logs (no limit).
        log_path: optional JSON file written at ``COMPLETED``: ``budget_s``, ``elapsed_s``,
            ``iterations`` (run in this call, i.e. excluding any resumed ones), ``planned_iterations``
            (``max_epochs * epoch_length``), ``epochs``, ``stopped_by_budget`` and
            ``step_times_s`` (wall time between consecutive iteration ends, the first measured
            from ``STARTED``; the first ``max_step_times`` iterations).
        max_step_times: how many step times to keep in the log.
    """

    def __init__(self, seconds: float | None = None, log_path: str | os.PathLike | None = None,
                 max_step_times: int = 100):
        if seconds is not None and not seconds > 0:
            raise ValueError(f"seconds must be > 0 or None, got {seconds!r}")
        # TimeLimit's constructor takes whole seconds; its check compares with limit_sec as given
        super().__init__(limit_sec=max(1, math.ceil(seconds)) if seconds is not None else 1)
        self.limit_sec = seconds
        self.logger = logger
        self.log_path = Path(log_path) if log_path else None
        self.max_step_times = int(max_step_times)
        self.stopped_by_budget = False
        self._last = 0.0
        self._start_iteration = 0
        self.step_times: list[float] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self.started)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.iteration_completed)
        engine.add_event_handler(Events.COMPLETED, self.completed)

    def started(self, engine: Engine) -> None:
        self.start_time = time.time()
        self._last = time.perf_counter()
        # Handlers run in attachment order, so a checkpoint resumed at STARTED is already loaded.
        self._start_iteration = engine.state.iteration
        self.stopped_by_budget = False
        self.step_times = []

    def elapsed(self) -> float:
        return time.time() - self.start_time

    def iteration_completed(self, engine: Engine) -> None:
        now = time.perf_counter()
        if len(self.step_times) < self.max_step_times:
            self.step_times.append(now - self._last)
        self._last = now
        if self.limit_sec is not None and not self.stopped_by_budget:
            already = engine.should_terminate  # another handler may have stopped it this iteration
            self(engine)  # TimeLimit: terminate once the limit has passed
            self.stopped_by_budget = engine.should_terminate and not already

    def summary(self, engine: Engine) -> dict:
        return {
            "budget_s": self.limit_sec,
            "elapsed_s": self.elapsed(),
            "iterations": engine.state.iteration - self._start_iteration,
            "planned_iterations": engine.state.max_epochs * engine.state.epoch_length,
            "epochs": engine.state.epoch,
            "stopped_by_budget": self.stopped_by_budget,
            "step_times_s": self.step_times,
        }

    def completed(self, engine: Engine) -> None:
        if self.log_path is not None:
            atomic_write_text(json.dumps(self.summary(engine), indent=1) + "\n", self.log_path)
