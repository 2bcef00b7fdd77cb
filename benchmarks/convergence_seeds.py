"""Several convergence studies that differ only in their seed, combined: plateaus and margins over seeds.

One convergence run per arm is one training run: its plateau moves by a few hundredths from seed to
seed, as much as the margins the study is about. This reads the output folders of several
``scripts/benchmark_convergence.py --set seed=S --set pretrain.seed=S`` studies (each one's
``*/run.json`` and ``*/curve/*.json``, via :func:`~benchmarks.convergence.collect_results`)
and reports, per labeled count and run (arm and pre-training length), for one kind of weights
(``ema`` by default, or ``final``):

- **last**: validation mean DSC at the last snapshot every seed reached, per seed, mean and sd;
- **plateau**: per seed the mean over the last ``plateau_points`` snapshots (less sensitive to one
  noisy evaluation than the last point alone), then mean and sd over seeds;
- **peak**: per seed the best snapshot and its iteration (chosen on the validation patients, so an
  optimistic number, shown to say how far the plateau is below the curve's best);
- **margin**: the plateau minus the supervised-only plateau of the *same seed* and labeled count,
  per seed, mean, and the smallest over seeds (a margin "holds over seeds" when the smallest does);
- **detail**: at the last snapshot, the per-class DSC (RV, MYO, LV), HD95 and ASD averaged over
  seeds, and the failures per seed ((volume, class) pairs where a present class got no voxel or an
  absent one got some; ``n_cases`` volumes).

Studies must have the same fine-tuning settings apart from ``seed`` (paths aside) and distinct
seeds. A run is summarised over the seeds where it has reached the same last iteration; seeds still
training are listed as in progress and left out, so a table built mid-study never mixes lengths.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Sequence

from ideal_monai.errors import IdealInputError
from .acdc import ARMS
from .convergence import KINDS, _fmt, _label, collect_results, describe_post_processing, scored_with

__all__ = ["load_study", "combine_studies", "format_study_seeds", "plot_study_seeds"]

#: The arm every other arm's margin is taken against.
REFERENCE_ARM = "supervised"

#: Per-class and distance metrics of a snapshot, averaged over seeds in the detail table.
DETAIL_METRICS = ("RV", "MYO", "LV", "dsc", "hd95", "asd")

#: Settings that may differ between studies of one comparison (paths, the seed itself).
_NOT_COMPARED = ("seed", "dataset_dir", "splits_file", "pretrained_path")


def load_study(folder: str | Path) -> dict:
    """One study folder: its runs and curve points (``collect_results``), fine-tuning settings and seed.

    Raises:
        IdealInputError: the folder has no run of a convergence study.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise IdealInputError(folder, "not found: pass output folders of scripts/benchmark_convergence.py")
    results = collect_results(folder)
    if not results["runs"]:
        raise IdealInputError(folder, "holds no convergence run (no */run.json): pass output folders of "
                                      "scripts/benchmark_convergence.py")
    settings = dict(results["finetune_overrides"])
    seed = settings.get("seed", 0)
    return {"folder": folder, "seed": seed, "runs": results["runs"], "iterations": results["iterations"],
            "settings": {k: v for k, v in settings.items() if k not in _NOT_COMPARED}}


def _curve(run: dict, kind: str) -> list[tuple[int, float]]:
    """``[(iteration, mean DSC), ...]`` of one run and kind, by iteration (undefined DSCs dropped)."""
    return sorted((p["iteration"], p["dsc"]) for p in run["points"]
                  if p["kind"] == kind and p.get("dsc") is not None and math.isfinite(p["dsc"]))


def _stats(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else float("nan"))


def combine_studies(folders: Sequence[str | Path], kind: str = "ema", plateau_points: int = 3) -> dict:
    """Combine convergence study folders that differ only in seed.

    Returns:
        ``{"seeds", "folders", "kind", "plateau_points", "rows": [...]}`` with one row per (labeled,
        run name) in the study's order: ``title``, ``arm``, ``name``, ``labeled``, ``iteration`` (the last one
        every summarised seed reached), ``seeds`` (summarised), ``in_progress`` (``{seed: last
        iteration}`` of seeds that have not reached it), per-seed lists ``last`` / ``plateau`` /
        ``peak`` / ``peak_iteration`` and their means / sds, and for non-reference runs:
        ``margin`` (per seed of ``margin_seeds``, the seeds where both the run and supervised-only
        have finished), ``margin_mean``, ``margin_min``.
        ``detail``: ``{metric: mean over the summarised seeds}`` of :data:`DETAIL_METRICS` at the last
        snapshot (metrics a snapshot lacks, or that are undefined, are left out), ``failures``
        (per seed) and ``n_cases``.
        ``curves``: ``{(labeled, name): {seed: [(iteration, dsc), ...]}}`` for the figure.

    Raises:
        IdealInputError: no folder, a folder that is not a study, two studies with one seed, settings
            that differ in more than the seed, an unknown ``kind`` or ``plateau_points`` < 1.
    """
    if kind not in KINDS:
        raise IdealInputError("kind", f"must be one of {sorted(KINDS)}, got {kind!r}")
    if plateau_points < 1:
        raise IdealInputError("plateau_points", f"must be >= 1, got {plateau_points}")
    if not folders:
        raise IdealInputError(None, "no convergence study folder given")
    studies = [load_study(f) for f in folders]
    first, seen = studies[0], {}
    for study in studies:
        if study["seed"] in seen:
            raise IdealInputError(study["folder"], f"has seed {study['seed']}, as {seen[study['seed']]} does: seeds must differ")
        seen[study["seed"]] = study["folder"]
        if study["settings"] != first["settings"]:
            differ = sorted(k for k in set(study["settings"]) | set(first["settings"])
                            if study["settings"].get(k) != first["settings"].get(k))
            raise IdealInputError(study["folder"], f"its fine-tuning settings differ from {first['folder']} in more than "
                                                   f"the seed: {', '.join(differ)}")

    # (labeled, run name) -> {seed: curve}; titles and arms from the run.json files
    curves: dict[tuple[int, str], dict[int, list]] = defaultdict(dict)
    snapshots: dict[tuple[int, str], dict[int, dict[int, dict]]] = defaultdict(dict)  # {seed: {iteration: point}}
    meta: dict[tuple[int, str], dict] = {}
    for study in studies:
        for run in study["runs"]:
            key = (run["labeled"], run["name"])
            meta.setdefault(key, {"title": _label(run), "arm": run["arm"]})
            points = _curve(run, kind)
            if points:
                curves[key][study["seed"]] = points
                snapshots[key][study["seed"]] = {p["iteration"]: p for p in run["points"] if p["kind"] == kind}

    rows = []
    order = {name: i for i, name in enumerate(ARMS)}
    for key in sorted(curves, key=lambda k: (k[0], order.get(meta[k]["arm"], len(order)), k[1])):
        labeled, _ = key
        by_seed = curves[key]
        end = max(points[-1][0] for points in by_seed.values())
        done = {s: pts for s, pts in by_seed.items() if pts[-1][0] == end}
        row = {**meta[key], "name": key[1], "labeled": labeled, "iteration": end, "seeds": sorted(done),
               "in_progress": {s: pts[-1][0] for s, pts in sorted(by_seed.items()) if s not in done}}
        for name, values in (("last", [done[s][-1][1] for s in row["seeds"]]),
                             ("plateau", [statistics.fmean(d for _, d in done[s][-plateau_points:]) for s in row["seeds"]])):
            row[name] = values
            row[f"{name}_mean"], row[f"{name}_sd"] = _stats(values)
        peaks = [max(done[s], key=lambda p: p[1]) for s in row["seeds"]]
        row["peak"], row["peak_iteration"] = [p[1] for p in peaks], [p[0] for p in peaks]
        row["peak_mean"], row["peak_sd"] = _stats(row["peak"])
        row.update(_detail([snapshots[key][s][end] for s in row["seeds"]]))
        # what the summarised snapshots (plateau and last) were scored after: a table must not mix them unsaid
        row["post_processing"] = sorted({scored_with(snapshots[key][s][it])
                                         for s in row["seeds"] for it, _ in done[s][-plateau_points:]})
        rows.append(row)

    for row in rows:
        reference = next((r for r in rows if r["labeled"] == row["labeled"] and r["arm"] == REFERENCE_ARM), None)
        common = sorted(set(row["seeds"]) & set(reference["seeds"])) if reference is not None else []
        if row["arm"] != REFERENCE_ARM and common:
            plateau = dict(zip(row["seeds"], row["plateau"]))
            ref_plateau = dict(zip(reference["seeds"], reference["plateau"]))
            row["margin_seeds"] = common
            row["margin"] = [plateau[s] - ref_plateau[s] for s in common]
            row["margin_mean"], row["margin_min"] = statistics.fmean(row["margin"]), min(row["margin"])
    return {"seeds": sorted(seen), "folders": [str(s["folder"]) for s in studies], "kind": kind,
            "plateau_points": plateau_points, "settings": first["settings"], "rows": rows, "curves": dict(curves)}


def _detail(points: list[dict]) -> dict:
    """Mean per-class / distance metrics over seeds of one snapshot each, failures per seed."""
    detail = {}
    for metric in DETAIL_METRICS:
        values = [p.get(metric) for p in points]
        if values and all(v is not None and math.isfinite(v) for v in values):
            detail[metric] = statistics.fmean(values)
    return {"detail": detail, "failures": [p.get("failures") for p in points],
            "n_cases": max((p.get("n_cases") or 0 for p in points), default=0)}


def _per_seed(values: list[float]) -> str:
    return " / ".join(f"{v:.3f}" for v in values)


def format_study_seeds(summary: dict) -> str:
    """Markdown: one table per labeled count, one row per run."""
    kind, n = summary["kind"], summary["plateau_points"]
    lines = ["# ACDC convergence over seeds", "",
             f"- seeds {', '.join(map(str, summary['seeds']))} from: " + ", ".join(f"`{f}`" for f in summary["folders"]),
             f"- weights: `{kind}` snapshots; *plateau*: mean of the last {n} snapshots per seed; *margin*: plateau minus "
             "supervised-only's plateau of the same seed (mean over seeds, and the smallest)",
             f"- fine-tuning settings (all studies): `{summary['settings']}`",
             "- post-processing before scoring (the summarised snapshots): " + describe_post_processing(
                 {f"{r['title']} ({r['labeled']} labeled)": r["post_processing"] for r in summary["rows"]})]
    for labeled in sorted({r["labeled"] for r in summary["rows"]}):
        lines += ["", f"## {labeled} labeled", "",
                  "| run | seeds | iteration | last, per seed | last mean (sd) | plateau, per seed | plateau mean (sd) "
                  "| peak mean (iterations) | margin per seed | margin mean | margin min | in progress |",
                  "|---|---:|---:|---|---:|---|---:|---:|---|---:|---:|---|"]
        for r in (r for r in summary["rows"] if r["labeled"] == labeled):
            margin = (" / ".join(f"{m:+.3f} (seed {s})" for m, s in zip(r["margin"], r["margin_seeds"]))
                      + f" | {r['margin_mean']:+.3f} | {r['margin_min']:+.3f}" if "margin" in r else "— | — | —")
            progress = ", ".join(f"seed {s} at {it}" for s, it in r["in_progress"].items()) or "—"
            lines.append(f"| {r['title']} | {len(r['seeds'])} | {r['iteration']} | {_per_seed(r['last'])} "
                         f"| {r['last_mean']:.3f} ({_fmt(r['last_sd'])}) | {_per_seed(r['plateau'])} "
                         f"| {r['plateau_mean']:.3f} ({_fmt(r['plateau_sd'])}) "
                         f"| {r['peak_mean']:.3f} ({', '.join(map(str, r['peak_iteration']))}) | {margin} | {progress} |")
        volumes = max((r["n_cases"] for r in summary["rows"] if r["labeled"] == labeled), default=0)
        lines += ["", f"At the last snapshot, mean over the seeds ({volumes} volumes; failures per seed: (volume, class) "
                      "pairs where a present class got no voxel or an absent one got some):", "",
                  "| run | seeds | iteration | RV | MYO | LV | mean DSC | HD95 (mm) | ASD (mm) | failures per seed |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
        for r in (r for r in summary["rows"] if r["labeled"] == labeled):
            cells = " | ".join(f"{r['detail'][m]:.{3 if m not in ('hd95', 'asd') else 2}f}" if m in r["detail"] else "-"
                               for m in DETAIL_METRICS)
            failures = " / ".join("-" if f is None else str(f) for f in r["failures"])
            lines.append(f"| {r['title']} | {len(r['seeds'])} | {r['iteration']} | {cells} | {failures} |")
    lines.append("")
    return "\n".join(lines)


def plot_study_seeds(summary: dict, path: str | Path) -> None:
    """One panel per labeled count: per run the mean curve over seeds and the band between the lowest
    and highest seed (only iterations every summarised seed reached). Written atomically as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ideal_monai.utils.atomic import atomic_path

    counts = sorted({r["labeled"] for r in summary["rows"]}) or [0]
    fig, axes = plt.subplots(1, len(counts), figsize=(6 * len(counts), 4.5), squeeze=False)
    colours: dict[str, str] = {}
    for col, labeled in enumerate(counts):
        ax = axes[0, col]
        for r in (r for r in summary["rows"] if r["labeled"] == labeled):
            curves = {s: dict(summary["curves"][(labeled, r["name"])][s]) for s in r["seeds"]}
            iterations = sorted(set.intersection(*(set(c) for c in curves.values())))
            mean = [statistics.fmean(c[i] for c in curves.values()) for i in iterations]
            low = [min(c[i] for c in curves.values()) for i in iterations]
            high = [max(c[i] for c in curves.values()) for i in iterations]
            colour = colours.setdefault(r["title"], f"C{len(colours)}")
            ax.plot(iterations, mean, "-o", ms=3, color=colour, label=f"{r['title']} ({len(r['seeds'])} seed{'' if len(r['seeds']) == 1 else 's'})")
            ax.fill_between(iterations, low, high, color=colour, alpha=0.2)
        ax.set(title=f"{labeled} labeled patients ({summary['kind']} weights)", xlabel="fine-tuning iterations",
               ylabel="validation mean DSC")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    with atomic_path(Path(path)) as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    plt.close(fig)

