"""End to end: ``python -m monai.bundle run pretrain`` then ``run finetune`` on phantoms, from another folder.

These run the real bundle configs in subprocesses, started in a working directory that is not the
repository, with a CPU-sized profile.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from ideal_monai.data.synthetic import write_synthetic_dataset
from ideal_monai.evaluation import read_scalars
from ideal_monai.networks import DualDecoderUNet
from ideal_monai.utils.precision import resolve_precision

CONFIGS = Path(__file__).resolve().parents[2] / "bundle" / "configs"
PROFILE = ["--patch_size", "[64, 64]", "--target_spacing", "[4.0, 4.0]", "--seed", "0"]


def _bundle(run_id: str, config: str, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "monai.bundle", "run", run_id, "--config_file", str(CONFIGS / config),
           "--meta_file", str(CONFIGS / "metadata.json"), "--logging_file", str(CONFIGS / "logging.conf"), *args]
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, encoding="utf-8", errors="replace", timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Phantoms, then pre-training and fine-tuning run from an unrelated working directory."""
    root = tmp_path_factory.mktemp("e2e")
    data, bundle_root, elsewhere = root / "data", root / "bundle_root", root / "somewhere_else"
    elsewhere.mkdir()
    write_synthetic_dataset(data, num_cases=8, seed=0)
    common = ["--bundle_root", str(bundle_root), "--dataset_dir", str(data), *PROFILE]
    _bundle("pretrain", "pretrain.json", elsewhere, *common, "--max_epochs", "4", "--iterations_per_epoch", "6",
            "--batch_size", "16")
    pretrained = (bundle_root / "models" / "pretrained_encoder.pt").read_bytes()
    finetune = _bundle("finetune", "train.json", elsewhere, *common, "--num_labeled", "3", "--num_val", "2",
                       "--max_epochs", "4", "--iterations_per_epoch", "70", "--batch_size_labeled", "8",
                       "--learning_rate", "0.05", "--batch_size_unlabeled", "8", "--val_interval", "2")
    return {"root": bundle_root, "pretrained": pretrained, "cwd": elsewhere, "log": finetune.stdout + finetune.stderr}


def test_pretrain_writes_encoder_and_resumable_checkpoint(trained):
    models = trained["root"] / "models"
    state = torch.load(models / "pretrained_encoder.pt", weights_only=True)
    encoder = {k[len("encoder."):]: v for k, v in state.items() if k.startswith("encoder.")}
    net = DualDecoderUNet()
    net.encoder.load_state_dict(encoder, strict=True)  # the keys load unchanged
    ckpt = torch.load(models / "pretrain_checkpoint.pt", weights_only=True)
    assert {"network", "optimizer", "lr_scheduler", "engine", "rng"} <= set(ckpt)
    assert ckpt["engine"]["epoch"] == 4 and ckpt["engine"]["iteration"] == 24
    assert not list(trained["cwd"].iterdir()), "nothing may be written to the working directory"


def test_pretrain_loss_decreased(trained):
    series = read_scalars(trained["root"] / "runs" / "pretrain")
    losses = [v for _, v in series["loss"]]
    assert len(losses) == 24
    assert np.mean(losses[-6:]) < np.mean(losses[:6]) - 0.2, losses


def test_finetune_reaches_dice_on_phantoms_and_writes_models(trained):
    models = trained["root"] / "models"
    for name in ("model.pt", "model_final.pt", "finetune_checkpoint.pt"):
        assert (models / name).is_file(), name
    series = read_scalars(trained["root"] / "runs" / "finetune")
    dice = [v for _, v in series["val_mean_dice"]]
    assert len(dice) == 2
    assert max(dice) > 0.8, dice
    state = torch.load(models / "model.pt", weights_only=True)
    DualDecoderUNet().load_state_dict(state, strict=True)
    # lambda(t) was ramped up over training and logged
    lam = [v for _, v in series["lambda"]]
    assert lam[0] < 0.05 and lam[-1] > 0.9


def test_default_precision_trains_without_nan_to_the_expected_quality(trained):
    """The configs' ``precision: auto`` picks bfloat16 on CPUs with bf16 units (float32 elsewhere) and trains
    to the quality this setting reaches in float32. The bf16-against-fp32 comparison itself (3 seeds) is a
    benchmark (``docs/history/BENCHMARKS.md``, "Precision"): a second fine-tuning here doubled this module's time."""
    auto = read_scalars(trained["root"] / "runs" / "finetune")
    chosen = resolve_precision("auto", "cpu")
    assert f"TwoStreamTrainer: precision {chosen} (configured 'auto')" in trained["log"]
    assert all(np.isfinite(v) for _, v in auto["loss"])
    assert auto["val_mean_dice"][-1][1] > 0.8, auto["val_mean_dice"]


def test_ema_weights_are_written_and_differ_from_the_final_ones(trained):
    models = trained["root"] / "models"
    ema = torch.load(models / "model_ema.pt", weights_only=True)
    final = torch.load(models / "model_final.pt", weights_only=True)
    DualDecoderUNet().load_state_dict(ema, strict=True)
    assert ema.keys() == final.keys()
    assert any(not torch.equal(ema[k], final[k]) for k in final if final[k].is_floating_point())
    # the average is part of the training checkpoint (one atomic file): a resumed run continues it exactly
    state = torch.load(models / "finetune_checkpoint.pt", weights_only=True)
    assert state["engine"]["iteration"] == 280 and int(state["ema"]["n_averaged"]) == 280  # one update per iteration
    assert not (models / "ema_checkpoint.pt").exists()
    # what the weights depend on is recorded beside them, for inference to read
    settings = json.loads((models / "model_settings.json").read_text())
    assert settings["patch_size"] == [64, 64] and settings["target_spacing"] == [4.0, 4.0]


def test_function_run_on_a_4d_phantom_with_the_trained_model(trained, tmp_path):
    """``run function`` segments every frame of a 4D cine with the model trained above and reports."""
    from ideal_monai.data.synthetic import write_synthetic_dataset

    data = tmp_path / "cine"
    write_synthetic_dataset(data, num_cases=1, seed=11, with_cine=True, num_frames=6, first_id=50)
    for f in data.rglob("*_frame*"):  # only the cine (and its labels, the reference)
        f.unlink()
    out = tmp_path / "function"
    _bundle("function", "function.json", trained["cwd"], "--bundle_root", str(trained["root"]), "--dataset_dir",
            str(data), "--output_dir", str(out), "--patch_size", "[64, 64]", "--target_spacing", "[4.0, 4.0]")
    seg = nib.load(out / "segmentations" / "patient050_4d.nii.gz")
    assert seg.shape == nib.load(data / "patient050" / "patient050_4d.nii.gz").shape  # every frame, input grid
    report = json.loads((out / "function.json").read_text())
    entry = report["patients"][0]
    assert entry["status"] == "ok" and entry["input"] == "4D cine" and entry["unit"] == "mL"
    auto, ref = entry["auto"], entry["reference"]
    assert len(auto["curves"]["LV"]) == 6 and auto["ed_frame"] != auto["es_frame"]
    assert (ref["ed_frame"], ref["es_frame"]) == (0, 3)
    assert abs(auto["indices"]["LV_EF"] - ref["indices"]["LV_EF"]) < 15  # a 280-iteration model, 4 mm grid
    assert report["agreement"]["LV_EDV"]["n"] == 1
    rows = list(csv.DictReader((out / "function.csv").open()))
    assert {"LV_EDV", "LV_EF", "RV_EF", "MYO_mass_ED", "ed_frame", "qc_flags", "unit"} <= set(rows[0])
    for png in (entry["curve_png"], "bland_altman.png", "scatter.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "LV_EF (%)" in (out / "report.md").read_text()


def _dice(a: np.ndarray, b: np.ndarray, value: int) -> float:
    a, b = a == value, b == value
    return 2.0 * np.logical_and(a, b).sum() / max(a.sum() + b.sum(), 1)


def test_dicom_cine_through_infer_and_function_with_the_trained_model(trained, tmp_path):
    """A scanner-like DICOM cine (oblique, shuffled files, per-position trigger offsets) works like a 4D NIfTI:
    ``ideal-monai infer`` writes 4D labels on the series' geometry, ``run function`` reports curves, ED/ES and
    the values indexed to the BSA from the DICOM tags, with the series' identifiers."""
    from ideal_monai.data.synthetic import write_synthetic_dicom

    (folder, case, affine), = write_synthetic_dicom(tmp_path / "dicom", num_cases=1, seed=11, num_frames=6, first_id=50)
    before = sorted((p.name, p.stat().st_mtime_ns) for p in folder.iterdir())
    seg_dir = tmp_path / "seg"
    proc = subprocess.run([sys.executable, "-m", "ideal_monai.cli", "infer", "--dataset_dir", str(folder), "--output_dir",
                           str(seg_dir), "--bundle_root", str(trained["root"]), "--patch_size", "[64, 64]",
                           "--target_spacing", "[4.0, 4.0]"], cwd=trained["cwd"], capture_output=True, encoding="utf-8",
                          errors="replace", timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    seg = nib.load(seg_dir / "patient050.nii.gz")
    assert seg.shape == case.cine.shape
    np.testing.assert_allclose(seg.affine, affine, atol=1e-3)  # the series' oblique geometry
    assert seg.header["descrip"].tobytes().startswith(b"SeriesInstanceUID 1.")  # which series it segments
    labels = np.asarray(seg.dataobj)
    assert np.mean([_dice(labels, case.cine_label, v) for v in (1, 2, 3)]) > 0.7  # the phantom's own labels
    assert sorted((p.name, p.stat().st_mtime_ns) for p in folder.iterdir()) == before  # input untouched

    out = tmp_path / "function"
    _bundle("function", "function.json", trained["cwd"], "--bundle_root", str(trained["root"]), "--dataset_dir",
            str(folder.parent), "--output_dir", str(out), "--patch_size", "[64, 64]", "--target_spacing", "[4.0, 4.0]")
    report = json.loads((out / "function.json").read_text())
    entry = report["patients"][0]
    assert entry["status"] == "ok" and entry["input"] == "4D cine" and entry["unit"] == "mL"
    assert entry["dicom"]["series_uid"] and entry["dicom"]["phase_order"] == "TriggerTime"
    lv = [(case.cine_label[..., t] == 3).sum() for t in range(6)]
    auto = entry["auto"]
    assert (auto["ed_frame"], auto["es_frame"]) == (int(np.argmax(lv)), int(np.argmin(lv)))
    assert abs(auto["indices"]["LV_EF"] - 100.0 * (max(lv) - min(lv)) / max(lv)) < 15
    body = entry["body"]
    assert body["body_source"] == "DICOM" and body["sex"] in ("M", "F") and 1.4 < body["bsa_m2"] < 2.4
    assert auto["indexed"]["LV_EDVi"] == pytest.approx(auto["indices"]["LV_EDV"] / body["bsa_m2"])
    md = (out / "report.md").read_text()
    assert entry["dicom"]["series_uid"] in md and "## Clinical values" in md
    assert (out / entry["curve_png"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
