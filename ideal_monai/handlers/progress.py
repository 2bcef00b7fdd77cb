"""A progress bar over a whole run, configurable from a bundle config (all options in the constructor)."""

from __future__ import annotations

from collections.abc import Callable

from ignite.engine import Engine, Events
from tqdm.auto import tqdm

from ..errors import close_before_errors


class ProgressBar:
    """One tqdm bar over all iterations of a run (every epoch), showing ``output_transform(output)``.

    Ignite's ``ProgressBar`` draws a new bar per epoch and takes ``output_transform`` in ``attach``;
    a stage of training is easier to follow as one bar (``finetune: 40%|... 400/1000``) with one log
    line per epoch above it (:class:`~ideal_monai.handlers.epoch_log.EpochLogger`), and bundle
    handler lists only call ``attach(engine)``, so this handler takes everything up front. A resumed
    run starts the bar at the restored iteration (attach it after the checkpoint handler).

    Args:
        output_transform: ``engine.state.output`` -> ``{name: scalar}`` shown after the bar, or None.
        persist: keep the finished bar on screen.
        desc: text before the bar (e.g. the stage: ``"finetune"``).
    """

    def __init__(self, output_transform: Callable | None = None, persist: bool = False, desc: str | None = None):
        self.output_transform = output_transform
        self.persist = persist
        self.desc = desc
        self.bar = None

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self._open)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._update)
        engine.add_event_handler(Events.COMPLETED, self.close)
        engine.add_event_handler(Events.TERMINATE, self.close)

    def _open(self, engine: Engine) -> None:
        self.close()
        total = engine.state.max_epochs * engine.state.epoch_length if engine.state.epoch_length else None
        self.bar = tqdm(total=total, initial=engine.state.iteration, desc=self.desc, leave=self.persist,
                        dynamic_ncols=True)
        close_before_errors(self.bar)

    def _update(self, engine: Engine) -> None:
        if self.bar is None:
            return
        if self.output_transform is not None:
            values = self.output_transform(engine.state.output)
            self.bar.set_postfix({k: f"{float(v):.3g}" for k, v in values.items()}, refresh=False)
        self.bar.update(engine.state.iteration - self.bar.n)
        if self.bar.total is not None and self.bar.n >= self.bar.total:
            # Close at the last iteration, before the end-of-run handlers log what they saved.
            self.close()

    def close(self, engine: Engine | None = None) -> None:
        """Close the bar (at the end of the run; a run that raised leaves it to the next ``STARTED``)."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class LazySummaryWriter:
    """A TensorBoard ``SummaryWriter`` that creates its event file on the first write.

    Pass it as ``summary_writer`` to MONAI's ``TensorBoardStatsHandler``: a run that stops before
    logging anything (bad input, a corrupt checkpoint to resume from) then leaves no file behind.
    """

    def __init__(self, log_dir: str = "./runs"):
        self.log_dir = log_dir
        self._writer = None

    def _get(self):
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(log_dir=self.log_dir)
        return self._writer

    def flush(self) -> None:
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()

    def __getattr__(self, name: str):
        if name.startswith("__") or name in ("log_dir", "_writer"):
            raise AttributeError(name)
        return getattr(self._get(), name)
