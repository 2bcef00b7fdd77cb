"""A cohort run's pace: ``ideal-monai function`` over phantom cine patients, one process against several.

    python -m benchmarks.cohort --output_dir bench_cohort --patients 6 --frames 20
    python -m benchmarks.cohort --output_dir bench_cohort --model_path model.pt --set decoder_width=[1.0,0.5]

Each patient is a 4D phantom cine (``--frames`` phases, the phantoms' own 8-12 slices and in-plane
size, 1.2-1.9 mm), segmented frame by frame with the bundle's default inference (test-time flips,
256 x 256 at 1.25 mm unless ``--set`` says otherwise) and then measured (volumes, ED/ES, EF, mass,
curves). The arms, each into its own empty folder, timed from launch to exit (imports included):

- ``1 process``: ``ideal-monai function`` with torch's default threads (every core);
- ``N processes``: ``torchrun --standalone --nproc_per_node N`` ``ideal-monai function`` with
  ``OMP_NUM_THREADS`` = cores / N, the patients shared out.

It reports seconds per patient, the speed-up, whether the reports (``function.csv``) and every
segmentation are identical across the arms, and what ``--cohort`` patients would take at the measured
pace. Without ``--model_path`` the network has random weights: the time does not depend on them.
The machine must be otherwise idle (wall-clock measurement).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np

from .runner import REPO_ROOT, subprocess_env

__all__ = ["run_cohort_benchmark"]


def _cpu_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        return next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except (OSError, subprocess.CalledProcessError, StopIteration):
        return platform.processor() or "unknown"


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _segmentations(folder: Path) -> dict[str, np.ndarray]:
    return {p.name: np.asarray(nib.load(str(p)).dataobj) for p in sorted(folder.glob("*.nii.gz"))}


def run_cohort_benchmark(output_dir: Path, patients: int = 6, frames: int = 20, nproc: int = 2,
                         model_path: Path | None = None, sets: list[str] = (), cohort: int = 100_000,
                         seed: int = 0) -> dict:
    """Run the arms (module docstring) and write ``results.json`` / ``results.md`` into ``output_dir``."""
    import torch

    from ideal_monai.data.synthetic import write_synthetic_dataset
    from ideal_monai.networks import DualDecoderUNet

    output_dir.mkdir(parents=True, exist_ok=True)
    data = output_dir / "data"
    if not data.is_dir():
        write_synthetic_dataset(data, num_cases=patients, seed=seed, with_cine=True, num_frames=frames)
        for gt in data.rglob("*_gt.nii.gz"):  # time the automatic measurement alone, no agreement with labels
            gt.unlink()
    shapes = sorted({tuple(nib.load(str(p)).shape) for p in data.rglob("*_4d.nii.gz")})
    if model_path is None:
        model_path = output_dir / "random_model.pt"
        if not model_path.is_file():
            torch.manual_seed(seed)
            torch.save(DualDecoderUNet().state_dict(), model_path)
    overrides = []
    for item in sets:
        key, _, value = item.partition("=")
        overrides += [f"--{key}", value]
    cores = os.cpu_count() or 1
    args = ["function", "--dataset_dir", str(data), "--model_path", str(model_path), *overrides]
    arms = {"1 process": ([sys.executable, "-m", "ideal_monai.cli"], {}),
            f"{nproc} processes": ([sys.executable, "-m", "torch.distributed.run", "--standalone",
                                    f"--nproc_per_node={nproc}", "-m", "ideal_monai.cli"],
                                   {"OMP_NUM_THREADS": str(max(1, cores // nproc))})}
    results = {}
    for name, (launcher, env) in arms.items():
        out = output_dir / name.replace(" ", "_")
        if out.exists():
            raise SystemExit(f"{out}: exists; the benchmark times runs into empty folders (remove it)")
        start = time.perf_counter()
        proc = subprocess.run([*launcher, *args, "--output_dir", str(out)], env=subprocess_env(**env),
                              capture_output=True, text=True)
        wall = time.perf_counter() - start
        if proc.returncode != 0:
            raise SystemExit(f"{name} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
        status = json.loads((out / "status" / "status.json").read_text())
        results[name] = {"wall_s": round(wall, 1), "s_per_patient": round(wall / patients, 2),
                         "computed": status["done"], "folder": str(out)}
        print(f"{name}: {wall:.1f} s, {wall / patients:.2f} s per patient", flush=True)
    one, many = (output_dir / n.replace(" ", "_") for n in arms)
    seg_one, seg_many = _segmentations(one / "segmentations"), _segmentations(many / "segmentations")
    differing = [k for k in seg_one if k not in seg_many or not np.array_equal(seg_one[k], seg_many[k])]
    identical_csv = (one / "function.csv").read_text() == (many / "function.csv").read_text()
    t1, tn = (results[n]["s_per_patient"] for n in arms)
    summary = {
        "command": "python -m benchmarks.cohort " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
        "commit": _commit(), "cpu": _cpu_name(), "cores": cores, "torch": torch.__version__,
        "patients": patients, "frames": frames, "cine_shapes": [list(s) for s in shapes], "sets": list(sets),
        "model": str(model_path), "arms": results, "speedup": round(t1 / tn, 2),
        "identical_reports": identical_csv, "segmentations_differing": differing,
        "cohort": cohort, "cohort_days_1_process": round(cohort * t1 / 86400, 1),
        f"cohort_days_{nproc}_processes": round(cohort * tn / 86400, 1),
    }
    (output_dir / "results.json").write_text(json.dumps(summary, indent=1) + "\n")
    lines = [f"# Cohort pace: `ideal-monai function` over {patients} phantom cines ({frames} phases)", "",
             f"- command: `{summary['command']}`", f"- commit `{summary['commit']}`, CPU {summary['cpu']}, "
             f"{cores} cores, torch {summary['torch']}", f"- cine shapes: {summary['cine_shapes']}", "",
             "| arm | wall s | s per patient |", "|---|---:|---:|"]
    lines += [f"| {n} | {r['wall_s']} | {r['s_per_patient']} |" for n, r in results.items()]
    lines += ["", f"Speed-up {summary['speedup']}x; reports identical: {identical_csv}; segmentations differing: "
              f"{len(differing)} of {len(seg_one)}. {cohort:,} patients at this pace: "
              f"{summary['cohort_days_1_process']} days in one process, "
              f"{summary[f'cohort_days_{nproc}_processes']} days in {nproc}."]
    (output_dir / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return summary


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output_dir", type=Path, default=Path("bench_cohort"))
    p.add_argument("--patients", type=int, default=6)
    p.add_argument("--frames", type=int, default=20)
    p.add_argument("--nproc", type=int, default=2)
    p.add_argument("--model_path", type=Path, default=None)
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="a function config key for every arm (e.g. decoder_width=[1.0,0.5])")
    p.add_argument("--cohort", type=int, default=100_000, help="cohort size of the projection")
    args = p.parse_args(argv)
    run_cohort_benchmark(args.output_dir, args.patients, args.frames, args.nproc, args.model_path, args.sets,
                         args.cohort)
    return 0


if __name__ == "__main__":
    sys.exit(main())
