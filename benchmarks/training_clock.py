"""Cumulative training wall time of one run, across the resumed pieces it was run in.

A long CPU run is made in pieces (a session is killed, the command is rerun and resumes from the
last epoch checkpoint). Convergence curves plot quality against CPU minutes, so the time of each
piece must add up, and time spent on iterations that were lost with a killed piece (after its
last checkpoint) must not count twice.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

from ignite.engine import Engine, Events

from ideal_monai.utils.atomic import atomic_write_text

logger = logging.getLogger(__name__)

__all__ = ["TrainingClock"]


class TrainingClock:
    """Write ``[[iteration, cumulative seconds], ...]`` at every epoch end to a JSON file.

    At ``Events.STARTED`` (after :class:`~ideal_monai.handlers.TrainingCheckpoint` resumed, so
    attach it after that handler) the existing log is read and cut back to the resumed iteration;
    the clock continues from the time recorded there. A fresh run (iteration 0) starts a new log.
    The file: ``{"history": [[iteration, seconds], ...], "iteration": last, "seconds": last}``.

    Args:
        log_path: the JSON file (written atomically).
    """

    def __init__(self, log_path: str | os.PathLike) -> None:
        self.log_path = Path(log_path)
        self.history: list[list[float]] = []
        self._offset = 0.0
        self._t0 = 0.0

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self.started)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.record)
        engine.add_event_handler(Events.COMPLETED, self.record)

    def started(self, engine: Engine) -> None:
        self._t0 = time.perf_counter()
        resumed_at = int(engine.state.iteration)
        self.history, self._offset = [], 0.0
        if resumed_at > 0 and self.log_path.is_file():
            try:
                old = json.loads(self.log_path.read_text())["history"]
            except (OSError, ValueError, KeyError, TypeError):
                old = []
                logger.warning("%s is unreadable: the training time restarts at 0", self.log_path)
            self.history = [[int(i), float(s)] for i, s in old if int(i) <= resumed_at]
            if self.history and self.history[-1][0] == resumed_at:
                self._offset = self.history[-1][1]
            else:
                logger.warning("%s has no entry for iteration %d: the training time restarts at 0",
                               self.log_path, resumed_at)
                self.history = []

    def seconds(self) -> float:
        """Training seconds up to now (previous pieces included)."""
        return self._offset + time.perf_counter() - self._t0

    def record(self, engine: Engine) -> None:
        iteration = int(engine.state.iteration)
        if self.history and self.history[-1][0] == iteration:
            return  # COMPLETED right after the last EPOCH_COMPLETED
        self.history.append([iteration, round(self.seconds(), 3)])
        atomic_write_text(json.dumps({"history": self.history, "iteration": iteration,
                                      "seconds": self.history[-1][1]}) + "\n", self.log_path)
