"""The 4D phantoms' ground-truth labels give the generator's analytic cardiac function (within 2 %)."""

from __future__ import annotations

import numpy as np
import pytest

from ideal_monai.data.synthetic import generate_case
from ideal_monai.function import cardiac_indices, find_ed_es, volume_curves, volume_unit

FRAMES = 8


@pytest.fixture(scope="module", params=[0, 1, 2])
def phantom(request):
    return generate_case(request.param, num_frames=FRAMES)


def test_volume_curve_is_a_plausible_cardiac_cycle(phantom):
    lv, rv, myo = (phantom.volumes[k] for k in ("LV", "RV", "MYO"))
    es = FRAMES // 2
    assert np.all(np.diff(lv[:es + 1]) < 0) and np.all(np.diff(lv[es:]) > 0)  # contraction, then relaxation
    assert np.all(np.diff(rv[:es + 1]) < 0) and np.all(np.diff(rv[es:]) > 0)
    np.testing.assert_allclose(myo, myo[0], rtol=1e-9)  # incompressible myocardium: it thickens
    ef = 100 * (lv[0] - lv[es]) / lv[0]
    assert 35 < ef < 80 and 30 < lv[0] < 300  # mL: a (small to large) human LV


def test_function_from_ground_truth_labels_matches_the_analytic_values(phantom):
    unit = volume_unit(phantom.spacing)
    assert unit.unit == "mL"
    curves = volume_curves(phantom.cine_label, unit)
    ed, es = find_ed_es(curves["LV"])
    assert (ed, es) == (0, FRAMES // 2)
    measured = cardiac_indices({k: v[ed] for k, v in curves.items()}, {k: v[es] for k, v in curves.items()})
    analytic = cardiac_indices({k: v[0] for k, v in phantom.volumes.items()},
                               {k: v[FRAMES // 2] for k, v in phantom.volumes.items()})
    for name in ("LV_EDV", "LV_ESV", "LV_EF", "RV_EDV", "RV_ESV", "RV_EF", "MYO_mass_ED"):
        assert measured[name] == pytest.approx(analytic[name], rel=0.02), name
    np.testing.assert_allclose(curves["MYO"], phantom.volumes["MYO"], rtol=0.02)


def test_cine_frames_match_the_ed_and_es_volumes(phantom):
    assert phantom.cine_label.shape == (*phantom.ed_label.shape, FRAMES)
    np.testing.assert_array_equal(phantom.cine_label[..., 0], phantom.ed_label)
    np.testing.assert_array_equal(phantom.cine_label[..., FRAMES // 2], phantom.es_label)
    no_cine = generate_case(0)
    assert no_cine.cine_label is None and no_cine.volumes["LV"].shape == (2,)
