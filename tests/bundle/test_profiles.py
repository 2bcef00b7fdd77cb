"""The CPU and GPU recipes as bundle config overlays: they layer onto their run config, hold valid keys,
and say what the benchmarks' profiles say (the benchmarks may only add what they control themselves)."""

import json
from pathlib import Path

import pytest
from monai.bundle import ConfigParser

from benchmarks.acdc import PROFILES
from ideal_monai.utils import check_config_values

CONFIGS = Path(__file__).resolve().parents[2] / "bundle" / "configs"
#: overlay stage -> (run config it layers onto, the benchmark profile's stage)
STAGES = {"pretrain": ("pretrain.json", "pretrain"), "train": ("train.json", "finetune"),
          "inference": ("inference.json", "inference")}
#: keys a benchmark sets itself (from its budget or study), which a user's recipe sets for a standalone run
BENCHMARK_CONTROLLED = {"max_epochs", "val_interval", "seed"}


@pytest.mark.parametrize("profile", ["cpu", "gpu"])
@pytest.mark.parametrize("stage", list(STAGES))
def test_overlay_layers_onto_its_config_and_matches_the_benchmark_profile(profile, stage):
    config, bench_stage = STAGES[stage]
    overlay_path = CONFIGS / f"profile_{profile}_{stage}.json"
    overlay = json.loads(overlay_path.read_text())
    base = json.loads((CONFIGS / config).read_text())
    assert set(overlay) <= set(base), f"{overlay_path.name} sets keys {config} does not have"

    parser = ConfigParser()
    parser.read_config([str(CONFIGS / config), str(overlay_path)])  # as --config_file "['a.json','b.json']"
    for key, value in overlay.items():
        assert parser[key] == value
    check_config_values({k: v for k, v in overlay.items() if k in parser["checked_settings"]})

    expected = {k: v for k, v in PROFILES[profile].stage(bench_stage).items() if k not in BENCHMARK_CONTROLLED}
    assert {k: overlay[k] for k in expected if k in overlay} == expected
    missing = set(expected) - set(overlay)
    assert not missing, f"{overlay_path.name} lacks {sorted(missing)} of the benchmark's {profile} profile"


@pytest.mark.parametrize("profile", ["cpu", "gpu"])
def test_training_and_inference_overlays_build_the_same_network(profile):
    keys = ("patch_size", "target_spacing", "decoder_width", "features", "num_streams")
    train = ConfigParser()
    train.read_config([str(CONFIGS / "train.json"), str(CONFIGS / f"profile_{profile}_train.json")])
    infer = ConfigParser()
    infer.read_config([str(CONFIGS / "inference.json"), str(CONFIGS / f"profile_{profile}_inference.json")])
    infer["model_settings"] = {}  # weights that recorded no settings: the overlay alone decides
    assert {k: train.get_parsed_content(k) for k in keys} == {k: infer.get_parsed_content(k) for k in keys}
