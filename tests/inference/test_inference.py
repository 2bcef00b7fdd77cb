"""Inference through the bundle's ``inference`` run id: geometry round trips, 4D, failures, overwrite."""

from __future__ import annotations

import hashlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from ideal_monai.bundle_runner import run_bundle
from ideal_monai.networks import DualDecoderUNet

FEATURES = [4, 8, 8, 8, 8]
SMALL = dict(patch_size=[32, 32], features=FEATURES, sw_batch_size=8)


@pytest.fixture(scope="module")
def bundle_root(tmp_path_factory) -> Path:
    """A bundle root whose ``models/model.pt`` is a small random network (geometry does not need training)."""
    root = tmp_path_factory.mktemp("bundle")
    (root / "models").mkdir()
    torch.manual_seed(0)
    torch.save(DualDecoderUNet(features=FEATURES).state_dict(), root / "models" / "model.pt")
    return root


def _oblique_affine(spacing=(1.4, 1.6, 8.0), angle=0.4, flip_x=True) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    rot = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]]) @ np.array([[1, 0, 0], [0, 0.9, -0.44], [0, 0.44, 0.9]])
    aff = np.eye(4)
    aff[:3, :3] = rot @ np.diag(spacing)
    if flip_x:
        aff[:3, 0] *= -1
    aff[:3, 3] = (12.5, -40.0, 7.0)
    return aff


def _write(path: Path, shape, affine, seed=0) -> Path:
    rng = np.random.default_rng(seed)
    data = (rng.random(shape) * 1000).astype(np.int16)
    nib.save(nib.Nifti1Image(data, affine), str(path))
    return path


def _digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_output_grid_identical_to_input_for_oblique_flipped_odd_volumes(bundle_root, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    cases = {
        "oblique_odd": ((37, 29, 5), _oblique_affine()),
        "larger_than_patch": ((45, 51, 3), _oblique_affine(angle=-1.1, flip_x=False)),
        "identity": ((20, 33, 4), np.eye(4)),
    }
    for name, (shape, aff) in cases.items():
        _write(images / f"{name}.nii.gz", shape, aff)
    before = _digest(images)
    out = tmp_path / "out"
    run_bundle("inference", bundle_root=str(bundle_root), dataset_dir=str(images), output_dir=str(out),
               save_uncertainty=True, save_probabilities=True, **SMALL)
    assert _digest(images) == before, "inputs must be left untouched"
    for name, (shape, aff) in cases.items():
        label = nib.load(str(out / f"{name}.nii.gz"))
        assert label.shape == shape
        np.testing.assert_allclose(label.affine, nib.load(str(images / f"{name}.nii.gz")).affine, atol=1e-6)
        assert label.get_data_dtype() == np.uint8
        assert set(np.unique(np.asarray(label.dataobj))) <= {0, 1, 2, 3}
        unc = nib.load(str(out / f"{name}_uncertainty.nii.gz"))
        assert unc.shape == shape
        probs = np.asarray(nib.load(str(out / f"{name}_probs.nii.gz")).dataobj)
        assert probs.shape == shape + (4,)
    # no temporary files left behind
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


def test_4d_cine_is_segmented_frame_by_frame(bundle_root, tmp_path):
    images = tmp_path / "cine"
    images.mkdir()
    _write(images / "patient001_4d.nii.gz", (24, 26, 3, 4), _oblique_affine())
    out = tmp_path / "out"
    run_bundle("inference", bundle_root=str(bundle_root), dataset_dir=str(images), output_dir=str(out), **SMALL)
    label = nib.load(str(out / "patient001_4d.nii.gz"))
    assert label.shape == (24, 26, 3, 4)
    assert np.allclose(label.affine, nib.load(str(images / "patient001_4d.nii.gz")).affine)


def test_corrupt_file_is_reported_and_the_rest_still_runs(bundle_root, tmp_path, capsys):
    images = tmp_path / "images"
    images.mkdir()
    _write(images / "good_a.nii.gz", (20, 22, 3), np.eye(4))
    _write(images / "good_b.nii.gz", (21, 20, 2), np.eye(4), seed=1)
    (images / "broken.nii.gz").write_bytes(b"\x1f\x8b\x08not really gzip")
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_info:
        run_bundle("inference", bundle_root=str(bundle_root), dataset_dir=str(images), output_dir=str(out), **SMALL)
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert "broken.nii.gz" in err and "3 case(s): 2 done, 1 failed, 0 left" in err
    assert sorted(p.name for p in out.glob("*.nii.gz")) == ["good_a.nii.gz", "good_b.nii.gz"]


def test_existing_up_to_date_output_is_kept_and_overwrite_redoes_it(bundle_root, tmp_path, capsys):
    images = tmp_path / "images"
    images.mkdir()
    _write(images / "case.nii.gz", (20, 22, 3), np.eye(4))
    out = tmp_path / "out"
    out.mkdir()
    (out / "case.nii.gz").write_bytes(b"precious")  # newer than the input: counts as done
    run_bundle("inference", bundle_root=str(bundle_root), dataset_dir=str(images), output_dir=str(out), **SMALL)
    assert (out / "case.nii.gz").read_bytes() == b"precious"
    assert "0 file(s) segmented" in capsys.readouterr().err
    run_bundle("inference", bundle_root=str(bundle_root), dataset_dir=str(images), output_dir=str(out), overwrite=True,
               **SMALL)
    assert nib.load(str(out / "case.nii.gz")).shape == (20, 22, 3)


def test_missing_model_is_a_one_line_input_error(tmp_path):
    from ideal_monai.errors import IdealInputError, find_input_error

    images = tmp_path / "images"
    images.mkdir()
    _write(images / "case.nii.gz", (20, 22, 3), np.eye(4))
    with pytest.raises(Exception) as info:
        run_bundle("inference", bundle_root=str(tmp_path), dataset_dir=str(images), output_dir=str(tmp_path / "o"), **SMALL)
    err = find_input_error(info.value)
    assert isinstance(err, IdealInputError) and "model.pt" in str(err)
    assert not (tmp_path / "o").exists()
