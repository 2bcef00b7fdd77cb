"""KeepHeartComponentsd: a far-away blob larger than the true structure must not replace it."""

import torch
from monai.data import MetaTensor

from ideal_monai.transforms import KeepHeartComponentsd

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
