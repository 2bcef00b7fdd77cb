"""Keys that several run configs declare mean one thing and default to one value.

MONAI's ``run`` and MONAI Label read one config file per run id, so the geometry and network keys are
declared in each of ``pretrain.json``, ``train.json``, ``inference.json`` and ``function.json``; a model
trained with the defaults must be read back by inference and function with theirs, and a ``function``
override of an inference key must reach the inference it runs.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

CONFIGS = Path(__file__).resolve().parents[2] / "bundle" / "configs"
RUN_CONFIGS = ["pretrain.json", "train.json", "inference.json", "function.json", "evaluate.json"]
# the same name, another value on purpose: where each run writes, each stage's own schedule and network
# (pre-training's is the encoder with its heads; train's and inference's are compared below)
PER_RUN = {"imports", "initialize", "finalize", "run", "network", "network_def", "output_dir", "prediction_dir",
           "tensorboard_writer", "learning_rate", "max_epochs", "iterations_per_epoch", "checked_settings",
           "model_settings"}  # train.json records the model's settings, inference and function read them
# what function hands to inference other than through inference_overrides (overwrite: the files function
# chose to segment; distributed: function shares out patients, each process's inference runs alone)
FUNCTION_OWN = {"bundle_root", "ckpt_dir", "dataset_dir", "series_uid", "overwrite", "distributed"}
#: A key that inference and function read from the model's recorded settings: its default is the fallback.
MODEL_SETTING = re.compile(r"^\$@model_settings\.get\('(\w+)', (.+)\)$")


def _default(key: str, value):
    """The default a config gives ``key``: for ``$@model_settings.get('<key>', <default>)``, that default."""
    match = MODEL_SETTING.match(value) if isinstance(value, str) else None
    if match:
        assert match.group(1) == key, f"{key} reads the model's setting {match.group(1)!r}"
        return json.loads(match.group(2))
    return value


def _configs() -> dict[str, dict]:
    return {name: json.loads((CONFIGS / name).read_text()) for name in RUN_CONFIGS}


def test_a_key_in_several_configs_has_one_default():
    declared: dict[str, dict[str, object]] = {}
    for name, config in _configs().items():
        for key, value in config.items():
            if key not in PER_RUN:
                declared.setdefault(key, {})[name] = _default(key, value)
    differing = {key: by_config for key, by_config in declared.items()
                 if len({json.dumps(v, sort_keys=True) for v in by_config.values()}) > 1}
    assert not differing, f"keys with different defaults across configs: {differing}"


def test_the_trained_network_is_the_inferred_one():
    """The same network class and arguments (inference adds only which stream it evaluates)."""
    configs = _configs()
    train, infer = configs["train.json"]["network_def"], configs["inference.json"]["network_def"]
    assert {k: v for k, v in infer.items() if k != "eval_stream"} == train


def test_function_passes_every_inference_key_it_declares():
    configs = _configs()
    function, inference = configs["function.json"], configs["inference.json"]
    shared = (set(function) & set(inference)) - PER_RUN - FUNCTION_OWN
    passed = set(function["inference_overrides"])
    assert shared <= passed, f"function.json keys that never reach inference: {sorted(shared - passed)}"
    assert all(value == f"@{key}" for key, value in function["inference_overrides"].items())
