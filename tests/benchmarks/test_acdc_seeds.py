"""Combining ACDC benchmark invocations over seeds, on hand-made output folders with known numbers."""

from __future__ import annotations

import csv
import json
import math
import statistics
import sys
from pathlib import Path

import pytest

from benchmarks.acdc_seeds import combine_seeds, format_seed_summary, per_volume_dsc
from ideal_monai.errors import IdealInputError

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
import summarize_acdc_seeds  # noqa: E402

VOLUMES = [f"patient{p:03d}_frame{f:02d}" for p in (101, 102, 103, 104) for f in (1, 2)]


def write_invocation(root: Path, seed: int, per_volume: dict, lr: float = 0.05) -> Path:
    """A benchmark output folder: results.json + report/metrics.csv per run.

    ``per_volume[(arm, labeled)]`` lists one DSC per volume of :data:`VOLUMES`; every class of a
    volume gets that DSC, so the volume's mean is that number.
    """
    folder = root / f"seed{seed}"
    runs = []
    for (arm, labeled), dscs in per_volume.items():
        run_dir = folder / f"{arm}_labeled{labeled}"
        (run_dir / "report").mkdir(parents=True)
        with open(run_dir / "report" / "metrics.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["case_id", "class", "dsc", "hd95", "asd", "status"])
            for case, dsc in zip(VOLUMES, dscs):
                for cls in ("RV", "MYO", "LV"):
                    w.writerow([case, cls, dsc, 1.0, 0.5, "ok"])
        runs.append({"arm": arm, "labeled": labeled, "run_dir": f"/elsewhere/{run_dir.name}",  # moved folder
                     "eval": {"val": {"dsc": statistics.fmean(dscs)}}})
    profile = {"name": "cpu", "shared": {"patch_size": [128, 128], "seed": seed}, "finetune": {"learning_rate": lr}}
    (folder / "results.json").write_text(json.dumps({"profile": profile, "runs": runs, "eval_sets": {"val": 8}}))
    return folder


SUP = {0: [0.70, 0.72, 0.74, 0.76, 0.60, 0.62, 0.80, 0.82], 1: [0.68, 0.70, 0.76, 0.74, 0.58, 0.66, 0.82, 0.80]}
#: IDEAL better by these on every volume, in both seeds, except the one volume with the smallest difference.
GAIN = [0.05, 0.035, 0.025, 0.03, 0.09, 0.045, -0.005, 0.07]
IDEAL = {s: [d + g for d, g in zip(SUP[s], GAIN)] for s in SUP}


@pytest.fixture
def two_seeds(tmp_path):
    return [write_invocation(tmp_path, s, {("supervised", 7): SUP[s], ("ideal", 7): IDEAL[s]}) for s in (0, 1)]


def test_per_seed_means_spread_and_volume_by_volume_comparison(two_seeds):
    summary = combine_seeds(two_seeds)
    assert summary["seeds"] == [0, 1]
    sup, ideal = summary["sets"]["val"]
    assert (sup["arm"], ideal["arm"]) == ("supervised", "ideal")  # reference first, then the benchmark's arm order
    assert ideal["dsc_per_seed"] == pytest.approx([statistics.fmean(IDEAL[0]), statistics.fmean(IDEAL[1])])
    assert ideal["dsc_mean"] == pytest.approx(statistics.fmean(IDEAL[0] + IDEAL[1]))
    assert ideal["dsc_sd"] == pytest.approx(statistics.stdev([statistics.fmean(IDEAL[0]), statistics.fmean(IDEAL[1])]))
    diffs = [((IDEAL[0][v] - SUP[0][v]) + (IDEAL[1][v] - SUP[1][v])) / 2 for v in range(8)]
    assert ideal["diff_mean"] == pytest.approx(statistics.fmean(diffs))
    assert ideal["wins"] == sum(d > 0 for d in diffs) == 7 and ideal["n_volumes"] == 8
    # 7 of 8 volumes better, the worse one the smallest difference: exact two-sided signed-rank p = 4/256.
    assert ideal["p_wilcoxon"] == pytest.approx(4 / 256)
    assert "diff_mean" not in sup  # the reference is not compared with itself


def test_markdown_has_one_row_per_arm_with_the_numbers(two_seeds):
    md = format_seed_summary(combine_seeds(two_seeds))
    ideal_row = next(line for line in md.splitlines() if line.startswith("| IDEAL | 7 |"))
    assert f"{statistics.fmean(IDEAL[0]):.3f} / {statistics.fmean(IDEAL[1]):.3f}" in ideal_row
    assert "7 of 8" in ideal_row and "0.016" in ideal_row
    assert next(line for line in md.splitlines() if line.startswith("| supervised only | 7 |")).endswith("— | — | — |")


def test_per_volume_dsc_counts_failures_as_zero_and_skips_unscored_classes(tmp_path):
    path = tmp_path / "metrics.csv"
    path.write_text("case_id,class,dsc,hd95,asd,status\n"
                    "a,RV,0.9,1,1,ok\na,MYO,0.0,nan,nan,missing_prediction\na,LV,0.6,1,1,ok\n"
                    "b,RV,nan,nan,nan,both_empty\nb,MYO,0.8,1,1,ok\nb,LV,0.6,1,1,ok\n"
                    "c,RV,nan,nan,nan,both_empty\n")
    dsc = per_volume_dsc(path)
    assert dsc["a"] == pytest.approx(0.5) and dsc["b"] == pytest.approx(0.7) and math.isnan(dsc["c"])


def test_a_single_seed_has_no_spread(tmp_path):
    folder = write_invocation(tmp_path, 3, {("supervised", 3): SUP[0], ("consistency", 3): IDEAL[0]})
    rows = combine_seeds([folder])["sets"]["val"]
    assert math.isnan(rows[0]["dsc_sd"]) and rows[1]["wins"] == 7
    assert "| n/a |" in format_seed_summary(combine_seeds([folder]))


def test_refuses_folders_that_cannot_be_combined(tmp_path):
    a = write_invocation(tmp_path / "a", 0, {("supervised", 7): SUP[0]})
    same_seed = write_invocation(tmp_path / "b", 0, {("supervised", 7): SUP[1]})
    other_lr = write_invocation(tmp_path / "c", 1, {("supervised", 7): SUP[1]}, lr=0.01)
    with pytest.raises(IdealInputError, match="seed 0.*seeds must differ"):
        combine_seeds([a, same_seed])
    with pytest.raises(IdealInputError, match="profile differs .* in more than the seed"):
        combine_seeds([a, other_lr])
    with pytest.raises(IdealInputError, match=r"empty[/\\]results.json: not found"):
        (tmp_path / "empty").mkdir()
        combine_seeds([a, tmp_path / "empty"])
    with pytest.raises(IdealInputError, match="no benchmark output folder"):
        combine_seeds([])


def test_comparison_refuses_runs_evaluated_on_different_volumes(tmp_path):
    folder = write_invocation(tmp_path, 0, {("supervised", 7): SUP[0], ("ideal", 7): IDEAL[0]})
    metrics = folder / "ideal_labeled7" / "report" / "metrics.csv"
    metrics.write_text(metrics.read_text().replace("patient104_frame02", "patient999_frame02"))
    with pytest.raises(IdealInputError, match="different volumes"):
        combine_seeds([folder])


def test_script_writes_the_table_or_fails_with_one_line_and_no_file(two_seeds, tmp_path, capsys):
    out = tmp_path / "seeds.md"
    assert summarize_acdc_seeds.main([str(f) for f in two_seeds] + ["--output", str(out)]) == 0
    assert out.read_text().strip() == capsys.readouterr().out.strip()
    bad = tmp_path / "bad.md"
    assert summarize_acdc_seeds.main([str(two_seeds[0]), str(two_seeds[0]), "--output", str(bad)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "results.json" in err and "seeds must differ" in err
    assert not bad.exists()


def test_script_reports_an_unwritable_output_in_one_line(two_seeds, tmp_path, capsys):
    target = tmp_path / "a_folder"
    (target / "inside").mkdir(parents=True)  # --output names an existing folder: cannot be replaced by a file
    assert summarize_acdc_seeds.main([str(f) for f in two_seeds] + ["--output", str(target)]) == 1
    out, err = capsys.readouterr()
    assert len(err.strip().splitlines()) == 1 and str(target) in err and "cannot write" in err
    assert out == "" and target.is_dir() and [p.name for p in target.iterdir()] == ["inside"]
