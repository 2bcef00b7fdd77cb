"""The configs spell out their preprocessing and augmentation as MONAI transforms (as the model-zoo
bundles do): those pipelines must give exactly what the library's ``volume_preprocessing`` and
``slice_augmentation`` give for the same settings, so a Python user and a bundle user train and infer
on the same slices, and a config edit that drifts from the library shows here."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser

from ideal_monai.data.transforms import slice_augmentation, volume_preprocessing
from tests.data.test_transforms import oblique_affine, write_pair

CONFIGS = Path(__file__).resolve().parents[2] / "bundle" / "configs"


def _parsed(config: str, item: str, **overrides):
    parser = ConfigParser()
    parser.read_config(CONFIGS / config)
    parser.update(overrides)
    parser.get_parsed_content("imports")  # the configs' "$import ..." lines, as a workflow's initialize runs them
    return parser.get_parsed_content(item)


@pytest.mark.parametrize("target_spacing", [[1.25, 1.25], [2.0, 1.5], []])
@pytest.mark.parametrize("config, item, keys", [
    ("train.json", "train#preprocessing", ["image", "label"]),
    ("train.json", "train#unlabeled_preprocessing", ["image"]),
    ("train.json", "validate#preprocessing", ["image", "label"]),
    ("pretrain.json", "pretraining#preprocessing", ["image"]),
    ("inference.json", "preprocessing", ["image"]),
])
def test_config_preprocessing_is_the_library_pipeline(tmp_path, config, item, keys, target_spacing):
    case, _, _ = write_pair(tmp_path, (40, 36, 5), oblique_affine((1.3, 0.9, 6.0)))
    case = {k: case[k] for k in keys}
    from_config = _parsed(config, item, patch_size=[32, 32], target_spacing=target_spacing)(dict(case))
    from_library = volume_preprocessing(keys=keys, patch_size=(32, 32), target_spacing=target_spacing)(dict(case))
    for key in keys:
        assert from_config[key].dtype == from_library[key].dtype
        torch.testing.assert_close(from_config[key].as_tensor(), from_library[key].as_tensor(), rtol=0, atol=0)
        np.testing.assert_array_equal(from_config[key].affine, from_library[key].affine)
    # the same transforms are recorded, so the inference's inversion to the input grid is the same too
    assert [t["class"] for t in from_config["image"].applied_operations] == \
        [t["class"] for t in from_library["image"].applied_operations]


@pytest.mark.parametrize("intensity", [0.0, 0.3])
@pytest.mark.parametrize("item, keys", [("train#augmentation", ["image", "label"]),
                                        ("train#unlabeled_augmentation", ["image"])])
def test_config_augmentation_is_the_library_pipeline(item, keys, intensity):
    patch = 48
    from_config = _parsed("train.json", item, patch_size=[patch, patch], aug_rotate_deg=30.0, aug_scale=0.1,
                          aug_intensity=intensity)
    from_library = slice_augmentation(keys=keys, rotate_deg=30.0, scale=0.1, translate_px=0.1 * patch,
                                      intensity=intensity)
    from_config.set_random_state(seed=7)
    from_library.set_random_state(seed=7)
    rng = np.random.default_rng(0)
    for _ in range(6):  # several draws: flips, affine and intensity each on and off
        sample = {"image": torch.as_tensor(rng.random((1, patch, patch), dtype=np.float32))}
        if "label" in keys:
            sample["label"] = torch.as_tensor(rng.integers(0, 4, (1, patch, patch), dtype=np.uint8))
        a, b = from_config(dict(sample)), from_library(dict(sample))
        for key in keys:
            assert a[key].dtype == b[key].dtype
            torch.testing.assert_close(torch.as_tensor(a[key]), torch.as_tensor(b[key]), rtol=0, atol=0)


def test_negative_intensity_is_refused_by_name(tmp_path):
    """The factory refused a negative strength; the config's settings check does it now, naming the key."""
    from ideal_monai.errors import IdealInputError
    from ideal_monai.utils import check_config_values

    with pytest.raises(IdealInputError, match="aug_intensity"):
        check_config_values({"aug_intensity": -0.1})
