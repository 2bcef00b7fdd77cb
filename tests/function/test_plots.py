"""The function run's figures: valid PNGs, written without pyplot (no figure left open in a long process)."""

from __future__ import annotations

import matplotlib
import pytest
from PIL import Image

from ideal_monai.function import plot_agreement, plot_volume_curves


@pytest.fixture
def no_pyplot_figures():
    import matplotlib.pyplot as plt

    before = plt.get_fignums()
    backend = matplotlib.get_backend()
    yield
    assert plt.get_fignums() == before and matplotlib.get_backend() == backend


def test_volume_curves_png(tmp_path, no_pyplot_figures):
    result = {"frames": [0, 1, 2, 3], "curves": {"LV": [150.0, 110.0, 70.0, 120.0], "RV": [160.0, 120.0, 90.0, 140.0]},
              "ed_frame": 0, "es_frame": 2}
    path = tmp_path / "curves" / "p1.png"
    path.parent.mkdir()
    plot_volume_curves({"patient_id": "p1", "unit": "mL", "auto": result, "reference": None}, path)
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size[0] > 200
    assert [p.name for p in path.parent.iterdir()] == ["p1.png"]  # no temporary left beside it


def test_agreement_pngs_with_missing_values(tmp_path, no_pyplot_figures):
    auto = [{"LV_EF": 55.0, "LV_EDV": 150.0}, {"LV_EF": 40.0, "LV_EDV": None}, {"LV_EF": 62.0, "LV_EDV": 120.0}]
    ref = [{"LV_EF": 57.0, "LV_EDV": 155.0}, {"LV_EF": 43.0, "LV_EDV": 180.0}, {"LV_EF": 60.0, "LV_EDV": 118.0}]
    plot_agreement(auto, ref, ["LV_EF", "LV_EDV"], {"LV_EF": "%", "LV_EDV": "mL"}, tmp_path / "ba.png", tmp_path / "sc.png")
    for name in ("ba.png", "sc.png"):
        with Image.open(tmp_path / name) as im:
            assert im.format == "PNG"
