"""An Ignite progress bar configurable from a bundle config (all options in the constructor)."""

from __future__ import annotations

from collections.abc import Callable

from ignite.engine import Engine
from ignite.handlers import ProgressBar as _IgniteProgressBar


class ProgressBar:
    """tqdm progress bar over an engine's iterations, showing ``output_transform(output)``.

    Ignite's ``ProgressBar`` takes ``output_transform`` in ``attach``; bundle handler lists only
    call ``attach(engine)``, so this wrapper takes everything up front.
    """

    def __init__(self, output_transform: Callable | None = None, persist: bool = False, desc: str | None = None):
        self.bar = _IgniteProgressBar(persist=persist, desc=desc) if desc else _IgniteProgressBar(persist=persist)
        self.output_transform = output_transform

    def attach(self, engine: Engine) -> None:
        self.bar.attach(engine, output_transform=self.output_transform)


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
