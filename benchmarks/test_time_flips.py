"""What the test-time flip ensemble (``test_time_flips``) changes on ACDC, for already trained runs.

Takes run folders of :mod:`~benchmarks.convergence` (``<study>/<arm>_labeled<n>/``, each with
``train_settings.json`` and snapshots ``models/model[_ema]_iter<i>.pt``) and segments the study's
validation volumes (``<study>/eval_sets/val``) with one snapshot twice, without and with the flips,
through the bundle's ``inference``; :func:`~ideal_monai.evaluation.evaluate_folders` scores both.
Every evaluation is stored as ``<run>/flips/<kind>_<i>_<plain|flips>.json`` and reused, so the
benchmark resumes where it stopped and a second call only rebuilds the table.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ideal_monai.errors import IdealInputError
from .acdc import CPU_PROFILE, _network_overrides, _read_json, _write_json
from .convergence import KINDS, _fmt, score_weights

__all__ = ["evaluate_test_time_flips", "format_test_time_flips"]


def _evaluate(run_dir: Path, weights: Path, eval_dir: Path, flips: bool, inference: dict, out: Path, log) -> dict:
    row = _read_json(out)
    if row is not None:
        return row
    settings = _read_json(run_dir / "train_settings.json")
    if settings is None:
        raise IdealInputError(run_dir / "train_settings.json", "missing: not a run folder of benchmark_convergence.py")
    metrics, seconds = score_weights(run_dir, weights, eval_dir, {**_network_overrides(settings["overrides"]),
                                                                  **inference, "test_time_flips": flips}, "flips")
    row = {**metrics, "inference_seconds": seconds}
    _write_json(out, row)
    log(f"{run_dir.name} {weights.name} flips={flips}: mean DSC {row['dsc']:.3f} ({row['inference_seconds']:.0f} s)")
    return row


def evaluate_test_time_flips(run_dirs: Sequence[Path], iteration: int, kinds: Sequence[str] = ("ema",),
                             eval_dir: Path | None = None, inference: dict | None = None, log=print) -> list[dict]:
    """One row per run and kind: the snapshot at ``iteration`` scored without and with the flips.

    Args:
        run_dirs: convergence run folders.
        iteration: the snapshot to score (e.g. 6000, the end of the default study).
        kinds: ``"ema"`` and/or ``"final"`` weights.
        eval_dir: validation volumes; default ``<study>/eval_sets/val`` beside the first run.
        inference: extra ``inference`` config values (default: the CPU profile's ``sw_batch_size``).
    """
    inference = dict(CPU_PROFILE.inference if inference is None else inference)
    rows = []
    for run_dir in map(Path, run_dirs):
        run = _read_json(run_dir / "run.json")
        if run is None:
            raise IdealInputError(run_dir / "run.json", "missing: not a run folder of benchmark_convergence.py")
        val = Path(eval_dir) if eval_dir is not None else run_dir.parent / "eval_sets" / "val"
        if not val.is_dir():
            raise IdealInputError(val, "validation volumes not found (pass --eval_dir)")
        for kind in kinds:
            if kind not in KINDS:
                raise IdealInputError(kind, f"unknown weights kind; use one of {sorted(KINDS)}")
            weights = run_dir / "models" / KINDS[kind].format(iteration=iteration)
            if not weights.is_file():
                raise IdealInputError(weights, f"no snapshot at iteration {iteration}")
            (run_dir / "flips").mkdir(exist_ok=True)
            pair = {name: _evaluate(run_dir, weights, val, flips, inference,
                                    run_dir / "flips" / f"{kind}_{iteration:06d}_{name}.json", log)
                    for name, flips in (("plain", False), ("flips", True))}
            rows.append({"run": f"{run_dir.parent.name}/{run_dir.name}", "title": run["title"], "labeled": run["labeled"],
                         "kind": kind, "iteration": iteration, **pair})
    return rows


def format_test_time_flips(rows: Sequence[dict]) -> str:
    """Markdown table: per run, mean DSC / RV / HD95 / failures without -> with the flips, and the DSC change."""
    lines = ["| run | arm | labeled | weights | mean DSC plain -> flips | change | RV | MYO | LV | HD95 | failures | inference s |",
             "|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        p, f = r["plain"], r["flips"]
        change = None if p["dsc"] is None or f["dsc"] is None else f["dsc"] - p["dsc"]
        lines.append(
            f"| {r['run']} | {r['title']} | {r['labeled']} | {r['kind']} {r['iteration']} | {_fmt(p['dsc'])} -> {_fmt(f['dsc'])} "
            f"| {'-' if change is None else f'{change:+.3f}'} | {_fmt(p.get('RV'))} -> {_fmt(f.get('RV'))} "
            f"| {_fmt(p.get('MYO'))} -> {_fmt(f.get('MYO'))} | {_fmt(p.get('LV'))} -> {_fmt(f.get('LV'))} "
            f"| {_fmt(p['hd95'], 2)} -> {_fmt(f['hd95'], 2)} | {p['failures']} -> {f['failures']} "
            f"| {p['inference_seconds']:.0f} -> {f['inference_seconds']:.0f} |")
    return "\n".join(lines) + "\n"
