"""Cardiac indices, ED/ES detection, quality flags and agreement statistics on hand-built label maps."""

from __future__ import annotations

import numpy as np
import pytest

from ideal_monai.errors import IdealInputError
from ideal_monai.function import (agreement, cardiac_indices, class_volumes, find_ed_es, quality_flags,
                                  volume_curves, volume_unit)


def _heart(lv=100, myo=60, rv=80, slices=(2, 3, 4, 5), shape=(20, 20, 8)):
    """A label map with exactly ``lv``/``myo``/``rv`` voxels per listed slice (classes 3/2/1)."""
    lab = np.zeros(shape, np.uint8)
    for z in slices:
        flat = lab[..., z].reshape(-1)
        flat[:lv] = 3
        flat[lv:lv + myo] = 2
        flat[lv + myo:lv + myo + rv] = 1
        lab[..., z] = flat.reshape(shape[:2])
    return lab


def test_volumes_in_ml_from_the_header_zooms():
    unit = volume_unit((1.25, 1.25, 10.0, 0.03))  # a 4D header: the frame time is ignored
    assert unit.unit == "mL" and unit.voxel_mm3 == pytest.approx(15.625) and unit.mass_unit == "g"
    vols = class_volumes(_heart(), unit)
    assert vols["LV"] == pytest.approx(4 * 100 * 15.625 / 1000)  # 6.25 mL
    assert vols["MYO"] == pytest.approx(4 * 60 * 15.625 / 1000)
    assert vols["RV"] == pytest.approx(4 * 80 * 15.625 / 1000)


def test_unit_spacing_means_voxel_units_never_ml():
    unit = volume_unit((1.0, 1.0, 1.0))
    assert unit.unit == "voxels" and unit.voxel_mm3 is None and "voxels" in unit.mass_unit
    assert class_volumes(_heart(), unit)["LV"] == 400


@pytest.mark.parametrize("zooms", [None, (1.0, 1.0), (1.0, float("nan"), 5.0), (1.0, 0.0, 5.0), (1.0, -1.0, 5.0)])
def test_bad_spacing_is_a_one_line_error_naming_the_file(zooms):
    with pytest.raises(IdealInputError, match="patient001_4d.nii.gz") as err:
        volume_unit(zooms, where="patient001_4d.nii.gz")
    assert "\n" not in str(err.value)


def test_indices_follow_the_documented_conventions():
    unit = volume_unit((1.0, 1.0, 5.0))  # 5 mm^3 voxels
    ed, es = class_volumes(_heart(lv=100, rv=80), unit), class_volumes(_heart(lv=40, rv=50), unit)
    idx = cardiac_indices(ed, es)
    assert idx["LV_EDV"] == pytest.approx(2.0) and idx["LV_ESV"] == pytest.approx(0.8)
    assert idx["LV_SV"] == pytest.approx(1.2) and idx["LV_EF"] == pytest.approx(60.0)
    assert idx["RV_EF"] == pytest.approx(100 * (80 - 50) / 80)
    assert idx["MYO_mass_ED"] == pytest.approx(idx["MYO_volume_ED"] * 1.05)
    only_ed = cardiac_indices(ed, None)
    assert only_ed["LV_EDV"] == pytest.approx(2.0) and only_ed["LV_EF"] is None and only_ed["MYO_mass_ED"] is not None


def test_ed_es_are_the_extremes_of_the_lv_curve():
    frames = np.stack([_heart(lv=v) for v in (90, 100, 70, 40, 55, 85)], axis=-1)
    curves = volume_curves(frames, volume_unit((1.0, 1.0, 1.0)))
    assert list(curves["LV"]) == [360, 400, 280, 160, 220, 340]
    assert find_ed_es(curves["LV"]) == (1, 3)
    with pytest.raises(ValueError):
        find_ed_es([5.0])


def test_quality_flags_catch_what_breaks_volumes():
    assert quality_flags(_heart(), "ED") == []
    assert quality_flags(np.zeros((8, 8, 4), np.uint8), "ES") == ["ES: no heart segmented"]
    no_rv = _heart(rv=0)
    assert any("RV has almost no voxels" in f for f in quality_flags(no_rv, "ED"))
    assert any("RV missing on the mid-ventricular slice" in f for f in quality_flags(no_rv, "ED"))
    short = _heart(slices=(3, 4))
    assert any("only 2 slice(s)" in f for f in quality_flags(short, "ED"))
    gap = _heart(slices=(1, 2, 4, 5))
    assert any("slice gap inside the heart at slice(s) [3]" in f for f in quality_flags(gap, "ED"))


def test_agreement_statistics():
    auto, ref = [52.0, 61.0, None, 45.0, 70.0], [50.0, 60.0, 58.0, 47.0, 66.0]
    stats = agreement(auto, ref)
    d = np.array([2.0, 1.0, -2.0, 4.0])
    assert stats["n"] == 4
    assert stats["bias"] == pytest.approx(d.mean()) and stats["mae"] == pytest.approx(np.abs(d).mean())
    assert stats["sd"] == pytest.approx(d.std(ddof=1))
    assert stats["loa_high"] - stats["loa_low"] == pytest.approx(2 * 1.96 * d.std(ddof=1))
    assert stats["r"] == pytest.approx(np.corrcoef([52, 61, 45, 70], [50, 60, 47, 66])[0, 1])
    assert agreement([1.0], [2.0])["sd"] is None and agreement([], [])["n"] == 0
