"""The test-time flips benchmark on the tiny convergence study (``conftest.study``): both evaluations,
the plain one equal to the study's own curve point, reuse on a rerun, the table, bad run folders."""

from __future__ import annotations

import json

import pytest

from benchmarks import convergence, test_time_flips
from ideal_monai.errors import IdealInputError


@pytest.fixture(scope="module")
def flips(study):
    run_dirs = [study["cfg"].output_dir / "supervised_labeled1", study["cfg"].output_dir / "ideal_labeled1"]
    rows = test_time_flips.evaluate_test_time_flips(run_dirs, iteration=8, kinds=("ema",), inference={"sw_batch_size": 8})
    return run_dirs, rows


def test_each_run_is_scored_without_and_with_flips(flips):
    run_dirs, rows = flips
    assert [(r["title"], r["labeled"], r["kind"], r["iteration"]) for r in rows] == [
        ("supervised only", 1, "ema", 8), ("IDEAL", 1, "ema", 8)]
    for run_dir, row in zip(run_dirs, rows):
        curve = json.loads((run_dir / "curve" / "ema_000008.json").read_text())
        for name in ("plain", "flips"):
            assert 0.0 <= row[name]["dsc"] <= 1.0 and row[name]["n_cases"] == curve["n_cases"] > 0
            assert (run_dir / "flips" / f"ema_000008_{name}.json").is_file()
        # without flips it is the study's own evaluation of the same snapshot
        assert row["plain"]["dsc"] == pytest.approx(curve["dsc"], abs=1e-9)
        assert not (run_dir / "flips_predictions").exists()


def test_rerun_reuses_the_stored_evaluations(flips, monkeypatch):
    run_dirs, rows = flips

    def no_inference(*args, **kwargs):
        raise AssertionError("a stored evaluation was recomputed")

    monkeypatch.setattr(convergence, "run_bundle", no_inference)
    assert test_time_flips.evaluate_test_time_flips(run_dirs, iteration=8) == rows
    table = test_time_flips.format_test_time_flips(rows)
    assert table.count("\n") == 2 + len(rows)
    assert "| supervised only | 1 | ema 8 |" in table


def test_missing_snapshot_and_non_run_folder_are_named(flips, tmp_path):
    run_dirs, _ = flips
    with pytest.raises(IdealInputError, match="model_ema_iter000012.pt"):
        test_time_flips.evaluate_test_time_flips(run_dirs[:1], iteration=12)
    with pytest.raises(IdealInputError, match="run.json"):
        test_time_flips.evaluate_test_time_flips([tmp_path], iteration=8)
