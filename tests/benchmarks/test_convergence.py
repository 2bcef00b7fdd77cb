"""The convergence study's logic on phantoms with tiny settings: snapshots, evaluation, figure, and a
run interrupted after a checkpoint that resumes instead of starting over."""

from __future__ import annotations

import json

import pytest
import torch

from ideal_monai.benchmarks import convergence
from ideal_monai.errors import IdealInputError


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
