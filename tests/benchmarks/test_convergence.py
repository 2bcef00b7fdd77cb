"""The convergence study's logic on phantoms with tiny settings: snapshots, evaluation, figure, and a
run interrupted after a checkpoint that resumes instead of starting over."""

from __future__ import annotations

import json

import pytest
import torch

from ideal_monai.benchmarks import acdc, convergence
from ideal_monai.errors import IdealInputError

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


@pytest.fixture(scope="module")
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


def test_every_run_has_final_and_ema_points_at_every_snapshot(study):
    runs = study["results"]["runs"]
    assert [(r["name"], r["labeled"]) for r in runs] == [("supervised", 1), ("ideal", 1)]
    for run in runs:
        got = sorted((p["kind"], p["iteration"]) for p in run["points"])
        assert got == [("ema", 4), ("ema", 8), ("final", 4), ("final", 8)]
        for p in run["points"]:
            assert 0.0 <= p["dsc"] <= 1.0 and p["n_cases"] == 4
            assert p["train_seconds"] is not None and p["train_seconds"] > 0


def test_interrupted_run_resumed_from_its_checkpoint(study):
    ideal = study["cfg"].output_dir / "ideal_labeled1"
    # the snapshot written before the kill was kept, not rewritten by a fresh start
    assert set(study["before"]) == {"model_iter000004.pt", "model_ema_iter000004.pt"}
    for name, mtime in study["before"].items():
        assert (ideal / "models" / name).stat().st_mtime_ns == mtime
    assert study["ideal_calls"] == [2, 4, 4]  # chunk to the snapshot at 4, chunk to 8 (killed at 6), resumed chunk
    clock = json.loads((ideal / "training_clock.json").read_text())
    assert [i for i, _ in clock["history"]] == [2, 4, 6, 8]
    seconds = [s for _, s in clock["history"]]
    assert seconds == sorted(seconds)  # the resumed piece's time adds to the first piece's
    ckpt = torch.load(ideal / "models" / "finetune_checkpoint.pt", weights_only=True)
    assert ckpt["engine"]["iteration"] == 8
    # every chunk decays the learning rate over the whole run (the scheduler state came from chunk 1)
    assert ckpt["lr_scheduler"]["total_iters"] == 8


def test_outputs_table_and_figure(study):
    out = study["cfg"].output_dir
    md = (out / "results.md").read_text()
    assert "## 1 labeled" in md and "IDEAL (pre-trained 4 it.)" in md and "supervised only" in md
    png = (out / "convergence.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


def test_rerun_of_a_finished_study_trains_nothing(study, monkeypatch):
    monkeypatch.setattr(convergence, "run_bundle", lambda *a, **k: pytest.fail("nothing should run"))
    again = convergence.run_convergence(study["cfg"])
    assert again["runs"] == study["results"]["runs"]


@pytest.mark.parametrize("kwargs, key", [({"iterations": 7}, "iterations"), ({"eval_every": 3}, "eval_every"),
                                         ({"iterations": 8, "eval_every": 6}, "eval_every"),
                                         ({"pretrain_iterations": (3,)}, "pretrain_iterations")])
def test_bad_settings_name_the_setting(synthetic_dataset, tmp_path, kwargs, key):
    splits = tmp_path / "splits.json"
    splits.write_text(json.dumps({"val": ["patient005"], "labeled_1": ["patient001"]}))
    with pytest.raises(IdealInputError, match=key):
        convergence.ConvergenceConfig(output_dir=tmp_path / "o", data_dir=synthetic_dataset, splits_file=splits,
                                      labeled=(1,), epoch_length=2, **{"iterations": 8, "eval_every": 4, **kwargs})
