"""The ACDC quality benchmark's logic, end to end on synthetic phantoms with tiny settings (< 60 s on 1 CPU).

The real benchmark runs on ``../shared/data/acdc`` (scripts/benchmark_acdc.py); here the same code
runs all three arms on 6 phantom patients with a splits file of the ACDC form.
"""

from __future__ import annotations

import dataclasses
import json
import time

import pytest
import torch
from ignite.engine import Engine

from benchmarks import acdc
from ideal_monai.errors import IdealInputError
from benchmarks.time_budget import TimeBudget

TINY = acdc.Profile(
    name="tiny",
    shared={"patch_size": [32, 32], "target_spacing": [6.0, 6.0], "features": [4, 8, 8, 8, 8], "seed": 0},
    pretrain={"batch_size": 4, "max_epochs": 1, "iterations_per_epoch": 2},
    finetune={"batch_size_labeled": 2, "batch_size_unlabeled": 2, "iterations_per_epoch": 2, "val_interval": 10**6},
    inference={"sw_batch_size": 8},
    pretrain_minutes=None,  # fixed iterations for pre-training ...
    minutes_per_arm=0.02,  # ... and a 1.2 s wall-clock budget per fine-tuning arm (calibrated, planned, hard stop)
    calibration_iterations=2,
    max_overlays=0,
)


@pytest.fixture(scope="module")
def benchmark(synthetic_dataset, tmp_path_factory):
    """All arms x labeled 1 and 2 on phantoms (patients 1-4 train, 5-6 val), then a --skip_existing rerun."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("acdc_benchmark")
    splits = root / "splits.json"
    ids = [f"patient{i:03d}" for i in range(1, 7)]
    splits.write_text(json.dumps({"train": ids[:4], "val": ids[4:], "labeled_1": ids[:1], "labeled_2": ids[:2]}))
    cfg = acdc.AcdcBenchmarkConfig(output_dir=root / "out", data_dir=synthetic_dataset, splits_file=splits,
                                   profile=TINY, labeled=(1, 2), test_dir=synthetic_dataset / "patient006")
    first = acdc.run_acdc_benchmark(cfg, command="pytest")
    mtimes = {p: p.stat().st_mtime_ns for p in cfg.output_dir.rglob("*.pt")}
    second = acdc.run_acdc_benchmark(acdc.AcdcBenchmarkConfig(**{**vars(cfg), "skip_existing": True}), command="pytest")
    return {"cfg": cfg, "first": first, "second": second, "mtimes": mtimes}


def test_every_arm_and_labeled_count_has_a_row_with_metrics(benchmark):
    runs = benchmark["first"]["runs"]
    assert [(r["arm"], r["labeled"]) for r in runs] == [(a, n) for a in acdc.ARMS for n in (1, 2)]
    for run in runs:
        val = run["eval"]["val"]
        assert val["n_cases"] == 4  # 2 val patients x 2 frames
        assert run["eval"]["test"]["n_cases"] == 2
        for key in ("RV", "MYO", "LV", "dsc"):
            assert 0.0 <= val[key] <= 1.0
        assert val["failures"] >= 0
        assert run["train"]["iterations"] >= 1


def test_arms_train_in_separate_bundle_roots_with_their_switches(benchmark):
    cfg = benchmark["cfg"]
    for arm in acdc.ARMS:
        for n in (1, 2):
            run_dir = cfg.run_dir(arm, n)
            assert (run_dir / "models" / "model_final.pt").is_file()
            assert len(list((run_dir / "predictions").glob("*.nii.gz"))) == 4
            assert (run_dir / "report" / "metrics.json").is_file() and (run_dir / "report_test" / "metrics.json").is_file()
            settings = json.loads((run_dir / "train_settings.json").read_text())["overrides"]
            assert settings["labeled_key"] == f"labeled_{n}"
            assert {k: settings[k] for k in acdc.ARMS[arm].overrides} == dict(acdc.ARMS[arm].overrides)
    state = torch.load(cfg.run_dir("supervised", 1) / "models" / "model_final.pt", weights_only=True)
    assert not any(k.startswith("decoder2.") for k in state), "the supervised arm has one stream"
    assert any(k.startswith("decoder2.") for k in torch.load(cfg.run_dir("consistency", 1) / "models" / "model_final.pt",
                                                              weights_only=True))
    ideal = json.loads((cfg.run_dir("ideal", 1) / "train_settings.json").read_text())["overrides"]
    assert ideal["pretrained_path"] == str(cfg.pretrain_dir / "models" / "pretrained_encoder.pt")
    assert (cfg.pretrain_dir / "train_log.json").is_file()


def test_time_budget_plans_the_schedule_and_is_the_same_for_every_arm(benchmark):
    cfg, runs = benchmark["cfg"], benchmark["first"]["runs"]
    for run in runs:
        train = run["train"]
        assert train["budget_minutes"] == pytest.approx(TINY.minutes_per_arm)
        settings = json.loads((cfg.run_dir(run["arm"], run["labeled"]) / "train_settings.json").read_text())["overrides"]
        # planned from the calibration (max_epochs * iterations_per_epoch), then re-planned from the run's
        # own first epoch; the final count is what the LR / ramp-up schedules ended at
        planned = settings["max_epochs"] * settings["iterations_per_epoch"]
        replanned = train["replanned"]
        # after the first epoch, or the first epoch end with two timed steps (epochs of 1 iteration here)
        assert replanned["from_iterations"] == planned
        assert replanned["after_iterations"] == max(2, settings["iterations_per_epoch"])
        # then again at epoch ends until half-way, when that changed the plan
        final_plan = (train["replanned_again"] or [replanned])[-1]
        assert train["planned_iterations"] == final_plan["to_iterations"] and replanned["step_s"] > 0
        budget = json.loads((cfg.run_dir(run["arm"], run["labeled"]) / "time_budget.json").read_text())
        assert budget["+train#handlers"][0]["lr_scheduler"] == "@train#lr_scheduler"
        assert budget["+train#handlers"][0]["replan_until"] == 0.5
        assert train["minutes"] <= TINY.minutes_per_arm + 0.05  # stopped at most one iteration (+ final save) late
        assert train["calibrated_step_s"] > 0
    assert (cfg.output_dir / "calibration" / "supervised" / "train_log.json").is_file()


def test_results_table_and_json(benchmark):
    out = benchmark["cfg"].output_dir
    md = (out / "results.md").read_text()
    assert "| arm | labeled | RV DSC | MYO DSC | LV DSC | mean DSC | mean HD95 | mean ASD | failures | train min" in md
    assert "## val (4 volumes)" in md and "## test (2 volumes)" in md
    assert md.count("| IDEAL | ") == 4 and md.count("| supervised only | ") == 4
    data = json.loads((out / "results.json").read_text())  # strict JSON: no NaN
    assert len(data["runs"]) == 6 and data["profile"]["name"] == "tiny"


def test_skip_existing_reuses_every_stage(benchmark):
    assert benchmark["second"]["pretrain"]["reused"]
    assert all(run["train"]["reused"] for run in benchmark["second"]["runs"])
    assert [r["eval"] for r in benchmark["second"]["runs"]] == [r["eval"] for r in benchmark["first"]["runs"]]
    assert {p: p.stat().st_mtime_ns for p in benchmark["mtimes"]} == benchmark["mtimes"]


def test_checkpoint_ema_evaluates_the_moving_average_without_retraining(benchmark):
    cfg = benchmark["cfg"]
    ema_cfg = acdc.AcdcBenchmarkConfig(**{**vars(cfg), "profile": dataclasses.replace(TINY, checkpoint="ema")})
    run_dir = cfg.run_dir("ideal", 1)
    assert (run_dir / "models" / "model_ema.pt").is_file()
    network = acdc._network_overrides(acdc._finetune_overrides(cfg, acdc.ARMS["ideal"], 1))
    val_dir = acdc.prepare_eval_sets(cfg, clock=lambda message: None)["val"]
    row = acdc.evaluate_run(ema_cfg, run_dir, network, "val", val_dir, skip_existing=True, clock=lambda message: None)
    # a new evaluation from model_ema.pt, into its own folders beside the final weights' ones
    assert acdc.evaluation_dirs(run_dir, "val", "ema") == (run_dir / "predictions_ema", run_dir / "report_ema")
    settings = json.loads((run_dir / "report_ema" / "benchmark_settings.json").read_text())
    assert settings["model_path"] == str(run_dir / "models" / "model_ema.pt")
    assert len(list((run_dir / "predictions_ema").glob("*.nii.gz"))) == 4
    assert row["n_cases"] == 4 and 0.0 <= row["dsc"] <= 1.0
    final = json.loads((run_dir / "report" / "benchmark_settings.json").read_text())
    assert final["model_path"] == str(run_dir / "models" / "model_final.pt")  # kept
    assert {p: p.stat().st_mtime_ns for p in benchmark["mtimes"]} == benchmark["mtimes"]  # nothing retrained
    with pytest.raises(IdealInputError, match="checkpoint"):
        dataclasses.replace(TINY, checkpoint="last")


def test_time_budget_handler_stops_an_engine():
    engine = Engine(lambda e, b: time.sleep(0.01))
    budget = TimeBudget(seconds=0.2)
    budget.attach(engine)
    engine.run(range(1000), max_epochs=1)
    summary = budget.summary(engine)
    assert budget.stopped_by_budget and 2 <= engine.state.iteration < 1000
    assert summary["planned_iterations"] == 1000 and summary["iterations"] == engine.state.iteration
    assert 0.2 <= summary["elapsed_s"] < 0.2 + 10 * max(summary["step_times_s"])
    unlimited = TimeBudget()  # None: logs only
    engine = Engine(lambda e, b: None)
    unlimited.attach(engine)
    engine.run(range(5), max_epochs=2)
    assert not unlimited.stopped_by_budget and unlimited.summary(engine)["iterations"] == 10


def test_plan_iterations_fills_the_budget_in_whole_epochs():
    max_epochs, epoch_length = acdc.plan_iterations(600.0, 1.3, 50)
    assert max_epochs * epoch_length <= int(600 * acdc.BUDGET_FILL / 1.3) and epoch_length <= 50
    assert max_epochs * epoch_length >= int(600 * acdc.BUDGET_FILL / 1.3) - max_epochs
    assert acdc.plan_iterations(1.0, 10.0, 50) == (1, 1)


def test_calibration_step_time_ignores_the_slow_warm_up_and_outliers():
    # Session 9's supervised calibration: the first steps are slower than the steady state, whose
    # mean after the first (0.258 s) overestimated the 0.22-0.24 s of the real run.
    warm_up = [0.90, 0.45, 0.40, 0.36, 0.33]
    steady = [0.23, 0.22, 0.24, 0.23, 1.50, 0.22, 0.23, 0.24, 0.22, 0.23]  # one slow outlier (a stall)
    assert acdc.steady_step_seconds(warm_up + steady) == 0.23
    assert acdc.steady_step_seconds([1.0, 0.5]) == 0.5
    with pytest.raises(ValueError, match="at least 2"):
        acdc.steady_step_seconds([0.3])


def test_sets_go_to_the_right_stage_and_bad_keys_are_refused():
    p = acdc.apply_sets(acdc.CPU_PROFILE, acdc.parse_sets(
        ["lambda_max=0.5", "pretrain.temperature=0.2", "features=[8, 16, 32, 64, 128]", "inference.largest_component=False"]))
    assert p.finetune["lambda_max"] == 0.5 and p.pretrain["temperature"] == 0.2
    assert p.stage("pretrain")["features"] == p.stage("finetune")["features"] == p.stage("inference")["features"]
    assert p.inference["largest_component"] is False and "lambda_max" not in acdc.CPU_PROFILE.finetune
    for bad in (["no_such_key=1"], ["num_streams=1"], ["dataset_dir=/x"], ["eval.lambda_max=1"], ["novalue"]):
        with pytest.raises(IdealInputError):
            acdc.apply_sets(acdc.CPU_PROFILE, acdc.parse_sets(bad))


def test_script_refuses_bad_arguments_with_one_line(capsys):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "scripts" / "benchmark_acdc.py"
    spec = importlib.util.spec_from_file_location("benchmark_acdc_script", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    for argv in (["--set", "use_pretrained=True"], ["--set", "finetune.no_such_key=1"], ["--arms", "nope"]):
        with pytest.raises(SystemExit) as exc:
            script.main(argv)
        assert exc.value.code == 2
    assert "set by the benchmark itself" in capsys.readouterr().err
