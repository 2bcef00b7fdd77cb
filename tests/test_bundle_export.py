"""``ideal-monai bundle``: a standalone model-zoo copy of the bundle, written atomically."""

from __future__ import annotations

import filecmp
import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigWorkflow

from ideal_monai.bundle_export import export_bundle
from ideal_monai.bundle_runner import bundle_dir
from ideal_monai.cli import main
from ideal_monai.data.synthetic import write_synthetic_dataset
from ideal_monai.networks import DualDecoderUNet
from ideal_monai.release import release_card, shipped_encoder_file, shipped_model_file

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def run_models(tmp_path_factory) -> Path:
    """A fine-tuning run's ``models/`` folder: ``model.pt`` and ``model_final.pt`` of the default network."""
    models = tmp_path_factory.mktemp("run") / "models"
    models.mkdir()
    torch.manual_seed(0)
    torch.save(DualDecoderUNet().state_dict(), models / "model.pt")
    torch.save(DualDecoderUNet().state_dict(), models / "model_final.pt")
    return models


def _tree(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


def test_root_license_is_the_bundle_license():
    assert (REPO / "LICENSE").read_bytes() == (REPO / "bundle" / "LICENSE").read_bytes()
    assert "Apache License" in (REPO / "LICENSE").read_text()


def test_export_without_model_holds_the_shipped_model_at_its_own_geometry(tmp_path, capsys):
    """No ``--model_path``: the shipped model, its settings written into the copy's configs (so the copy segments
    at the geometry it was trained at and trains a network of its shape), its card's scores in ``eval_metrics``."""
    out = tmp_path / "ideal_bundle"
    assert main(["bundle", "--output_dir", str(out)]) == 0
    card = release_card()
    assert f"{card['name']} {card['version']}, the shipped model" in capsys.readouterr().out
    src = bundle_dir()
    expected = {f for f in _tree(src) if f.split("/")[0] in ("configs", "docs", "LICENSE")}
    assert {"LICENSE", "configs/metadata.json", "configs/inference.json", "docs/README.md"} <= expected
    assert _tree(out) == expected | {"models/model.pt", "models/model_settings.json", "large_files.yml"}
    assert (out / "models" / "model.pt").read_bytes() == shipped_model_file().read_bytes()
    settings = card["settings"]
    for config in ("train.json", "inference.json", "function.json"):
        values = json.loads((out / "configs" / config).read_text())
        assert {k: values[k] for k in settings if k in values} == {k: v for k, v in settings.items() if k in values}
    meta = json.loads((out / "configs" / "metadata.json").read_text())
    assert meta["network_data_format"]["inputs"]["image"]["spatial_shape"] == settings["patch_size"]
    assert {k: v for k, v in meta["eval_metrics"].items() if k != "note"} == card["eval_metrics"]
    unchanged = expected - {f"configs/{n}" for n in ("train.json", "inference.json", "function.json", "metadata.json")}
    assert all(filecmp.cmp(src / f, out / f, shallow=False) for f in unchanged)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ideal_bundle"]  # no temporary folder left


@pytest.mark.parametrize("given", ["models_dir", "final_file"])
def test_export_with_model_writes_models_model_pt(tmp_path, run_models, given):
    source = run_models if given == "models_dir" else run_models / "model_final.pt"
    out = tmp_path / "empty_dir_made_by_user"
    out.mkdir()  # an existing empty folder is accepted
    export_bundle(out, model_path=source)
    # inference.json loads <bundle_root>/models/model.pt; a models/ folder gives its best-validation model.pt.
    expected = run_models / ("model.pt" if given == "models_dir" else "model_final.pt")
    assert sorted(p.name for p in (out / "models").iterdir()) == ["model.pt"]  # no settings recorded beside it
    assert (out / "models" / "model.pt").read_bytes() == expected.read_bytes()
    assert json.loads((out / "configs" / "inference.json").read_text()) == json.loads(
        (bundle_dir() / "configs" / "inference.json").read_text())
    assert "not recorded" in json.loads((out / "configs" / "metadata.json").read_text())["eval_metrics"]["note"]


def _fails(capsys, *args) -> str:
    assert main(["bundle", *args]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_refuses_non_empty_output_dir_and_leaves_it_untouched(tmp_path, capsys):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    err = _fails(capsys, "--output_dir", str(out))
    assert str(out) in err and "not empty" in err
    assert _tree(out) == {"notes.txt"}
    (tmp_path / "a_file").write_text("x")
    assert str(tmp_path / "a_file") in _fails(capsys, "--output_dir", str(tmp_path / "a_file"))


def test_bad_weights_write_nothing(tmp_path, capsys, run_models):
    out = tmp_path / "out"
    err = _fails(capsys, "--output_dir", str(out), "--model_path", str(tmp_path / "missing.pt"))
    assert "missing.pt" in err and "not found" in err
    no_model = tmp_path / "models"
    no_model.mkdir()
    assert str(no_model / "model.pt") in _fails(capsys, "--output_dir", str(out), "--model_path", str(no_model))
    other = tmp_path / "other_features.pt"
    torch.save(DualDecoderUNet(features=(8, 16, 32, 64, 128)).state_dict(), other)
    err = _fails(capsys, "--output_dir", str(out), "--model_path", str(other))
    assert str(other) in err and "does not match the network" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["models", "other_features.pt"]  # no partial bundle


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root writes into read-only folders")
def test_unwritable_parent_is_one_line_error(tmp_path, capsys):
    parent = tmp_path / "read_only"
    parent.mkdir()
    parent.chmod(0o500)
    try:
        assert str(parent) in _fails(capsys, "--output_dir", str(parent / "out"))
    finally:
        parent.chmod(0o700)


def test_export_into_the_current_empty_folder(tmp_path, monkeypatch):
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    export_bundle(".")
    assert {"LICENSE", "configs", "docs", "models", "large_files.yml"} == {p.name for p in here.iterdir()}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["here"]


def test_incomplete_bundle_folder_is_refused(tmp_path, monkeypatch, capsys):
    (tmp_path / "partial" / "configs").mkdir(parents=True)
    monkeypatch.setenv("IDEAL_MONAI_BUNDLE", str(tmp_path / "partial"))
    err = _fails(capsys, "--output_dir", str(tmp_path / "out"))
    assert str(tmp_path / "partial") in err and "lacks docs, LICENSE" in err
    assert not (tmp_path / "out").exists()


SCHEMA = REPO.parent / "shared" / "monai" / "meta_schema_20240725.json"


def _monai_bundle(args: list[str], cwd: Path) -> str:
    proc = subprocess.run([sys.executable, "-m", "monai.bundle", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    return proc.stdout + proc.stderr


def test_exported_bundle_passes_the_model_zoo_checks_that_run_offline(tmp_path):
    """What the model zoo's ``ci/verify_bundle.py`` checks, with MONAI's own functions, on the exported copy
    (the shipped model in it): the directory, version and changelog, metadata against the schema, the large
    files' hashes, network input/output, TorchScript export equal to the eager network, and the inference
    workflow's required properties."""
    bundle = tmp_path / "ideal_bundle"
    export_bundle(bundle)
    meta_file, inference = bundle / "configs" / "metadata.json", bundle / "configs" / "inference.json"
    meta = json.loads(meta_file.read_text())
    assert meta["version"] in meta["changelog"]
    assert (bundle / "models" / "model.pt").is_file() and (bundle / "docs" / "data_license.txt").is_file()
    if SCHEMA.is_file():
        schema = tmp_path / SCHEMA.name
        shutil.copyfile(SCHEMA, schema)
        out = _monai_bundle(["verify_metadata", "--meta_file", str(meta_file), "--filepath", str(schema)], tmp_path)
        assert "metadata is verified with no error" in out and "skipped downloading" in out
    out = _monai_bundle(["download_large_files", "--bundle_path", str(bundle)], tmp_path)
    assert "skipped downloading" in out  # models/model.pt is there and its SHA-256 is the listed one
    out = _monai_bundle(["verify_net_in_out", "network_def", "--meta_file", str(meta_file), "--config_file",
                         str(inference), "--bundle_root", str(bundle), "--device", "cpu"], tmp_path)
    assert "data shape of network is verified with no error" in out
    ts_file = bundle / "models" / "verify_model.ts"
    _monai_bundle(["ckpt_export", "network_def", "--filepath", str(ts_file), "--ckpt_file",
                   str(bundle / "models" / "model.pt"), "--meta_file", str(meta_file), "--config_file", str(inference),
                   "--bundle_root", str(bundle)], tmp_path)
    settings = release_card()["settings"]
    eager = DualDecoderUNet(features=settings["features"], decoder_width=settings["decoder_width"])
    eager.load_state_dict(torch.load(shipped_model_file(), weights_only=True))
    x = torch.rand(1, 1, 96, 80)
    with torch.no_grad():
        torch.testing.assert_close(torch.jit.load(str(ts_file)).eval()(x), eager.eval()(x), atol=1e-5, rtol=0)

    images = tmp_path / "images"
    write_synthetic_dataset(images, num_cases=3, seed=0)
    root = logging.getLogger()  # ConfigWorkflow applies logging.conf to the root logger: undo it afterwards
    handlers, level = root.handlers[:], root.level
    try:
        wf = ConfigWorkflow(config_file=str(inference), meta_file=str(meta_file),
                            logging_file=str(bundle / "configs" / "logging.conf"), workflow_type="infer",
                            bundle_root=str(bundle), dataset_dir=str(images), output_dir=str(tmp_path / "out"))
        wf.initialize()
        assert wf.check_properties() == []
        # fine-tuning in the copy trains the shipped model's network, from the shipped encoder (no pretrain ran there)
        wf = ConfigWorkflow(config_file=str(bundle / "configs" / "train.json"), meta_file=str(meta_file),
                            logging_file=str(bundle / "configs" / "logging.conf"), workflow_type="train",
                            bundle_root=str(bundle), dataset_dir=str(images), num_labeled=1, num_val=1, cache_rate=0.0)
        wf.initialize()
        assert wf.check_properties() == []
        assert {k: wf.parser.get_parsed_content(k) for k in settings} == settings
        encoder = torch.load(shipped_encoder_file(), weights_only=True)
        network = wf.parser.get_parsed_content("network")
        assert all(torch.equal(v.float(), network.encoder.state_dict()[k].float()) for k, v in encoder.items())
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
