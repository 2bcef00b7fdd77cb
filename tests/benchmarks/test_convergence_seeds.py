"""Combining convergence studies over seeds: hand-made study folders with known curves, and the real
tiny study of ``conftest.py`` (so the reader follows what ``benchmark_convergence`` writes)."""

from __future__ import annotations

import json
import shutil
import statistics
import sys
from pathlib import Path

import pytest

from benchmarks.convergence_seeds import combine_studies, format_study_seeds, plot_study_seeds
from ideal_monai.errors import IdealInputError

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
import summarize_convergence_seeds  # noqa: E402

ITERATIONS = [500, 1000, 1500, 2000]


def write_study(root: Path, seed: int, curves: dict, rotate: float = 45.0) -> Path:
    """A study folder as ``benchmark_convergence`` writes it: per run ``run.json``, ``train_settings.json``
    and ``curve/<kind>_<iteration>.json``. ``curves[(arm, labeled)]`` lists the EMA DSC per snapshot of
    :data:`ITERATIONS` (a shorter list: a run still training); the final weights score 0.01 less."""
    folder = root / f"conv_s{seed}"
    for (arm, labeled), dscs in curves.items():
        run = folder / f"{arm}_labeled{labeled}"
        (run / "curve").mkdir(parents=True)
        (run / "run.json").write_text(json.dumps({"name": arm, "arm": arm, "title": {"ideal": "IDEAL"}.get(arm, arm),
                                                  "labeled": labeled, "pretrain_iterations": None}))
        overrides = {"seed": seed, "aug_rotate_deg": rotate, "labeled_key": f"labeled_{labeled}",
                     "dataset_dir": f"/data/copy{seed}", "train#total_iterations": ITERATIONS[-1]}
        (run / "train_settings.json").write_text(json.dumps({"stage": "finetune", "overrides": overrides}))
        for it, dsc in zip(ITERATIONS, dscs):
            for kind, value in (("ema", dsc), ("final", dsc - 0.01)):
                point = {"kind": kind, "iteration": it, "dsc": value, "RV": value - 0.1, "MYO": value, "LV": value + 0.1,
                         "hd95": 10 * (1 - value), "asd": 2.0, "failures": seed, "n_cases": 20}
                (run / "curve" / f"{kind}_{it:06d}.json").write_text(json.dumps(point))
    return folder


SUP = {0: [0.70, 0.80, 0.78, 0.79], 1: [0.72, 0.82, 0.83, 0.81], 2: [0.60, 0.70, 0.76, 0.77]}
IDEAL = {0: [0.75, 0.85, 0.86, 0.84], 1: [0.74, 0.84, 0.85, 0.87], 2: [0.70, 0.80, 0.83, 0.82]}


@pytest.fixture
def three_seeds(tmp_path):
    return [write_study(tmp_path, s, {("supervised", 7): SUP[s], ("ideal", 7): IDEAL[s]}) for s in (0, 1, 2)]


def test_plateau_peak_and_margin_per_seed(three_seeds):
    summary = combine_studies(three_seeds, plateau_points=3)
    assert summary["seeds"] == [0, 1, 2]
    sup, ideal = summary["rows"]
    assert (sup["arm"], ideal["arm"]) == ("supervised", "ideal") and ideal["iteration"] == 2000
    assert ideal["last"] == pytest.approx([0.84, 0.87, 0.82])
    assert ideal["last_sd"] == pytest.approx(statistics.stdev([0.84, 0.87, 0.82]))
    plateau = {s: statistics.fmean(IDEAL[s][-3:]) for s in (0, 1, 2)}
    assert ideal["plateau"] == pytest.approx(list(plateau.values()))
    assert ideal["peak"] == pytest.approx([0.86, 0.87, 0.83]) and ideal["peak_iteration"] == [1500, 2000, 1500]
    margins = [plateau[s] - statistics.fmean(SUP[s][-3:]) for s in (0, 1, 2)]
    assert ideal["margin"] == pytest.approx(margins) and ideal["margin_seeds"] == [0, 1, 2]
    assert ideal["margin_min"] == pytest.approx(min(margins)) and ideal["margin_mean"] == pytest.approx(statistics.fmean(margins))
    assert "margin" not in sup
    # the detail of the last snapshot: per class, distances, failures per seed
    assert ideal["detail"]["RV"] == pytest.approx(statistics.fmean([0.84, 0.87, 0.82]) - 0.1)
    assert ideal["detail"]["LV"] == pytest.approx(statistics.fmean([0.84, 0.87, 0.82]) + 0.1)
    assert ideal["detail"]["hd95"] == pytest.approx(10 * (1 - statistics.fmean([0.84, 0.87, 0.82])))
    assert ideal["failures"] == [0, 1, 2] and ideal["n_cases"] == 20


def test_final_weights_and_a_one_point_plateau(three_seeds):
    summary = combine_studies(three_seeds, kind="final", plateau_points=1)
    ideal = summary["rows"][1]
    assert ideal["plateau"] == pytest.approx([d - 0.01 for d in (0.84, 0.87, 0.82)])
    assert ideal["plateau"] == ideal["last"]


def test_a_seed_still_training_is_listed_not_averaged(tmp_path):
    done = write_study(tmp_path, 0, {("supervised", 3): SUP[0], ("ideal", 3): IDEAL[0]})
    running = write_study(tmp_path, 1, {("supervised", 3): SUP[1], ("ideal", 3): IDEAL[1][:2]})
    summary = combine_studies([done, running])
    sup, ideal = summary["rows"]
    assert sup["seeds"] == [0, 1] and ideal["seeds"] == [0] and ideal["in_progress"] == {1: 1000}
    # the margin is taken on the seeds both have finished: seed 0 only
    assert ideal["margin_seeds"] == [0]
    assert ideal["margin"] == pytest.approx([statistics.fmean(IDEAL[0][-3:]) - statistics.fmean(SUP[0][-3:])])
    markdown = format_study_seeds(summary)
    assert "seed 1 at 1000" in markdown and "## 3 labeled" in markdown


def test_markdown_and_figure(three_seeds, tmp_path):
    summary = combine_studies(three_seeds)
    markdown = format_study_seeds(summary)
    row = next(line for line in markdown.splitlines() if line.startswith("| IDEAL |"))
    assert "| 3 | 2000 | 0.840 / 0.870 / 0.820 |" in row and "+0.0" in row
    detail = [line for line in markdown.splitlines() if line.startswith("| IDEAL |")][1]
    assert detail == "| IDEAL | 3 | 2000 | 0.743 | 0.843 | 0.943 | 0.843 | 1.57 | 2.00 | 0 / 1 / 2 |"
    figure = tmp_path / "seeds.png"
    plot_study_seeds(summary, figure)
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_refuses_studies_that_cannot_be_combined(tmp_path):
    a = write_study(tmp_path / "a", 0, {("supervised", 7): SUP[0]})
    same_seed = write_study(tmp_path / "b", 0, {("supervised", 7): SUP[1]})
    other_rotation = write_study(tmp_path / "c", 1, {("supervised", 7): SUP[1]}, rotate=20.0)
    with pytest.raises(IdealInputError, match="seed 0.*seeds must differ"):
        combine_studies([a, same_seed])
    with pytest.raises(IdealInputError, match="differ .* in more than the seed: aug_rotate_deg"):
        combine_studies([a, other_rotation])
    (tmp_path / "empty").mkdir()
    with pytest.raises(IdealInputError, match="empty: holds no convergence run"):
        combine_studies([a, tmp_path / "empty"])
    with pytest.raises(IdealInputError, match="kind"):
        combine_studies([a], kind="best")


def test_reads_the_study_benchmark_convergence_writes(study, tmp_path):
    """The tiny real study as seed 0, and a copy of it relabelled seed 1: same curves, so no spread."""
    real = study["cfg"].output_dir
    copy = tmp_path / "seed1"
    shutil.copytree(real, copy, ignore=shutil.ignore_patterns("*.pt", "predictions*", "eval_sets"))
    for settings in copy.glob("*/train_settings.json"):
        data = json.loads(settings.read_text())
        data["overrides"]["seed"] = 1
        settings.write_text(json.dumps(data))
    summary = combine_studies([real, copy], plateau_points=2)
    rows = {r["arm"]: r for r in summary["rows"]}
    assert set(rows) == {"supervised", "ideal"} and all(r["seeds"] == [0, 1] for r in rows.values())
    assert rows["ideal"]["iteration"] == 8 and rows["ideal"]["plateau_sd"] == pytest.approx(0.0)
    assert rows["ideal"]["margin"][0] == pytest.approx(rows["ideal"]["margin"][1])


def test_script_writes_table_and_figure_or_fails_with_one_line(three_seeds, tmp_path, capsys):
    out, figure = tmp_path / "seeds.md", tmp_path / "seeds.png"
    assert summarize_convergence_seeds.main([str(f) for f in three_seeds] + ["--output", str(out), "--figure", str(figure)]) == 0
    assert out.read_text().strip() == capsys.readouterr().out.strip() and figure.is_file()
    bad = tmp_path / "bad.md"
    assert summarize_convergence_seeds.main([str(three_seeds[0]), str(three_seeds[0]), "--output", str(bad)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "seeds must differ" in err and not bad.exists()


def test_says_which_post_processing_the_summarised_points_had(three_seeds):
    """Points without the key are the legacy per-class scoring; a table mixing two says so, by run."""
    assert "post-processing before scoring (the summarised snapshots): `per_class_largest_component`" in \
        format_study_seeds(combine_studies(three_seeds))
    for folder in three_seeds:
        for path in (folder / "ideal_labeled7" / "curve").glob("ema_*.json"):
            path.write_text(json.dumps({**json.loads(path.read_text()), "post_processing": "heart"}))
    summary = combine_studies(three_seeds)
    assert [r["post_processing"] for r in summary["rows"]] == [["per_class_largest_component"], ["heart"]]
    assert "**mixed**: supervised (7 labeled): per_class_largest_component; IDEAL (7 labeled): heart" in \
        format_study_seeds(summary)
    # only the summarised snapshots count: a rescored plateau is not "mixed" because of older points
    for folder in three_seeds:
        for path in (folder / "supervised_labeled7" / "curve").glob("ema_*.json"):
            if not path.name.endswith("000500.json"):
                path.write_text(json.dumps({**json.loads(path.read_text()), "post_processing": "heart"}))
    assert "(the summarised snapshots): `heart`" in format_study_seeds(combine_studies(three_seeds))
