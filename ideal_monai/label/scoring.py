"""Active-learning score: how much the two streams disagree inside the predicted heart.

For one image, the bundle's inference preprocessing and slice inferer run a network wrapper that
returns the ensemble log-probabilities and the per-voxel stream disagreement
(:func:`~ideal_monai.networks.stream_disagreement`, total-variation distance of the two streams'
class distributions) in one pass. The score is the mean disagreement over the voxels predicted as
heart (labels 1-3) on the preprocessed grid; when no heart is predicted it is the mean over the
whole volume. High score = the two streams disagree where the heart is = most informative to label.
No ``monailabel`` import: usable and testable on its own.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

import numpy as np
import torch

from ..networks import stream_disagreement

logger = logging.getLogger(__name__)

#: Key under which the score is stored in a MONAI Label datastore's image info.
SCORE_KEY = "ideal_disagreement"


class _ProbsAndDisagreement(torch.nn.Module):
    """``(B, 1, H, W) -> (B, C + 1, H, W)``: mean-of-streams probabilities, then the disagreement."""

    def __init__(self, network: torch.nn.Module):
        super().__init__()
        self.network = network

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        probs = self.network.stream_probabilities(x)  # (B, S, C, H, W)
        return torch.cat([probs.mean(dim=1), stream_disagreement(probs)], dim=1)


def heart_disagreement(log_or_probs_and_dis: torch.Tensor) -> dict:
    """``(C + 1, *spatial)`` (class probabilities then disagreement) -> score dict."""
    probs, dis = log_or_probs_and_dis[:-1], log_or_probs_and_dis[-1]
    heart = probs.argmax(dim=0) != 0
    n_heart = int(heart.sum())
    score = float(dis[heart].mean()) if n_heart else float(dis.mean())
    return {"score": score, "heart_voxels": n_heart}


class DisagreementScorer:
    """Scores images with a bundle's ``inference.json`` network, preprocessing and inferer.

    Args:
        bundle_path: the bundle folder (``configs/inference.json``, ``models/model.pt``).
        device: torch device (default: the config's ``device``).
        model_file: weights file in ``models/``.

    The network is (re)loaded lazily whenever the weights file changes (e.g. after training), so
    scores always come from the current model; :attr:`model_version` is the file's mtime.
    Thread-safe (one image at a time).
    """

    def __init__(self, bundle_path: str | os.PathLike, device: str | torch.device | None = None, model_file: str = "model.pt"):
        self.bundle_path = Path(bundle_path)
        self.model_path = self.bundle_path / "models" / model_file
        self.device = device
        self._lock = threading.Lock()
        self._loaded_version = None
        self._network = self._preprocessing = self._inferer = None

    @property
    def model_version(self) -> float | None:
        return self.model_path.stat().st_mtime if self.model_path.exists() else None

    def _load(self) -> None:
        from monai.bundle import ConfigParser

        from ..utils import load_model_weights

        version = self.model_version
        if self._network is not None and version == self._loaded_version:
            return
        parser = ConfigParser()
        parser.read_config(str(self.bundle_path / "configs" / "inference.json"))
        parser["bundle_root"] = str(self.bundle_path)
        device = torch.device(self.device) if self.device is not None else parser.get_parsed_content("device")
        network = parser.get_parsed_content("network_def", instantiate=True)
        load_model_weights(network, self.model_path)
        self._network = network.to(device).eval()
        self._device = device
        self._preprocessing = parser.get_parsed_content("preprocessing", instantiate=True)
        self._inferer = parser.get_parsed_content("inferer", instantiate=True)
        self._loaded_version = version
        logger.info("disagreement scorer: loaded %s", self.model_path)

    @torch.no_grad()
    def score(self, image_path: str | os.PathLike) -> dict:
        """``{"score": float, "heart_voxels": int, "model_version": float}`` for one 3D or 4D image file
        (a 4D cine's score is the heart-voxel-weighted mean over its frames)."""
        from ..data.io import read_shape

        with self._lock:
            self._load()
            shape = read_shape(image_path)
            frames = [None] if len(shape) == 3 else list(range(shape[3]))
            per_frame = []
            for frame in frames:  # a 4D cine: every frame, weighted by its heart voxels
                data = {"image": str(image_path)} if frame is None else {"image": str(image_path), "frame": frame}
                batch = self._preprocessing(data)["image"][None].to(self._device)  # (1, 1, P, P, Z)
                per_frame.append(heart_disagreement(self._inferer(batch, _ProbsAndDisagreement(self._network))[0]))
            heart = sum(r["heart_voxels"] for r in per_frame)
            score = (sum(r["score"] * r["heart_voxels"] for r in per_frame) / heart if heart
                     else float(np.mean([r["score"] for r in per_frame])))
            result = {"score": float(score), "heart_voxels": int(heart), "model_version": self._loaded_version}
            if len(shape) == 4:
                result["frames"] = len(frames)
            return result
