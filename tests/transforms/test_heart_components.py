"""KeepHeartComponentsd: a far-away blob larger than the true structure must not replace it."""

from pathlib import Path

import torch
from monai.bundle import ConfigParser
from monai.data import MetaTensor

from ideal_monai.transforms import KeepHeartComponentsd
from ideal_monai.transforms.heart_components import in_plane_ball

RV, MYO, LV = 1, 2, 3


def _heart_and_far_blob() -> torch.Tensor:
    """``(1, 40, 40, 3)``: a heart (MYO square around a small LV, RV beside it), a detached RV fragment
    near it and, far away, an LV-labelled blob larger than the true LV."""
    labels = torch.zeros(1, 40, 40, 3, dtype=torch.uint8)
    labels[0, 5:15, 5:15] = MYO
    labels[0, 8:12, 8:12] = LV  # true LV: 4 x 4 x 3 = 48 voxels, inside the ring
    labels[0, 5:15, 15:20] = RV
    labels[0, 16, 21] = RV  # a detached RV fragment near the heart (not touching anything)
    labels[0, 30:36, 30:36] = LV  # far false positive: 6 x 6 x 3 = 108 voxels
    return labels


def test_keeps_the_true_structure_inside_the_heart_not_the_larger_far_blob():
    labels = _heart_and_far_blob()
    before = labels.clone()
    out = KeepHeartComponentsd("pred")({"pred": labels})["pred"]
    assert torch.equal(labels, before)  # input untouched
    assert (out[0, 8:12, 8:12] == LV).all()  # the true LV survives
    assert (out[0, 30:36, 30:36] == 0).all()  # the far blob is gone
    assert (out[0, 16, 21] == 0).all()  # a detached fragment is gone
    assert (out == RV).sum() == 10 * 5 * 3 and (out == MYO).sum() == (before == MYO).sum()
    # MONAI's per-class step alone (the previous post-processing) keeps the far blob and drops the true LV
    from monai.transforms import KeepLargestConnectedComponent

    per_class = KeepLargestConnectedComponent(applied_labels=[RV, MYO, LV], independent=True)(before.clone())
    assert (per_class[0, 8:12, 8:12] == 0).all() and (per_class[0, 30:36, 30:36] == LV).all()


def test_empty_labels_is_the_identity_and_metadata_is_kept():
    labels = MetaTensor(_heart_and_far_blob(), meta={"filename_or_obj": "patient030_frame02.nii.gz"})
    same = KeepHeartComponentsd("pred", labels=[])({"pred": labels})["pred"]
    assert torch.equal(same, labels)
    out = KeepHeartComponentsd("pred")({"pred": labels})["pred"]
    assert isinstance(out, MetaTensor) and out.meta["filename_or_obj"] == "patient030_frame02.nii.gz"
    assert out.dtype == labels.dtype and out.shape == labels.shape


def _heart_with_rv_apart(gap: int) -> torch.Tensor:
    """``(1, 40, 40, 3)``: MYO ring around the LV, the RV ``gap`` background voxels beside the MYO (a free
    wall predicted as background), and a far LV-labelled blob."""
    labels = torch.zeros(1, 40, 40, 3, dtype=torch.uint8)
    labels[0, 5:15, 5:15] = MYO
    labels[0, 7:13, 7:13] = LV  # 6 x 6 x 3 = 108 voxels
    labels[0, 4:16, 15 + gap:25 + gap] = RV  # 12 x 10 x 3 = 360 voxels: the largest structure
    labels[0, 32:38, 32:38] = LV  # far false positive, 3 x 3 ... 6 x 6 x 3
    return labels


def test_bridge_keeps_a_true_rv_a_few_voxels_from_the_myocardium():
    labels = _heart_with_rv_apart(gap=2)
    rv = (labels == RV).sum()
    # Without a bridge the RV (the larger piece) is "the heart", and MYO and LV are deleted.
    plain = KeepHeartComponentsd("pred")({"pred": labels})["pred"]
    assert (plain == MYO).sum() == 0 and (plain == LV).sum() == 0 and (plain == RV).sum() == rv
    spaced = MetaTensor(labels.clone(), affine=torch.diag(torch.tensor([1.5, 1.5, 10.0, 1.0])))
    out = KeepHeartComponentsd("pred", bridge_mm=3.0)({"pred": spaced})["pred"]
    assert (out == RV).sum() == rv and (out == MYO).sum() == (labels == MYO).sum()
    assert (out[0, 7:13, 7:13] == LV).all() and (out[0, 32:38, 32:38] == 0).all()  # the far blob still goes
    assert torch.equal(spaced.as_tensor(), labels)  # input untouched, nothing added
    # The bridge is in mm: 3 mm at 1.5 mm spacing spans 2 voxels, not a gap of 3.
    wider = MetaTensor(_heart_with_rv_apart(gap=3), affine=torch.diag(torch.tensor([1.5, 1.5, 10.0, 1.0])))
    assert (KeepHeartComponentsd("pred", bridge_mm=3.0)({"pred": wider})["pred"] == MYO).sum() == 0


def test_bridge_never_joins_across_slices():
    labels = torch.zeros(1, 20, 20, 5, dtype=torch.uint8)
    labels[0, 2:10, 2:10, 0:2] = MYO  # slices 0-1
    labels[0, 2:6, 2:6, 4] = LV  # slice 4: two empty slices between, same in-plane place
    out = KeepHeartComponentsd("pred", bridge_mm=5.0)({"pred": labels})["pred"]
    assert (out == LV).sum() == 0 and (out == MYO).sum() == (labels == MYO).sum()


def test_in_plane_ball_follows_the_spacing():
    ball = in_plane_ball(3.0, (1.5, 1.0, 10.0))
    assert ball.shape == (5, 7, 1) and ball[2, 3, 0] and ball[0, 3, 0] and not ball[0, 0, 0]
    assert in_plane_ball(3.0, (1.0, 1.0, 1.0), slice_axis=0).shape == (1, 7, 7)


def test_inference_config_passes_the_bridge_and_the_switch():
    """``inference.json``'s post-processing builds this transform from ``largest_component`` and
    ``heart_bridge_mm`` (what ``--heart_bridge_mm 3`` on the command line reaches)."""
    configs = Path(__file__).resolve().parents[2] / "bundle" / "configs"

    def heart_step(**override):
        parser = ConfigParser()
        parser.read_config(configs / "inference.json")
        parser.update(override)
        steps = parser.get_parsed_content("postprocessing").transforms
        return [t for t in steps if isinstance(t, KeepHeartComponentsd)][0]

    default = heart_step()
    assert default.labels == [RV, MYO, LV] and default.bridge_mm == 0.0
    assert heart_step(heart_bridge_mm=3.0).bridge_mm == 3.0
    assert heart_step(largest_component=False).labels == []
