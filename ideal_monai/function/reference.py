"""Reference ranges the function report compares a patient's values with (a flag, never a diagnosis).

A range is ``{"name", "sex" ("M", "F" or "any"), "low", "high", "source"}`` (either bound may be null;
``"high_inclusive": false`` puts the high bound itself outside, for a criterion such as ">= 15 mm").
A value outside a range that matches the patient's sex (or ``any``) is listed in the report; with the
sex unknown, a sex-specific value is flagged only when it lies outside the ranges of both sexes.

What ships (:data:`DEFAULT_RANGES`) are two guideline cut-offs whose numbers are stated in the
guidelines' text: LV EF below 50 % (ESC 2021 heart-failure guidelines: reduced or mildly reduced
EF) and a maximal LV wall thickness of 15 mm or more (ESC 2014 hypertrophic-cardiomyopathy
guidelines, adults). Population normal values (Kawel-Boehm et al., JCMR 2020, SSFP, by sex and age)
depend on the contouring convention (papillary muscles in the mass or in the cavity), so a site loads
the table it uses with ``reference_ranges`` (a JSON list of ranges); the bundle docs give the format.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from ..errors import IdealInputError

__all__ = ["DEFAULT_RANGES", "load_reference_ranges", "outside_reference"]

DEFAULT_RANGES: list[dict] = [
    {"name": "LV_EF", "sex": "any", "low": 50.0, "high": None,
     "source": "ESC 2021 heart failure guidelines (LVEF < 50 %: reduced or mildly reduced)"},
    {"name": "LV_max_wall_mm", "sex": "any", "low": None, "high": 15.0, "high_inclusive": False,
     "source": "ESC 2014 hypertrophic cardiomyopathy guidelines (adult wall thickness >= 15 mm)"},
]


def load_reference_ranges(path: str | os.PathLike | None) -> list[dict]:
    """The ranges in ``path`` (a JSON list, see the module docstring), or :data:`DEFAULT_RANGES` for None / ``""``.

    Raises:
        IdealInputError: naming the file for unreadable JSON or a malformed range.
    """
    if not path:
        return list(DEFAULT_RANGES)
    path = Path(path)
    try:
        ranges = json.loads(path.read_text())
    except OSError as e:
        raise IdealInputError(path, f"cannot be read: {e.strerror or e}") from None
    except json.JSONDecodeError as e:
        raise IdealInputError(path, f"is not valid JSON: {e}") from None
    if not isinstance(ranges, list):
        raise IdealInputError(path, "expected a JSON list of {name, sex, low, high, source} ranges")
    for i, r in enumerate(ranges):
        ok = (isinstance(r, dict) and isinstance(r.get("name"), str) and r.get("sex", "any") in ("M", "F", "any")
              and all(r.get(k) is None or (isinstance(r.get(k), (int, float)) and not isinstance(r.get(k), bool))
                      for k in ("low", "high"))
              and (r.get("low") is not None or r.get("high") is not None))
        if not ok:
            raise IdealInputError(path, f"range {i} is not {{name, sex: M|F|any, low and/or high: number, source}}: {r!r}"[:200])
    return ranges


def _outside(value: float, r: Mapping) -> str | None:
    low, high = r.get("low"), r.get("high")
    if low is not None and value < low:
        return f"< {low:g}"
    if high is not None and (value > high or (value == high and not r.get("high_inclusive", True))):
        return f"{'>' if r.get('high_inclusive', True) else '>='} {high:g}"
    return None


def outside_reference(values: Mapping[str, float | None], sex: str | None,
                      ranges: Sequence[Mapping] | None = None) -> list[str]:
    """``["LV_EF 38.2 < 50 (source)", ...]`` for the ``values`` outside ``ranges`` (default :data:`DEFAULT_RANGES`)."""
    flags = []
    ranges = DEFAULT_RANGES if ranges is None else ranges
    for name in dict.fromkeys(r["name"] for r in ranges):
        value = values.get(name)
        if value is None or not math.isfinite(float(value)):
            continue
        mine = [r for r in ranges if r["name"] == name and r.get("sex", "any") in ("any", sex)]
        if sex not in ("M", "F"):
            specific = [r for r in ranges if r["name"] == name and r.get("sex", "any") != "any"]
            if specific and all(_outside(float(value), r) for r in specific):
                r = specific[0]
                flags.append(f"{name} {float(value):.1f} {_outside(float(value), r)} (both sexes; {r.get('source', '')})")
            mine = [r for r in mine if r.get("sex", "any") == "any"]
        for r in mine:
            why = _outside(float(value), r)
            if why:
                sex_note = "" if r.get("sex", "any") == "any" else f"{r['sex']}, "
                flags.append(f"{name} {float(value):.1f} {why} ({sex_note}{r.get('source', '')})")
    return flags
