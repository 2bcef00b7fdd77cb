"""Training-step and inference speed of IDEAL against the plain supervised U-Net of the same encoder.

Four comparisons, each an IDEAL arm against a baseline arm, all measured in one process so that the
ratios are fair: pre-training step, fine-tuning step, inference per volume, and the CPU profile's
step at the configured precision against float32. The networks, optimizers, losses, trainers and
inference components come from the bundle's own configs (:func:`~.bundle_config.bundle_config`);
a trainer's ``_iteration`` is called on an in-memory batch (no data loading, no handlers), so a
step is exactly the engine's math. What each arm runs and how the arms are timed (interleaving, the
paired ratio, per-arm peak RSS): docs/history/BENCHMARKS.md, sections "Step and inference speed" and
"Precision". Entry point: ``scripts/benchmark_speed.py``.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

__all__ = [
    "SpeedConfig",
    "ArmStats",
    "Comparison",
    "measure_interleaved",
    "run_speed_benchmarks",
    "format_table",
    "format_report",
    "default_data_dir",
    "profile_step",
    "training_breakdown",
    "time_per_call",
]

from ideal_monai.utils.allocator import (  # noqa: E402
    current_rss,
    malloc_trim,
    peak_rss,
    process_peak_rss,
    reset_peak_rss,
    retain_freed_memory,
)
from ideal_monai.utils.precision import cpu_has_native_bf16, resolve_precision  # noqa: E402
from .acdc import default_data_dir  # noqa: E402  (one definition of the data location)
from .bundle_config import CPU, bundle_config  # noqa: E402

BENCHMARKS = ("pretrain", "finetune", "inference", "precision")

#: Where the method (arms, interleaving, paired ratio, peak RSS) is described; the report links it.
METHOD = "docs/history/BENCHMARKS.md, section \"Step and inference speed\""


@dataclasses.dataclass
class SpeedConfig:
    """Settings of one benchmark run (the defaults are the run documented in docs/history/BENCHMARKS.md)."""

    threads: int = 2
    benchmarks: Sequence[str] = BENCHMARKS
    patch: int = 256  #: in-plane patch of the training steps and of inference
    batch_size: int = 16  #: B of the pre-training step (2B images through the network) and its baseline
    batch_labeled: int = 12
    batch_unlabeled: int = 12
    valid_fraction: float = 0.8  #: fraction of query cells with a correspondence in the other view
    warmup: int = 1
    reps: int = 3  #: timed repetitions per arm, at least
    budget_s: float = 90.0  #: per comparison: more repetitions (up to ``max_reps``) while they fit in this time
    max_reps: int = 15
    inference_reps: int | None = None  #: minimum repetitions of the inference comparison (default: ``reps``)
    num_volumes: int = 5
    data_dir: str | os.PathLike | None = None
    weights: str | os.PathLike | None = None  #: optional fine-tuned checkpoint for the inference networks
    sw_batch_size: int | None = None  #: default: inference.json's
    profile: bool = False  #: also print torch.profiler top ops of one step of each arm of a missed target
    seed: int = 0
    #: keep freed memory on the heap (:func:`~ideal_monai.utils.retain_freed_memory`), as the training
    #: configs do by default; ``False`` measures glibc's default (mmap + unmap of every large tensor)
    retain_freed_memory: bool = True
    #: channels-last (NHWC) networks, as the bundle configs' ``channels_last`` default; ``False`` measures NCHW
    channels_last: bool = True
    #: the configs' ``precision`` key for every arm (``auto``, their default: bf16 on CPUs with bf16 units)
    precision: str = "auto"


@dataclasses.dataclass
class ArmStats:
    """Timings of one arm: ``wall``/``cpu`` seconds per repetition, ``peak_rss`` bytes."""

    name: str
    wall: list[float] = dataclasses.field(default_factory=list)
    cpu: list[float] = dataclasses.field(default_factory=list)
    unit_wall: list[list[float]] = dataclasses.field(default_factory=list)  #: per repetition, per unit
    #: highest VmHWM during a warm-up run (absolute: includes what the process holds, data and models)
    peak_rss: int = 0
    #: highest VmHWM minus the RSS right before that run (after a malloc_trim): what the run itself needs
    peak_delta: int = 0

    @property
    def median(self) -> float:
        return statistics.median(self.wall)

    @property
    def cpu_median(self) -> float:
        return statistics.median(self.cpu)


@dataclasses.dataclass
class Comparison:
    """IDEAL arm vs baseline arm; ``scale`` divides the times (e.g. volumes per repetition)."""

    title: str
    ideal: ArmStats
    base: ArmStats
    target: float | None
    unit: str = "s/step"
    scale: float = 1.0
    note: str = ""

    @property
    def ratio(self) -> float:
        return self.ideal.median / self.base.median

    @property
    def paired_ratios(self) -> list[float]:
        """IDEAL/baseline time of each unit (step, volume) in each repetition: the two runs of a pair
        are adjacent in time, so a change of the background load affects both."""
        return [a / b for ra, rb in zip(self.ideal.unit_wall, self.base.unit_wall) for a, b in zip(ra, rb)]

    @property
    def paired_ratio(self) -> float:
        return statistics.median(self.paired_ratios)

    @property
    def cpu_ratio(self) -> float:
        return self.ideal.cpu_median / self.base.cpu_median

    @property
    def met(self) -> bool | None:
        """Judged on the paired ratio (robust to load changes between repetitions)."""
        return None if self.target is None else self.paired_ratio <= self.target


# --------------------------------------------------------------------------------------------------
# measurement


def _cpu_seconds() -> float:
    u = resource.getrusage(resource.RUSAGE_SELF)
    return u.ru_utime + u.ru_stime


def measure_interleaved(arms: dict[str, Sequence[Callable[[], object]]], reps: int, warmup: int = 1,
                        log: Callable[[str], None] | None = None, budget_s: float = 0.0,
                        max_reps: int | None = None) -> tuple[dict[str, ArmStats], bool]:
    """Time several arms with their repetitions interleaved.

    Args:
        arms: name -> list of units (callables); one repetition of an arm runs all its units, and the
            arms alternate unit by unit (e.g. volume by volume), in the given order on even
            repetitions and reversed on odd ones (A B, B A, A B, ...), so a drift of the background
            load hits all arms alike.
        reps: timed repetitions (at least); warmup: untimed repetitions first.
        budget_s: keep adding repetitions while the timed ones so far plus one more fit in this many
            seconds (cheap comparisons get more repetitions), up to ``max_reps``.

    Returns:
        ``({name: ArmStats}, per_arm_peak)``: ``per_arm_peak`` is False when the peak RSS could not be
        reset, i.e. each arm's peak is the process-wide high-water mark.
    """
    names = list(arms)
    n_units = {len(u) for u in arms.values()}
    if len(n_units) != 1:
        raise ValueError("every arm needs the same number of units")
    n_units = n_units.pop()
    reps = max(1, int(reps))
    max_reps = max(reps, max_reps if max_reps is not None else reps)
    stats = {name: ArmStats(name) for name in names}
    per_arm_peak = True

    def run(name: str, u: int, trim: bool) -> tuple[float, float]:
        nonlocal per_arm_peak
        if trim:
            malloc_trim()
        per_arm_peak &= reset_peak_rss()
        rss0 = current_rss() or 0
        c0, t0 = _cpu_seconds(), time.perf_counter()
        arms[name][u]()
        dt, dc = time.perf_counter() - t0, _cpu_seconds() - c0
        peak = peak_rss()
        if trim or warmup == 0:
            stats[name].peak_rss = max(stats[name].peak_rss, peak)
            stats[name].peak_delta = max(stats[name].peak_delta, peak - rss0)
        return dt, dc

    # Memory is measured in the warm-up, with the freed heap handed back to the OS before every run,
    # so each peak starts from what is really live. The timed runs do not trim: that would add page
    # faults a training loop does not have.
    for w in range(warmup):
        for u in range(n_units):
            for name in names:
                run(name, u, trim=True)
        if log:
            log(f"  warm-up {w + 1}/{warmup} done")
    t_first = time.perf_counter()
    r = 0
    while r < reps or (r < max_reps and (time.perf_counter() - t_first) * (r + 1) / r <= budget_s):
        order = names if r % 2 == 0 else names[::-1]
        wall = dict.fromkeys(names, 0.0)
        cpu = dict.fromkeys(names, 0.0)
        unit_wall = {name: [] for name in names}
        for u in range(n_units):
            for name in order:
                dt, dc = run(name, u, trim=False)
                wall[name] += dt
                unit_wall[name].append(dt)
                cpu[name] += dc
        for name in names:
            stats[name].wall.append(wall[name])
            stats[name].cpu.append(cpu[name])
            stats[name].unit_wall.append(unit_wall[name])
        r += 1
        if log:
            log(f"  rep {r}: " + ", ".join(f"{n} {wall[n]:.2f}s" for n in names))
    return stats, per_arm_peak


def profile_step(fn: Callable[[], object], row_limit: int = 15) -> str:
    """torch.profiler table (top ops by self CPU time) of one call of ``fn``."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=row_limit)


def time_per_call(fn: Callable[[], object], number: int = 3) -> float:
    """Seconds per call of ``fn``: ``torch.utils.benchmark.Timer.timeit`` (its warm-up calls, then
    ``number`` timed calls in one block), at this process's thread count."""
    from torch.utils.benchmark import Timer

    timer = Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
    return timer.timeit(number).median


def training_breakdown(features: Sequence[int] | None = None, patch: int = 256, n_labeled: int = 12,
                       n_unlabeled: int = 12, reps: int = 3, log: Callable[[str], None] | None = None) -> str:
    """Where the fine-tuning step's time goes: forward + backward of each component on its real input
    size (:func:`time_per_call` over ``reps`` calls), and how often each appears in the two-stream
    step and in the one-stream baseline step.

    Networks (NCHW), optimizers and losses are the ``finetune`` config's (``features``: its default
    when None). Returns a Markdown table with the per-component times and the ratio they predict.
    """
    from ideal_monai.networks import FeatureDropout, FeatureNoise

    n = n_labeled + n_unlabeled
    gen = torch.Generator().manual_seed(0)
    extra = {} if features is None else {"features": list(features)}
    parts = {s: _finetune_config(num_streams=s, channels_last=False, **extra) for s in (2, 1)}
    net = parts[2].get_parsed_content("network").train()
    base = parts[1].get_parsed_content("network").train()
    num_classes = int(parts[2]["num_classes"])
    x = torch.rand(n, 1, patch, patch, generator=gen)
    with torch.no_grad():
        skips = [t.detach() for t in net.encoder(x)]

    def leaves():
        return [t.clone().requires_grad_() for t in skips]

    def encoder():
        sum(t.sum() for t in net.encoder(x)).backward()

    def decoder(dec, perturb=None):
        def run():
            feats = leaves()
            dec([perturb(f) for f in feats] if perturb is not None else feats).sum().backward()
        return run

    def full_res_level(dec):
        with torch.no_grad():
            h = skips[-1]
            for i, up in enumerate(dec.ups[:-1]):
                h = up(h, skips[len(skips) - 2 - i])
        h = h.detach()

        def run():
            a, b = h.clone().requires_grad_(), skips[0].clone().requires_grad_()
            dec.final_conv(dec.ups[-1](a, b)).sum().backward()
        return run

    def perturbation(p):
        def run():
            sum(p(f).sum() for f in leaves()).backward()
        return run

    y = torch.randint(0, num_classes, (n, 1, patch, patch), generator=gen).to(torch.uint8)
    z1 = torch.randn(n, num_classes, patch, patch, generator=gen).requires_grad_()
    z2 = torch.randn(n, num_classes, patch, patch, generator=gen).requires_grad_()
    dice_ce = parts[2].get_parsed_content("train#supervised_loss")
    bcr = parts[2].get_parsed_content("train#consistency_loss")
    for m in (net, base):
        for prm in m.parameters():
            prm.grad = torch.randn_like(prm)
    opt2, opt1 = (parts[s].get_parsed_content("train#optimizer") for s in (2, 1))

    # name, fn, times in the two-stream step, times in the one-stream step, counted in the totals
    comps = [
        (f"encoder E ({n} slices)", encoder, 1, 1, True),
        ("decoder D1 (deconv), all levels + 1x1", decoder(net.decoder1), 1, 1, True),
        ("decoder D2 (bilinear), all levels + 1x1", decoder(net.decoder2), 1, 0, True),
        ("  of which D1 full-resolution level (UpCat + 1x1)", full_res_level(net.decoder1), 0, 0, False),
        ("  of which D2 full-resolution level (UpCat + 1x1)", full_res_level(net.decoder2), 0, 0, False),
        ("feature noise on all 5 skips (stream 1)", perturbation(FeatureNoise().train()), 1, 0, True),
        ("feature dropout on all 5 skips (stream 2)", perturbation(FeatureDropout().train()), 1, 0, True),
        (f"DiceCE on {n_labeled} slices", lambda: dice_ce(z1[:n_labeled], y[:n_labeled]).backward(), 2, 0, True),
        (f"BCR loss on {n} slices", lambda: bcr(z1, z2).backward(), 1, 0, True),
        (f"DiceCE on {n} slices", lambda: dice_ce(z1, y).backward(), 0, 1, True),
        (f"{type(opt2).__name__} step, 2-stream parameters", opt2.step, 1, 0, True),
        (f"{type(opt1).__name__} step, 1-stream parameters", opt1.step, 0, 1, True),
    ]
    rows = ["| Component (forward + backward) | s | in 2-stream step | in 1-stream step |", "|---|---|---|---|"]
    tot2 = tot1 = 0.0
    for name, fn, c2, c1, counted in comps:
        t = time_per_call(fn, reps)
        if log:
            log(f"  breakdown: {name.strip()}: {t:.3f}s")
        if counted:
            tot2, tot1 = tot2 + c2 * t, tot1 + c1 * t
        rows.append(f"| {name} | {t:.2f} | {c2 if counted else '-'} | {c1 if counted else '-'} |")
    rows.append(f"| **sum** | | **{tot2:.2f}** | **{tot1:.2f}** (predicted ratio {tot2 / tot1:.2f}x) |")
    return "\n".join(rows)


# --------------------------------------------------------------------------------------------------
# data


def _find_volumes(data_dir: Path, n: int) -> list[tuple[Path, Path | None]]:
    """The first case of each of the first ``n`` patients (ACDC: the ED frame) with its label, if any
    (:func:`~ideal_monai.data.discover_cases`; cine files are not cases here). Fewer (or none) where
    ``data_dir`` holds fewer."""
    from ideal_monai.data import discover_cases
    from ideal_monai.errors import IdealInputError

    try:
        cases = discover_cases(data_dir, include_cine=False)
    except IdealInputError:  # missing or empty folder: the caller falls back to phantoms
        return []
    first = {}
    for case in cases:
        first.setdefault(case["patient_id"], case)
    return [(c["image"], c.get("label")) for c in list(first.values())[:n]]


def _prepare_data(cfg: SpeedConfig, workdir: Path, log) -> tuple[list[tuple[Path, Path | None]], str]:
    data_dir = Path(cfg.data_dir) if cfg.data_dir is not None else default_data_dir()
    volumes = _find_volumes(data_dir, cfg.num_volumes)
    if len(volumes) >= cfg.num_volumes:
        return volumes, f"real ACDC volumes from {data_dir} (first {len(volumes)} patients, ED frame)"
    from ideal_monai.data.synthetic import write_synthetic_dataset

    synth = workdir / "phantoms"
    log(f"no ACDC data at {data_dir}: writing {cfg.num_volumes} synthetic phantoms to {synth}")
    write_synthetic_dataset(synth, num_cases=cfg.num_volumes, seed=cfg.seed)
    volumes = _find_volumes(synth, cfg.num_volumes)
    return volumes, f"SYNTHETIC phantoms (no ACDC data found at {data_dir}): {len(volumes)} volumes"


def _load_slices(volumes, patch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """All short-axis slices of ``volumes``, preprocessed as in training: ``(N, 1, P, P)`` float32 and
    ``(N, 1, P, P)`` uint8 labels (zeros where a volume has no label)."""
    from ideal_monai.data import volume_preprocessing

    with_label = volume_preprocessing(keys=["image", "label"], patch_size=(patch, patch))
    image_only = volume_preprocessing(keys=["image"], patch_size=(patch, patch))
    images, labels = [], []
    for image, label in volumes:
        if label is not None:
            d = with_label({"image": image, "label": label})
            lab = _plain(d["label"]).to(torch.uint8)
        else:
            d = image_only({"image": image})
            lab = torch.zeros(d["image"].shape, dtype=torch.uint8)
        img = _plain(d["image"])  # (1, P, P, Z)
        images.append(img.permute(3, 0, 1, 2))
        labels.append(lab.permute(3, 0, 1, 2))
    return torch.cat(images).contiguous().float(), torch.cat(labels).contiguous()


def _plain(t) -> torch.Tensor:
    """A plain ``torch.Tensor`` (MetaTensors from the preprocessing carry metadata the batches never have)."""
    return t.as_tensor() if hasattr(t, "as_tensor") else torch.as_tensor(t)


def _take(t: torch.Tensor, n: int, start: int = 0) -> torch.Tensor:
    """``n`` items of ``t`` from ``start``, cycling when ``t`` has fewer."""
    idx = torch.arange(start, start + n) % t.shape[0]
    return t[idx].clone()


def _random_matches(b: int, h: int, w: int, valid_fraction: float, gen: torch.Generator) -> torch.Tensor:
    """``(B, h, w)`` correspondences: a random key cell per query cell, ``1 - valid_fraction`` set to -1."""
    s = h * w
    match = torch.randint(0, s, (b, s), generator=gen)
    match[torch.rand(b, s, generator=gen) >= valid_fraction] = -1
    return match.reshape(b, h, w)


# --------------------------------------------------------------------------------------------------
# the comparisons: trainers and networks from the bundle's configs


def _finetune_config(num_streams: int, channels_last: bool, precision: str = "fp32", decoder_width=None,
                     **overrides):
    """The ``finetune`` config on the CPU, from scratch, with ``num_streams`` streams (the one-stream
    network is the supervised baseline: the same encoder plus decoder 1)."""
    extra = {} if decoder_width is None else {"decoder_width": list(decoder_width)}
    return bundle_config("finetune", {**CPU, "use_pretrained": False, "num_streams": num_streams,
                                      "channels_last": channels_last, "precision": precision, **extra, **overrides})


def _one_step(trainer_id: str, batch: dict, unlabeled: dict | None = None) -> dict:
    """Overrides of a config's trainer (``train#trainer``, ``pretraining#trainer``) that make it a
    trainer of one in-memory batch: no data loaders, no handlers (so no validation, checkpoints or
    logging)."""
    overrides = {f"{trainer_id}#max_epochs": 1, f"{trainer_id}#epoch_length": None,
                 f"{trainer_id}#train_data_loader": [batch], f"{trainer_id}#train_handlers": []}
    if trainer_id == "train#trainer":
        # the weights' values (the config's ramp-up schedules need the data loader) do not change the cost;
        # no teacher: the EMA handler (a copy of the network) is not part of a step
        overrides.update({f"{trainer_id}#unlabeled_data_loader": None if unlabeled is None else [unlabeled],
                          f"{trainer_id}#consistency_weight": "$float(@lambda_max)",
                          f"{trainer_id}#pseudo_label_weight": "$float(@pseudo_label_weight)",
                          f"{trainer_id}#teacher": None})
    return overrides


def _supervised_trainer(slices, labels, num_streams=1, unlabeled=None, channels_last=True, precision="fp32",
                        decoder_width=None, features=None):
    """The ``finetune`` config's :class:`~ideal_monai.engines.TwoStreamTrainer` (its network, optimizer
    and losses) on one in-memory batch; returns a function running one step, and the trainer."""
    batch = {"image": slices, "label": labels}
    extra = {} if features is None else {"features": list(features)}
    parser = _finetune_config(num_streams, channels_last, precision, decoder_width, **extra,
                              **_one_step("train#trainer", batch, None if unlabeled is None else {"image": unlabeled}))
    trainer = parser.get_parsed_content("train#trainer")
    return (lambda: trainer.step(batch)), trainer


def _pretrain_comparison(cfg, slices, labels, log) -> tuple[Comparison, dict]:
    b, p = cfg.batch_size, cfg.patch
    gen = torch.Generator().manual_seed(cfg.seed)
    view_q = _take(slices, b)
    # a second view of the same slices: flipped, brighter, noisier (content does not change the cost)
    view_k = (view_q.flip(-1) * 1.1 + 0.05 * torch.randn(view_q.shape, generator=gen)).clamp_(0, 1)
    batch = {"view_q": view_q, "view_k": view_k}
    parser = bundle_config("pretrain", {**CPU, "channels_last": cfg.channels_last, "precision": cfg.precision,
                                        **_one_step("pretraining#trainer", batch)})
    strides = parser.get_parsed_content("pretraining#dense_strides")
    trainer = parser.get_parsed_content("pretraining#trainer")
    cells = 0
    valid = 0
    for s in strides:
        suffix = "" if s == max(strides) else f"_s{s}"
        for key in ("qk", "kq"):
            m = _random_matches(b, p // s, p // s, cfg.valid_fraction, gen)
            batch[f"match_{key}{suffix}"] = m
            cells += m.numel()
            valid += int((m >= 0).sum())
    pretrain_step = lambda: trainer.step(batch)  # noqa: E731
    sup_step, sup = _supervised_trainer(_take(slices, b), _take(labels, b), channels_last=cfg.channels_last,
                                        precision=cfg.precision, features=parser["features"])
    log(f"[1/4] pre-training step (2x{b} images, {p}x{p}, {100 * valid / cells:.0f}% matches valid) "
        f"vs supervised step ({b} slices)")
    arms = {"pretrain": [pretrain_step], f"supervised_{b}": [sup_step]}
    stats, per_arm = measure_interleaved(arms, cfg.reps, cfg.warmup, log, cfg.budget_s, cfg.max_reps)
    comp = Comparison(f"Pre-training step vs supervised step (B={b}, {p}x{p})", stats["pretrain"],
                      stats[f"supervised_{b}"], 1.3,
                      note=f"IDEAL: PretrainTrainer iteration, 2x{b} images, dense loss both ways, "
                           f"{100 * valid / cells:.0f}% of cells matched, {type(trainer.optimizer).__name__}; "
                           f"baseline: TwoStreamTrainer, 1 stream, DiceCE on {b}, {type(sup.optimizer).__name__}")
    return comp, {"arms": arms, "per_arm_peak": per_arm}


def _finetune_comparison(cfg, slices, labels, log) -> tuple[Comparison, dict]:
    bl, bu, p = cfg.batch_labeled, cfg.batch_unlabeled, cfg.patch
    x_l, y_l = _take(slices, bl), _take(labels, bl)
    x_u = _take(slices, bu, start=bl)
    ideal_step, ideal = _supervised_trainer(x_l, y_l, num_streams=2, unlabeled=x_u, channels_last=cfg.channels_last,
                                            precision=cfg.precision)
    sup_step, _ = _supervised_trainer(_take(slices, bl + bu), _take(labels, bl + bu), channels_last=cfg.channels_last,
                                      precision=cfg.precision)
    log(f"[2/4] fine-tuning step ({bl}+{bu} slices, 2 streams) vs supervised step ({bl + bu} slices, 1 stream)")
    arms = {"finetune": [ideal_step], f"supervised_{bl + bu}": [sup_step]}
    stats, per_arm = measure_interleaved(arms, cfg.reps, cfg.warmup, log, cfg.budget_s, cfg.max_reps)
    opt = type(ideal.optimizer).__name__
    comp = Comparison(f"Fine-tuning step vs supervised step ({bl}+{bu} slices, {p}x{p})", stats["finetune"],
                      stats[f"supervised_{bl + bu}"], 1.4,
                      note=f"IDEAL: TwoStreamTrainer iteration, 2 streams, DiceCE on {bl} x 2 streams + BCR on "
                           f"{bl + bu}, {opt}; baseline: TwoStreamTrainer, 1 stream, DiceCE on {bl + bu}, {opt}")
    return comp, {"arms": arms, "per_arm_peak": per_arm}


#: The ACDC CPU profile's fine-tuning step before the ``precision`` key (``benchmarks/acdc.py``,
#: ``CPU_PROFILE``): 12 labeled + 4 unlabeled slices of 128x128, half-width D2, float32.
CPU_PROFILE_STEP = {"patch": 128, "batch_labeled": 12, "batch_unlabeled": 4, "decoder_width": [1.0, 0.5]}


def _precision_comparison(cfg, slices, labels, log) -> tuple[Comparison, dict]:
    """The CPU profile's two-stream step at ``cfg.precision`` against the same step in float32.

    Where ``cfg.precision`` resolves to float32 (``auto`` on a CPU without bf16 units) the comparison
    times forced bfloat16 against float32 instead: what ``auto`` avoids there. Its row has no target,
    since issue #13's 2-3x goal is for CPUs with bf16 units.
    """
    p, bl, bu = CPU_PROFILE_STEP["patch"], CPU_PROFILE_STEP["batch_labeled"], CPU_PROFILE_STEP["batch_unlabeled"]
    small = torch.nn.functional.interpolate(slices, size=(p, p), mode="bilinear", align_corners=False)
    small_labels = torch.nn.functional.interpolate(labels.float(), size=(p, p), mode="nearest").long()
    x_l, y_l, x_u = _take(small, bl), _take(small_labels, bl), _take(small, bu, start=bl)
    resolved = resolve_precision(cfg.precision, "cpu")
    compared = "bf16" if resolved == "fp32" else resolved
    steps = {}
    for name, precision in (("profile_" + compared, compared), ("profile_fp32", "fp32")):
        steps[name], _ = _supervised_trainer(x_l, y_l, num_streams=2, unlabeled=x_u,
                                             channels_last=cfg.channels_last, precision=precision,
                                             decoder_width=CPU_PROFILE_STEP["decoder_width"])
    log(f"[4/4] CPU-profile fine-tuning step ({bl}+{bu} slices, {p}x{p}, half-width D2): {compared} vs fp32")
    arms = {k: [v] for k, v in steps.items()}
    stats, per_arm = measure_interleaved(arms, cfg.reps, cfg.warmup, log, cfg.budget_s, cfg.max_reps)
    if compared == resolved:
        target, note = 0.5, (f"precision={cfg.precision!r} resolved to {resolved} on this CPU; target: 2-3x more "
                             "steps per minute than the float32 profile (ratio <= 0.5)")
    else:
        target, note = None, (f"precision={cfg.precision!r} resolved to fp32 on this CPU (no native bf16 units), "
                              "so this row times forced bf16 against it: what 'auto' avoids here; no target")
    comp = Comparison(f"CPU-profile fine-tuning step, {compared} vs fp32 ({bl}+{bu} slices, {p}x{p}, half D2)",
                      stats["profile_" + compared], stats["profile_fp32"], target, note=note)
    return comp, {"arms": arms, "per_arm_peak": per_arm}


def _inference_comparison(cfg, volumes, workdir, log) -> tuple[list[Comparison], dict]:
    from ideal_monai.inference import SegmentationEvaluator
    from ideal_monai.utils import load_model_weights

    overrides = {**CPU, "patch_size": [cfg.patch, cfg.patch], "precision": cfg.precision,
                 "channels_last": cfg.channels_last}
    if cfg.sw_batch_size is not None:
        overrides["sw_batch_size"] = int(cfg.sw_batch_size)
    parser = bundle_config("inference", overrides)
    preprocessing = parser.get_parsed_content("preprocessing")
    inferer = parser.get_parsed_content("inferer")
    postprocessing = parser.get_parsed_content("postprocessing")  # its Invertd holds the same preprocessing

    nets = {}
    for s in (2, 1):
        net = bundle_config("inference", {**overrides, "num_streams": s}).get_parsed_content("network_def")
        if cfg.weights is not None:
            net = load_model_weights(net, cfg.weights, strict=s == 2)  # 1 stream: decoder2.* is unused
        nets[s] = (net.to(memory_format=torch.channels_last) if cfg.channels_last else net).eval()
    evaluators = {
        s: SegmentationEvaluator(device=torch.device("cpu"), val_data_loader=[], network=nets[s],
                                 preprocessing=preprocessing, inferer=inferer, postprocessing=postprocessing,
                                 output_dir=workdir / f"pred_{s}stream")
        for s in (2, 1)
    }
    cases = [{"image": img, "case_id": img.name.replace(".nii.gz", "")} for img, _ in volumes]
    pre = [preprocessing({"image": c["image"]})["image"] for c in cases]
    inputs = [_plain(x)[None].contiguous() for x in pre]  # (1, 1, P, P, Z) plain tensors
    n_slices = sum(int(x.shape[-1]) for x in inputs)

    def full(s, c):
        return lambda: evaluators[s].segment_case(c)

    def net_only(s, x):
        def run():
            with torch.no_grad():
                return inferer(x, nets[s])
        return run

    arms = {
        "ideal_full": [full(2, c) for c in cases],
        "base_full": [full(1, c) for c in cases],
        "ideal_net": [net_only(2, x) for x in inputs],
        "base_net": [net_only(1, x) for x in inputs],
    }
    reps = cfg.inference_reps or cfg.reps
    log(f"[3/4] inference per volume ({len(cases)} volumes, {n_slices} slices, sw_batch_size "
        f"{parser['sw_batch_size']}): full evaluator path and SliceInferer network-only, 2 vs 1 stream")
    stats, per_arm = measure_interleaved(arms, reps, cfg.warmup, log, cfg.budget_s, cfg.max_reps)
    n = len(cases)
    w = "fine-tuned weights" if cfg.weights else "random weights"
    comps = [
        Comparison("Inference, network only (SliceInferer), s/volume", stats["ideal_net"], stats["base_net"], 1.6,
                   unit="s/volume", scale=n,
                   note=f"2-stream ensemble (eval) vs 1-stream U-Net, same preprocessed volumes, {w}"),
        Comparison("Inference, full pipeline (SegmentationEvaluator), s/volume", stats["ideal_full"],
                   stats["base_full"], 1.6, unit="s/volume", scale=n,
                   note="load, preprocessing, SliceInferer, softmax, Invertd, argmax, largest component, "
                        "atomic NIfTI write; baseline: the same evaluator with the 1-stream network"),
        Comparison("Inference, IDEAL full pipeline vs plain U-Net network only, s/volume", stats["ideal_full"],
                   stats["base_net"], None, unit="s/volume", scale=n,
                   note="strictest reading: everything IDEAL does per file vs the bare baseline forward"),
    ]
    return comps, {"arms": arms, "per_arm_peak": per_arm, "n_slices": n_slices}


# --------------------------------------------------------------------------------------------------
# environment and report


def _cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            if line.strip().startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return platform.processor() or "unknown"


def _environment(cfg: SpeedConfig) -> dict:
    import monai

    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:
        affinity = os.cpu_count()
    return {
        "cpu": _cpu_model(),
        "logical_cpus": os.cpu_count(),
        "cpus_available": affinity,
        "threads": cfg.threads,
        "memory_format": "channels_last (NHWC)" if cfg.channels_last else "NCHW",
        "precision": f"{cfg.precision} -> {resolve_precision(cfg.precision, 'cpu')} "
                     f"(native bf16 units: {'yes' if cpu_has_native_bf16() else 'no'})",
        "torch": torch.__version__,
        "monai": monai.__version__,
        "python": platform.python_version(),
        "omp": ", ".join(f"{k}={os.environ[k]}" for k in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OMP_NUM_THREADS",
                                                             "KMP_BLOCKTIME") if k in os.environ)
               or "OMP_WAIT_POLICY unset (OpenMP default: threads spin while waiting)",
        "date": datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        "allocator": "glibc keeps freed memory (retain_freed_memory: mmap off, no trimming), as training does"
                     if cfg.retain_freed_memory else "glibc default (large tensors mmap'ed and unmapped every step)",
    }


def _mib(b: int) -> str:
    return f"{b / 2**20:,.0f}"


def _ratio_text(ratio: float, target: float | None) -> str:
    """``1.23x``; three decimals where two would round onto the target and hide which side it is on."""
    if target is not None and abs(round(ratio, 2) - target) < 1e-9 and ratio != target:
        return f"{ratio:.3f}x"
    return f"{ratio:.2f}x"


def format_table(comparisons: Sequence[Comparison]) -> str:
    """The Markdown results table."""
    rows = [
        "| Comparison | IDEAL (median) | Baseline (median) | Ratio of medians | Paired ratio, median [min-max] "
        "| CPU-time ratio | Reps x units | Target | Met | Peak RSS MiB, IDEAL / baseline (+ the run's own increase) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in comparisons:
        pr = c.paired_ratios
        met = "-" if c.met is None else ("yes" if c.met else "**NO**")
        target = "-" if c.target is None else f"<= {c.target:g}x"
        rows.append(
            f"| {c.title} | {c.ideal.median / c.scale:.2f} {c.unit} | {c.base.median / c.scale:.2f} {c.unit} "
            f"| {c.ratio:.2f}x | **{_ratio_text(c.paired_ratio, c.target)}** [{min(pr):.2f}-{max(pr):.2f}] "
            f"| {c.cpu_ratio:.2f}x | {len(c.ideal.wall)} x {len(c.ideal.unit_wall[0])} "
            f"| {target} | {met} | {_mib(c.ideal.peak_rss)} (+{_mib(c.ideal.peak_delta)}) / "
            f"{_mib(c.base.peak_rss)} (+{_mib(c.base.peak_delta)}) |"
        )
    return "\n".join(rows)


def format_report(result: dict) -> str:
    """Table plus machine, command, data, load and per-arm details, as Markdown."""
    env, cfg = result["env"], result["config"]
    comps = result["comparisons"]
    la0, la1 = result["load_before"], result["load_after"]
    during = "; ".join(f"after {name}: {l[0]:.2f}" for name, l in result.get("load_during", []))
    lines = [
        format_table(comps),
        "",
        f"- Machine: {env['cpu']}, {env['logical_cpus']} logical CPUs ({env['cpus_available']} available), "
        f"torch.set_num_threads({env['threads']}); torch {env['torch']}, MONAI {env['monai']}, "
        f"Python {env['python']}; {env['omp']}; allocator: {env['allocator']}; networks {env['memory_format']}; precision {env['precision']}.",
        f"- Date: {env['date']}; total wall time {result['total_s'] / 60:.1f} min; process CPU time "
        f"{result['rusage'].ru_utime / 60:.1f} min user + {result['rusage'].ru_stime / 60:.1f} min system "
        f"({result['rusage'].ru_minflt / 1e6:.1f} M minor page faults).",
        f"- Command: `{result['command']}`",
        f"- Data: {result['data']}.",
        f"- Repetitions: {cfg.warmup} warm-up + at least {cfg.reps} timed per arm (more while a comparison stays "
        f"within {cfg.budget_s:g} s, at most {cfg.max_reps}), arms interleaved unit by unit; the targets are judged "
        f"on the paired ratio. Method: {METHOD}.",
        f"- Load average (1/5/15 min) before: {la0[0]:.2f} / {la0[1]:.2f} / {la0[2]:.2f}, "
        f"after: {la1[0]:.2f} / {la1[1]:.2f} / {la1[2]:.2f} (1 min, {during}) on {env['logical_cpus']} logical CPUs.",
        f"- Process peak RSS: {_mib(result['process_peak_rss'])} MiB"
        + ("" if result["per_arm_peak"] else " (per-arm peaks could not be reset: they are process-wide marks)")
        + ". Per-arm peaks: from the warm-up runs, absolute and (in brackets) the run's own increase; see the method.",
        "",
        "Per-arm wall times, s per repetition (CPU seconds of the process in brackets):",
        "",
    ]
    seen = set()
    for c in comps:
        for arm in (c.ideal, c.base):
            if arm.name in seen:
                continue
            seen.add(arm.name)
            lines.append(f"- `{arm.name}`: " + ", ".join(f"{t:.2f} ({u:.1f})" for t, u in zip(arm.wall, arm.cpu)))
    lines.append("")
    lines.append("What each row measures:")
    lines.append("")
    for c in comps:
        lines.append(f"- {c.title}: {c.note}.")
    return "\n".join(lines)


def run_speed_benchmarks(cfg: SpeedConfig, command: str | None = None,
                         log: Callable[[str], None] | None = None) -> dict:
    """Run the selected comparisons in this process; returns a dict with ``comparisons`` and a
    Markdown ``report`` (and ``profiles``, top ops of missed targets, when ``cfg.profile``)."""
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    unknown = set(cfg.benchmarks) - set(BENCHMARKS)
    if unknown:
        raise ValueError(f"unknown benchmarks {sorted(unknown)}; choose from {BENCHMARKS}")
    torch.set_num_threads(int(cfg.threads))
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set (parallel work has started in this process)
        pass
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    retain_freed_memory(cfg.retain_freed_memory)
    t_start = time.perf_counter()
    load_before = os.getloadavg()
    comparisons: list[Comparison] = []
    per_arm_peak = True
    profiles: dict[str, str] = {}
    loads: list[tuple[str, tuple[float, float, float]]] = []
    with tempfile.TemporaryDirectory(prefix="ideal_speed_") as tmp:
        workdir = Path(tmp)
        volumes, data_note = _prepare_data(cfg, workdir, log)
        slices, labels = _load_slices(volumes, cfg.patch)
        log(f"data: {data_note}; {slices.shape[0]} slices of {cfg.patch}x{cfg.patch}")
        steps = {
            "pretrain": lambda: _pretrain_comparison(cfg, slices, labels, log),
            "finetune": lambda: _finetune_comparison(cfg, slices, labels, log),
            "inference": lambda: _inference_comparison(cfg, volumes, workdir, log),
            "precision": lambda: _precision_comparison(cfg, slices, labels, log),
        }
        for name in BENCHMARKS:
            if name not in cfg.benchmarks:
                continue
            cs, extra = steps[name]()
            cs = cs if isinstance(cs, list) else [cs]
            comparisons.extend(cs)
            per_arm_peak &= extra["per_arm_peak"]
            loads.append((name, os.getloadavg()))
            if cfg.profile and any(c.met is False for c in cs):
                for c in cs:
                    if c.met is not False:
                        continue
                    for arm in (c.ideal.name, c.base.name):
                        if arm not in profiles:
                            log(f"profiling one unit of {arm}")
                            profiles[f"torch.profiler, one unit of `{arm}` (top ops by self CPU time)"] = (
                                "```\n" + profile_step(extra["arms"][arm][0]) + "\n```")
                if name == "finetune":
                    log("fine-tuning step breakdown by component")
                    profiles[f"Fine-tuning step by component ({cfg.batch_labeled}+{cfg.batch_unlabeled} slices, "
                             f"{cfg.patch}x{cfg.patch}; torch.utils.benchmark.Timer.timeit of 3 calls, not "
                             "interleaved)"] = training_breakdown(None, cfg.patch, cfg.batch_labeled,
                                                                  cfg.batch_unlabeled, log=log)
            del extra  # free the networks, optimizers and batches before the next comparison
    result = {
        "config": cfg,
        "env": _environment(cfg),
        "comparisons": comparisons,
        "data": data_note,
        "load_before": load_before,
        "load_after": os.getloadavg(),
        "load_during": loads,
        "process_peak_rss": process_peak_rss(),
        "per_arm_peak": per_arm_peak,
        "total_s": time.perf_counter() - t_start,
        "rusage": resource.getrusage(resource.RUSAGE_SELF),
        "command": command or " ".join(shlex.quote(a) for a in sys.argv),
        "profiles": profiles,
    }
    result["report"] = format_report(result)
    return result
