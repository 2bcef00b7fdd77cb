"""The dense-loss benchmark's measurement and table (the worker's code, in-process and tiny)."""

from __future__ import annotations

import math

import pytest

from benchmarks import dense_loss


def test_chunked_and_reference_measure_the_same_loss():
    chunked = dense_loss.measure_once(4096, "chunked", channels=8, threads=1)
    reference = dense_loss.measure_once(4096, "reference", channels=8, threads=1)
    assert chunked["loss"] == pytest.approx(reference["loss"], rel=1e-4)
    for r in (chunked, reference):
        assert r["wall_s"] > 0 and r["peak_extra_mib"] >= 0 and math.isfinite(r["loss"])


def test_table_reports_runs_and_skipped_configurations():
    run = {"wall_s": 1.0, "cpu_s": 0.5, "peak_extra_mib": 10.0, "loss": 8.5}
    result = {"configs": [(4096, "chunked"), (65536, "reference")], "runs": {(4096, "chunked"): [run, {**run, "wall_s": 3.0}]},
              "skipped": {(65536, "reference"): 64.0}, "load_before": (1, 1, 1), "load_after": (2, 2, 2)}
    table = dense_loss.format_table(result)
    assert "| 4,096 | chunked | 1.000 / 2.000 | 0.500 / 0.500 | 2 | 10 | 8.5000 |" in table
    assert "| 65,536 | reference | skipped (needs ~64 GiB) |" in table


def test_sizes_must_fill_whole_feature_maps():
    with pytest.raises(ValueError, match="multiple of 4096"):
        dense_loss.run_dense_loss_benchmark(sizes=[100])
