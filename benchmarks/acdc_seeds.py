"""Several ACDC benchmark invocations that differ only in their seed, combined into one table.

One seed cannot tell apart two arms whose mean DSC differ by a few hundredths: each arm is one
training run, evaluated on 20 volumes. This reads the output folders of several
``scripts/benchmark_acdc.py --set seed=S`` invocations (``results.json`` and the per-volume
``report*/metrics.csv`` of every run) and reports, per evaluation set, arm and labeled count:

- the mean DSC of every seed, their mean and sample standard deviation;
- against the supervised-only arm of the same seed and labeled count: the per-volume difference
  of mean DSC (each volume's DSC averaged over its scored classes), averaged over seeds; its mean,
  the number of volumes on which the arm is better, and the two-sided Wilcoxon signed-rank
  p-value over those volumes (``scipy.stats.wilcoxon``).

Invocations must have the same profile apart from ``shared.seed`` (else the spread would mix
settings with seeds) and distinct seeds. An (arm, labeled, set) cell is reported with the seeds
that ran it; the table says how many.
"""

from __future__ import annotations

import csv
import json
import math
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Sequence

from ideal_monai.errors import IdealInputError
from .acdc import ARMS, _num, evaluation_dirs

#: The arm every other arm is compared with, volume by volume.
REFERENCE_ARM = "supervised"

#: Where the summary's columns and the reading of its test are explained; the summary links it.
METHOD = 'docs/history/BENCHMARKS.md, section "Three seeds at 7 labeled, and the same number of steps"'


def load_invocation(folder: str | Path) -> dict:
    """``results.json`` of one benchmark output folder, with its seed and folder added.

    Raises:
        IdealInputError: the folder has no readable ``results.json`` of the benchmark.
    """
    folder = Path(folder)
    path = folder / "results.json"
    try:
        results = json.loads(path.read_text())
    except FileNotFoundError:
        raise IdealInputError(path, "not found: pass output folders of scripts/benchmark_acdc.py") from None
    except (OSError, json.JSONDecodeError) as e:
        raise IdealInputError(path, f"cannot be read as JSON ({e})") from None
    try:
        seed = results["profile"]["shared"].get("seed", 0)
        runs = results["runs"]
        eval_sets = results["eval_sets"]
    except (KeyError, TypeError, AttributeError):
        raise IdealInputError(path, "is not a benchmark_acdc results file (needs profile.shared, runs, eval_sets)") from None
    return {"folder": folder, "path": path, "seed": seed, "profile": results["profile"], "runs": runs,
            "eval_sets": eval_sets}


def _profile_without_seed(profile: dict) -> dict:
    return {**profile, "shared": {k: v for k, v in profile["shared"].items() if k != "seed"}}


def per_volume_dsc(metrics_csv: str | Path) -> dict[str, float]:
    """``{case_id: mean DSC over the case's scored classes}`` from an evaluation's ``metrics.csv``.

    Failures (a structure missed or invented) count as DSC 0, ``both_empty`` rows (NaN) are not
    scored, as in the benchmark's own means.

    Raises:
        IdealInputError: the file is missing or lacks the ``case_id`` / ``dsc`` columns.
    """
    metrics_csv = Path(metrics_csv)
    per_case: dict[str, list[float]] = defaultdict(list)
    try:
        with open(metrics_csv, newline="") as f:
            for row in csv.DictReader(f):
                dsc = float(row["dsc"])
                per_case[row["case_id"]]  # a case with only unscored classes still exists
                if math.isfinite(dsc):
                    per_case[row["case_id"]].append(dsc)
    except FileNotFoundError:
        raise IdealInputError(metrics_csv, "not found: the run was not evaluated on this set") from None
    except (KeyError, ValueError) as e:
        raise IdealInputError(metrics_csv, f"is not an evaluation metrics.csv (case_id, class, dsc, ...): {e}") from None
    return {case: (sum(v) / len(v) if v else float("nan")) for case, v in per_case.items()}


def _metrics_csv(invocation: dict, run: dict, set_name: str) -> Path:
    # The run folder by name inside this output folder, so a moved or copied folder still works.
    run_dir = invocation["folder"] / Path(run["run_dir"]).name
    return evaluation_dirs(run_dir, set_name, invocation["profile"].get("checkpoint", "final"))[1] / "metrics.csv"


def combine_seeds(folders: Sequence[str | Path]) -> dict:
    """Combine benchmark output folders that differ only in seed.

    Returns:
        ``{"seeds": [...], "folders": [...], "sets": {set_name: [row, ...]}}`` with one row per
        (arm, labeled) in arm order: ``arm``, ``title``, ``labeled``, ``seeds`` (those that ran it),
        ``dsc_per_seed``, ``dsc_mean``, ``dsc_sd`` (NaN with one seed) and, for arms other than the
        reference where the reference ran with the same seeds: ``diff_mean`` (mean over volumes of
        the seed-averaged per-volume DSC difference), ``wins`` / ``n_volumes`` and ``p_wilcoxon``.

    Raises:
        IdealInputError: no folder, a folder that is not a benchmark output, two folders with
            the same seed, profiles that differ in more than the seed, or per-volume metrics
            whose volumes differ between two runs of one comparison.
    """
    if not folders:
        raise IdealInputError(None, "no benchmark output folder given")
    invocations = [load_invocation(f) for f in folders]
    first = invocations[0]
    seen: dict = {}
    for inv in invocations:
        if inv["seed"] in seen:
            raise IdealInputError(inv["path"], f"has seed {inv['seed']}, as {seen[inv['seed']]} does: seeds must differ")
        seen[inv["seed"]] = inv["path"]
        if _profile_without_seed(inv["profile"]) != _profile_without_seed(first["profile"]):
            raise IdealInputError(inv["path"], f"its profile differs from {first['path']} in more than the seed")

    sets = [s for s in first["eval_sets"] if all(s in inv["eval_sets"] for inv in invocations)]
    out = {"seeds": [inv["seed"] for inv in invocations], "folders": [str(inv["folder"]) for inv in invocations],
           "sets": {}}
    for set_name in sets:
        # (arm, labeled) -> {seed: (mean DSC, per-volume DSC)}
        cells: dict[tuple[str, int], dict] = defaultdict(dict)
        for inv in invocations:
            for run in inv["runs"]:
                metrics = run.get("eval", {}).get(set_name)
                if metrics is None:
                    continue
                volumes = per_volume_dsc(_metrics_csv(inv, run, set_name))
                cells[(run["arm"], run["labeled"])][inv["seed"]] = (metrics["dsc"], volumes)
        rows = []
        order = {name: i for i, name in enumerate(ARMS)}
        for (arm, labeled) in sorted(cells, key=lambda key: (key[1], order.get(key[0], len(order)), key[0])):
            by_seed = cells[(arm, labeled)]
            seeds = sorted(by_seed)
            dscs = [by_seed[s][0] for s in seeds]
            row = {"arm": arm, "title": ARMS[arm].title if arm in ARMS else arm, "labeled": labeled, "seeds": seeds,
                   "dsc_per_seed": dscs, "dsc_mean": statistics.fmean(dscs),
                   "dsc_sd": statistics.stdev(dscs) if len(dscs) > 1 else float("nan")}
            reference = cells.get((REFERENCE_ARM, labeled), {})
            if arm != REFERENCE_ARM and seeds == sorted(reference):
                row.update(_paired(by_seed, reference, seeds, set_name, first["folder"]))
            rows.append(row)
        out["sets"][set_name] = rows
    return out


def _paired(arm_by_seed: dict, ref_by_seed: dict, seeds: list, set_name: str, where) -> dict:
    """Per-volume DSC difference arm - reference, averaged over seeds, and its summary."""
    from scipy.stats import wilcoxon

    volumes = sorted(ref_by_seed[seeds[0]][1])
    for seed in seeds:
        for volumes_of in (arm_by_seed[seed][1], ref_by_seed[seed][1]):
            if sorted(volumes_of) != volumes:
                raise IdealInputError(where, f"set {set_name!r}: the runs of seed {seed} were evaluated on different "
                                             "volumes, so they cannot be compared volume by volume")
    diffs = [statistics.fmean(arm_by_seed[s][1][v] - ref_by_seed[s][1][v] for s in seeds) for v in volumes]
    diffs = [d for d in diffs if math.isfinite(d)]
    nonzero = [d for d in diffs if d != 0.0]
    p = float(wilcoxon(nonzero).pvalue) if nonzero else float("nan")
    return {"diff_mean": statistics.fmean(diffs) if diffs else float("nan"),
            "wins": sum(d > 0 for d in diffs), "n_volumes": len(diffs), "p_wilcoxon": p}


def _p_value(p: float) -> str:
    return "<0.001" if math.isfinite(p) and p < 0.001 else _num(p, 3)


def format_seed_summary(summary: dict) -> str:
    """Markdown: one table per evaluation set, one row per (arm, labeled)."""
    lines = ["# ACDC benchmark over seeds", "",
             f"- seeds {', '.join(map(str, summary['seeds']))} from: " + ", ".join(f"`{f}`" for f in summary["folders"])]
    for set_name, rows in summary["sets"].items():
        lines += ["", f"## {set_name}", "",
                  "| arm | labeled | seeds | mean DSC per seed | mean | sd | vs supervised (per volume) "
                  "| volumes better | Wilcoxon p |",
                  "|---|---:|---:|---|---:|---:|---:|---:|---:|"]
        for r in rows:
            per_seed = " / ".join(f"{d:.3f}" for d in r["dsc_per_seed"])
            paired = (f"{r['diff_mean']:+.3f} | {r['wins']} of {r['n_volumes']} | {_p_value(r['p_wilcoxon'])}"
                      if "diff_mean" in r else "— | — | —")
            lines.append(f"| {r['title']} | {r['labeled']} | {len(r['seeds'])} | {per_seed} | {r['dsc_mean']:.3f} "
                         f"| {_num(r['dsc_sd'], 3)} | {paired} |")
    lines += ["", f"How to read the table: {METHOD}.", ""]
    return "\n".join(lines)
