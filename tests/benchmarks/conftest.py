"""The tiny convergence study that the convergence and test-time-flips benchmark tests share."""

from __future__ import annotations

import json

import pytest
import torch

from benchmarks import acdc, convergence

TINY = acdc.Profile(
    name="tiny",
    shared={"patch_size": [32, 32], "target_spacing": [6.0, 6.0], "features": [4, 8, 8, 8, 8], "seed": 0},
    pretrain={"batch_size": 4},
    finetune={"batch_size_labeled": 2, "batch_size_unlabeled": 2, "val_interval": 10**6, "precision": "fp32"},
    inference={"sw_batch_size": 8},
    max_overlays=0,
)


class _Killed(KeyboardInterrupt):
    pass


@pytest.fixture(scope="package")
def study(synthetic_dataset, tmp_path_factory):
    """supervised + IDEAL at 1 labeled, 8 iterations (epochs of 2), snapshots every 4; the IDEAL run is
    'killed' once in its second chunk, right after its epoch-3 checkpoint (iteration 6), and the command rerun."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("convergence")
    splits = root / "splits.json"
    ids = [f"patient{i:03d}" for i in range(1, 7)]
    splits.write_text(json.dumps({"train": ids[:4], "val": ids[4:], "labeled_1": ids[:1]}))
    cfg = convergence.ConvergenceConfig(output_dir=root / "out", data_dir=synthetic_dataset, splits_file=splits,
                                        profile=TINY, arms=("supervised", "ideal"), labeled=(1,), iterations=8,
                                        eval_every=4, pretrain_iterations=(4,), epoch_length=2)
    real_run_bundle = convergence.run_bundle
    ideal_calls = []

    def run_bundle_killed_once(stage, **kwargs):
        if stage == "finetune" and kwargs.get("pretrained_path"):
            ideal_calls.append(kwargs["max_epochs"])
            if len(ideal_calls) == 2:
                real_run_bundle(stage, **{**kwargs, "max_epochs": 3})  # the piece that ran before the kill
                raise _Killed()
        return real_run_bundle(stage, **kwargs)

    convergence.run_bundle = run_bundle_killed_once
    try:
        with pytest.raises(_Killed):
            convergence.run_convergence(cfg, command="pytest")
        ideal = cfg.output_dir / "ideal_labeled1"
        before = {p.name: p.stat().st_mtime_ns for p in (ideal / "models").glob("model*_iter*.pt")}
        results = convergence.run_convergence(cfg, command="pytest")
    finally:
        convergence.run_bundle = real_run_bundle
    return {"cfg": cfg, "results": results, "before": before, "ideal_calls": ideal_calls}
