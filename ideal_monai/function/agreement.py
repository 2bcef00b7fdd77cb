"""Agreement of automatic cardiac indices with the experts': the ACDC challenge's statistics (plots: :mod:`.plots`).

Per index, over the patients where both values exist: mean absolute error, bias (mean of
automatic - reference), standard deviation of the difference, 95 % limits of agreement
(bias +- 1.96 SD, Bland & Altman 1986) and Pearson's correlation, as the ACDC challenge reported them
(Bernard et al., IEEE TMI 2018: "corr, bias, std").
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

__all__ = ["agreement", "agreement_table"]


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
