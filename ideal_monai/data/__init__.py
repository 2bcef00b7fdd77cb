"""Data layer: discovery, splits, validated I/O, MONAI transforms, slice/volume datasets, phantoms."""

from .datasets import SliceDataset, slice_loader, volume_dataset
from .discovery import discover_cases
from .io import IMAGE_SUFFIXES, LABEL_VALUES, check_same_grid, load_volume, read_shape, save_label_like
from .splits import pretraining_cases, split_cases, split_dataset
from .transforms import (
    InPlaneSpacingd,
    InputErrorCompose,
    LoadCased,
    SliceAxisOrientationd,
    slice_augmentation,
    volume_preprocessing,
)

__all__ = [
    "IMAGE_SUFFIXES", "LABEL_VALUES", "InPlaneSpacingd", "InputErrorCompose", "LoadCased", "SliceAxisOrientationd", "SliceDataset", "slice_loader", "check_same_grid", "discover_cases",
    "load_volume", "read_shape", "save_label_like", "slice_augmentation", "split_cases", "split_dataset", "pretraining_cases", "volume_dataset",
    "volume_preprocessing",
]
