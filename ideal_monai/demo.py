"""The end-to-end demo: phantoms -> pre-training -> fine-tuning -> inference -> evaluation.

Every stage runs the bundle's own run ids (:func:`ideal_monai.bundle_runner.run_bundle`), so the
demo exercises exactly what ``python -m monai.bundle run ...`` does, with a CPU-sized profile.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from .bundle_runner import run_bundle
from .data.synthetic import write_synthetic_dataset
from .evaluation import save_curves_from_tensorboard

#: The CPU demo profile: 96x96 patches at 3 mm in-plane (a 288 mm field of view) keep a 2-core run
#: in minutes; inference inverts the resampling, so labels come back on the phantoms' own grid.
DEMO_PROFILE = {
    "patch_size": [96, 96],
    "target_spacing": [3.0, 3.0],
}
#: Fine-tuning learning rate of the demo: SGD 0.05 converges in a few hundred CPU iterations, the
#: 0.01 default does not (measured on phantoms, see docs/history/BENCHMARKS.md).
DEMO_LEARNING_RATE = 0.05


def _fmt(value: float | None, digits: int = 2) -> str:
    """A metric for the console; ``n/a`` where it is undefined (e.g. every prediction empty)."""
    return "n/a" if value is None else f"{value:.{digits}f}"


def run_demo(
    output_dir: str | os.PathLike = "demo_output",
    num_cases: int = 16,
    num_test_cases: int = 6,
    num_labeled: int = 3,
    num_val: int = 2,
    seed: int = 0,
    pretrain_epochs: int = 4,
    pretrain_iterations: int = 30,
    finetune_epochs: int = 10,
    finetune_iterations: int = 60,
    batch_size: int = 8,
) -> dict:
    """Run the whole chain on synthetic phantoms under ``output_dir`` and return the metric summary.

    Layout written: ``data/`` (training phantoms), ``test/`` (held-out phantoms), ``models/``
    (``pretrained_encoder.pt``, ``model.pt``, resumable checkpoints), ``runs/`` (TensorBoard),
    ``predictions/`` (NIfTI labels + uncertainty maps), ``report/`` (``report.md``, CSV, JSON,
    overlay PNGs, ``training_curves.png``).
    """
    out = Path(output_dir).resolve()
    data_dir, test_dir = out / "data", out / "test"
    common = dict(bundle_root=str(out), **DEMO_PROFILE)
    t0 = time.time()
    timings = {}

    print(f"[1/5] writing {num_cases} training + {num_test_cases} test phantoms to {out}")
    if not data_dir.exists():
        write_synthetic_dataset(data_dir, num_cases=num_cases, seed=seed)
    if not test_dir.exists():
        write_synthetic_dataset(test_dir, num_cases=num_test_cases, seed=seed + 1000, first_id=num_cases + 1)
    timings["synth_s"] = time.time() - t0

    print("[2/5] pre-training the encoder (dense local contrastive)")
    t = time.time()
    run_bundle("pretrain", dataset_dir=str(data_dir), max_epochs=pretrain_epochs,
               iterations_per_epoch=pretrain_iterations, batch_size=2 * batch_size, seed=seed, **common)
    timings["pretrain_s"] = time.time() - t

    print(f"[3/5] fine-tuning two streams with {num_labeled} labeled patients")
    t = time.time()
    run_bundle("finetune", dataset_dir=str(data_dir), num_labeled=num_labeled, num_val=num_val,
               max_epochs=finetune_epochs, iterations_per_epoch=finetune_iterations, batch_size_labeled=batch_size,
               batch_size_unlabeled=batch_size, learning_rate=DEMO_LEARNING_RATE, val_interval=2, seed=seed, **common)
    timings["finetune_s"] = time.time() - t

    print("[4/5] segmenting the held-out phantoms")
    t = time.time()
    run_bundle("inference", dataset_dir=str(test_dir), output_dir=str(out / "predictions"), overwrite=True,
               save_uncertainty=True, **common)
    timings["inference_s"] = time.time() - t

    print("[5/5] evaluating against the phantoms' ground truth")
    t = time.time()
    run_bundle("evaluate", bundle_root=str(out), dataset_dir=str(test_dir), prediction_dir=str(out / "predictions"),
               output_dir=str(out / "report"))
    save_curves_from_tensorboard(out / "runs", out / "report" / "training_curves.png", title="IDEAL demo training")
    timings["evaluate_s"] = time.time() - t
    timings["total_s"] = time.time() - t0

    summary = json.loads((out / "report" / "metrics.json").read_text())["summary"]
    print(f"\nDone in {timings['total_s']:.0f} s "
          + ", ".join(f"{k[:-2]} {v:.0f} s" for k, v in timings.items() if k != "total_s"))
    print(f"segmentations: {out / 'predictions'}")
    print(f"report:        {out / 'report' / 'report.md'}")
    print(f"curves:        {out / 'report' / 'training_curves.png'}")
    for name, stats in summary["classes"].items():
        print(f"  {name:4s} DSC {_fmt(stats['dsc_mean'], 3)}  HD95 {_fmt(stats['hd95_mean'])} mm  ASD {_fmt(stats['asd_mean'])} mm")
    print(f"  mean DSC {_fmt(summary['overall']['dsc_mean'], 3)} over {summary['n_cases']} volumes, "
          f"{summary['overall'].get('n_failures', 0)} failure(s)")
    summary["timings"] = timings
    return summary
