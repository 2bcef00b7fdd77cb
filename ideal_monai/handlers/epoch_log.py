"""One console line per training epoch: mean losses, learning rate, validation metrics."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from ignite.engine import Engine, Events
from tqdm.contrib.logging import logging_redirect_tqdm

logger = logging.getLogger("ideal_monai")


class EpochLogger:
    """Log one INFO line at every epoch end of a trainer.

    The per-iteration values stay in TensorBoard (``TensorBoardStatsHandler``) and on the progress
    bar; the console gets, per epoch, the epoch's mean of every loss term, the engine's metrics (the
    learning rate from :class:`~ideal_monai.handlers.tracking.LearningRateLogger`) and, in an epoch
    that validated, the evaluator's metrics with the best value so far::

        finetune epoch 4/20: loss 0.171 (loss_sup 0.102, loss_cons 0.069), lr 0.0290, val_mean_dice 0.812 (best 0.820, epoch 3), 41 s

    The line goes through ``tqdm.write`` while it is logged, so it prints above an open progress bar
    instead of breaking it. List this handler after ``ValidationHandler`` (handlers of one event run
    in order) so the epoch's validation result is in its line.

    Args:
        output_transform: ``engine.state.output`` -> ``{term: scalar}`` (e.g.
            :func:`ideal_monai.engines.loss_terms`); terms whose name starts with ``loss`` are averaged.
        evaluator: the validation engine, or None.
        name: the stage name the line starts with.
    """

    def __init__(self, output_transform: Callable[[dict], dict[str, float]], evaluator: Engine | None = None,
                 name: str = "train"):
        self.output_transform = output_transform
        self.evaluator = evaluator
        self.name = name
        self._sums: dict[str, float] = {}
        self._count = 0
        self._epoch_start = 0.0
        self._validated = False

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._accumulate)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._log)
        if self.evaluator is not None:
            self.evaluator.add_event_handler(Events.COMPLETED, self._mark_validated)

    def _reset(self, engine: Engine) -> None:
        self._sums, self._count, self._epoch_start = {}, 0, time.perf_counter()

    def _mark_validated(self, evaluator: Engine) -> None:
        self._validated = True

    def _accumulate(self, engine: Engine) -> None:
        for key, value in self.output_transform(engine.state.output).items():
            if key.startswith("loss"):
                self._sums[key] = self._sums.get(key, 0.0) + float(value)
        self._count += 1

    def format_line(self, engine: Engine) -> str:
        """The epoch's line (also used by tests)."""
        parts = []
        # A term that stayed exactly 0 all epoch is switched off (e.g. loss_global at global_weight 0).
        means = {k: v / max(self._count, 1) for k, v in self._sums.items() if v != 0.0 or k == "loss"}
        if "loss" in means:
            terms = ", ".join(f"{k} {v:.3f}" for k, v in means.items() if k != "loss")
            parts.append(f"loss {means['loss']:.3f}" + (f" ({terms})" if terms else ""))
        for key, value in engine.state.metrics.items():
            if isinstance(value, (int, float)):
                parts.append(f"{key} {value:.4g}")
        if self.evaluator is not None and self._validated:
            state = self.evaluator.state
            for key, value in state.metrics.items():
                if not isinstance(value, (int, float)):
                    continue
                text = f"{key} {value:.3f}"
                if key == getattr(state, "key_metric_name", None) and getattr(state, "best_metric_epoch", -1) > 0:
                    text += f" (best {state.best_metric:.3f}, epoch {state.best_metric_epoch})"
                parts.append(text)
        parts.append(f"{time.perf_counter() - self._epoch_start:.0f} s")
        return f"{self.name} epoch {engine.state.epoch}/{engine.state.max_epochs}: " + ", ".join(parts)

    def _log(self, engine: Engine) -> None:
        line = self.format_line(engine)
        self._validated = False
        with logging_redirect_tqdm():
            logger.info(line)
