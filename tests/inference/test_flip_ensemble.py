"""Test-time flip ensembling: ``FlipEnsembleInferer`` and the inference config's ``test_time_flips`` key."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.inferers import SimpleInferer, SliceInferer

from ideal_monai.bundle_runner import run_bundle
from ideal_monai.errors import IdealInputError, find_input_error
from ideal_monai.inference import IN_PLANE_FLIPS, FlipEnsembleInferer
from ideal_monai.networks import DualDecoderUNet

FEATURES = [4, 8, 8, 8, 8]
SMALL = dict(patch_size=[32, 32], target_spacing=[1.0, 1.0], features=FEATURES, sw_batch_size=8, precision="fp32")  # 1 mm files: no resampling


class _PositionalNet(torch.nn.Module):
    """``(B, 1, H, W) -> (B, 2, H, W)``: depends on where a pixel is, so it is not flip-equivariant."""

    def forward(self, x):
        h, w = x.shape[-2:]
        ramp = torch.linspace(0, 1, h)[:, None] + 2 * torch.linspace(0, 1, w)[None, :]
        return torch.cat([x * ramp, x + ramp], dim=1)


def _slice_inferer():
    return SliceInferer(roi_size=(16, 12), sw_batch_size=4, spatial_dim=2)


def test_no_flips_is_the_wrapped_inferer():
    x = torch.rand(1, 1, 16, 12, 5)
    net = _PositionalNet()
    torch.testing.assert_close(FlipEnsembleInferer(_slice_inferer(), flip_axes=[])(x, net), _slice_inferer()(x, net))


def test_ensemble_makes_the_prediction_flip_equivariant():
    torch.manual_seed(0)
    x = torch.rand(2, 1, 16, 12, 5)
    net = _PositionalNet()
    ensemble = FlipEnsembleInferer(_slice_inferer())
    out = ensemble(x, net)
    assert out.shape == (2, 2, 16, 12, 5)
    for axes in IN_PLANE_FLIPS:
        dims = [a + 2 for a in axes]
        plain = _slice_inferer()
        # the property the ensemble adds: flipping the input flips the output
        assert not torch.allclose(plain(torch.flip(x, dims), net), torch.flip(plain(x, net), dims))
        torch.testing.assert_close(ensemble(torch.flip(x, dims), net), torch.flip(out, dims))


def test_ensemble_is_the_mean_of_the_flipped_back_outputs():
    x = torch.rand(1, 1, 8, 6)
    net = _PositionalNet()
    one_flip = FlipEnsembleInferer(SimpleInferer(), flip_axes=[(1,)])(x, net)
    torch.testing.assert_close(one_flip, (net(x) + torch.flip(net(torch.flip(x, [3])), [3])) / 2)


@pytest.mark.parametrize("flip_axes", [[()], [(0, 0)], [(-1,)]])
def test_bad_flip_axes_are_rejected(flip_axes):
    with pytest.raises(ValueError, match="flip_axes"):
        FlipEnsembleInferer(SimpleInferer(), flip_axes=flip_axes)


def test_flip_axis_beyond_the_input_is_a_clear_error():
    with pytest.raises(ValueError, match="flip axis 2 does not exist in a 2D input"):
        FlipEnsembleInferer(SimpleInferer(), flip_axes=[(2,)])(torch.rand(1, 1, 8, 8), _PositionalNet())


@pytest.fixture(scope="module")
def bundle_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("bundle")
    (root / "models").mkdir()
    torch.manual_seed(0)
    torch.save(DualDecoderUNet(features=FEATURES).state_dict(), root / "models" / "model.pt")
    return root


def _segment(bundle_root: Path, volume: np.ndarray, folder: Path, **overrides) -> tuple[np.ndarray, np.ndarray]:
    (folder / "images").mkdir(parents=True)
    nib.save(nib.Nifti1Image(volume, np.eye(4)), str(folder / "images" / "case.nii.gz"))
    run_bundle("inference", bundle_root=str(bundle_root), dataset_dir=str(folder / "images"),
               output_dir=str(folder / "out"), save_probabilities=True, **SMALL, **overrides)
    label = np.asarray(nib.load(str(folder / "out" / "case.nii.gz")).dataobj)
    probs = np.asarray(nib.load(str(folder / "out" / "case_probs.nii.gz")).dataobj)
    return label, probs


def test_bundle_inference_with_test_time_flips_segments_a_flipped_scan_as_the_flipped_segmentation(bundle_root, tmp_path):
    """A user flipping a scan (another scanner's orientation convention) gets the same heart back, flipped."""
    volume = (np.random.default_rng(0).random((32, 32, 3)) * 1000).astype(np.float32)  # = patch: no crop/pad
    flipped = volume[::-1, :, :].copy()
    label, probs = _segment(bundle_root, volume, tmp_path / "a")  # the default: test_time_flips=True
    label_f, probs_f = _segment(bundle_root, flipped, tmp_path / "b")
    assert label.shape == (32, 32, 3) and probs.shape == (32, 32, 3, 4)
    np.testing.assert_allclose(probs_f, probs[::-1], atol=1e-5)
    assert (label_f == label[::-1]).mean() > 0.999
    # Without the ensemble the random network is not flip-equivariant: the check above can fail.
    _, plain = _segment(bundle_root, volume, tmp_path / "c", test_time_flips=False)
    _, plain_f = _segment(bundle_root, flipped, tmp_path / "d", test_time_flips=False)
    assert np.abs(plain_f - plain[::-1]).max() > 1e-3


def test_test_time_flips_must_be_a_bool(bundle_root, tmp_path):
    (tmp_path / "images").mkdir()
    nib.save(nib.Nifti1Image(np.zeros((32, 32, 2), np.float32), np.eye(4)), str(tmp_path / "images" / "c.nii.gz"))
    with pytest.raises(Exception) as info:
        run_bundle("inference", bundle_root=str(bundle_root), dataset_dir=str(tmp_path / "images"),
                   output_dir=str(tmp_path / "out"), test_time_flips="yes", **SMALL)
    err = find_input_error(info.value)
    assert isinstance(err, IdealInputError) and "--test_time_flips" in str(err)
    assert not (tmp_path / "out").exists()
