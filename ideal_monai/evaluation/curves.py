"""Training curves from TensorBoard event files, as a PNG."""

from __future__ import annotations

import os
from pathlib import Path

from .overlays import save_training_curves_png


def read_scalars(log_dir: str | os.PathLike) -> dict[str, list[tuple[int, float]]]:
    """All scalar series in the TensorBoard event files under ``log_dir``: ``{tag: [(step, value)]}``."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    series: dict[str, list[tuple[int, float]]] = {}
    for events in sorted(Path(log_dir).rglob("events.out.tfevents.*")):
        acc = EventAccumulator(str(events), size_guidance={"scalars": 0})
        acc.Reload()
        for tag in acc.Tags().get("scalars", []):
            series.setdefault(tag, []).extend((e.step, e.value) for e in acc.Scalars(tag))
    return {tag: sorted(points) for tag, points in series.items()}


def save_curves_from_tensorboard(log_dir: str | os.PathLike, path: str | os.PathLike, title: str | None = None) -> Path | None:
    """Plot every scalar of ``log_dir`` into one PNG at ``path`` (None when there is nothing to plot)."""
    series = read_scalars(log_dir)
    if not series:
        return None
    save_training_curves_png(series, path, title=title)
    return Path(path)
