"""The stream-disagreement active-learning score (no monailabel needed)."""

from __future__ import annotations

import shutil

import pytest
import torch

from ideal_monai.bundle_runner import bundle_dir, write_config_values
from ideal_monai.networks import DualDecoderUNet
from ideal_monai.label.scoring import DisagreementScorer, heart_disagreement


def test_heart_disagreement_mean_inside_predicted_heart():
    probs = torch.zeros(4, 2, 2, 1)
    probs[0] = 1.0  # background everywhere ...
    probs[:, 0, 0, 0] = torch.tensor([0.0, 0.0, 0.0, 1.0])  # ... except one LV voxel
    dis = torch.tensor([[0.8, 0.1], [0.1, 0.1]])[None, ..., None]
    out = heart_disagreement(torch.cat([probs, dis]))
    assert out == {"score": pytest.approx(0.8), "heart_voxels": 1}
    probs[:, 0, 0, 0] = torch.tensor([1.0, 0.0, 0.0, 0.0])  # no heart: mean over the volume
    assert heart_disagreement(torch.cat([probs, dis]))["score"] == pytest.approx(0.275)


def _small_bundle(bundle):
    """A copy of the configs at a small width, with untrained weights of that network."""
    shutil.copytree(bundle_dir() / "configs", bundle / "configs")
    write_config_values(bundle / "configs", {"features": [4, 8, 16, 32, 64], "patch_size": [64, 64]})
    (bundle / "models").mkdir()
    torch.manual_seed(0)
    torch.save(DualDecoderUNet(features=[4, 8, 16, 32, 64]).state_dict(), bundle / "models" / "model.pt")


def test_scorer_on_bundle_copy(tmp_path, synthetic_dataset):
    bundle = tmp_path / "ideal"
    _small_bundle(bundle)
    scorer = DisagreementScorer(bundle, device="cpu")
    image = next(synthetic_dataset.glob("patient*/patient*_frame01.nii.gz"))
    result = scorer.score(image)
    assert 0.0 <= result["score"] <= 1.0
    assert result["model_version"] == scorer.model_version
    assert scorer.score(image)["score"] == pytest.approx(result["score"])  # deterministic (eval mode)


def test_scorer_scores_a_4d_cine_over_its_frames(tmp_path):
    from ideal_monai.data.synthetic import write_synthetic_dataset

    bundle = tmp_path / "ideal"
    _small_bundle(bundle)
    write_synthetic_dataset(tmp_path / "data", num_cases=1, seed=3, with_cine=True, num_frames=3)
    scorer = DisagreementScorer(bundle, device="cpu")
    result = scorer.score(tmp_path / "data" / "patient001" / "patient001_4d.nii.gz")
    assert result["frames"] == 3 and 0.0 <= result["score"] <= 1.0
    ed = scorer.score(tmp_path / "data" / "patient001" / "patient001_frame01.nii.gz")
    assert "frames" not in ed and result["heart_voxels"] > ed["heart_voxels"]  # three frames' hearts
