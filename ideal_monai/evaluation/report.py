"""Write an evaluation report: ``metrics.csv``, ``metrics.json`` and ``report.md``.

The three files carry the same numbers for three readers: the CSV for spreadsheets and pandas
(one row per case and class), the JSON for programs (rows, summary and the empty-mask
convention), the Markdown for people (summary table, failures, per-case table, overlay images).
Every file is written atomically, so an interrupted run never leaves a half-written report.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from ..errors import IdealInputError
from ..utils.atomic import atomic_write_text
from .metrics import CONVENTION, FAILURE_STATUSES, METRIC_KEYS, summarize

__all__ = ["CSV_COLUMNS", "write_report"]

#: Columns of ``metrics.csv``, in order.
CSV_COLUMNS = ("case_id", "class", "dsc", "hd95", "asd", "status")

_STATUS_SHORT = {"missing_prediction": "missing", "false_positive": "false pos.", "both_empty": "both empty"}


def _csv_number(v) -> str:
    v = float(v)
    # "nan" rather than an empty cell: explicit in a spreadsheet, and float("nan") / pandas parse it.
    return "nan" if math.isnan(v) else repr(round(v, 6))


def _json_safe(obj):
    """Replace NaN/inf by None (JSON ``null``): strict JSON has no NaN, and many parsers reject it."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Mapping):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, Path):
        return obj.as_posix()
    return obj


def _fmt(v, digits: int) -> str:
    return "n/a" if v is None or not math.isfinite(v) else f"{v:.{digits}f}"


def _mean_std(stats: Mapping, key: str, digits: int) -> str:
    mean, std = stats[f"{key}_mean"], stats[f"{key}_std"]
    if not math.isfinite(mean):
        return "n/a"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def _md_escape(text: str) -> str:
    return str(text).replace("|", "\\|")


def _csv_text(rows: Sequence[Mapping]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for r in rows:
        writer.writerow([r["case_id"], r["class"], *(_csv_number(r[k]) for k in METRIC_KEYS), r["status"]])
    return buf.getvalue()


def _markdown(rows: Sequence[Mapping], summary: Mapping, overlay_links: Mapping[str, str], title: str) -> str:
    classes = list(summary["classes"])
    overall = summary["overall"]
    counts = overall["status_counts"]
    lines = [f"# {title}", ""]
    lines.append(
        f"{summary['n_cases']} case(s), classes {', '.join(classes)}. "
        f"**Failures: {overall['n_failures']}** "
        f"(missing prediction: {counts['missing_prediction']}, false positive: {counts['false_positive']}); "
        f"both empty (not scored): {counts['both_empty']}."
    )
    unit = sorted({r["case_id"] for r in rows if r.get("spacing") is not None and list(r["spacing"]) == [1, 1, 1]})
    if unit:
        # A stripped or synthetic header also reads (1, 1, 1): say so instead of implying millimetres.
        lines += ["", f"Note: {len(unit)} case(s) have voxel spacing (1, 1, 1) in their ground-truth header; "
                  "their distances are in voxels (mm only if that header is right)."]
    lines += ["", "## Summary", "", "Mean ± standard deviation over cases; distances in mm; NaN values skipped "
              "(HD95/ASD cover `ok` rows only: read them with the failure counts).", ""]
    lines.append("| class | DSC | HD95 (mm) | ASD (mm) | ok | missing prediction | false positive | both empty |")
    lines.append("|---|---|---|---|---|---|---|---|")
    for name, stats in list(summary["classes"].items()) + [("**overall**", overall)]:
        c = stats["status_counts"]
        lines.append(
            f"| {_md_escape(name)} | {_mean_std(stats, 'dsc', 3)} | {_mean_std(stats, 'hd95', 2)} | "
            f"{_mean_std(stats, 'asd', 2)} | {c['ok']} | {c['missing_prediction']} | {c['false_positive']} | "
            f"{c['both_empty']} |"
        )

    lines += ["", "## Failures", ""]
    if summary["failures"]:
        lines += [f"- {_md_escape(f['case_id'])} {_md_escape(f['class'])}: {f['status']}" for f in summary["failures"]]
    else:
        lines.append("None: every structure present in the ground truth was predicted, and nothing else.")

    lines += ["", "## Per case", "", "Each class cell: DSC / HD95 mm / ASD mm, or the status when it is not `ok`.", ""]
    header = ["case", *classes, "mean DSC", "mean HD95 (mm)", "mean ASD (mm)", "failures"]
    if overlay_links:
        header.append("overlay")
    lines.append("| " + " | ".join(_md_escape(h) for h in header) + " |")
    lines.append("|" + "---|" * len(header))
    by_case: dict[str, dict[str, Mapping]] = {}
    for r in rows:
        by_case.setdefault(r["case_id"], {})[r["class"]] = r
    for cid, per_class in by_case.items():
        cells = [_md_escape(cid)]
        for name in classes:
            r = per_class.get(name)
            if r is None:
                cells.append("")
            elif r["status"] == "ok":
                cells.append(f"{_fmt(r['dsc'], 3)} / {_fmt(r['hd95'], 2)} / {_fmt(r['asd'], 2)}")
            else:
                short = _STATUS_SHORT[r["status"]]
                cells.append(f"**{short}**" if r["status"] in FAILURE_STATUSES else short)
        stats = summary["cases"][cid]
        cells += [_fmt(stats["dsc_mean"], 3), _fmt(stats["hd95_mean"], 2), _fmt(stats["asd_mean"], 2),
                  str(stats["n_failures"])]
        if overlay_links:
            cells.append(f"[png]({overlay_links[cid]})" if cid in overlay_links else "")
        lines.append("| " + " | ".join(cells) + " |")

    if overlay_links:
        lines += ["", "## Overlays", "",
                  "Ground truth (left), prediction (middle), contours (right: GT solid, prediction dashed).", ""]
        for cid, link in overlay_links.items():
            lines += [f"### {_md_escape(cid)}", "", f"![{_md_escape(cid)}]({link})", ""]

    lines += ["", "## Convention", "", CONVENTION, ""]
    return "\n".join(lines)


def write_report(
    rows: Sequence[Mapping],
    summary: Mapping | None,
    output_dir: str | os.PathLike,
    overlays: Mapping[str, str | os.PathLike] | None = None,
    title: str = "Segmentation evaluation",
) -> dict[str, Path]:
    """Write ``metrics.csv``, ``metrics.json`` and ``report.md`` into ``output_dir``.

    Args:
        rows: per (case, class) dicts from :func:`~ideal_monai.evaluation.metrics.compute_case_metrics`.
        summary: :func:`~ideal_monai.evaluation.metrics.summarize` of ``rows``; computed when None.
        output_dir: destination folder (created).
        overlays: case id -> overlay PNG path; linked from the per-case table and embedded in
            ``report.md`` by a path relative to ``output_dir``.
        title: the Markdown heading.

    Returns:
        ``{"csv": path, "json": path, "markdown": path}``.
    """
    if not rows:
        raise IdealInputError(output_dir, "no metric rows to report (no cases were evaluated)")
    summary = summarize(rows) if summary is None else summary
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    # Links relative to the report, with "/" separators, so the folder can be moved or published.
    links = {
        str(cid): Path(os.path.relpath(Path(p).resolve(), output_dir.resolve())).as_posix()
        for cid, p in (overlays or {}).items()
    }

    paths = {"csv": output_dir / "metrics.csv", "json": output_dir / "metrics.json",
             "markdown": output_dir / "report.md"}
    atomic_write_text(_csv_text(rows), paths["csv"])
    payload = {
        "convention": CONVENTION,
        "columns": list(CSV_COLUMNS),
        "rows": [{k: r[k] for k in (*CSV_COLUMNS, "spacing") if k in r} for r in rows],
        "summary": summary,
        "overlays": links,
    }
    atomic_write_text(json.dumps(_json_safe(payload), indent=2, allow_nan=False) + "\n", paths["json"])
    atomic_write_text(_markdown(rows, summary, links, title), paths["markdown"])
    return paths
