"""Patient-level labeled / unlabeled / validation splits.

A patient's frames and slices always land in one set (a labeled patient's unlabeled cine frames
are left out rather than given to the unlabeled set). In a split, unlabeled cases carry no
``"label"`` key at all, so no code path downstream can read an unlabeled case's label.
"""

from __future__ import annotations

import json
import os
import random
from collections import Counter
from pathlib import Path

from ..errors import IdealInputError


def _by_patient(cases: list[dict]) -> dict[str, list[dict]]:
    groups: dict[str, list[dict]] = {}
    for case in cases:
        groups.setdefault(case["patient_id"], []).append(case)
    return groups


def _unlabeled(cases: list[dict]) -> list[dict]:
    return [{k: v for k, v in c.items() if k != "label"} for c in cases]


def _labeled(cases: list[dict]) -> list[dict]:
    return [c for c in cases if "label" in c]


def _read_splits_file(splits_file: Path, labeled_key: str) -> tuple[list[str], list[str], list[str]]:
    try:
        spec = json.loads(Path(splits_file).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise IdealInputError(splits_file, f"cannot be read as JSON: {e}") from None
    if not isinstance(spec, dict):
        raise IdealInputError(splits_file, f"must hold a JSON object with 'train'/'val' lists, got {type(spec).__name__}")
    for key in ("train", labeled_key):
        if not isinstance(spec.get(key), list):
            raise IdealInputError(splits_file, f"has no list {key!r} (keys: {sorted(spec)})")
    train, labeled, val = spec["train"], spec[labeled_key], spec.get("val", [])
    if not isinstance(val, list):
        raise IdealInputError(splits_file, f"'val' must be a list of patient ids, got {type(val).__name__}")
    for key, names in (("train", train), (labeled_key, labeled), ("val", val)):
        bad = [n for n in names if not isinstance(n, str)]
        if bad:
            raise IdealInputError(splits_file, f"list {key!r} must hold patient id strings, got {bad[:3]!r}")
    for key, names in (("train", train), (labeled_key, labeled), ("val", val)):
        dups = sorted(n for n, k in Counter(names).items() if k > 1)
        if dups:
            raise IdealInputError(splits_file, f"list {key!r} names the same patient twice: {dups[:5]}")
    overlap = sorted(set(train) & set(val))
    if overlap:
        raise IdealInputError(splits_file, f"patients in both 'train' and 'val': {overlap[:5]}")
    outside = sorted(set(labeled) - set(train))
    if outside:
        raise IdealInputError(splits_file, f"{labeled_key!r} patients not in 'train': {outside[:5]}")
    return train, labeled, val


def split_cases(
    cases: list[dict],
    *,
    splits_file: str | os.PathLike | None = None,
    labeled_key: str = "labeled_3",
    num_labeled: int | None = None,
    num_val: int = 0,
    seed: int = 0,
) -> dict[str, list[dict]]:
    """Split cases by patient into ``{"labeled", "unlabeled", "val"}`` lists.

    Either from ``splits_file`` (``train``/``val`` patient lists plus ``labeled_key``, as in
    ``shared/data/acdc/splits.json``) or, without it, from counts: ``num_val`` patients for
    validation and ``num_labeled`` labeled patients (``None`` = all remaining labeled patients),
    drawn with ``seed``. Labeled lists keep only frames that have labels; unlabeled lists drop
    every ``label`` key; validation keeps labeled frames only (cine frames are not validated).
    Splits are patient-level: no patient appears in two of the three lists.

    Raises:
        IdealInputError: the splits file names missing or repeated patients, a labeled or val
            patient has no label file, or fewer labeled patients exist than requested.
    """
    groups = _by_patient(cases)
    if splits_file is not None:
        train, labeled_ids, val_ids = _read_splits_file(Path(splits_file), labeled_key)
        missing = sorted(p for p in set(train) | set(val_ids) if p not in groups)
        if missing:
            raise IdealInputError(splits_file, f"names {len(missing)} patient(s) not found in the dataset: {missing[:5]}")
        unlabeled_ids = [p for p in train if p not in set(labeled_ids)]
    else:
        for name, value in (("num_val", num_val), ("num_labeled", num_labeled)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
                raise IdealInputError(name, f"must be a non-negative integer, got {value!r}")
        patients = sorted(groups)
        random.Random(seed).shuffle(patients)
        with_labels = [p for p in patients if _labeled(groups[p])]
        if num_val > 0 and len(with_labels) < num_val:
            raise IdealInputError(None, f"num_val={num_val} but only {len(with_labels)} patients have labels")
        val_ids = with_labels[:num_val]
        rest_labeled = with_labels[num_val:]
        n_lab = len(rest_labeled) if num_labeled is None else num_labeled
        if n_lab > len(rest_labeled):
            raise IdealInputError(
                None, f"num_labeled={n_lab} but only {len(rest_labeled)} labeled patients remain after {num_val} for validation"
            )
        labeled_ids = rest_labeled[:n_lab]
        unlabeled_ids = [p for p in patients if p not in set(val_ids) | set(labeled_ids)]

    labeled = [c for p in labeled_ids for c in _labeled(groups[p])]
    no_label = [p for p in labeled_ids if not _labeled(groups[p])]
    if no_label:
        raise IdealInputError(splits_file, f"labeled patient(s) without any label file: {no_label[:5]}")
    # Unlabeled frames of labeled patients (cine) are dropped, not pooled as unlabeled data, so
    # every patient belongs to exactly one set.
    unlabeled = [c for p in unlabeled_ids for c in groups[p]]
    val = [c for p in val_ids for c in _labeled(groups[p])]
    no_val_label = [p for p in val_ids if not _labeled(groups[p])]
    if no_val_label:
        raise IdealInputError(splits_file, f"val patient(s) without any label file: {no_val_label[:5]}")
    return {"labeled": labeled, "unlabeled": _unlabeled(unlabeled), "val": val}


def split_dataset(
    dataset_dir: str | os.PathLike,
    *,
    splits_file: str | os.PathLike | None = None,
    labeled_key: str = "labeled_3",
    num_labeled: int | None = None,
    num_val: int = 0,
    seed: int = 0,
    include_cine: bool = True,
) -> dict[str, list[dict]]:
    """:func:`~ideal_monai.data.discovery.discover_cases` then :func:`split_cases` (bundle entry point).

    An empty ``splits_file`` string counts as None, so configs can leave the key blank.
    """
    from .discovery import discover_cases

    cases = discover_cases(dataset_dir, include_cine=include_cine)
    return split_cases(cases, splits_file=splits_file or None, labeled_key=labeled_key, num_labeled=num_labeled,
                       num_val=num_val, seed=seed)


def pretraining_cases(dataset_dir: str | os.PathLike, *, exclude_patients: list[str] | tuple = (),
                      splits_file: str | os.PathLike | None = None, include_cine: bool = True) -> list[dict]:
    """All training cases for self-supervised pre-training, with their labels dropped.

    With ``splits_file``, only its ``train`` patients are used (validation patients stay unseen);
    ``exclude_patients`` removes further patients (e.g. a held-out set).
    """
    from .discovery import discover_cases

    cases = discover_cases(dataset_dir, include_cine=include_cine)
    keep = None
    if splits_file:
        train, _, _ = _read_splits_file(Path(splits_file), "train")
        keep = set(train)
        missing = sorted(keep - {c["patient_id"] for c in cases})
        if missing:
            raise IdealInputError(splits_file, f"names {len(missing)} patient(s) not found in the dataset: {missing[:5]}")
    cases = [c for c in cases if (keep is None or c["patient_id"] in keep) and c["patient_id"] not in set(exclude_patients)]
    if not cases:
        raise IdealInputError(dataset_dir, "no cases left for pre-training")
    return _unlabeled(cases)
