"""Memory of folder inference over many volumes: does the resident set stay flat?

A long unattended run segments hundreds of files in one process; a leak of a few MB per file
would end it. This benchmark writes ``N`` synthetic short-axis volumes (shapes varying by case,
so allocator reuse is not flattered), a small random ``model.pt``, and runs the bundle's
``inference`` components (parsed from ``bundle/configs/inference.json``: the same
:class:`~ideal_monai.inference.SegmentationEvaluator`, preprocessing, ``SliceInferer``,
``Invertd`` and atomic NIfTI writes as ``ideal-monai infer``) in a fresh process for each folder
size (default 10 and 100 volumes). Each process reports:

* its peak RSS (:func:`ideal_monai.utils.allocator.peak_rss`: the kernel's high-water mark);
* the RSS after every case, from which the growth between case 10 and the last case is fitted
  (MiB per 100 cases).

Memory is flat when the peak with 100 volumes is the peak with 10 (within a few MiB of allocator
noise) and the fitted growth is about zero. Run ``scripts/benchmark_inference_memory.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .runner import subprocess_env

__all__ = ["MemoryConfig", "write_volumes", "measure_folder", "run_memory_benchmark", "format_report"]


@dataclass
class MemoryConfig:
    """Settings of one benchmark run (the defaults are the documented run)."""

    counts: tuple[int, ...] = (10, 100)  #: folder sizes, each measured in a fresh process
    shape: tuple[int, int, int] = (192, 192, 10)  #: mean volume shape; each case varies in-plane by up to 25%
    patch_size: int = 128
    features: tuple[int, ...] = (16, 32, 64, 128, 256)
    sw_batch_size: int = 16
    threads: int = 1
    seed: int = 0
    save_uncertainty: bool = False
    workdir: str | None = None  #: keep volumes/outputs here (default: a temporary folder, removed)
    extra_env: dict = field(default_factory=dict)


def _mib(nbytes: int | None) -> float:
    return float("nan") if nbytes is None else nbytes / 2**20


def write_volumes(folder: str | os.PathLike, n: int, shape: Sequence[int] = (192, 192, 10), seed: int = 0) -> list[Path]:
    """``n`` short-axis-like volumes ``case_XXX.nii.gz`` (int16; a bright ring in textured noise).

    Shapes vary per case (in-plane 75-125% of ``shape``, slices +-2) so that every case allocates
    differently sized buffers, as a real folder of scans does. Cheap to write (no phantom physics).
    """
    import nibabel as nib

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        rng = np.random.default_rng([seed, i])
        sx, sy = (int(s * rng.uniform(0.75, 1.25)) for s in shape[:2])
        sz = max(1, int(shape[2]) + int(rng.integers(-2, 3)))
        yy, xx = np.mgrid[:sx, :sy]
        r = np.hypot(yy - sx / 2 - rng.normal(0, 3), xx - sy / 2 - rng.normal(0, 3))
        ring = ((r > 0.08 * sx) & (r < 0.14 * sx)) * 300.0 + (r <= 0.08 * sx) * 500.0
        img = ring[..., None] + rng.normal(150, 40, (sx, sy, sz))
        affine = np.diag([1.5, 1.5, 8.0, 1.0])
        path = folder / f"case_{i:03d}.nii.gz"
        nib.save(nib.Nifti1Image(img.astype(np.int16), affine), str(path))
        paths.append(path)
    return paths


def _write_model(bundle_root: Path, features: Sequence[int], seed: int) -> Path:
    import torch

    from ideal_monai.networks import DualDecoderUNet

    torch.manual_seed(seed)
    path = bundle_root / "models" / "model.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(DualDecoderUNet(features=list(features)).state_dict(), path)
    return path


def measure_folder(images: str | os.PathLike, bundle_root: str | os.PathLike, output_dir: str | os.PathLike,
                   patch_size: int = 128, features: Sequence[int] = (16, 32, 64, 128, 256), sw_batch_size: int = 16,
                   save_uncertainty: bool = False) -> dict:
    """Run the bundle's inference over ``images`` in THIS process, sampling RSS after every case.

    Returns ``{"n", "seconds", "rss_start_mib", "rss_after_case_mib": [...], "peak_rss_mib", "failures"}``.
    """
    from ignite.engine import Events

    from ideal_monai.utils.allocator import current_rss, peak_rss
    from .bundle_config import CPU, bundle_config

    parser = bundle_config("inference", {
        **CPU, "bundle_root": str(bundle_root), "dataset_dir": str(images), "output_dir": str(output_dir),
        "patch_size": [int(patch_size)] * 2, "features": list(features), "sw_batch_size": int(sw_batch_size),
        "save_uncertainty": bool(save_uncertainty), "handlers": [],
    })
    parser.get_parsed_content("initialize")
    evaluator = parser.get_parsed_content("evaluator")
    samples: list[float] = []
    evaluator.add_event_handler(Events.ITERATION_COMPLETED, lambda engine: samples.append(_mib(current_rss())))
    start = _mib(current_rss())
    t0 = time.perf_counter()
    evaluator.run()
    return {
        "n": len(samples),
        "seconds": time.perf_counter() - t0,
        "rss_start_mib": start,
        "rss_after_case_mib": samples,
        "peak_rss_mib": _mib(peak_rss()),
        "failures": [f["error"] for f in evaluator.state.failures],
    }


def _growth_per_100(samples: Sequence[float], skip: int = 10) -> float:
    """Least-squares slope of RSS over cases ``skip..end``, in MiB per 100 cases (NaN if too few)."""
    ys = np.asarray(samples[skip:], dtype=float)
    if ys.size < 3 or not np.all(np.isfinite(ys)):
        return float("nan")
    xs = np.arange(skip, skip + ys.size, dtype=float)
    return float(np.polyfit(xs, ys, 1)[0] * 100)


def run_memory_benchmark(cfg: MemoryConfig) -> dict:
    """Write the volumes and the model once, then measure each folder size in a fresh process."""
    own_tmp = cfg.workdir is None
    work = Path(tempfile.mkdtemp(prefix="ideal_memory_")) if own_tmp else Path(cfg.workdir)
    work.mkdir(parents=True, exist_ok=True)
    try:
        volumes = write_volumes(work / "volumes", max(cfg.counts), cfg.shape, cfg.seed)
        bundle_root = work / "bundle"
        _write_model(bundle_root, cfg.features, cfg.seed)
        runs = []
        for n in cfg.counts:
            folder = work / f"images_{n}"
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            for p in volumes[:n]:
                os.symlink(p, folder / p.name)
            out = work / f"out_{n}"
            shutil.rmtree(out, ignore_errors=True)
            cmd = [sys.executable, "-m", "benchmarks.memory", "--worker", "--images", str(folder),
                   "--bundle_root", str(bundle_root), "--output_dir", str(out), "--patch_size", str(cfg.patch_size),
                   "--features", *map(str, cfg.features), "--sw_batch_size", str(cfg.sw_batch_size)]
            if cfg.save_uncertainty:
                cmd.append("--save_uncertainty")
            env = subprocess_env(OMP_NUM_THREADS=str(cfg.threads), MKL_NUM_THREADS=str(cfg.threads), **cfg.extra_env)
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
            if proc.returncode != 0:
                raise RuntimeError(f"memory worker for {n} volumes failed:\n{proc.stderr[-3000:]}")
            result = json.loads(proc.stdout.strip().splitlines()[-1])
            result["growth_mib_per_100_cases"] = _growth_per_100(result["rss_after_case_mib"])
            result["outputs"] = len(list(out.glob("*.nii.gz")))
            runs.append(result)
        return {"config": asdict(cfg), "runs": runs, "report": format_report(cfg, runs)}
    finally:
        if own_tmp:
            shutil.rmtree(work, ignore_errors=True)


def format_report(cfg: MemoryConfig, runs: Sequence[dict]) -> str:
    """A Markdown table of the runs."""
    lines = [
        f"Volumes ~{cfg.shape[0]}x{cfg.shape[1]}x{cfg.shape[2]} (in-plane 75-125%, slices +-2), patch {cfg.patch_size}, "
        f"features {list(cfg.features)}, sw_batch_size {cfg.sw_batch_size}, {cfg.threads} thread(s), CPU, one fresh "
        "process per folder size.",
        "",
        "| volumes | peak RSS (MiB) | RSS before case 1 | RSS after case 10 | RSS after last case | "
        "growth after case 10 (MiB / 100 cases) | s / volume | outputs |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        s = r["rss_after_case_mib"]
        after10 = s[9] if len(s) >= 10 else float("nan")
        lines.append(
            f"| {r['n']} | {r['peak_rss_mib']:.0f} | {r['rss_start_mib']:.0f} | {after10:.0f} | {s[-1]:.0f} | "
            f"{r['growth_mib_per_100_cases']:+.1f} | {r['seconds'] / max(1, r['n']):.3f} | {r['outputs']} |"
        )
    return "\n".join(lines)


def _worker(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--worker", action="store_true")
    p.add_argument("--images", required=True)
    p.add_argument("--bundle_root", required=True)
    p.add_argument("--output_dir", required=True)
    p.add_argument("--patch_size", type=int, default=128)
    p.add_argument("--features", type=int, nargs="+", default=[16, 32, 64, 128, 256])
    p.add_argument("--sw_batch_size", type=int, default=16)
    p.add_argument("--save_uncertainty", action="store_true")
    a = p.parse_args(argv)
    import logging

    logging.disable(logging.INFO)
    result = measure_folder(a.images, a.bundle_root, a.output_dir, a.patch_size, a.features, a.sw_batch_size,
                            a.save_uncertainty)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(_worker(sys.argv[1:]))
