"""Convergence curves on ACDC: validation DSC against iterations and CPU minutes, per arm and labeled count.

Where :mod:`benchmarks.acdc` gives every arm the same *wall-clock* budget, this gives every
arm the same *iteration count*, long enough to see where each arm's curve ends (the plateau), and
snapshots the weights every ``eval_every`` iterations. Everything is resumable at every level, so a
study that takes many hours runs in pieces (rerun the same command; nothing finished is redone):

1. **pretrain** (IDEAL arms): one encoder per pre-training length, ``pretrain_<N>/`` (``N`` iterations).
2. **finetune** per arm and labeled count into ``<arm>_labeled<n>/``, in chunks of ``eval_every``
   iterations: each chunk is the bundle's ``finetune`` with ``resume=True`` (it continues from the
   last epoch checkpoint) and handlers appended through an extra config file:
   :class:`~ideal_monai.handlers.ModelSaver` snapshots of the network (``models/model_iter<i>.pt``)
   and of its EMA (``models/model_ema_iter<i>.pt``), and a
   :class:`~benchmarks.training_clock.TrainingClock` (cumulative training seconds).
3. **evaluate** each snapshot as soon as its chunk ends, on the validation patients (the bundle's
   ``inference``, single pass: ``test_time_flips`` off, and :func:`~ideal_monai.evaluation.evaluate_folders`),
   into ``<run>/curve/<kind>_<i>.json``.
4. ``results.json``, ``results.md`` and the figure ``convergence.png`` from whatever is finished.

Every curve point records the post-processing it was scored after (``post_processing``). When the
inference code changes, :func:`rescore` re-evaluates the kept snapshots whose points were scored
otherwise, so one curve never mixes two post-processings without saying so.

Arms are those of :data:`~benchmarks.acdc.ARMS`; the IDEAL arm is run once per
pre-training length (``ideal`` for the first, ``ideal_pre<N>`` for the others).
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import time
from collections.abc import Sequence
from pathlib import Path

from ideal_monai.bundle_runner import run_bundle
from ideal_monai.errors import IdealInputError
from ideal_monai.utils.atomic import atomic_path
from .acdc import (ARMS, CPU_PROFILE, AcdcBenchmarkConfig, Profile, _finetune_overrides, _jsonable, _metrics_row,
                   _network_overrides, _read_json, _write_json, prepare_eval_sets)

__all__ = ["ConvergenceConfig", "run_convergence", "collect_results", "write_results", "plot_convergence",
           "format_convergence"]

#: Snapshot kinds: the trained weights and their exponential moving average.
KINDS = {"final": "model_iter{iteration:06d}.pt", "ema": "model_ema_iter{iteration:06d}.pt"}

#: ``post_processing`` of curve points written before it was recorded (before the heart-first step of
#: :class:`~ideal_monai.transforms.KeepHeartComponentsd`): MONAI's per-class largest component.
LEGACY_POST_PROCESSING = "per_class_largest_component"


def post_processing(inference: dict) -> str:
    """The post-processing the bundle's ``inference`` applies with the overrides ``inference``."""
    from .bundle_config import bundle_config

    config = bundle_config("inference", inference)
    if not config.get("largest_component"):
        return "none"
    bridge = float(config.get("heart_bridge_mm", 0.0))
    return f"heart_bridged_{bridge:g}mm_then_per_class_largest_component" if bridge > 0 else \
        "heart_then_per_class_largest_component"


def scored_with(point: dict) -> str:
    """The post-processing a curve point was scored after."""
    return point.get("post_processing", LEGACY_POST_PROCESSING)


def describe_post_processing(used: dict[str, Sequence[str]]) -> str:
    """One line for a table: ``"`name`"`` when every group in ``used`` (group -> post-processings of its
    points) had the same one, else ``**mixed**: group: a, b; ...``."""
    every = sorted({name for names in used.values() for name in names})
    if len(every) <= 1:
        return f"`{every[0]}`" if every else "-"
    return "**mixed**: " + "; ".join(f"{group}: " + ", ".join(names) for group, names in used.items())



@dataclasses.dataclass
class ConvergenceConfig:
    """Settings of one convergence study (see the module docstring)."""

    output_dir: Path = Path("benchmark_convergence")
    data_dir: Path | None = None
    splits_file: Path | None = None
    profile: Profile = dataclasses.field(default_factory=lambda: CPU_PROFILE)
    arms: Sequence[str] = tuple(ARMS)
    labeled: Sequence[int] = (3, 7)
    iterations: int = 6000
    eval_every: int = 500
    pretrain_iterations: Sequence[int] = (1500,)
    #: iterations per epoch: checkpoints (what a resumed piece restarts from) and the clock are per epoch
    epoch_length: int = 50

    def __post_init__(self):
        for name in ("iterations", "eval_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1 or value % self.epoch_length:
                raise IdealInputError(name, f"must be a positive multiple of {self.epoch_length}, got {value!r}")
        if self.iterations % self.eval_every:
            raise IdealInputError("eval_every", f"must divide iterations ({self.iterations}), got {self.eval_every}")
        if not self.pretrain_iterations or any(int(n) < 1 or int(n) % self.epoch_length
                                               for n in self.pretrain_iterations):
            raise IdealInputError("pretrain_iterations",
                                  f"need positive multiples of {self.epoch_length}, got {self.pretrain_iterations!r}")
        kwargs = {"output_dir": self.output_dir, "profile": self.profile, "arms": self.arms, "labeled": self.labeled,
                  "splits_file": self.splits_file}
        if self.data_dir is not None:
            kwargs["data_dir"] = self.data_dir
        self.acdc = AcdcBenchmarkConfig(**kwargs)  # validates arms, labeled counts, data and splits
        self.output_dir, self.data_dir, self.splits_file = self.acdc.output_dir, self.acdc.data_dir, self.acdc.splits_file
        self.arms, self.labeled = self.acdc.arms, self.acdc.labeled
        self.pretrain_iterations = tuple(dict.fromkeys(int(n) for n in self.pretrain_iterations))

    def runs(self) -> list[tuple[str, str, int | None]]:
        """``(run name, arm name, pre-training iterations or None)`` in the order they are trained."""
        out = []
        for arm in self.arms:
            if ARMS[arm].pretrained:
                for k, n in enumerate(self.pretrain_iterations):
                    out.append((arm if k == 0 else f"{arm}_pre{n}", arm, n))
            else:
                out.append((arm, arm, None))
        return out


def _clock(t0: float):
    def log(message: str) -> None:
        print(f"[convergence {(time.perf_counter() - t0) / 60:6.1f} min] {message}", flush=True)
    return log


def _extra_config(root: Path, handlers_key: str, handlers: list[dict]) -> Path:
    """An extra config file appending ``handlers`` to the list ``handlers_key`` (``pretraining#handlers``)."""
    path = root / "convergence_handlers.json"
    root.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({f"+{handlers_key}": handlers}, indent=1) + "\n")
    return path


def _prepare_root(root: Path, stage: str, overrides: dict) -> None:
    """Create ``root`` for a run with ``overrides``; an existing run with other settings is deleted.

    Changed settings must never continue an old run (``train_settings.json`` records them).
    """
    settings = _jsonable({"stage": stage, "overrides": overrides})
    settings_path = root / "train_settings.json"
    if _read_json(settings_path) != settings:
        if root.exists():
            shutil.rmtree(root)
        root.mkdir(parents=True)
        _write_json(settings_path, settings)


def _trained_iterations(root: Path) -> int:
    """Iterations finished (and checkpointed) so far, from the run's :class:`TrainingClock` log."""
    return int((_read_json(root / "training_clock.json") or {}).get("iteration") or 0)


def _clock_handler(root: Path) -> dict:
    return {"_target_": "benchmarks.training_clock.TrainingClock", "log_path": str(root / "training_clock.json")}


def pretrain(cfg: ConvergenceConfig, iterations: int, log) -> Path:
    """The encoder pre-trained for ``iterations`` iterations (``pretrain_<N>/models/pretrained_encoder.pt``)."""
    root = cfg.output_dir / f"pretrain_{iterations}"
    overrides = {**cfg.profile.stage("pretrain"), "dataset_dir": str(cfg.data_dir), "splits_file": str(cfg.splits_file),
                 "max_epochs": iterations // cfg.epoch_length, "iterations_per_epoch": cfg.epoch_length}
    _prepare_root(root, "pretrain", overrides)
    if _trained_iterations(root) < iterations:
        log(f"pretrain {iterations} iterations into {root.name} (resumes from its checkpoint)")
        extra = _extra_config(root, "pretraining#handlers", [_clock_handler(root)])
        run_bundle("pretrain", extra_configs=[extra], bundle_root=str(root), resume=True, **overrides)
    clock = _read_json(root / "training_clock.json") or {}
    log(f"pretrain {iterations}: {clock.get('iteration')} iterations in {clock.get('seconds', float('nan')) / 60:.1f} min")
    return root / "models" / "pretrained_encoder.pt"


def finetune(cfg: ConvergenceConfig, name: str, arm: str, labeled: int, encoder: Path | None, eval_dir: Path,
             log, pretrain_iterations: int | None = None) -> tuple[Path, list[dict]]:
    """Fine-tune one arm for ``cfg.iterations`` iterations in chunks of ``eval_every``; evaluate each snapshot.

    Every chunk is one ``finetune`` call that resumes the run's checkpoint and stops at the next
    snapshot (``max_epochs`` of the chunk; ``train#total_iterations`` keeps the learning-rate decay and
    the consistency ramp-up on the whole run's schedule), then that snapshot is evaluated. So
    results land while the study runs, and an interruption loses at most one epoch.
    Returns the run folder and its curve points.
    """
    root = cfg.output_dir / f"{name}_labeled{labeled}"
    overrides = {**_finetune_overrides(cfg.acdc, ARMS[arm], labeled), "max_epochs": cfg.iterations // cfg.epoch_length,
                 "iterations_per_epoch": cfg.epoch_length, "train#total_iterations": cfg.iterations}
    if encoder is not None:
        overrides["pretrained_path"] = str(encoder)
    network = _network_overrides(_finetune_overrides(cfg.acdc, ARMS[arm], labeled))
    _prepare_root(root, "finetune", overrides)
    _write_json(root / "run.json", {"name": name, "arm": arm, "title": ARMS[arm].title, "labeled": labeled,
                                    "pretrain_iterations": pretrain_iterations})
    extra = _extra_config(root, "train#handlers", [_clock_handler(root)])
    points = []
    for end in range(cfg.eval_every, cfg.iterations + 1, cfg.eval_every):
        if _trained_iterations(root) < end:
            log(f"finetune {root.name}: iterations {_trained_iterations(root)} -> {end} of {cfg.iterations}")
            run_bundle("finetune", extra_configs=[extra], bundle_root=str(root), resume=True,
                       **{**overrides, "max_epochs": end // cfg.epoch_length})
        _keep_snapshot(root, end)
        points += evaluate_snapshot(cfg, root, end, network, eval_dir, log)
    return root, points


def _keep_snapshot(root: Path, iteration: int) -> None:
    """Copy the chunk's ``model_final.pt`` / ``model_ema.pt`` (written when a ``finetune`` call
    completes) to the snapshot names of ``iteration``, unless that snapshot exists already."""
    for kind, pattern in KINDS.items():
        snapshot = root / "models" / pattern.format(iteration=iteration)
        written = root / "models" / ("model_final.pt" if kind == "final" else "model_ema.pt")
        if not snapshot.is_file() and written.is_file() and _trained_iterations(root) == iteration:
            with atomic_path(snapshot, suffix=".pt") as tmp:
                shutil.copyfile(written, tmp)


def score_weights(root: Path, weights: Path, eval_dir: Path, inference: dict, name: str) -> tuple[dict, float]:
    """Segment ``eval_dir`` with ``weights`` (the bundle's ``inference`` with the ``inference`` values) and
    score it: ``(metrics row, seconds of the inference run)``. Predictions go to ``root/<name>_predictions``
    and are deleted afterwards; the report stays in ``root/<name>_report``."""
    from ideal_monai.evaluation import evaluate_folders

    pred_dir = root / f"{name}_predictions"
    shutil.rmtree(pred_dir, ignore_errors=True)
    t0 = time.perf_counter()
    run_bundle("inference", bundle_root=str(root), dataset_dir=str(eval_dir), output_dir=str(pred_dir),
               overwrite=True, model_path=str(weights), **inference)
    seconds = time.perf_counter() - t0
    summary = evaluate_folders(pred_dir, eval_dir, root / f"{name}_report", max_overlays=0)
    shutil.rmtree(pred_dir, ignore_errors=True)
    return _metrics_row(summary), seconds


def evaluate_snapshot(cfg: ConvergenceConfig, root: Path, iteration: int, network_overrides: dict, eval_dir: Path,
                      log) -> list[dict]:
    """The curve points (one per kind) of the snapshot at ``iteration``, evaluated unless already done."""
    clock = _read_json(root / "training_clock.json") or {"history": []}
    seconds_at = {int(i): float(s) for i, s in clock["history"]}
    curve_dir = root / "curve"
    curve_dir.mkdir(exist_ok=True)
    points = []
    for kind, pattern in KINDS.items():
        out = curve_dir / f"{kind}_{iteration:06d}.json"
        point = _read_json(out)
        weights = root / "models" / pattern.format(iteration=iteration)
        if point is None:
            if not weights.is_file():
                raise IdealInputError(weights, "snapshot missing: the run finished without writing it")
            # Curves track training, so they are single-pass (test_time_flips off unless the profile
            # sets it): every study keeps comparable points; benchmark_test_time_flips.py adds the flips.
            inference = _curve_inference(cfg, network_overrides)
            point = {"kind": kind, "iteration": iteration, "train_seconds": seconds_at.get(iteration),
                     "post_processing": post_processing(inference),
                     **score_weights(root, weights, eval_dir, inference, "curve")[0]}
            _write_json(out, point)
            log(f"{root.name} {kind} @ {iteration}: mean DSC {point['dsc']:.3f}")
        points.append(point)
    return points


def _curve_inference(cfg: ConvergenceConfig, network_overrides: dict) -> dict:
    """Inference overrides of every curve point: single pass (``test_time_flips`` off unless the profile
    sets it), the run's network keys, the profile's inference keys."""
    return {"test_time_flips": False, **network_overrides, **cfg.profile.inference}


def rescore(cfg: ConvergenceConfig, kinds: Sequence[str] = tuple(KINDS), log=print) -> int:
    """Re-evaluate the kept snapshots of ``cfg``'s runs whose curve points were scored after another
    post-processing than this checkout's inference applies; trains nothing. Returns how many were rescored.

    Each rewritten point keeps what it replaces under ``previous`` (``post_processing`` and mean DSC).
    Resumable like the rest (a rerun skips points already rescored). Predictions go to
    ``<run>/rescore_predictions``, so a study process still training the run (its own ``curve_*`` folders)
    is not disturbed; its new points are scored by its own code.
    """
    unknown = sorted(set(kinds) - set(KINDS))
    if unknown or not kinds:
        raise IdealInputError("kinds", f"must be some of {sorted(KINDS)}, got {list(kinds)!r}")
    eval_dir = prepare_eval_sets(cfg.acdc, log)["val"]
    done = 0
    for labeled in cfg.labeled:
        for name, _, _ in cfg.runs():
            root = cfg.output_dir / f"{name}_labeled{labeled}"
            settings = _read_json(root / "train_settings.json")
            if settings is None:
                continue
            inference = _curve_inference(cfg, _network_overrides(settings["overrides"]))
            wanted = post_processing(inference)
            for kind in kinds:
                for path in sorted((root / "curve").glob(f"{kind}_*.json")):
                    point = _read_json(path)
                    if point is None or scored_with(point) == wanted:
                        continue
                    weights = root / "models" / KINDS[kind].format(iteration=point["iteration"])
                    if not weights.is_file():
                        raise IdealInputError(weights, f"snapshot missing: cannot rescore {path}")
                    row = score_weights(root, weights, eval_dir, inference, "rescore")[0]
                    previous = {"post_processing": scored_with(point), "dsc": point.get("dsc")}
                    _write_json(path, {**point, **row, "post_processing": wanted, "previous": previous})
                    log(f"{root.name} {kind} @ {point['iteration']}: mean DSC {previous['dsc']:.3f} -> {row['dsc']:.3f} "
                        f"({previous['post_processing']} -> {wanted})")
                    done += 1
    write_results(cfg.output_dir)
    return done


def run_convergence(cfg: ConvergenceConfig, command: str | None = None) -> dict:
    """Train, snapshot and evaluate every run of ``cfg``; write ``results.json``/``.md`` and the figure.

    Several processes may share ``output_dir`` (e.g. one per arm, each with one thread; what that gains:
    docs/history/BENCHMARKS.md, section "Convergence curves") as long as they train different runs: the results
    files are rebuilt from every run folder on disk each time.
    """
    t0 = time.perf_counter()
    log = _clock(t0)
    cfg.output_dir.mkdir(parents=True, exist_ok=True)
    eval_dir = prepare_eval_sets(cfg.acdc, log)["val"]
    encoders: dict[int, Path] = {}
    for labeled in cfg.labeled:
        for name, arm, pre_iterations in cfg.runs():
            encoder = None
            if pre_iterations is not None:
                if pre_iterations not in encoders:
                    encoders[pre_iterations] = pretrain(cfg, pre_iterations, log)
                encoder = encoders[pre_iterations]
            finetune(cfg, name, arm, labeled, encoder, eval_dir, log, pre_iterations)
            write_results(cfg.output_dir, command)
    log(f"done: {cfg.output_dir / 'results.md'}")
    return collect_results(cfg.output_dir)


def collect_results(output_dir: Path, command: str | None = None) -> dict:
    """Every run under ``output_dir`` (``*/run.json``) with its evaluated curve points, in a stable order."""
    runs, settings = [], None
    for run_json in sorted(Path(output_dir).glob("*/run.json")):
        run = _read_json(run_json)
        if run is None:
            continue
        run["points"] = sorted((p for p in (_read_json(f) for f in sorted((run_json.parent / "curve").glob("*.json")))
                                if p is not None), key=lambda p: (p["kind"], p["iteration"]))
        runs.append(run)
        settings = settings or _read_json(run_json.parent / "train_settings.json")
    order = {name: i for i, name in enumerate(ARMS)}
    runs.sort(key=lambda r: (r["labeled"], order.get(r["arm"], 99), r.get("pretrain_iterations") or 0))
    overrides = (settings or {}).get("overrides", {})
    return {"command": command, "runs": runs,
            "iterations": overrides.get("train#total_iterations"),
            "finetune_overrides": {k: v for k, v in overrides.items()
                                   if k not in ("dataset_dir", "splits_file", "pretrained_path", "max_epochs", "labeled_key",
                                                "num_streams", "semi_supervised", "use_pretrained")}}


def write_results(output_dir: Path, command: str | None = None) -> dict:
    """``results.json``, ``results.md`` and ``convergence.png`` from every run folder under ``output_dir``."""
    from ideal_monai.utils.atomic import atomic_write_text

    results = collect_results(output_dir, command)
    _write_json(output_dir / "results.json", results)
    atomic_write_text(format_convergence(results), output_dir / "results.md")
    plot_convergence(results, output_dir / "convergence.png")
    return results


def _label(run: dict) -> str:
    pre = run.get("pretrain_iterations")
    return run["title"] + (f" (pre-trained {pre} it.)" if pre else "")


def format_convergence(results: dict) -> str:
    """Markdown: per labeled count, validation mean DSC at every snapshot (final / EMA), then the last point in full."""
    lines = ["# ACDC convergence curves", ""]
    if results.get("command"):
        lines += [f"- command: `{results['command']}`"]
    lines += [f"- {results['iterations']} fine-tuning iterations per run (table: every evaluated snapshot)",
              f"- finetune settings of the runs: `{json.dumps(results['finetune_overrides'])}`",
              "- post-processing before scoring: " + describe_post_processing(
                  {f"{r['name']}_labeled{r['labeled']}": sorted({scored_with(p) for p in r["points"]})
                   for r in results["runs"]}), ""]
    for labeled in sorted({r["labeled"] for r in results["runs"]}):
        runs = [r for r in results["runs"] if r["labeled"] == labeled]
        iters = sorted({p["iteration"] for r in runs for p in r["points"]})
        lines += [f"## {labeled} labeled: validation mean DSC (final weights / EMA)", "",
                  "| iteration | " + " | ".join(_label(r) for r in runs) + " |",
                  "|---:|" + "---:|" * len(runs)]
        for it in iters:
            cells = []
            for r in runs:
                by_kind = {p["kind"]: p for p in r["points"] if p["iteration"] == it}
                cells.append(" / ".join(_fmt(by_kind.get(k, {}).get("dsc")) for k in KINDS))
            lines.append(f"| {it} | " + " | ".join(cells) + " |")
        lines += ["", "| run (last snapshot) | weights | iteration | train min | RV | MYO | LV | mean DSC | HD95 | ASD | failures |",
                  "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in runs:
            for kind in KINDS:
                pts = [p for p in r["points"] if p["kind"] == kind]
                if pts:
                    p = max(pts, key=lambda q: q["iteration"])
                    minutes = None if p.get("train_seconds") is None else p["train_seconds"] / 60
                    lines.append(f"| {_label(r)} | {kind} | {p['iteration']} | {_fmt(minutes, 1)} | {_fmt(p.get('RV'))} "
                                 f"| {_fmt(p.get('MYO'))} | {_fmt(p.get('LV'))} | {_fmt(p['dsc'])} | {_fmt(p['hd95'], 2)} "
                                 f"| {_fmt(p['asd'], 2)} | {p['failures']} |")
        lines.append("")
    return "\n".join(lines)


def _fmt(value, digits: int = 3) -> str:
    return "-" if value is None or (isinstance(value, float) and not math.isfinite(value)) else f"{value:.{digits}f}"


def plot_convergence(results: dict, path: Path) -> None:
    """One column per labeled count; top row DSC vs iterations, bottom row vs training minutes.

    Solid lines: the trained weights; dashed: their EMA. Written atomically.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ideal_monai.utils.atomic import atomic_path

    counts = sorted({r["labeled"] for r in results["runs"]}) or [0]
    fig, axes = plt.subplots(2, len(counts), figsize=(6 * len(counts), 8), squeeze=False)
    colours = {}
    for col, labeled in enumerate(counts):
        for r in (r for r in results["runs"] if r["labeled"] == labeled):
            colour = colours.setdefault(r["name"], f"C{len(colours)}")
            for kind, style in (("final", "-"), ("ema", "--")):
                pts = sorted((p for p in r["points"] if p["kind"] == kind), key=lambda p: p["iteration"])
                if not pts:
                    continue
                label = f"{_label(r)}{' EMA' if kind == 'ema' else ''}"
                axes[0, col].plot([p["iteration"] for p in pts], [p["dsc"] for p in pts], style, color=colour,
                                  marker="o", ms=3, label=label)
                timed = [p for p in pts if p.get("train_seconds") is not None]
                axes[1, col].plot([p["train_seconds"] / 60 for p in timed], [p["dsc"] for p in timed], style,
                                  color=colour, marker="o", ms=3, label=label)
        axes[0, col].set(title=f"{labeled} labeled patients", xlabel="fine-tuning iterations",
                         ylabel="validation mean DSC")
        axes[1, col].set(xlabel="fine-tuning CPU minutes", ylabel="validation mean DSC")
        for ax in axes[:, col]:
            ax.grid(alpha=0.3)
            ax.set_ylim(0, 1)
        axes[0, col].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    plt.close(fig)
