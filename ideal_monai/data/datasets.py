"""2D slice datasets built from 3D volumes, and 3D volume datasets.

Training is 2D: :class:`SliceDataset` preprocesses each volume once (cached in memory with
MONAI's ``CacheDataset``, ``cache_rate`` exposed), then serves its short-axis slices
``(1, P, P)`` one by one through a 2D (random) transform.

Bad input files fail with the :class:`~ideal_monai.errors.IdealInputError` of the volume
transform (:class:`~ideal_monai.data.transforms.InputErrorCompose`). Should MONAI wrap it (it
wraps transform errors in ``RuntimeError("applying transform ...")`` in places), the places that
report errors (the entry points, ``ErrorReporter``, the inference evaluator) still find it in the
exception chain (:func:`~ideal_monai.errors.find_user_error`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from monai.data import CacheDataset
from monai.transforms import Compose

from . import io  # module attribute access, so tests can instrument io.read_shape


class SliceDataset(torch.utils.data.Dataset):
    """Short-axis slices of a list of 3D cases.

    Args:
        data: case dicts (``image``, optional ``label``, ``case_id``, optional ``frame``).
        volume_transform: deterministic 3D preprocessing giving ``(1, P, P, Z)`` tensors
            (see :func:`ideal_monai.data.transforms.volume_preprocessing`). It must keep ``Z``.
        slice_transform: optional (random) transform applied to each slice dict.
        keys: tensor keys to slice (``"label"`` is skipped when a case has none).
        cache_rate, num_workers, progress: passed to ``CacheDataset``.

    Items are dicts ``{"image": (1, P, P) float32, "label": (1, P, P) (labeled cases only),
    "case_id": str, "slice_index": int}``.
    """

    def __init__(
        self,
        data: Sequence[dict],
        volume_transform: Callable,
        slice_transform: Callable | None = None,
        keys: Sequence[str] = ("image", "label"),
        cache_rate: float = 1.0,
        num_workers: int = 0,
        progress: bool = True,
    ):
        self.cases = list(data)
        self.keys = list(keys)
        self.slice_transform = slice_transform
        # Slice counts from headers alone, so uncached volumes need not be loaded to index them.
        # volume_shape also refuses 2D/5D/empty/oversized files before anything is allocated.
        self.num_slices = [io.volume_shape(case["image"])[2] for case in self.cases]
        self.index = [(v, z) for v, n in enumerate(self.num_slices) for z in range(n)]
        self.volumes = CacheDataset(self.cases, transform=volume_transform, cache_rate=cache_rate,
                                    num_workers=num_workers or None, progress=progress and len(self.cases) > 0)

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> dict:
        v, z = self.index[i]
        volume = self.volumes[v]
        item = {"case_id": self.cases[v]["case_id"], "slice_index": z}
        if volume[self.keys[0]].shape[-1] != self.num_slices[v]:  # the index would point at wrong slices
            raise ValueError(f"volume_transform changed the slice count of {self.cases[v]['case_id']}: "
                             f"{self.num_slices[v]} -> {volume[self.keys[0]].shape[-1]}; it must keep Z")
        for key in self.keys:
            if key in volume:
                t = volume[key]
                t = t.as_tensor() if hasattr(t, "as_tensor") else torch.as_tensor(t)
                item[key] = t[..., z].clone()
        if self.slice_transform is not None:
            item = self.slice_transform(item)
        for key in self.keys:  # random spatial transforms return MetaTensors; batches stay plain
            if key in item and hasattr(item[key], "as_tensor"):
                item[key] = item[key].as_tensor()
        return item


def volume_dataset(data: Sequence[dict], volume_transform: Compose, cache_rate: float = 1.0,
                   num_workers: int = 0, progress: bool = False) -> CacheDataset:
    """3D volumes ``(1, P, P, Z)`` for validation (MONAI ``CacheDataset``)."""
    return CacheDataset(list(data), transform=volume_transform, cache_rate=cache_rate,
                        num_workers=num_workers or None, progress=progress)


def slice_loader(dataset: torch.utils.data.Dataset, batch_size: int, shuffle: bool = True, num_workers: int = 0,
                 drop_last: bool = True, sampler: torch.utils.data.Sampler | None = None):
    """A MONAI ``DataLoader`` over ``dataset``, or None when it is empty (e.g. no unlabeled data).

    ``drop_last`` only applies when the dataset holds more than one batch, so a tiny labeled set
    still yields one (smaller) batch per epoch.

    With ``num_workers > 0`` the workers are persistent: the trainers cycle a small labeled set many
    times per epoch (7 ACDC patients are ~10 batches of 12), and re-forking every worker on each pass
    made a GPU fine-tuning step several times slower (docs/history/BENCHMARKS.md, "GPU").
    """
    from monai.data import DataLoader

    if len(dataset) == 0:
        return None
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle and sampler is None, sampler=sampler,
                      num_workers=num_workers, drop_last=drop_last and len(dataset) > batch_size,
                      persistent_workers=num_workers > 0)
