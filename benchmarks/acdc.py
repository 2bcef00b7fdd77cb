"""Segmentation quality on ACDC: supervised-only vs consistency-only vs IDEAL, at 3 and 7 labeled patients.

Every arm runs the bundle's own run ids (:func:`ideal_monai.bundle_runner.run_bundle`, i.e. exactly
``python -m monai.bundle run ...``) with the arm's config switches:

==============  ==========================================================================
arm             ``finetune`` overrides
==============  ==========================================================================
supervised      ``num_streams=1, semi_supervised=False, use_pretrained=False``
consistency     ``use_pretrained=False`` (two streams, bidirectional consistency)
ideal           ``use_pretrained=True`` on the encoder of one shared ``pretrain`` run
==============  ==========================================================================

each with ``labeled_3`` and ``labeled_7`` of ``<data>/splits.json``, each in its own bundle root
under ``output_dir`` (so checkpoints never mix). Stages, each printed with the elapsed time:

1. **eval sets**: the split's ``val`` patients (ACDC: 10 patients, 20 volumes), and optionally the
   labeled cases of ``test_dir`` (any layout :func:`~ideal_monai.data.discover_cases` knows), are
   linked (symlinks, never copies) into flat folders ``eval_sets/<name>/`` of
   ``<case>.nii.gz`` + ``<case>_gt.nii.gz``.
2. **calibration** (time-budgeted profiles): a few iterations of each training kind (pre-training
   and each arm, once for all labeled counts) measure the wall time per iteration.
3. **pretrain** (only when the ``ideal`` arm is selected): once, into ``pretrain/``.
4. **finetune** per arm and labeled count, into ``<arm>_labeled<n>/``.
5. **inference + evaluation** per arm and eval set: ``inference`` into ``<arm dir>/predictions``,
   then :func:`~ideal_monai.evaluation.evaluate_folders` (per-class and mean DSC, HD95, ASD, failure
   counts) into ``<arm dir>/report`` (other eval sets: ``predictions_<set>``, ``report_<set>``; other
   weights than the final ones, ``--checkpoint ema|best``: ``..._<checkpoint>``).
6. ``results.md`` + ``results.json`` in ``output_dir``: one row per arm x labeled count.

How the arms get equal budgets (planned iterations plus a
:class:`~benchmarks.time_budget.TimeBudget` hard stop, appended to the trainer's handlers
through an extra config file), why the final weights are evaluated, and how to read the tables:
docs/history/BENCHMARKS.md, section "ACDC quality benchmark (supervised vs consistency vs IDEAL)".
"""

from __future__ import annotations

import ast
import dataclasses
import datetime
import json
import math
import shutil
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ideal_monai.bundle_runner import config_path, run_bundle
from ideal_monai.errors import IdealInputError
from .runner import REPO_ROOT
from .time_budget import steady_step_seconds

__all__ = [
    "ARMS",
    "PROFILES",
    "Arm",
    "Profile",
    "AcdcBenchmarkConfig",
    "default_data_dir",
    "parse_sets",
    "apply_sets",
    "plan_iterations",
    "prepare_eval_sets",
    "calibrate",
    "steady_step_seconds",
    "pretrain",
    "finetune",
    "evaluation_dirs",
    "evaluate_run",
    "format_results",
    "run_acdc_benchmark",
]


#: Stage name -> bundle run id.
STAGES = ("pretrain", "finetune", "inference")

#: Keys the geometry and the encoder depend on: a ``--set`` of one of these applies to every stage
#: whose config has it (pre-trained encoder, fine-tuned network and inference must agree).
SHARED_KEYS = ("patch_size", "target_spacing", "features", "seed", "cache_rate", "num_workers")

#: Keys the benchmark sets itself (paths, splits, arm switches); ``--set`` refuses them.
RESERVED_KEYS = ("bundle_root", "ckpt_dir", "output_dir", "dataset_dir", "splits_file", "labeled_key", "num_labeled",
                 "num_val", "resume", "pretrained_path", "model_path", "prediction_dir", "overwrite",
                 "num_streams", "semi_supervised", "use_pretrained")

#: Path keys a stage's overrides may hold that must not carry over to another stage.
_PATH_KEYS = ("bundle_root", "ckpt_dir", "output_dir", "dataset_dir", "model_path")

#: ``--checkpoint`` choice -> the weight file of a fine-tuning run that is evaluated.
CHECKPOINT_FILES = {"final": "model_final.pt", "ema": "model_ema.pt", "best": "model.pt"}

#: Fraction of a time budget that the planned iterations should fill (the rest absorbs per-epoch
#: checkpoint saves and noise, so the hard stop rarely cuts the schedule short).
BUDGET_FILL = 0.95

#: A budgeted run re-plans at every epoch end until it is this far through its plan (TimeBudget's
#: ``replan_until``): one epoch's step times alone are too noisy a plan (docs/history/BENCHMARKS.md,
#: "ACDC quality benchmark").
REPLAN_UNTIL = 0.5

#: Epoch length used when a budgeted stage has ``iterations_per_epoch`` unset.
DEFAULT_EPOCH_LENGTH = 50

#: Where ``results.md`` sends its reader for the method, how to read the table, and the yardstick.
METHOD = 'docs/history/BENCHMARKS.md, section "ACDC quality benchmark (supervised vs consistency vs IDEAL)"'


def default_data_dir() -> Path:
    """``../shared/data/acdc`` relative to the repository root."""
    return (REPO_ROOT.parent / "shared" / "data" / "acdc").resolve()


# ----------------------------------------------------------------------------------------------
# Arms and profiles
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Arm:
    """One method of the comparison: ``finetune`` overrides, and whether it needs ``pretrain``."""

    name: str
    title: str
    overrides: Mapping[str, Any]
    pretrained: bool = False


ARMS: dict[str, Arm] = {arm.name: arm for arm in (
    Arm("supervised", "supervised only", {"num_streams": 1, "semi_supervised": False, "use_pretrained": False}),
    Arm("consistency", "consistency, no pre-training", {"num_streams": 2, "semi_supervised": True,
                                                        "use_pretrained": False}),
    Arm("ideal", "IDEAL", {"num_streams": 2, "semi_supervised": True, "use_pretrained": True}, pretrained=True),
)}


@dataclasses.dataclass
class Profile:
    """Training settings of one benchmark profile.

    Attributes:
        name: ``cpu`` or ``gpu`` (or anything, for tests).
        shared: overrides for every stage whose config has the key (geometry, encoder widths, seed).
        pretrain, finetune, inference: overrides of that stage's config.
        pretrain_minutes: wall-clock budget of the pre-training run; ``None``: run the configured
            ``max_epochs * iterations_per_epoch``.
        minutes_per_arm: wall-clock training budget of every fine-tuning arm (same for all);
            ``None``: every arm runs the configured iteration count.
        calibration_iterations: iterations timed per training kind to plan a budgeted run; the
            step time is the median of the second half (the first iterations are slower: warm-up).
        checkpoint: ``final`` (``model_final.pt``), ``ema`` (``model_ema.pt``, the moving average of the
            weights, ``ema_decay`` of ``train.json``) or ``best`` (``model.pt``, best validation epoch).
        max_overlays: overlay PNGs per report (worst cases first).
    """

    name: str
    shared: dict = dataclasses.field(default_factory=dict)
    pretrain: dict = dataclasses.field(default_factory=dict)
    finetune: dict = dataclasses.field(default_factory=dict)
    inference: dict = dataclasses.field(default_factory=dict)
    pretrain_minutes: float | None = None
    minutes_per_arm: float | None = None
    calibration_iterations: int = 30
    checkpoint: str = "final"
    max_overlays: int = 4

    def __post_init__(self):
        if self.checkpoint not in CHECKPOINT_FILES:
            raise IdealInputError("checkpoint", f"must be one of {sorted(CHECKPOINT_FILES)}, got {self.checkpoint!r}")
        for name in ("pretrain_minutes", "minutes_per_arm"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise IdealInputError(name, f"must be a positive number of minutes or None, got {value!r}")
        if self.calibration_iterations < 2:
            raise IdealInputError("calibration_iterations", f"must be >= 2 (one is warm-up), got {self.calibration_iterations}")

    def stage(self, stage: str) -> dict:
        """The overrides of ``stage``: ``shared`` keys that its config has, then the stage's own."""
        keys = config_keys(stage)
        return {**{k: v for k, v in self.shared.items() if k in keys}, **getattr(self, stage)}

    def budget_s(self, stage: str) -> float | None:
        minutes = self.pretrain_minutes if stage == "pretrain" else self.minutes_per_arm
        return None if minutes is None else 60.0 * minutes


#: The geometry keys, which :attr:`Profile.shared` gives every stage.
_GEOMETRY = ("patch_size", "target_spacing")


def _recipe(profile: str, stage: str) -> dict:
    """The bundle's recipe overlay ``configs/profile_<profile>_<stage>.json``: the one place its values live."""
    return json.loads((config_path("finetune").parent / f"profile_{profile}_{stage}.json").read_text())


def _profile_from_recipes(name: str, budgeted: bool = False, **settings) -> Profile:
    """A profile of the recipe overlays of ``name``: the geometry shared by every stage, each stage's other
    values, less ``max_epochs`` when ``budgeted`` (the budget plans the length) and less the network's keys at
    inference (the trained arm's are used). ``settings``: the :class:`Profile` fields of the benchmark
    itself, and ``pretrain`` / ``finetune`` / ``inference`` values it adds to the recipe's."""
    recipes = {stage: _recipe(name, stage) for stage in ("pretrain", "train", "inference")}
    length = ("max_epochs",) if budgeted else ()

    def stage(recipe: str, drop: Sequence[str], own: Mapping) -> dict:
        return {**{k: v for k, v in recipes[recipe].items() if k not in (*_GEOMETRY, *drop)}, **own}

    return Profile(name=name, shared={**{k: recipes["train"][k] for k in _GEOMETRY}, "seed": 0},
                   pretrain=stage("pretrain", length, settings.pop("pretrain", {})),
                   finetune=stage("train", length, settings.pop("finetune", {})),
                   inference=stage("inference", ("decoder_width", "features", "num_streams"),
                                   settings.pop("inference", {})),
                   **settings)


#: A 2-core CPU, all arms at 3 and 7 labeled in one sitting: the CPU recipe (``profile_cpu_*.json``: 128x128
#: patches at 2 mm in-plane, a 256 mm field, which keeps the whole heart of 159 of the 160 labeled ACDC
#: volumes when centred: scripts/measure_acdc_geometry.py; inference inverts the resampling), 10 min of
#: pre-training once, 10 min of training per arm (their lengths planned from the budget, so the recipe's
#: ``max_epochs`` is not used), no validation during training (final weights evaluated); the network's keys
#: at inference are the trained arm's. Why these settings (SGD lr 0.05, 4 unlabeled slices and a half-width D2
#: for the two-stream arms): docs/history/BENCHMARKS.md, sections "Fine-tuning learning rate on phantoms" and
#: "How the CPU profile got here (what was tried)".
CPU_PROFILE = _profile_from_recipes("cpu", budgeted=True, finetune={"val_interval": 10**6}, pretrain_minutes=10.0,
                                    minutes_per_arm=10.0)

#: The literature's setting (``profile_gpu_*.json``): 30k iterations of batch 24 (12 labeled + 12 unlabeled)
#: at 256x256, 100 epochs of pre-training; validation every 10 epochs for the curves only.
GPU_PROFILE = _profile_from_recipes("gpu")

PROFILES: dict[str, Profile] = {"cpu": CPU_PROFILE, "gpu": GPU_PROFILE}


def config_keys(stage: str) -> set[str]:
    """Top-level keys of the bundle config of ``stage`` (``pretrain``, ``finetune``, ``inference``)."""
    from .bundle_config import config_keys as keys

    return keys(stage)


def parse_sets(pairs: Iterable[str]) -> dict[str, Any]:
    """``["lambda_max=0.5", "pretrain.max_epochs=3"]`` -> ``{"lambda_max": 0.5, "pretrain.max_epochs": 3}``.

    Values are Python literals (``True``, ``None``, ``[128, 128]``); anything else stays a string.
    """
    out = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key.strip():
            raise IdealInputError(pair, "expected KEY=VALUE")
        try:
            value = ast.literal_eval(text.strip())
        except (ValueError, SyntaxError):
            value = text.strip()
        out[key.strip()] = value
    return out


def apply_sets(profile: Profile, sets: Mapping[str, Any]) -> Profile:
    """A copy of ``profile`` with ``--set`` overrides added.

    ``stage.key`` (``pretrain.``, ``finetune.``, ``inference.``) sets one stage's key; a plain key
    goes to every stage when it is one of :data:`SHARED_KEYS`, else to ``finetune``. Keys must
    exist in the target config, and the benchmark's own keys (:data:`RESERVED_KEYS`) are refused.
    """
    new = dataclasses.replace(profile, shared=dict(profile.shared), pretrain=dict(profile.pretrain),
                              finetune=dict(profile.finetune), inference=dict(profile.inference))
    for full_key, value in sets.items():
        stage, _, key = full_key.rpartition(".")
        if stage and stage not in STAGES:
            raise IdealInputError(full_key, f"unknown stage {stage!r}; use one of {STAGES} or no prefix")
        if key in RESERVED_KEYS:
            raise IdealInputError(full_key, "is set by the benchmark itself (paths, splits and arm switches)")
        if not stage and key in SHARED_KEYS:
            new.shared[key] = value
            continue
        stage = stage or "finetune"
        if key not in config_keys(stage):
            raise IdealInputError(full_key, f"not a key of the {stage} config ({config_path(stage).name})")
        getattr(new, stage)[key] = value
    return new


@dataclasses.dataclass
class AcdcBenchmarkConfig:
    """Settings of one benchmark run (see :func:`run_acdc_benchmark`)."""

    output_dir: Path = Path("benchmark_acdc")
    data_dir: Path = dataclasses.field(default_factory=default_data_dir)
    splits_file: Path | None = None  # default: <data_dir>/splits.json
    profile: Profile = dataclasses.field(default_factory=lambda: CPU_PROFILE)
    arms: Sequence[str] = tuple(ARMS)
    labeled: Sequence[int] = (3, 7)
    test_dir: Path | None = None
    skip_existing: bool = False

    def __post_init__(self):
        self.output_dir = Path(self.output_dir).resolve()
        self.data_dir = Path(self.data_dir).resolve()
        self.splits_file = Path(self.splits_file or self.data_dir / "splits.json").resolve()
        self.test_dir = Path(self.test_dir).resolve() if self.test_dir else None
        unknown = [a for a in self.arms if a not in ARMS]
        if unknown or not self.arms:
            raise IdealInputError("arms", f"unknown or no arms {unknown}; choose from {list(ARMS)}")
        if not self.labeled or any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in self.labeled):
            raise IdealInputError("labeled", f"need positive labeled counts, got {self.labeled!r}")
        self.arms, self.labeled = tuple(dict.fromkeys(self.arms)), tuple(dict.fromkeys(self.labeled))
        if not self.data_dir.is_dir():
            raise IdealInputError(self.data_dir, "dataset folder does not exist")
        if not self.splits_file.is_file():
            raise IdealInputError(self.splits_file, "splits file does not exist")
        spec = _read_json(self.splits_file)
        if not isinstance(spec, dict):
            raise IdealInputError(self.splits_file, "is not a JSON object of patient lists")
        missing = [f"labeled_{n}" for n in self.labeled if f"labeled_{n}" not in spec]
        if missing:
            raise IdealInputError(self.splits_file, f"has no list(s) {missing}")

    @property
    def pretrain_dir(self) -> Path:
        return self.output_dir / "pretrain"

    def run_dir(self, arm: str, labeled: int) -> Path:
        return self.output_dir / f"{arm}_labeled{labeled}"


# ----------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------


class _Clock:
    """Prints one line per stage with the time since the benchmark started."""

    def __init__(self):
        self.t0 = time.perf_counter()

    def __call__(self, message: str) -> None:
        print(f"[acdc-benchmark {self.elapsed() / 60:6.1f} min] {message}", flush=True)

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0


def _jsonable(obj):
    """Paths -> str, tuples -> lists, NaN/inf -> None (strict JSON)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    return obj


def _write_json(path: Path, obj) -> None:
    from ideal_monai.utils.atomic import atomic_write_text

    atomic_write_text(json.dumps(_jsonable(obj), indent=1) + "\n", path)


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def plan_iterations(budget_s: float, step_s: float, epoch_length: int | None) -> tuple[int, int]:
    """``(max_epochs, iterations_per_epoch)`` filling :data:`BUDGET_FILL` of ``budget_s`` at ``step_s`` per iteration.

    Epochs keep about ``epoch_length`` iterations (the product never exceeds the planned count), so
    per-epoch handlers (checkpoint, seeding) run as usual; at least one iteration is planned.
    """
    if not budget_s > 0 or not step_s > 0:
        raise ValueError(f"budget and step time must be positive, got {budget_s}, {step_s}")
    planned = max(1, int(budget_s * BUDGET_FILL / step_s))
    epoch_length = max(1, int(epoch_length or DEFAULT_EPOCH_LENGTH))
    max_epochs = math.ceil(planned / epoch_length)
    return max_epochs, max(1, planned // max_epochs)


# ----------------------------------------------------------------------------------------------
# Stages
# ----------------------------------------------------------------------------------------------

#: Stage -> the config id of its trainer's handler list (where :class:`TimeBudget` is appended).
_HANDLERS_KEY = {"pretrain": "pretraining#handlers", "finetune": "train#handlers"}

#: Stage -> what a budgeted run re-plans after its first epoch besides ``max_epochs`` (the schedules
#: whose length is the run's total; see :class:`~benchmarks.time_budget.TimeBudget`).
_REPLANNED = {"pretrain": {"lr_scheduler": "@pretraining#lr_scheduler"},
              "finetune": {"lr_scheduler": "@train#lr_scheduler",
                           "ramps": ["@train#consistency_weight", "@train#pseudo_label_weight"]}}


def _train(stage: str, root: Path, overrides: dict, budget_s: float | None, skip_existing: bool) -> tuple[dict, bool]:
    """Run ``pretrain`` / ``finetune`` into bundle root ``root`` with a :class:`TimeBudget` handler.

    The handler's log (``root/train_log.json``) is the result. With ``skip_existing`` a previous
    run with the same overrides and budget (``root/train_settings.json``) is reused. Returns
    ``(log, ran)``.
    """
    # a budgeted run re-plans itself from its own first epoch: the calibration's step time is 10-26 %
    # off from one process to the next on these CPUs (docs/history/BENCHMARKS.md, "Result on the current recipe")
    replan = {} if budget_s is None else {"replan_after_epochs": 1, "replan_until": REPLAN_UNTIL, "fill": BUDGET_FILL,
                                          **_REPLANNED[stage]}
    settings = _jsonable({"stage": stage, "overrides": overrides, "budget_s": budget_s, **replan})
    log_path, settings_path = root / "train_log.json", root / "train_settings.json"
    if skip_existing and _read_json(settings_path) == settings and (log := _read_json(log_path)) is not None:
        return log, False
    root.mkdir(parents=True, exist_ok=True)
    log_path.unlink(missing_ok=True)
    extra = root / "time_budget.json"
    extra.write_text(json.dumps({f"+{_HANDLERS_KEY[stage]}": [{
        "_target_": "benchmarks.time_budget.TimeBudget", "seconds": budget_s, "log_path": str(log_path),
        **replan}]},
        indent=1) + "\n")
    run_bundle(stage, extra_configs=[extra], bundle_root=str(root), resume=False, **overrides)
    _write_json(settings_path, settings)
    log = _read_json(log_path)
    if log is None:
        raise IdealInputError(log_path, f"{stage} finished without writing its time-budget log")
    return log, True


def calibrate(cfg: AcdcBenchmarkConfig, stage: str, name: str, overrides: dict, clock=print) -> float:
    """Seconds per training iteration of ``stage`` with ``overrides``, from a short run in ``calibration/<name>``.

    Runs :attr:`Profile.calibration_iterations` iterations (one epoch, no validation) and takes the
    median step time of the second half. The first iterations are slower than the steady state (first
    batch, allocator, page faults): the mean after only the first one overestimated the step by 5-17 %
    (docs/history/BENCHMARKS.md, "Result at 20 degrees"), so budgeted arms stopped 1-2 minutes early.
    Data loading and per-iteration handlers are included, as in the real run.
    """
    short = {**overrides, "max_epochs": 1, "iterations_per_epoch": cfg.profile.calibration_iterations}
    if "val_interval" in config_keys(stage):
        short["val_interval"] = 10**6
    log, ran = _train(stage, cfg.output_dir / "calibration" / name, short, None, cfg.skip_existing)
    if len(log["step_times_s"]) < 2:
        raise IdealInputError(name, "calibration ran no timed iteration (is the labeled set empty?)")
    step_s = steady_step_seconds(log["step_times_s"])
    clock(f"calibration {name}: {step_s:.3f} s/iteration{'' if ran else ' (reused)'}")
    return step_s


def _train_budgeted(cfg: AcdcBenchmarkConfig, stage: str, root: Path, label: str, overrides: dict,
                    step_s: float | None, skip_existing: bool, clock) -> tuple[dict, bool]:
    """Plan ``stage``'s iterations for its budget from ``step_s``, train into ``root``; ``(summary, ran)``.

    Without a budget (``step_s`` unused) the configured ``max_epochs * iterations_per_epoch`` runs.
    """
    budget_s = cfg.profile.budget_s(stage)
    if budget_s is not None:
        max_epochs, epoch_length = plan_iterations(budget_s, step_s, overrides.get("iterations_per_epoch"))
        overrides = {**overrides, "max_epochs": max_epochs, "iterations_per_epoch": epoch_length}
    clock(f"{label}: {overrides.get('max_epochs')} epochs x {overrides.get('iterations_per_epoch') or 'all'} iterations"
          + (f", budget {budget_s / 60:g} min" if budget_s else ""))
    log, ran = _train(stage, root, overrides, budget_s, skip_existing)
    summary = {"iterations": log["iterations"], "planned_iterations": log["planned_iterations"],
               "minutes": log["elapsed_s"] / 60, "budget_minutes": None if budget_s is None else budget_s / 60,
               "stopped_by_budget": log["stopped_by_budget"], "calibrated_step_s": step_s,
               "replanned": log.get("replanned"), "replanned_again": log.get("replanned_again") or [],
               "reused": not ran}
    replanned, again = summary["replanned"], summary["replanned_again"]
    replan_note = ""
    if replanned:
        replan_note = (f" (re-planned after its first epoch from {replanned['from_iterations']} to "
                       f"{replanned['to_iterations']} at {replanned['step_s']:.3f} s per step")
        if again:
            replan_note += (f", then to {again[-1]['to_iterations']} after {again[-1]['after_iterations']} iterations"
                            f" at {again[-1]['step_s']:.3f} s per step")
        replan_note += ")"
    clock(f"{label} done: {summary['iterations']} iterations in {summary['minutes']:.1f} min" + replan_note
          + (" (stopped by the budget)" if summary["stopped_by_budget"] else "") + ("" if ran else " (reused)"))
    return summary, ran


def pretrain(cfg: AcdcBenchmarkConfig, clock=print) -> tuple[dict, bool]:
    """Pre-train the encoder once (train patients only) into ``pretrain/``; returns ``(summary, ran)``."""
    overrides = {**cfg.profile.stage("pretrain"), "dataset_dir": str(cfg.data_dir), "splits_file": str(cfg.splits_file)}
    step_s = None
    if cfg.profile.budget_s("pretrain") is not None:
        step_s = calibrate(cfg, "pretrain", "pretrain", overrides, clock)
    return _train_budgeted(cfg, "pretrain", cfg.pretrain_dir, "pretrain", overrides, step_s, cfg.skip_existing, clock)


def _finetune_overrides(cfg: AcdcBenchmarkConfig, arm: Arm, labeled: int) -> dict:
    overrides = {**cfg.profile.stage("finetune"), **arm.overrides, "dataset_dir": str(cfg.data_dir),
                 "splits_file": str(cfg.splits_file), "labeled_key": f"labeled_{labeled}"}
    if arm.pretrained:
        overrides["pretrained_path"] = str(cfg.pretrain_dir / "models" / "pretrained_encoder.pt")
    return overrides


def _network_overrides(finetune_overrides: dict) -> dict:
    """The fine-tuning keys that inference must repeat (network shape, geometry), not the paths."""
    return {k: v for k, v in finetune_overrides.items() if k in config_keys("inference") and k not in _PATH_KEYS}


def finetune(cfg: AcdcBenchmarkConfig, arm: Arm, labeled: int, step_s: float | None, skip_existing: bool,
             clock=print) -> tuple[dict, bool]:
    """Fine-tune one arm with ``labeled`` labeled patients into its own bundle root; ``(summary, ran)``.

    ``step_s`` is the arm's calibrated seconds per iteration (``None`` without a time budget).
    """
    return _train_budgeted(cfg, "finetune", cfg.run_dir(arm.name, labeled), f"finetune {arm.name} labeled_{labeled}",
                           _finetune_overrides(cfg, arm, labeled), step_s, skip_existing, clock)


def _link(src: Path, dst: Path) -> None:
    try:
        dst.symlink_to(src)
    except OSError:  # a file system without symlinks
        shutil.copy2(src, dst)


def _link_cases(cases: Sequence[dict], folder: Path) -> Path:
    """Flat folder ``<case>.<ext>`` + ``<case>_gt.<ext>`` linking to the cases' image and label files."""
    from ideal_monai.data.io import strip_image_suffix

    wanted = {}
    for case in cases:
        for key, postfix in (("image", ""), ("label", "_gt")):
            src = Path(case[key]).resolve()
            wanted[f"{case['case_id']}{postfix}{src.name[len(strip_image_suffix(src)):]}"] = src
    # An identical folder is kept as it is: another benchmark process may be reading it right now.
    if folder.is_dir() and {p.name: p.resolve() for p in folder.iterdir()} == wanted:
        return folder
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    for name, src in wanted.items():
        _link(src, folder / name)
    return folder


def prepare_eval_sets(cfg: AcdcBenchmarkConfig, clock=print) -> dict[str, Path]:
    """``{"val": folder[, "test": folder]}``: the split's validation volumes and the labeled ``test_dir`` cases."""
    from ideal_monai.data import discover_cases, split_dataset

    val = split_dataset(cfg.data_dir, splits_file=cfg.splits_file, labeled_key=f"labeled_{cfg.labeled[0]}",
                        include_cine=False)["val"]
    if not val:
        raise IdealInputError(cfg.splits_file, "has no 'val' patients to evaluate on")
    sets = {"val": _link_cases(val, cfg.output_dir / "eval_sets" / "val")}
    clock(f"eval set val: {len(val)} volumes of {len({c['patient_id'] for c in val})} patients")
    if cfg.test_dir is not None:
        test = [c for c in discover_cases(cfg.test_dir, include_cine=False) if "label" in c]
        if not test:
            raise IdealInputError(cfg.test_dir, "has no labeled volumes to evaluate on")
        sets["test"] = _link_cases(test, cfg.output_dir / "eval_sets" / "test")
        clock(f"eval set test: {len(test)} volumes from {cfg.test_dir}")
    return sets


def _metrics_row(summary: dict) -> dict:
    """The table's numbers from an :func:`~ideal_monai.evaluation.summarize` dict.

    Undefined means are None whether the summary was just computed (NaN) or read back from
    ``metrics.json`` (null), so a reused evaluation gives the same row as a fresh one.
    """
    def defined(value):
        return None if value is None or value != value else value

    row = {name: defined(stats["dsc_mean"]) for name, stats in summary["classes"].items()}
    overall = summary["overall"]
    row.update(dsc=defined(overall["dsc_mean"]), hd95=defined(overall["hd95_mean"]), asd=defined(overall["asd_mean"]),
               failures=overall["n_failures"], n_cases=summary["n_cases"])
    return row


def evaluation_dirs(run_dir: Path, set_name: str, checkpoint: str = "final") -> tuple[Path, Path]:
    """``(predictions, report)`` folders of one run, eval set and evaluated weights.

    ``predictions`` / ``report`` for the validation set and the final weights; other sets add
    ``_<set>``, other weights ``_<checkpoint>`` (``report_test_ema``), so evaluating the EMA or best
    weights of finished runs keeps the final weights' reports beside them.
    """
    suffix = ("" if set_name == "val" else f"_{set_name}") + ("" if checkpoint == "final" else f"_{checkpoint}")
    return run_dir / f"predictions{suffix}", run_dir / f"report{suffix}"


def evaluate_run(cfg: AcdcBenchmarkConfig, run_dir: Path, network_overrides: dict, set_name: str, set_dir: Path,
                 skip_existing: bool, clock=print) -> dict:
    """``inference`` of ``set_dir`` with the run's weights, then :func:`evaluate_folders`; the metrics row.

    Outputs: :func:`evaluation_dirs` (``run_dir/predictions`` + ``run_dir/report`` for ``val`` and the
    final weights).
    """
    from ideal_monai.evaluation import evaluate_folders

    pred_dir, report_dir = evaluation_dirs(run_dir, set_name, cfg.profile.checkpoint)
    weights = CHECKPOINT_FILES[cfg.profile.checkpoint]
    overrides = {**network_overrides, **cfg.profile.inference, "model_path": str(run_dir / "models" / weights)}
    settings_path, settings = report_dir / "benchmark_settings.json", _jsonable(overrides)
    if skip_existing and _read_json(settings_path) == settings and (old := _read_json(report_dir / "metrics.json")):
        row = _metrics_row(old["summary"])
        clock(f"evaluation of {run_dir.name} on {set_name} reused: mean DSC {_num(row['dsc'], 3)}")
        return row
    if pred_dir.exists():
        shutil.rmtree(pred_dir)
    run_bundle("inference", bundle_root=str(run_dir), dataset_dir=str(set_dir), output_dir=str(pred_dir),
               overwrite=True, **overrides)
    summary = evaluate_folders(pred_dir, set_dir, report_dir, max_overlays=cfg.profile.max_overlays)
    _write_json(settings_path, settings)
    row = _metrics_row(summary)
    clock(f"evaluated {run_dir.name} on {set_name}: mean DSC {_num(row['dsc'], 3)}, {row['failures']} failure(s)")
    return row


# ----------------------------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------------------------


def _num(value, digits: int) -> str:
    return "n/a" if value is None or (isinstance(value, float) and not math.isfinite(value)) else f"{value:.{digits}f}"


def format_results(results: dict) -> str:
    """Markdown of :func:`run_acdc_benchmark`'s result: settings, then one table per eval set."""
    pre = results.get("pretrain")
    lines = [f"# ACDC quality benchmark (profile `{results['profile']['name']}`)", ""]
    if results.get("command"):
        lines.append(f"- command: `{results['command']}`")
    lines += [f"- date: {results['date']}; data: `{results['data_dir']}`, splits `{results['splits_file']}`",
              f"- wall time of this invocation: {results['total_minutes']:.1f} min; evaluated weights: "
              f"`{CHECKPOINT_FILES[results['profile']['checkpoint']]}`"]
    budget = results["profile"]["minutes_per_arm"]
    lines.append(f"- fine-tuning budget per arm: {budget:g} min of wall-clock training (hard stop), iterations planned "
                 "from a calibration run's step time and re-planned from the run's own epochs until half-way" if budget else "- fine-tuning budget per arm: the configured iteration count")
    if pre:
        lines.append(f"- pre-training (IDEAL only, once): {pre['iterations']} iterations in {pre['minutes']:.1f} min")
    for stage in ("shared", "pretrain", "finetune", "inference"):
        if results["profile"][stage]:
            lines.append(f"- {stage} overrides: `{json.dumps(results['profile'][stage])}`")
    for set_name, n_cases in results["eval_sets"].items():
        lines += ["", f"## {set_name} ({n_cases} volumes)", "",
                  "| arm | labeled | RV DSC | MYO DSC | LV DSC | mean DSC | mean HD95 | mean ASD | failures | train min "
                  "| iterations |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for run in results["runs"]:
            m, t = run["eval"].get(set_name), run["train"]
            if m is None:
                continue
            minutes = f"{t['minutes']:.1f}" + (f" + {pre['minutes']:.1f} pre" if ARMS[run["arm"]].pretrained and pre else "")
            iters = f"{t['iterations']}" + (f" of {t['planned_iterations']}*" if t["stopped_by_budget"] else "")
            lines.append(f"| {ARMS[run['arm']].title} | {run['labeled']} | {_num(m.get('RV'), 3)} | {_num(m.get('MYO'), 3)} "
                         f"| {_num(m.get('LV'), 3)} | {_num(m['dsc'], 3)} | {_num(m['hd95'], 2)} | {_num(m['asd'], 2)} "
                         f"| {m['failures']} | {minutes} | {iters} |")
    lines += ["", "DSC, HD95 and ASD as evaluated by `evaluate_folders`; *iterations*: run within the budget; "
              "`N of M*` = stopped by the time budget before the planned M. How to read the table, the method "
              f"and the CPU yardstick: {METHOD}.", ""]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# The benchmark
# ----------------------------------------------------------------------------------------------


def run_acdc_benchmark(cfg: AcdcBenchmarkConfig, command: str | None = None) -> dict:
    """Run every selected arm x labeled count, evaluate, and write ``results.md`` / ``results.json``.

    Returns the results dict (what ``results.json`` holds, with ``"markdown"`` added).
    """
    clock = _Clock()
    cfg.output_dir.mkdir(parents=True, exist_ok=True)
    profile = cfg.profile
    clock(f"profile {profile.name}: arms {list(cfg.arms)}, labeled {list(cfg.labeled)}, output {cfg.output_dir}")
    eval_sets = prepare_eval_sets(cfg, clock)

    results = {"profile": dataclasses.asdict(profile), "command": command,
               "date": datetime.datetime.now().isoformat(timespec="seconds"), "data_dir": cfg.data_dir,
               "splits_file": cfg.splits_file, "test_dir": cfg.test_dir, "pretrain": None, "runs": [],
               "eval_sets": {name: sum(1 for p in folder.iterdir() if "_gt." not in p.name)
                             for name, folder in eval_sets.items()}}

    arms = [ARMS[name] for name in cfg.arms]
    pretrain_ran = False
    if any(arm.pretrained for arm in arms):
        results["pretrain"], pretrain_ran = pretrain(cfg, clock)

    for arm in arms:
        # One calibration per arm (the step time does not depend on the labeled count).
        step_s = None
        if profile.minutes_per_arm is not None:
            step_s = calibrate(cfg, "finetune", arm.name, _finetune_overrides(cfg, arm, cfg.labeled[0]), clock)
        for labeled in cfg.labeled:
            # A new encoder invalidates the IDEAL runs fine-tuned from the old one.
            skip = cfg.skip_existing and not (arm.pretrained and pretrain_ran)
            train, ran = finetune(cfg, arm, labeled, step_s, skip, clock)
            run_dir = cfg.run_dir(arm.name, labeled)
            network = _network_overrides(_finetune_overrides(cfg, arm, labeled))
            evals = {name: evaluate_run(cfg, run_dir, network, name, folder, skip and not ran, clock)
                     for name, folder in eval_sets.items()}
            run = {"arm": arm.name, "title": arm.title, "labeled": labeled, "run_dir": run_dir, "train": train,
                   "eval": evals}
            _write_json(run_dir / "result.json", run)
            results["runs"].append(run)
            results["total_minutes"] = clock.elapsed() / 60
            _write_results(cfg, results)  # partial tables while the benchmark runs

    results["total_minutes"] = clock.elapsed() / 60
    results["markdown"] = _write_results(cfg, results)
    clock(f"done: {cfg.output_dir / 'results.md'}")
    return results


def _write_results(cfg: AcdcBenchmarkConfig, results: dict) -> str:
    from ideal_monai.utils.atomic import atomic_write_text

    markdown = format_results(_jsonable(results))
    atomic_write_text(markdown, cfg.output_dir / "results.md")
    _write_json(cfg.output_dir / "results.json", {k: v for k, v in results.items() if k != "markdown"})
    return markdown
