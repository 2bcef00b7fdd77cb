"""``ideal-monai label-app`` pieces that need no monailabel."""

from __future__ import annotations

import json
import shutil

import pytest

from ideal_monai.bundle_runner import bundle_dir
from ideal_monai.cli import main
from ideal_monai.errors import IdealInputError
from ideal_monai.label import app as label_app


def test_missing_monailabel_is_one_line_error(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(label_app.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(IdealInputError, match="not installed"):
        label_app.make_label_app(tmp_path / "app")
    assert main(["label-app", "--output_dir", str(tmp_path / "app")]) == 1
    assert "monailabel: not installed" in capsys.readouterr().err
    assert not (tmp_path / "app").exists()


def test_overrides_set_both_configs_and_metadata(tmp_path):
    configs = tmp_path / "configs"
    shutil.copytree(bundle_dir() / "configs", configs)
    label_app._apply_overrides(configs, {"features": "[4,8,16,32,64]", "patch_size": [128, 128], "iterations_per_epoch": 3})
    train, infer = (json.loads((configs / n).read_text()) for n in ("train.json", "inference.json"))
    assert train["features"] == infer["features"] == [4, 8, 16, 32, 64]
    assert train["patch_size"] == infer["patch_size"] == [128, 128]
    assert train["iterations_per_epoch"] == 3
    meta = json.loads((configs / "metadata.json").read_text())
    assert meta["network_data_format"]["inputs"]["image"]["spatial_shape"] == [128, 128]
    with pytest.raises(IdealInputError, match="not a top-level value key"):
        label_app._apply_overrides(configs, {"no_such_key": 1})
