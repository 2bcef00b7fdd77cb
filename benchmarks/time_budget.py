"""A wall-clock budget for a training run, and a log of what the run did within it.

Used by the ACDC quality benchmark (:mod:`benchmarks.acdc`) to give every arm the same
time on a CPU. The budget is a *hard stop*: the schedules (poly learning rate, consistency
ramp-up) follow the configured ``max_epochs * iterations_per_epoch``, so a benchmark first plans
that count from a measured step time and this handler only ends a run that would overrun it.

It needs no change to the bundle configs: append it to a trainer's handler list with an extra
config file merged after the main one (MONAI's ``+`` merge key)::

    {"+train#handlers": [{"_target_": "benchmarks.time_budget.TimeBudget",
                          "seconds": 600, "log_path": "runs/arm/train_log.json"}]}

    python -m monai.bundle run finetune --config_file "['configs/train.json','time_budget.json']" ...

(``+pretraining#handlers`` for ``pretrain.json``.)

A plan made from a short calibration run can be 10-26 % off, because the step time of these CPUs
varies from process to process (docs/history/BENCHMARKS.md, "Result on the current recipe, 45 degrees"). With
``replan_after_epochs`` the handler re-plans from the run's own steps: after that many epochs it sets
``max_epochs`` so that the rest of the run fills ``fill`` of the budget at the measured step time, and
moves the schedules that depend on the total with it (the learning-rate schedule, given as
``lr_scheduler``, and ramp-ups with a ``rampup_iterations`` attribute, given as ``ramps``), so they end
where the re-planned run ends, as if it had been planned that way from the start. With
``replan_until`` it keeps correcting the plan at each epoch end until it is that far through it::

    {"+train#handlers": [{"_target_": "benchmarks.time_budget.TimeBudget", "seconds": 600,
                          "replan_after_epochs": 1, "replan_until": 0.5, "lr_scheduler": "@train#lr_scheduler",
                          "ramps": ["@train#consistency_weight"]}]}
"""

from __future__ import annotations

import json
import logging
import math
import os
import statistics
import time
from collections.abc import Sequence
from pathlib import Path

from ignite.engine import Engine, Events
from ignite.handlers import TimeLimit
from torch.optim.lr_scheduler import CosineAnnealingLR, LRScheduler, PolynomialLR

from ideal_monai.utils.atomic import atomic_write_text

logger = logging.getLogger(__name__)

#: The attribute of each supported learning-rate scheduler that holds the run's total iterations.
_SCHEDULE_LENGTH = {PolynomialLR: "total_iters", CosineAnnealingLR: "T_max"}


def steady_step_seconds(step_times_s: Sequence[float]) -> float:
    """The steady-state seconds per iteration: the median of the second half of ``step_times_s``
    (at least 2), so slow warm-up iterations, epoch ends and single slow outliers do not count."""
    if len(step_times_s) < 2:
        raise ValueError(f"need at least 2 step times, got {len(step_times_s)}")
    return statistics.median(step_times_s[len(step_times_s) // 2:])


def _schedule_length_attribute(lr_scheduler: LRScheduler) -> str:
    """The attribute of ``lr_scheduler`` that holds its total length; ``TypeError`` if it has none we know."""
    attribute = next((a for t, a in _SCHEDULE_LENGTH.items() if isinstance(lr_scheduler, t)), None)
    if attribute is None:
        raise TypeError(f"cannot re-plan a {type(lr_scheduler).__name__}; supported: "
                        + ", ".join(t.__name__ for t in _SCHEDULE_LENGTH))
    return attribute


def _closed_form_lrs(lr_scheduler: LRScheduler) -> list[float]:
    """The learning rates of ``lr_scheduler`` at its current step, from its formula (public attributes only)."""
    t = lr_scheduler.last_epoch
    if isinstance(lr_scheduler, PolynomialLR):
        factor = (1.0 - min(t, lr_scheduler.total_iters) / lr_scheduler.total_iters) ** lr_scheduler.power
        return [base * factor for base in lr_scheduler.base_lrs]
    eta_min, t_max = lr_scheduler.eta_min, lr_scheduler.T_max
    return [eta_min + (base - eta_min) * (1.0 + math.cos(math.pi * t / t_max)) / 2.0 for base in lr_scheduler.base_lrs]


def retarget_schedule(lr_scheduler: LRScheduler, total_iterations: int) -> None:
    """Make ``lr_scheduler`` (stepped once per iteration) end at ``total_iterations`` from where it is.

    The optimizer's learning rates become the closed form of the new schedule at the current step, so
    the scheduler's recursive steps continue exactly as if it had been built for ``total_iterations``.
    The new length goes in through the scheduler's ``state_dict`` / ``load_state_dict``.
    """
    state = lr_scheduler.state_dict()
    state[_schedule_length_attribute(lr_scheduler)] = int(total_iterations)
    lr_scheduler.load_state_dict(state)
    lrs = _closed_form_lrs(lr_scheduler)
    for group, lr in zip(lr_scheduler.optimizer.param_groups, lrs):
        group["lr"] = lr
    lr_scheduler.load_state_dict({**lr_scheduler.state_dict(), "_last_lr": list(lrs)})  # what get_last_lr() says


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
            from ``STARTED``; the first ``max_step_times`` iterations), and ``replanned`` /
            ``replanned_again`` when re-planned (below).
        max_step_times: how many step times to keep in the log.
        replan_after_epochs: after this many epochs of the run (or at the first epoch end after that
            with two timed steps), re-plan ``max_epochs`` from the measured steady step
            (:func:`steady_step_seconds` of this run's step times) so that the run fills ``fill`` of
            ``seconds``; ``None`` keeps the configured plan. Needs ``seconds``. The log then
            has ``replanned``: ``{"after_iterations", "step_s", "from_iterations", "to_iterations"}``.
        replan_until: also re-plan at every later epoch end while the run has done less than this
            fraction of its planned iterations, from the mean time per iteration since the first
            re-plan (epoch ends and their handlers included), which converges as the run goes on;
            ``0`` re-plans once. One epoch's steps are a noisy sample on a shared CPU (a plan from
            them alone missed the budget by up to a fifth: docs/history/BENCHMARKS.md, "ACDC quality
            benchmark"); re-planning stops
            at this fraction because a change of length late in a run moves the learning rate most.
            Later re-plans that changed the plan are logged as ``replanned_again`` (a list).
        fill: fraction of the budget a re-planned run should fill (the rest absorbs epoch ends).
        lr_scheduler: the per-iteration learning-rate scheduler to re-plan with the run
            (``PolynomialLR`` or ``CosineAnnealingLR``; see :func:`retarget_schedule`).
        ramps: objects with a ``rampup_iterations`` attribute (e.g. the consistency weight's
            schedule), scaled by the same factor as the run's total.
    """

    def __init__(self, seconds: float | None = None, log_path: str | os.PathLike | None = None,
                 max_step_times: int = 100, replan_after_epochs: int | None = None, replan_until: float = 0.0,
                 fill: float = 0.95, lr_scheduler: LRScheduler | None = None, ramps: Sequence[object] = ()):
        if seconds is not None and not seconds > 0:
            raise ValueError(f"seconds must be > 0 or None, got {seconds!r}")
        if replan_after_epochs is not None and (seconds is None or int(replan_after_epochs) < 1):
            raise ValueError(f"replan_after_epochs needs a budget (seconds) and must be >= 1, got "
                             f"{replan_after_epochs!r} with seconds={seconds!r}")
        if not 0 <= replan_until < 1:
            raise ValueError(f"replan_until must be in [0, 1), got {replan_until!r}")
        if not 0 < fill <= 1:
            raise ValueError(f"fill must be in (0, 1], got {fill!r}")
        if lr_scheduler is not None:
            _schedule_length_attribute(lr_scheduler)
        for ramp in ramps:
            if not hasattr(ramp, "rampup_iterations"):
                raise TypeError(f"{ramp!r} has no rampup_iterations attribute to re-plan")
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
        self.replan_after_epochs = None if replan_after_epochs is None else int(replan_after_epochs)
        self.replan_until = float(replan_until)
        self.fill = float(fill)
        self.lr_scheduler = lr_scheduler
        self.ramps = list(ramps)
        self.replanned: dict | None = None
        self.replanned_again: list[dict] = []
        self._start_epoch = 0
        self._first_replan_at: tuple[int, float] | None = None  # (iteration, elapsed seconds)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self.started)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.iteration_completed)
        if self.replan_after_epochs is not None:
            engine.add_event_handler(Events.EPOCH_COMPLETED, self.epoch_completed)
        engine.add_event_handler(Events.COMPLETED, self.completed)

    def started(self, engine: Engine) -> None:
        self.start_time = time.time()
        self._last = time.perf_counter()
        # Handlers run in attachment order, so a checkpoint resumed at STARTED is already loaded.
        self._start_iteration = engine.state.iteration
        self._start_epoch = engine.state.epoch
        self.stopped_by_budget = False
        self.step_times = []
        self.replanned = None
        self.replanned_again = []
        self._first_replan_at = None

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

    def epoch_completed(self, engine: Engine) -> None:
        state = engine.state
        if engine.should_terminate:
            return
        if self.replanned is None:
            # the first epoch end after ``replan_after_epochs`` epochs with at least two measured steps
            if len(self.step_times) >= 2 and state.epoch - self._start_epoch >= self.replan_after_epochs:
                self.replanned = self.replan(engine, steady_step_seconds(self.step_times))
                self._first_replan_at = (state.iteration, self.elapsed())
            return
        done = state.iteration - self._start_iteration
        planned = state.max_epochs * state.epoch_length - self._start_iteration
        first_iteration, first_elapsed = self._first_replan_at
        if done < self.replan_until * planned:  # an epoch has run since, so iteration > first_iteration
            step_s = (self.elapsed() - first_elapsed) / (state.iteration - first_iteration)
            replanned = self.replan(engine, step_s)
            if replanned["to_iterations"] != replanned["from_iterations"]:
                self.replanned_again.append(replanned)

    def replan(self, engine: Engine, step_s: float) -> dict:
        """Set ``max_epochs`` (whole epochs of the current length) to fill the budget at ``step_s`` seconds
        per iteration; the return value says what changed (the ``replanned`` entry of the log)."""
        state = engine.state
        old_total = state.max_epochs * state.epoch_length
        remaining = max(0.0, self.limit_sec * self.fill - self.elapsed())
        # whole epochs only, so the per-epoch handlers (checkpoint, seeding) keep their meaning
        total_epochs = max(state.epoch, (state.iteration + int(remaining / step_s)) // state.epoch_length)
        new_total = total_epochs * state.epoch_length
        replanned = {"after_iterations": state.iteration - self._start_iteration, "step_s": step_s,
                     "from_iterations": old_total, "to_iterations": new_total}
        if new_total == old_total:
            return replanned
        state.max_epochs = total_epochs
        if self.lr_scheduler is not None:
            retarget_schedule(self.lr_scheduler, new_total)
        for ramp in self.ramps:
            ramp.rampup_iterations = int(round(ramp.rampup_iterations * new_total / old_total))
        self.logger.info(f"{engine.__class__.__name__}: re-planned from {old_total} to {new_total} iterations "
                         f"({step_s:.3f} s per step after {replanned['after_iterations']} steps, budget "
                         f"{self.limit_sec:g} s, fill {self.fill:g})")
        return replanned

    def summary(self, engine: Engine) -> dict:
        return {
            "budget_s": self.limit_sec,
            "elapsed_s": self.elapsed(),
            "iterations": engine.state.iteration - self._start_iteration,
            "planned_iterations": engine.state.max_epochs * engine.state.epoch_length,
            "epochs": engine.state.epoch,
            "stopped_by_budget": self.stopped_by_budget,
            "step_times_s": self.step_times,
            "replanned": self.replanned,
            "replanned_again": self.replanned_again,
        }

    def completed(self, engine: Engine) -> None:
        if self.log_path is not None:
            atomic_write_text(json.dumps(self.summary(engine), indent=1) + "\n", self.log_path)
