"""The ``function`` run's figures: LV/RV volume curves of a cine, Bland-Altman and scatter plots.

Drawn on a bare :class:`matplotlib.figure.Figure` with the Agg canvas (never through ``pyplot``, so
nothing depends on or changes the process-wide backend) and written atomically.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ..utils.atomic import atomic_path
from ..utils.classes import CLASS_COLOURS, CLASS_LABELS
from .agreement import agreement

__all__ = ["plot_agreement", "plot_volume_curves"]


def _save(fig: Figure, path: Path) -> None:
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=80)


def plot_volume_curves(entry: Mapping, path: Path) -> None:
    """One patient's LV and RV cavity volume per frame (automatic solid, reference dashed), ED and ES marked.

    ``entry``: a patient of the report, ``{"patient_id", "unit", "auto": result, "reference": result | None}``
    with ``result["frames"]``, ``result["curves"][name]`` and ``result["ed_frame"]`` / ``["es_frame"]``.
    """
    fig = Figure(figsize=(6, 3.6))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for kind, style in (("auto", "-"), ("reference", "--")):
        res = entry.get(kind)
        if not res:
            continue
        for name in ("LV", "RV"):
            ax.plot(res["frames"], res["curves"][name], style, color=CLASS_COLOURS[CLASS_LABELS[name]], marker="o", ms=3,
                    label=f"{name} cavity ({'automatic' if kind == 'auto' else 'reference'})")
        if kind == "auto":
            for frame, tag in ((res["ed_frame"], "ED"), (res["es_frame"], "ES")):
                if frame is not None:
                    ax.axvline(frame, color="k", lw=0.8, ls=":")
                    ax.text(frame, ax.get_ylim()[1], f" {tag}", va="top", fontsize=8)
    ax.set(xlabel="frame", ylabel=f"volume ({entry.get('unit', 'mL')})", title=entry["patient_id"])
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    _save(fig, path)


def plot_agreement(auto: Sequence[Mapping[str, float | None]], ref: Sequence[Mapping[str, float | None]],
                   names: Sequence[str], units: Mapping[str, str], path_bland_altman: Path, path_scatter: Path) -> None:
    """Bland-Altman plots (difference against mean, bias and limits of agreement) and scatter plots
    (automatic against reference, identity line), one panel per index; patients as parallel lists of
    ``{index name: value}``."""
    cols = min(4, max(1, len(names)))
    rows = math.ceil(len(names) / cols)
    for kind, path in (("bland_altman", path_bland_altman), ("scatter", path_scatter)):
        fig = Figure(figsize=(4 * cols, 3.6 * rows))
        FigureCanvasAgg(fig)
        axes = fig.subplots(rows, cols, squeeze=False)
        for ax in axes.flat[len(names):]:
            ax.axis("off")
        for ax, name in zip(axes.flat, names):
            pairs = [(p.get(name), q.get(name)) for p, q in zip(auto, ref)]
            pairs = np.array([(float(a), float(b)) for a, b in pairs if a is not None and b is not None
                              and math.isfinite(float(a)) and math.isfinite(float(b))]).reshape(-1, 2)
            unit = units.get(name, "")
            if kind == "scatter":
                ax.scatter(pairs[:, 1], pairs[:, 0], s=14)
                if len(pairs):
                    lo, hi = float(pairs.min()), float(pairs.max())
                    ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
                ax.set(xlabel=f"reference ({unit})", ylabel=f"automatic ({unit})")
            else:
                mean, diff = pairs.mean(axis=1), pairs[:, 0] - pairs[:, 1]
                ax.scatter(mean, diff, s=14)
                stats = agreement(pairs[:, 0], pairs[:, 1])
                for value, style in ((stats["bias"], "-"), (stats["loa_low"], "--"), (stats["loa_high"], "--")):
                    if value is not None:
                        ax.axhline(value, color="k", ls=style, lw=0.8)
                ax.set(xlabel=f"mean ({unit})", ylabel=f"automatic - reference ({unit})")
            ax.set_title(name, fontsize=9)
            ax.grid(alpha=0.3)
        _save(fig, path)
