"""The ``function`` run's reports: ``function.csv``, ``function.json`` and ``report.md``."""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

from ..utils.atomic import atomic_write_text
from .clinical import INDEXED_NAMES
from .indices import INDEX_NAMES, MYOCARDIAL_DENSITY

__all__ = ["CLINICAL_NAMES", "clinical_values", "report_units", "write_reports"]


def _fmt(v, digits=1) -> str:
    return "" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:.{digits}f}"


#: The clinical values beside :data:`INDEX_NAMES`: indexed to the BSA, and the maximal ED LV wall thickness.
CLINICAL_NAMES = [*INDEXED_NAMES, "LV_max_wall_mm"]


def clinical_values(res: Mapping) -> dict[str, float | None]:
    """One source's indices, indexed values and wall thickness in one flat dict."""
    wall = (res.get("wall") or {}).get("max_wall_thickness_mm")
    return {**res["indices"], **(res.get("indexed") or {}), "LV_max_wall_mm": wall}


def report_units(entry_unit: str | None, density: float = MYOCARDIAL_DENSITY) -> dict[str, str]:
    """``{value name: unit}``: mL / g, or voxels where the headers carry no real spacing."""
    vol = entry_unit or "mL"
    mass = "g" if vol == "mL" else f"voxels x {density:g}"
    units = {k: {"volume": vol, "mass": mass, "percent": "%"}[kind] for k, kind in INDEX_NAMES.items()}
    units.update({k: "g/m2" if "mass" in k else "mL/m2" for k in INDEXED_NAMES})
    units["LV_max_wall_mm"] = "mm"
    return units


def write_reports(out: Path, report: dict, units: Mapping[str, str]) -> None:
    """``function.csv`` (one row per patient and source), ``function.json`` (``report`` itself) and
    ``report.md`` (the tables a reader looks at, with the figures), each written atomically."""
    names = list(INDEX_NAMES)
    rows = []
    for e in report["patients"]:
        for kind in ("auto", "reference"):
            res = e.get(kind)
            if kind == "reference" and not res:
                continue
            row = {"patient_id": e["patient_id"], "source": kind if res else "", "status": e["status"],
                   "input": e.get("input", ""), "unit": e.get("unit", ""), "voxel_mm3": e.get("voxel_mm3"),
                   "ed_frame": res["ed_frame"] if res else None, "es_frame": res["es_frame"] if res else None}
            row.update({n: (res["indices"][n] if res else None) for n in names})
            body = e.get("body") or {}
            row.update({k: body.get(k) for k in ("sex", "height_cm", "weight_kg", "bsa_m2")})
            values = clinical_values(res) if res else {}
            row.update({n: values.get(n) for n in CLINICAL_NAMES})
            row["outside_reference"] = "; ".join(res.get("outside_reference") or []) if res else ""
            row["series_uid"] = (e.get("dicom") or {}).get("series_uid") or ""
            row["qc_flags"] = "; ".join(res["qc"]) if res else ""
            row["notes"] = "; ".join(res["notes"]) if res else e.get("reason", "")
            rows.append(row)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]) if rows else ["patient_id"])
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(buf.getvalue(), out / "function.csv")
    atomic_write_text(json.dumps(report, indent=1, default=str) + "\n", out / "function.json")

    voxel = any(e.get("unit") == "voxels" for e in report["patients"])
    lines = ["# Cardiac function", ""]
    if report.get("model"):
        lines += [f"Segmented by the model {report['model']}.", ""]
    if voxel:
        lines += ["> **VOXEL UNITS.** The images' headers carry unit spacing (1 x 1 x 1), i.e. no real voxel size. "
                  "Volumes are voxel counts and the mass is voxels x density: **they are not mL or g**. Ejection "
                  "fractions are ratios and stay valid.", ""]
    lines += ["| patient | input | ED | ES | " + " | ".join(f"{n} ({units[n]})" for n in names) + " | QC |",
              "|---|---|---:|---:|" + "---:|" * len(names) + "---|"]
    for e in report["patients"]:
        res = e.get("auto")
        if not res:
            lines.append(f"| {e['patient_id']} | not computed: {e.get('reason', '')} |" + " |" * (len(names) + 3))
            continue
        qc = "; ".join(res["qc"] + res["notes"]) or "ok"
        lines.append(f"| {e['patient_id']} | {e['input']} | {res['ed_frame']} | {_fmt(res['es_frame'], 0)} | "
                     + " | ".join(_fmt(res["indices"][n]) for n in names) + f" | {qc} |")
    lines += _clinical_lines(report["patients"], report["reference_ranges"], units)
    series = [e for e in report["patients"] if e.get("dicom")]
    if series:
        lines += ["", "## DICOM series", "", "| patient | folder | PatientID | SeriesInstanceUID | description | files | "
                  "phases ordered by |", "|---|---|---|---|---|---:|---|"]
        for e in series:
            d = e["dicom"]
            lines.append(f"| {e['patient_id']} | {d.get('source')} | {d.get('patient_id') or ''} | {d.get('series_uid')} | "
                         f"{d.get('series_description') or ''} | {d.get('num_files')} | {d.get('phase_order')} |")
    if report["agreement"]:
        lines += ["", "## Agreement with the reference labels", "",
                  "| index | n | MAE | bias | SD of difference | limits of agreement | Pearson r |",
                  "|---|---:|---:|---:|---:|---|---:|"]
        for n, s in report["agreement"].items():
            loa = f"{_fmt(s['loa_low'])} .. {_fmt(s['loa_high'])}" if s["loa_low"] is not None else ""
            lines.append(f"| {n} ({units[n]}) | {s['n']} | {_fmt(s['mae'])} | {_fmt(s['bias'])} | {_fmt(s['sd'])} | "
                         f"{loa} | {_fmt(s['r'], 3)} |")
        lines += ["", "![Bland-Altman](bland_altman.png)", "", "![Scatter](scatter.png)"]
    curves = [e for e in report["patients"] if e.get("curve_png")]
    if curves:
        lines += ["", "## Volume curves", ""] + [f"![{e['patient_id']}]({e['curve_png']})" for e in curves]
    atomic_write_text("\n".join(lines) + "\n", out / "report.md")


def _clinical_lines(patients: Sequence[dict], ranges: Sequence[Mapping], units: Mapping[str, str]) -> list[str]:
    """The report's clinical table: body size, values indexed to BSA, maximal wall thickness, reference flags."""
    rows = [e for e in patients if e.get("auto") and e.get("unit") == "mL"]
    if not rows:
        return []
    sources = "; ".join(dict.fromkeys(str(r.get("source") or r["name"]) for r in ranges))
    lines = ["", "## Clinical values", "",
             "Indexed to body surface area (Mosteller). Values outside a reference range (by sex where known) are "
             f"listed in the last column: **a measurement, never a diagnosis**. Ranges: {sources}.", "",
             "| patient | sex | height (cm) | weight (kg) | BSA (m2) | "
             + " | ".join(f"{n} ({units[n]})" for n in CLINICAL_NAMES) + " | outside reference range |",
             "|---|---|---:|---:|---:|" + "---:|" * len(CLINICAL_NAMES) + "---|"]
    for e in rows:
        body, values = e.get("body") or {}, clinical_values(e["auto"])
        bsa = "" if body.get("bsa_m2") is None else f"{body['bsa_m2']:.2f}"
        source = f" ({body['body_source']})" if body.get("body_source") else ""
        lines.append(f"| {e['patient_id']} | {body.get('sex') or '?'} | {_fmt(body.get('height_cm'))} | "
                     f"{_fmt(body.get('weight_kg'))} | {bsa}{source} | "
                     + " | ".join(_fmt(values.get(n)) for n in CLINICAL_NAMES)
                     + f" | {'; '.join(e['auto'].get('outside_reference') or []) or '-'} |")
    return lines
