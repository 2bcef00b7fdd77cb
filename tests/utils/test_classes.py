"""One table of the segmentation classes: every module reads it, and every picture draws its colours."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import torch

import ideal_monai
from ideal_monai.data.io import LABEL_VALUES
from ideal_monai.evaluation.metrics import DEFAULT_CLASS_NAMES
from ideal_monai.evaluation.overlays import _rgba
from ideal_monai.function.indices import ACDC_CLASSES
from ideal_monai.handlers.tracking import ValidationOverlays
from ideal_monai.networks import DualDecoderUNet
from ideal_monai.utils.classes import CLASS_COLOURS, CLASS_NAMES, CLASSES, NUM_CLASSES


def test_table_is_the_acdc_convention_and_every_module_reads_it():
    assert CLASS_NAMES == {0: "background", 1: "RV", 2: "MYO", 3: "LV"}
    assert ideal_monai.CLASS_NAMES == CLASS_NAMES and ideal_monai.NUM_CLASSES == NUM_CLASSES == 4
    assert LABEL_VALUES == (0, 1, 2, 3)
    assert DEFAULT_CLASS_NAMES == {c.label: c.name for c in CLASSES}
    assert ACDC_CLASSES == {c.name: c.label for c in CLASSES}
    assert DualDecoderUNet(num_streams=1).out_channels == NUM_CLASSES
    colours = list(CLASS_COLOURS.values())
    assert len(set(colours)) == len(colours) and all(0 <= v <= 1 for c in colours for v in c)


def _label_map() -> torch.Tensor:
    """(H, W) map with one 2x2 block per class."""
    label = torch.zeros(8, 8, dtype=torch.long)
    for i, c in enumerate(CLASSES):
        label[2 * i : 2 * i + 2, :2] = c.label
    return label


def test_tensorboard_images_and_evaluation_overlays_draw_each_class_in_its_table_colour():
    label = _label_map()
    # TensorBoard: opaque colours (alpha 1) on the grey slice, read back from the written batch.
    written = {}
    writer = SimpleNamespace(add_images=lambda tag, images, global_step: written.update(images=images),
                             flush=lambda: None)
    handler = ValidationOverlays(writer, num_images=1, alpha=1.0)
    image = torch.rand(1, 8, 8, 1)
    pred = label[None, :, :, None]
    engine = SimpleNamespace(state=SimpleNamespace(output=[{"image": image, "pred": pred, "label": pred}], epoch=1))
    handler.reset()
    handler.collect(engine)
    handler.write(engine)
    tb = written["images"][0]  # (3, H, 2W)
    # Evaluation overlay layer of the same map.
    rgba = _rgba(label.numpy(), [c.label for c in CLASSES], alpha=0.45)
    for i, c in enumerate(CLASSES):
        np.testing.assert_allclose(tb[:, 2 * i, 0].numpy(), c.colour, atol=1e-6)
        np.testing.assert_allclose(rgba[2 * i, 0, :3], c.colour, atol=1e-6)
