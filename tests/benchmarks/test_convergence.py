"""The convergence study's logic on phantoms with tiny settings: snapshots, evaluation, figure, and a
run interrupted after a checkpoint that resumes instead of starting over."""

from __future__ import annotations

import dataclasses
import json
import shutil

import pytest
import torch

from benchmarks import convergence
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


def test_points_record_their_post_processing(study):
    for run in study["results"]["runs"]:
        assert {p["post_processing"] for p in run["points"]} == {"heart_then_per_class_largest_component"}
    assert "post-processing before scoring: `heart_then_per_class_largest_component`" in \
        (study["cfg"].output_dir / "results.md").read_text()


def test_post_processing_name_changes_with_every_setting_that_changes_the_scores():
    assert convergence.post_processing({}) == "heart_then_per_class_largest_component"
    assert convergence.post_processing({"heart_bridge_mm": 4.0}) == "heart_bridged_4mm_then_per_class_largest_component"
    assert convergence.post_processing({"largest_component": False, "heart_bridge_mm": 4.0}) == "none"


def test_rescore_reevaluates_only_points_scored_otherwise(study, tmp_path):
    """An old point (no ``post_processing`` key, a stale DSC) is re-evaluated from its kept snapshot with
    today's inference; current points and other kinds are left alone; a rerun rescores nothing."""
    out = tmp_path / "study"
    shutil.copytree(study["cfg"].output_dir, out)
    cfg = dataclasses.replace(study["cfg"], output_dir=out)
    old_path = out / "ideal_labeled1" / "curve" / "ema_000008.json"
    truth = json.loads(old_path.read_text())
    legacy = {k: v for k, v in truth.items() if k != "post_processing"} | {"dsc": 0.123}
    old_path.write_text(json.dumps(legacy))
    final_path = out / "ideal_labeled1" / "curve" / "final_000008.json"
    final_path.write_text(json.dumps({k: v for k, v in json.loads(final_path.read_text()).items()
                                      if k != "post_processing"}))
    untouched = {p: p.read_bytes() for p in out.glob("*/curve/*.json") if p != old_path}

    assert convergence.rescore(cfg, kinds=("ema",), log=lambda m: None) == 1
    point = json.loads(old_path.read_text())
    assert point["post_processing"] == "heart_then_per_class_largest_component"
    assert point["previous"] == {"post_processing": convergence.LEGACY_POST_PROCESSING, "dsc": 0.123}
    assert point["dsc"] == pytest.approx(truth["dsc"], abs=1e-6)  # the same weights scored the same way
    assert {p: p.read_bytes() for p in untouched} == untouched
    assert not (out / "ideal_labeled1" / "rescore_predictions").exists()
    assert "**mixed**" in (out / "results.md").read_text()  # the final point is still the legacy one

    assert convergence.rescore(cfg, kinds=("ema",), log=lambda m: None) == 0


def test_rescore_follows_the_inference_settings(study, tmp_path):
    out = tmp_path / "study"
    shutil.copytree(study["cfg"].output_dir, out)
    profile = dataclasses.replace(study["cfg"].profile,
                                  inference={**study["cfg"].profile.inference, "largest_component": False})
    cfg = dataclasses.replace(study["cfg"], output_dir=out, profile=profile)
    assert convergence.rescore(cfg, kinds=("ema",), log=lambda m: None) == 4  # 2 runs x 2 snapshots
    points = [json.loads(p.read_text()) for p in out.glob("*/curve/ema_*.json")]
    assert {p["post_processing"] for p in points} == {"none"}
    with pytest.raises(IdealInputError, match="kinds"):
        convergence.rescore(cfg, kinds=("best",))
