"""Agreement of automatic cardiac indices with the experts': the ACDC challenge's statistics and plots.

Per index, over the patients where both values exist: mean absolute error, bias (mean of
automatic - reference), standard deviation of the difference, 95 % limits of agreement
(bias +- 1.96 SD, Bland & Altman 1986) and Pearson's correlation, as the ACDC challenge reported them
(Bernard et al., IEEE TMI 2018: "corr, bias, std").
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

__all__ = ["agreement", "agreement_table", "plot_agreement"]


def agreement(auto: Sequence[float | None], ref: Sequence[float | None]) -> dict[str, float | int | None]:
    """Statistics of ``auto - ref`` over the pairs where both are defined (None/NaN pairs are skipped).

    Returns ``n``, ``mae``, ``bias``, ``sd``, ``loa_low``, ``loa_high``, ``r`` (``None`` where undefined:
    SD and r need two pairs, r also variation in both).
    """
    pairs = [(float(a), float(b)) for a, b in zip(auto, ref)
             if a is not None and b is not None and math.isfinite(float(a)) and math.isfinite(float(b))]
    n = len(pairs)
    out: dict[str, float | int | None] = {"n": n, "mae": None, "bias": None, "sd": None, "loa_low": None,
                                          "loa_high": None, "r": None}
    if n == 0:
        return out
    a, b = np.array(pairs).T
    d = a - b
    out["mae"] = float(np.mean(np.abs(d)))
    out["bias"] = float(np.mean(d))
    if n >= 2:
        sd = float(np.std(d, ddof=1))
        out.update(sd=sd, loa_low=out["bias"] - 1.96 * sd, loa_high=out["bias"] + 1.96 * sd)
        if np.std(a) > 0 and np.std(b) > 0:
            out["r"] = float(np.corrcoef(a, b)[0, 1])
    return out


def agreement_table(auto: Sequence[Mapping[str, float | None]], ref: Sequence[Mapping[str, float | None]],
                    names: Sequence[str]) -> dict[str, dict]:
    """``{index name: agreement(...)}`` for patients given as parallel lists of index dicts."""
    return {name: agreement([p.get(name) for p in auto], [p.get(name) for p in ref]) for name in names}


def plot_agreement(auto: Sequence[Mapping[str, float | None]], ref: Sequence[Mapping[str, float | None]],
                   names: Sequence[str], units: Mapping[str, str], path_bland_altman: Path, path_scatter: Path) -> None:
    """Bland-Altman plots (difference against mean, bias and limits of agreement) and scatter plots
    (automatic against reference, identity line), one panel per index; written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..utils.atomic import atomic_path

    cols = min(4, max(1, len(names)))
    rows = math.ceil(len(names) / cols)
    for kind, path in (("bland_altman", path_bland_altman), ("scatter", path_scatter)):
        fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3.6 * rows), squeeze=False)
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
        fig.tight_layout()
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=80)
        plt.close(fig)
