"""MONAI Label tasks for the ideal-monai bundle (needs ``monailabel``).

- :class:`IdealTrainTask`: the stock ``BundleTrainTask`` (run id ``run`` = ``finetune``, starting
  from the current ``models/model.pt``) plus the semi-supervised part MONAI Label does not pass:
  every datastore image without a final label becomes unlabeled data; case ids are added to the
  datalist; validation falls back to the labeled images when the split leaves none.
- :class:`DisagreementScoring` (scoring method) stores each unlabeled image's stream-disagreement
  score in the datastore; :class:`DisagreementStrategy` (active learning) returns the unlabeled
  image with the highest score, scoring on demand images with no score for the current model.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time

import numpy as np
from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.tasks.scoring import ScoringMethod
from monailabel.interfaces.tasks.strategy import Strategy
from monailabel.tasks.infer.bundle import BundleInferTask
from monailabel.tasks.train.bundle import BundleTrainTask

from ..data.io import read_shape, save_label_like, strip_image_suffix
from .scoring import SCORE_KEY, DisagreementScorer

logger = logging.getLogger(__name__)


def cine_frames(path: str) -> int | None:
    """Number of frames of a 4D cine file, ``None`` for a 3D volume (or anything that is not a file)."""
    if not isinstance(path, str) or not os.path.isfile(path):
        return None
    shape = read_shape(path)
    return int(shape[3]) if len(shape) == 4 else None


class IdealInferTask(BundleInferTask):
    """``BundleInferTask`` that also segments 4D cine studies (every frame, into one 4D label file) and
    writes every label with its study's own NIfTI header.

    A 3D study goes through the stock task. For a 4D ``(X, Y, Z, T)`` study each frame is run through
    the same bundle pipeline (the ``frame`` entry reaches the bundle's loader) and the frames' labels
    are stacked into a 4D NIfTI on the study's grid (header and affine of the input).
    """

    def __call__(self, request, callbacks=None):
        frames = cine_frames(request.get("image"))
        if frames is None:
            return super().__call__(request, callbacks)
        image = request["image"]
        shape = tuple(read_shape(image)[:3])
        labels = []
        for t in range(frames):
            _, data = super().__call__({**request, "frame": t, "skip_writer": True}, callbacks)
            label = _label_volume(data[self.key_pred])
            if label.shape != shape:
                raise ValueError(f"{image}: frame {t} was segmented to shape {label.shape}, expected {shape}")
            labels.append(label)
        out = _write_label(np.stack(labels, axis=-1), image, prefix="ideal_4d_")
        logger.info("ideal: segmented %d frames of %s", frames, image)
        return out, {"frames": frames}

    def writer(self, data, extension=None, dtype=None):
        """The label of a 3D study with the study's own header (as ``ideal-monai infer`` writes it).

        MONAI Label's writer builds the header from the loaded image's affine, which is the spacing-corrected
        one: on files whose sform disagrees with ``pixdim`` (all of ACDC) the returned label's header then
        differed from the image's. A DICOM series (a folder) keeps the stock writer.
        """
        image = data.get("image_path")
        if not isinstance(image, str) or not os.path.isfile(image):
            return super().writer(data, extension, dtype)
        return _write_label(_label_volume(data[self.output_label_key]), image, prefix="ideal_"), {}


def _write_label(label: np.ndarray, image: str, prefix: str) -> str:
    """``label`` as a NIfTI file in the temporary folder with ``image``'s header; removed again if writing fails."""
    fd, out = tempfile.mkstemp(suffix=".nii.gz", prefix=prefix)
    os.close(fd)
    try:
        save_label_like(label, image, out)
    except BaseException:
        os.unlink(out)
        raise
    return out


def _label_volume(pred) -> np.ndarray:
    """``(1, X, Y, Z)`` or ``(X, Y, Z)`` predicted labels -> ``(X, Y, Z)`` uint8 (a one-slice volume keeps its Z)."""
    arr = np.asarray(pred)
    return (arr[0] if arr.ndim == 4 and arr.shape[0] == 1 else arr).astype(np.uint8)


def unlabeled_image_paths(datastore: Datastore, label_tag: str | None = None) -> list[str]:
    """Paths of the datastore images that have no label with ``label_tag`` (default: final)."""
    ids = datastore.get_unlabeled_images(label_tag) if label_tag else datastore.get_unlabeled_images()
    return [datastore.get_image_uri(i) for i in sorted(ids)]


#: Request keys MONAI Label itself adds or reads besides the trainer's ``config()`` options.
MONAILABEL_TRAIN_KEYS = frozenset({"model", "name", "bundle_path", "force_multi_gpu", "tracking_run_name", "dataset",
                                   "local_rank", "client_id"})

#: ``train.json`` keys the task sets itself (paths, the datalist, how a round starts): refused in a request.
RESERVED_TRAIN_KEYS = frozenset({"imports", "bundle_root", "ckpt_dir", "output_dir", "dataset_dir", "splits_file",
                                 "labeled_key", "num_labeled", "num_val", "resume", "use_pretrained", "pretrained_path",
                                 "device", "network", "datalist", "initialize", "finetune", "run", "finalize"})


class IdealTrainTask(BundleTrainTask):
    """``BundleTrainTask`` that runs the semi-supervised ``finetune`` with the unlabeled studies.

    Options in the train request that are top-level ``train.json`` values (``iterations_per_epoch``,
    ``learning_rate``, ``batch_size_labeled``, ``lambda_max``...) are passed to the bundle; MONAI
    Label's stock ``BundleTrainTask`` drops them silently. Any other unknown option is refused by name.
    """

    def __call__(self, request, datastore: Datastore):
        self._datastore = datastore
        self._bundle_options = self.bundle_options(request)
        return super().__call__(request, datastore)

    def bundle_options(self, request: dict) -> dict:
        """The request's ``train.json`` options; raises ``ValueError`` naming options nobody reads."""
        monailabel_keys = set(self.config()) | MONAILABEL_TRAIN_KEYS
        bundle_keys = {k for k, v in self.bundle_config.config.items() if not isinstance(v, dict)} - RESERVED_TRAIN_KEYS
        reserved = sorted(k for k in request if k in RESERVED_TRAIN_KEYS and k not in monailabel_keys)
        unknown = sorted(k for k in request if k not in monailabel_keys | bundle_keys | RESERVED_TRAIN_KEYS)
        if reserved or unknown:
            parts = ([f"unknown option(s) {unknown}"] if unknown else []) + (
                [f"option(s) {reserved} are set by the train task itself"] if reserved else [])
            raise ValueError(f"ideal train request: {'; '.join(parts)}. Accepted: MONAI Label's {sorted(self.config())} "
                             f"and the bundle's train.json values, e.g. iterations_per_epoch, learning_rate")
        return {k: request[k] for k in request if k in bundle_keys and k not in monailabel_keys}

    def _fetch_datalist(self, request, datastore: Datastore):
        datalist = super()._fetch_datalist(request, datastore)
        for d in datalist:
            d["case_id"] = str(strip_image_suffix(d["image"]))
        return datalist

    def _update_overrides(self, overrides):
        cfg = self.bundle_config
        semi = bool(cfg.get("semi_supervised", True)) and int(cfg.get("num_streams", 2)) > 1
        unlabeled = unlabeled_image_paths(self._datastore) if semi else []
        entries = []
        for p in unlabeled:  # a 4D cine study gives every frame as an unlabeled volume
            case_id = str(strip_image_suffix(p))
            frames = cine_frames(p)
            entries += ([{"image": p, "case_id": case_id}] if frames is None else
                        [{"image": p, "case_id": f"{case_id}_t{t:02d}", "frame": t} for t in range(frames)])
        overrides["train#unlabeled_dataset#data"] = entries
        if not overrides.get("validate#dataset#data"):
            overrides["validate#dataset#data"] = overrides["train#dataset#data"]
        overrides.update(getattr(self, "_bundle_options", {}))
        overrides["resume"] = False  # every MONAI Label round starts from models/model.pt (CheckpointLoader)
        overrides["use_pretrained"] = False  # ... not from the pre-trained encoder
        logger.info("ideal finetune: %d labeled, %d unlabeled (%d volumes), %d validation image(s); bundle options %s",
                    len(overrides["train#dataset#data"]), len(unlabeled), len(entries),
                    len(overrides["validate#dataset#data"]), getattr(self, "_bundle_options", {}))
        return overrides


class _ScoresMixin:
    def __init__(self, scorer: DisagreementScorer):
        self.scorer = scorer

    def score_images(self, datastore: Datastore, image_ids, force: bool = False) -> dict[str, float]:
        """Score ``image_ids`` (reusing stored scores of the current model unless ``force``)."""
        version = self.scorer.model_version
        scores = {}
        for image_id in image_ids:
            info = datastore.get_image_info(image_id) or {}
            stored = info.get(SCORE_KEY)
            if not force and isinstance(stored, dict) and stored.get("model_version") == version:
                scores[image_id] = float(stored["score"])
                continue
            result = self.scorer.score(datastore.get_image_uri(image_id))
            result["ts"] = int(time.time())
            datastore.update_image_info(image_id, {SCORE_KEY: result})
            scores[image_id] = result["score"]
        return scores


class DisagreementScoring(_ScoresMixin, ScoringMethod):
    """Scoring method: stream disagreement inside the predicted heart for every unlabeled image."""

    def __init__(self, scorer: DisagreementScorer):
        _ScoresMixin.__init__(self, scorer)
        ScoringMethod.__init__(self, "Mean disagreement of the two IDEAL streams inside the predicted heart")

    def __call__(self, request, datastore: Datastore):
        ids = datastore.get_unlabeled_images()
        scores = self.score_images(datastore, ids, force=bool(request.get("force", False)))
        logger.info("ideal disagreement scores: %s", scores)
        return {"scores": scores}


class DisagreementStrategy(_ScoresMixin, Strategy):
    """Active learning: the unlabeled image whose two streams disagree most inside the heart."""

    def __init__(self, scorer: DisagreementScorer):
        _ScoresMixin.__init__(self, scorer)
        Strategy.__init__(self, "Unlabeled image with the highest IDEAL stream disagreement inside the predicted heart")

    def __call__(self, request, datastore: Datastore):
        ids = datastore.get_unlabeled_images(request.get("label_tag"), request.get("labels"))
        if not ids:
            return None
        scores = self.score_images(datastore, ids)
        best = max(sorted(scores), key=lambda i: scores[i])
        logger.info("ideal disagreement strategy: %s (score %.4f of %d image(s))", best, scores[best], len(scores))
        return {"id": best, SCORE_KEY: scores[best]}
