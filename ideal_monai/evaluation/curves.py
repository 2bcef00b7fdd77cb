"""Training curves from TensorBoard event files, as a PNG: one row per training stage.

The trainers' ``TensorBoardStatsHandler`` writes the loss terms and the consistency weight
``lambda`` at every iteration (step = iteration) and the engine metrics (learning rate, validation
Dice) at every epoch end (step = epoch). Each stage (``runs/pretrain``, ``runs/finetune``) gets its
own row, and each row groups its series by unit: losses per iteration, lambda per iteration, the
learning rate per epoch, validation metrics per epoch. A series that is zero throughout (a loss
term that is switched off, such as ``loss_global`` at ``global_weight 0``) is left out.

Figures are drawn on a bare :class:`matplotlib.figure.Figure` with the Agg canvas (never through
``pyplot``) and written atomically.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ..errors import IdealInputError
from ..utils.atomic import atomic_path

#: Series = ``[(step, value), ...]``; a stage = ``{tag: series}``.
Series = Sequence[tuple[float, float]]


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


def read_stages(log_dir: str | os.PathLike) -> dict[str, dict[str, list[tuple[int, float]]]]:
    """``{stage: {tag: series}}``: one stage per subfolder of ``log_dir`` holding event files
    (``runs/pretrain``, ``runs/finetune``), or ``log_dir`` itself when its events lie directly in it."""
    root = Path(log_dir)
    stages = {}
    if any(root.glob("events.out.tfevents.*")):
        stages[root.name] = read_scalars(root)
    # The bundle's stages in the order they run, then any other folder by name.
    order = {"pretrain": 0, "finetune": 1}
    subs = sorted((p for p in root.iterdir() if p.is_dir()), key=lambda p: (order.get(p.name, 2), p.name)) if root.is_dir() else []
    for sub in subs:
        series = read_scalars(sub)
        if series:
            stages[sub.name] = series
    return stages


def _finite(points: Series) -> tuple[np.ndarray, int]:
    """``(N, 2)`` finite points sorted by step, and how many non-finite ones were dropped."""
    pts = np.asarray(list(points), dtype=np.float64).reshape(-1, 2) if len(points) else np.zeros((0, 2))
    keep = np.isfinite(pts).all(axis=1)
    pts = pts[keep]
    return pts[np.argsort(pts[:, 0], kind="stable")], int((~keep).sum())


def curve_panels(stage: Mapping[str, Series]) -> list[tuple[str, str, dict[str, tuple[np.ndarray, int]]]]:
    """Group one stage's series into panels: ``[(title, x label, {tag: (points, n dropped)})]``.

    Tags starting with ``loss`` and ``lambda`` are per iteration, every other tag per epoch
    (``val_*`` metrics apart from the learning rate). Series with no finite value, or that are zero
    at every point, are left out; so is a panel left empty.
    """
    groups: dict[str, tuple[str, str, dict]] = {
        "loss": ("loss", "iteration", {}),
        "lambda": ("consistency weight lambda", "iteration", {}),
        "lr": ("learning rate", "epoch", {}),
        "other": ("validation", "epoch", {}),
    }
    for tag, points in stage.items():
        pts, dropped = _finite(points)
        if not pts.size or not np.any(pts[:, 1] != 0):
            continue
        key = "loss" if tag.startswith("loss") else "lambda" if tag == "lambda" else "lr" if tag == "lr" else "other"
        groups[key][2][tag] = (pts, dropped)
    return [group for group in groups.values() if group[2]]


def _smooth(values: np.ndarray, window: int) -> np.ndarray:
    """Trailing moving average (same length; the first points average what exists so far)."""
    c = np.cumsum(np.insert(values, 0, 0.0))
    idx = np.arange(1, values.size + 1)
    start = np.maximum(0, idx - window)
    return (c[idx] - c[start]) / (idx - start)


def save_training_curves_png(stages: Mapping[str, Mapping[str, Series]], path: str | os.PathLike,
                             title: str | None = None, dpi: int = 100) -> Path:
    """Plot ``{stage: {tag: [(step, value)]}}`` as a PNG, one row per stage (see :func:`curve_panels`).

    Loss series of 20 points or more are drawn faint with a trailing moving average on top;
    non-finite values (a NaN loss) are left out and counted in the legend.

    Raises:
        IdealInputError: when no stage has a series with a non-zero finite value.
    """
    rows = [(name, panels) for name, panels in ((n, curve_panels(s)) for n, s in stages.items()) if panels]
    if not rows:
        raise IdealInputError(path, "training history has no finite values to plot")
    ncols = max(len(panels) for _, panels in rows)
    fig = Figure(figsize=(4.8 * ncols, 3.0 * len(rows) + (0.5 if title else 0.0)), dpi=dpi)
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(rows), ncols, squeeze=False)
    colours = [f"C{i}" for i in range(10)]
    for r, (stage, panels) in enumerate(rows):
        for c in range(ncols):
            ax = axes[r, c]
            if c >= len(panels):
                ax.set_visible(False)
                continue
            panel_title, xlabel, series = panels[c]
            for i, (tag, (pts, dropped)) in enumerate(series.items()):
                steps, vals = pts[:, 0], pts[:, 1]
                label = tag + (f" ({dropped} non-finite dropped)" if dropped else "")
                colour = colours[i % len(colours)]
                if vals.size >= 20 and panel_title == "loss":  # noisy: raw faint, moving average on top
                    ax.plot(steps, vals, color=colour, alpha=0.25, linewidth=0.8)
                    ax.plot(steps, _smooth(vals, max(5, vals.size // 25)), color=colour, linewidth=1.6, label=label)
                else:
                    ax.plot(steps, vals, color=colour, marker="o" if vals.size < 20 else None, markersize=3,
                            linewidth=1.4, label=label)
            ax.set_title(f"{stage}: {panel_title}", fontsize=10)
            ax.set_xlabel(xlabel, fontsize=9)
            ax.grid(True, alpha=0.3)
            ax.tick_params(labelsize=8)
            if len(series) > 1 or any(d for _, d in series.values()):
                ax.legend(fontsize=8, loc="best")
            else:
                ax.set_ylabel(next(iter(series)), fontsize=9)
    if title:
        fig.suptitle(title, fontsize=12)
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png")
    return Path(path)


def save_curves_from_tensorboard(log_dir: str | os.PathLike, path: str | os.PathLike, title: str | None = None) -> Path | None:
    """Plot the stages under ``log_dir`` (:func:`read_stages`) into one PNG at ``path``; None when
    there is nothing to plot."""
    stages = read_stages(log_dir)
    if not any(curve_panels(s) for s in stages.values()):
        return None
    return save_training_curves_png(stages, path, title=title)
