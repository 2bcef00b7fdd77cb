"""The model and encoder shipped in the package, and the settings that travel with a model's weights."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

import ideal_monai.release as release
from ideal_monai.cli import main
from ideal_monai.data.synthetic import write_synthetic_dataset
from ideal_monai.networks import DualDecoderUNet
from ideal_monai.utils import file_sha256

REPO = Path(__file__).resolve().parents[2]
ACDC = (REPO / ".." / "shared" / "data" / "acdc").resolve()


def test_card_describes_the_shipped_files_and_the_bundle_metadata_carries_its_scores():
    card = release.release_card()
    for entry in card["files"].values():
        assert file_sha256(release.RELEASE_DIR / entry["file"]) == entry["sha256"]
    assert json.loads((release.RELEASE_DIR / release.SETTINGS_FILE).read_text()) == card["settings"]
    assert set(card["settings"]) == set(release.SETTING_KEYS)
    # the weights fit the network the settings describe, and the encoder fits its encoder
    settings = card["settings"]
    net = DualDecoderUNet(out_channels=settings["num_classes"], features=settings["features"],
                          num_streams=settings["num_streams"], decoder_width=settings["decoder_width"])
    net.load_state_dict(torch.load(release.shipped_model_file(), weights_only=True), strict=True)
    net.encoder.load_state_dict(torch.load(release.shipped_encoder_file(), weights_only=True), strict=True)
    meta = json.loads((REPO / "bundle" / "configs" / "metadata.json").read_text())
    assert {k: v for k, v in meta["eval_metrics"].items() if k != "note"} == card["eval_metrics"]
    assert card["version"] in meta["eval_metrics"]["note"]
    # the model card in the bundle docs shows the card's scores
    text = (REPO / "bundle" / "docs" / "README.md").read_text()
    assert f"**`{card['name']}` {card['version']}**" in text
    metrics = card["eval_metrics"]
    assert f"**{metrics['mean_dice']:.3f}**" in text
    assert " | ".join(f"{metrics['dice'][c]:.3f}" for c in ("RV", "MYO", "LV")) in text
    # a release artefact, not a study checkpoint: well under 10 MB together
    assert sum((release.RELEASE_DIR / e["file"]).stat().st_size for e in card["files"].values()) < 12e6


def test_a_damaged_shipped_file_is_refused_in_one_line_naming_it(tmp_path, monkeypatch, capsys):
    copy = tmp_path / "release"
    shutil.copytree(release.RELEASE_DIR, copy, ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    data = bytearray((copy / "model.pt").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (copy / "model.pt").write_bytes(bytes(data))
    monkeypatch.setattr(release, "RELEASE_DIR", copy)
    images = tmp_path / "images"
    write_synthetic_dataset(images, num_cases=1, seed=0)
    out = tmp_path / "out"
    assert main(["infer", "--dataset_dir", str(images), "--output_dir", str(out), "--bundle_root", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(copy / "model.pt") in err[0] and "SHA-256" in err[0], err
    assert not out.exists()


def test_infer_without_a_model_segments_with_the_shipped_one_and_names_it(tmp_path):
    """A new user's first command: no training, no --model_path. The labels' header names the model, and the
    run's fingerprint holds the shipped weights' checksum."""
    images = tmp_path / "images"
    write_synthetic_dataset(images, num_cases=2, seed=3)
    out = tmp_path / "labels"
    proc = subprocess.run([sys.executable, "-m", "ideal_monai.cli", "infer", "--dataset_dir", str(images), "--output_dir",
                           str(out), "--bundle_root", str(tmp_path / "no_bundle")], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    card = release.release_card()
    assert f"the model is the shipped {card['name']} {card['version']}" in proc.stdout + proc.stderr
    labels = sorted(out.glob("*.nii.gz"))
    assert len(labels) == 4
    header = nib.load(labels[0]).header
    assert header["descrip"].tobytes().rstrip(b"\0") == f"model {card['name']} {card['version']}".encode()
    # the phantoms are not ACDC, but the shipped model finds their heart
    dice = []
    for path in labels:
        case = path.name[:-len(".nii.gz")]
        pred = np.asarray(nib.load(path).dataobj)
        ref = np.asarray(nib.load(images / case.split("_")[0] / f"{case}_gt.nii.gz").dataobj)
        dice += [2 * np.sum((pred == c) & (ref == c)) / (np.sum(pred == c) + np.sum(ref == c)) for c in (1, 2, 3)]
    assert np.mean(dice) > 0.6, dice
    plan = json.loads((out / "status" / "plan.json").read_text())
    assert plan["fingerprint"]["model_sha256"] == card["files"]["model"]["sha256"]


def test_weights_with_recorded_settings_load_without_repeating_them(tmp_path, capsys):
    """A model trained at another geometry and width (``model_settings.json`` beside it, as ``finetune`` writes)
    is segmented with its own settings; a key given on the command line still wins; a broken settings file is
    a one-line error naming it."""
    models = tmp_path / "models"
    settings = {"patch_size": [64, 64], "target_spacing": [4.0, 4.0], "num_classes": 4,
                "features": [4, 8, 16, 32, 64], "num_streams": 2, "decoder_width": [1.0, 0.5]}
    torch.manual_seed(0)
    torch.save(DualDecoderUNet(features=settings["features"], decoder_width=settings["decoder_width"]).state_dict(),
               models.mkdir() or models / "model.pt")
    release.write_model_settings(models, settings)
    assert release.model_settings(models / "model.pt") == settings
    images = tmp_path / "images"
    write_synthetic_dataset(images, num_cases=1, seed=0)
    assert main(["infer", "--dataset_dir", str(images), "--output_dir", str(tmp_path / "a"), "--bundle_root",
                 str(tmp_path)]) == 0
    plan = json.loads((tmp_path / "a" / "status" / "plan.json").read_text())
    assert {k: plan["fingerprint"][k] for k in settings} == settings
    assert main(["infer", "--dataset_dir", str(images), "--output_dir", str(tmp_path / "b"), "--bundle_root",
                 str(tmp_path), "--patch_size", "[96, 96]"]) == 0
    assert json.loads((tmp_path / "b" / "status" / "plan.json").read_text())["fingerprint"]["patch_size"] == [96, 96]
    capsys.readouterr()
    (models / release.SETTINGS_FILE).write_text('{"patch_size": [64, 64], "colour": "red"}')
    assert main(["infer", "--dataset_dir", str(images), "--output_dir", str(tmp_path / "c"), "--bundle_root",
                 str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(models / release.SETTINGS_FILE) in err[0], err
    assert not (tmp_path / "c").exists()


@pytest.mark.acdc
@pytest.mark.skipif(not (ACDC / "splits.json").is_file(), reason=f"ACDC data not found at {ACDC}")
def test_shipped_model_on_original_acdc_files_without_arguments(tmp_path):
    """The organisers' NIfTI files (unit sform, real pixdim) of two validation patients: labels with no model
    argument, at the Dice its card reports, and cardiac function in mL."""
    val = json.loads((ACDC / "splits.json").read_text())["val"][:2]
    data = tmp_path / "acdc"
    data.mkdir()
    for pid in val:
        (data / pid).symlink_to(ACDC / pid, target_is_directory=True)
    out = tmp_path / "function"
    proc = subprocess.run([sys.executable, "-m", "ideal_monai.cli", "function", "--dataset_dir", str(data),
                           "--output_dir", str(out), "--bundle_root", str(tmp_path / "no_bundle")],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((out / "function.json").read_text())
    card = release.release_card()
    assert report["model"] == f"{card['name']} {card['version']}"
    assert f"Segmented by the model {report['model']}" in (out / "report.md").read_text()
    for entry in report["patients"]:
        assert entry["status"] == "ok" and entry["unit"] == "mL"
        assert abs(entry["auto"]["indices"]["LV_EF"] - entry["reference"]["indices"]["LV_EF"]) < 12
    dice = []
    for seg in sorted((out / "segmentations").glob("*.nii.gz")):
        pid = seg.name.split("_")[0]
        pred = np.asarray(nib.load(seg).dataobj)
        ref = np.asarray(nib.load(ACDC / pid / f"{seg.name[:-7]}_gt.nii.gz").dataobj)
        dice += [2 * np.sum((pred == c) & (ref == c)) / (np.sum(pred == c) + np.sum(ref == c)) for c in (1, 2, 3)]
    assert len(dice) == 12 and np.mean(dice) > 0.8, dice
