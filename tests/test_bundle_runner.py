"""Running and copying the bundle's configs (:mod:`ideal_monai.bundle_runner`)."""

from __future__ import annotations

import json
import shutil

import pytest

from ideal_monai.bundle_runner import bundle_dir, write_config_values
from ideal_monai.errors import IdealInputError


def test_config_values_set_every_run_config_and_the_metadata_shape(tmp_path):
    """What a copy of the bundle (an exported bundle, a MONAI Label app) gets for a model's settings or the
    user's overrides."""
    configs = tmp_path / "configs"
    shutil.copytree(bundle_dir() / "configs", configs)
    write_config_values(configs, {"features": "[4,8,16,32,64]", "patch_size": [128, 128], "iterations_per_epoch": 3})
    train, infer, function = (json.loads((configs / n).read_text()) for n in ("train.json", "inference.json", "function.json"))
    assert train["features"] == infer["features"] == function["features"] == [4, 8, 16, 32, 64]
    assert train["patch_size"] == infer["patch_size"] == [128, 128]
    assert train["iterations_per_epoch"] == 3
    meta = json.loads((configs / "metadata.json").read_text())
    assert meta["network_data_format"]["inputs"]["image"]["spatial_shape"] == [128, 128]
    before = {p.name: p.read_bytes() for p in configs.iterdir()}
    with pytest.raises(IdealInputError, match="not a top-level value key"):
        write_config_values(configs, {"patch_size": [96, 96], "no_such_key": 1})
    assert {p.name: p.read_bytes() for p in configs.iterdir()} == before  # nothing written
