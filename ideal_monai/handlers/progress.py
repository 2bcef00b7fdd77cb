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
