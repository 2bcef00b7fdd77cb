"""Folder inference as a MONAI ``Evaluator``: NIfTI in, NIfTI labels on the input's exact grid out.

Each iteration segments one input file (a 3D volume, or a 4D cine file frame by frame), using the
bundle's standard ``preprocessing`` / ``inferer`` / ``postprocessing`` components for every 3D
frame. A file that fails (unreadable, bad values, disk full...) is recorded in
``engine.state.failures`` and the other files still run; nothing partial is ever left behind.
Which files to segment (the ones not done yet, this process's share under ``torchrun``) is the
cohort's choice (:class:`~ideal_monai.cohort.Cohort`): :func:`inference_cohort` builds it.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from monai.engines import Evaluator
from monai.transforms import Invertd

from ..cohort import Cohort, status_line
from ..errors import OutputError, debug_enabled, find_input_error, print_error
from ..data.dicom import dicom_series_as_nifti, release_nifti_copy
from ..data.discovery import discover_cases
from ..data.io import NIFTI_SUFFIXES, image_suffix, read_shape, save_label_like, strip_image_suffix, volume_shape
from ..networks import stream_disagreement
from ..utils.checksums import file_sha256

logger = logging.getLogger(__name__)


def inference_cases(path: str | os.PathLike, series_uid: str | None = None) -> list[dict]:
    """One case per input file under ``path`` (a folder in any known layout, or one file; a DICOM series
    folder, ``series_uid`` choosing where a folder holds several).

    Label files are ignored; a 4D cine file (or DICOM cine) stays one case (it is segmented frame by frame).
    ``source`` is what the user gave: the file, or the DICOM series folder. A DICOM series is listed, not read:
    :meth:`SegmentationEvaluator.segment_case` reads it when it comes to it (``dicom_folder``), so a cohort
    of thousands of series starts at once and a bad series fails alone (so does a bad 4D file: listed unread).
    """
    cases, seen = [], set()
    for case in discover_cases(path, include_cine=True, series_uid=series_uid or None, convert_dicom=False,
                               read_cine_frames=False):
        image = Path(case["image"])
        if image in seen:
            continue
        seen.add(image)
        entry = {"image": image, "case_id": case["case_id"] if "dicom_folder" in case else strip_image_suffix(image),
                 "source": str(image)}
        if "dicom_folder" in case:
            entry.update(dicom_folder=str(case["dicom_folder"]), series_uid=case.get("series_uid"))
        cases.append(entry)
    return cases


def case_outputs(case_id: str, output_dir: str | os.PathLike, save_uncertainty: bool = False,
                 save_probabilities: bool = False) -> dict[str, Path]:
    """The files inference writes for one case: ``{"label": <case_id>.nii.gz[, "uncertainty", "probabilities"]}``."""
    output_dir = Path(output_dir)
    paths = {"label": output_dir / f"{case_id}.nii.gz"}
    if save_uncertainty:
        paths["uncertainty"] = output_dir / f"{case_id}_uncertainty.nii.gz"
    if save_probabilities:
        paths["probabilities"] = output_dir / f"{case_id}_probs.nii.gz"
    return paths


#: Inference settings that do not change what is written (left out of a run's fingerprint).
NOT_OUTPUT_SETTINGS = ("overwrite", "exit_on_failure", "sw_batch_size", "channels_last", "device", "distributed",
                       "save_uncertainty", "save_probabilities")  # adding a map later makes cases partial: redone


def inference_fingerprint(model_path: str | os.PathLike, settings: dict) -> dict:
    """What an inference run's outputs depend on beyond the input files: the model file's SHA-256 and the
    ``settings`` that change outputs (``model_path`` itself and :data:`NOT_OUTPUT_SETTINGS` left out)."""
    return {"model_sha256": file_sha256(model_path),
            **{k: v for k, v in settings.items() if k not in NOT_OUTPUT_SETTINGS and k != "model_path"}}


def inference_cohort(cases: Sequence[dict], output_dir: str | os.PathLike, model_path: str | os.PathLike,
                     settings: dict, status_dir: str | os.PathLike = "", overwrite: bool = False,
                     save_uncertainty: bool = False, save_probabilities: bool = False,
                     distributed: bool = False) -> Cohort:
    """The cohort of an inference run: each case's input (``source``) and outputs, and the run's fingerprint
    (the model file's SHA-256 and the ``settings`` that change outputs), see :class:`~ideal_monai.cohort.Cohort`."""
    fingerprint = inference_fingerprint(model_path, settings)
    items = [{**c, "inputs": [c.get("source") or c["image"]],
              "outputs": list(case_outputs(c["case_id"], output_dir, save_uncertainty, save_probabilities).values())}
             for c in cases]
    return Cohort(items, status_dir=status_dir, overwrite=overwrite, fingerprint=fingerprint, distributed=distributed)


def collate_cases(batch: list[dict]) -> list[dict]:
    """DataLoader ``collate_fn`` that keeps file dicts as a list (nothing to stack before loading)."""
    return batch


class StreamDisagreement(torch.nn.Module):
    """``(B, 1, H, W) -> (B, 1, H, W)``: per-pixel disagreement of the two streams (an uncertainty map).

    Wraps a :class:`~ideal_monai.networks.DualDecoderUNet` so a MONAI inferer can slide it over a volume.
    """

    def __init__(self, network: torch.nn.Module):
        super().__init__()
        self.network = network

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return stream_disagreement(self.network.stream_probabilities(x))


class SegmentationEvaluator(Evaluator):
    """Segment every file of ``val_data_loader`` and write the labels.

    Args:
        device: torch device.
        val_data_loader: yields lists of case dicts ``{"image": path, "case_id": str}``
            (use :func:`collate_cases`).
        network: the segmentation network; in eval mode it returns ``(B, C, H, W)`` log-probabilities.
        preprocessing: the 3D invertible preprocessing (``{"image": path, "frame": t}`` ->
            ``(1, P, P, Z)``), e.g. :func:`ideal_monai.data.volume_preprocessing` with ``keys=["image"]``.
        inferer: slice-wise inferer (MONAI ``SliceInferer`` over the last axis).
        postprocessing: turns ``{"pred": (C, P, P, Z) log-probs, "image": ...}`` into a label map
            ``(1, X, Y, Z)`` on the input grid (softmax -> ``Invertd`` -> argmax -> optional
            largest-component clean-up).
        output_dir: where ``<case_id>.nii.gz`` (uint8 labels 0-3) go, each written atomically (replacing one
            that is there: the cohort decides which cases to run).
        save_uncertainty: also write ``<case_id>_uncertainty.nii.gz`` (float32 stream disagreement).
        save_probabilities: also write ``<case_id>_probs.nii.gz`` (float32, classes on the last axis).
        val_handlers: Ignite handlers (progress bar, stats).
        model_label: names the model in each output's NIfTI ``descrip`` (``model <label>``; after the
            series' ``SeriesInstanceUID <uid>`` for a DICOM series), e.g.
            :func:`ideal_monai.release.model_label` of the weights.
    """

    def __init__(
        self,
        device: torch.device | str,
        val_data_loader: Iterable,
        network: torch.nn.Module,
        preprocessing: Callable,
        inferer: Callable,
        postprocessing: Callable,
        output_dir: str | os.PathLike,
        save_uncertainty: bool = False,
        save_probabilities: bool = False,
        val_handlers: Sequence | None = None,
        amp: bool = False,
        model_label: str = "",
    ) -> None:
        super().__init__(device=device, val_data_loader=val_data_loader, val_handlers=val_handlers, amp=amp,
                         decollate=False)
        self.network = network
        self.preprocessing = preprocessing
        self.inferer = inferer
        self.case_postprocessing = postprocessing
        self.output_dir = Path(output_dir)
        self.save_uncertainty = save_uncertainty
        self.save_probabilities = save_probabilities
        self.model_label = model_label
        self.state.failures = []
        self.state.outputs = []
        self._invert_linear = Invertd(keys="pred", transform=preprocessing, orig_keys="image", nearest_interp=False)

    def run(self, *args, **kwargs) -> None:
        """Run over the files; with none left to do (every one done before) return at once, where MONAI's
        ``Workflow.run`` would warn that an empty loader may hang a distributed run."""
        if self.data_loader is not None and len(self.data_loader) == 0:
            return
        super().run(*args, **kwargs)

    def output_paths(self, case: dict) -> dict[str, Path]:
        return case_outputs(case["case_id"], self.output_dir, self.save_uncertainty, self.save_probabilities)

    @torch.no_grad()
    def _segment_frame(self, image_path: Path, frame: int | None) -> dict[str, np.ndarray]:
        """One 3D frame -> ``{"label": (X, Y, Z) uint8, ...}`` on the input grid."""
        data = {"image": image_path}
        if frame is not None:
            data["frame"] = frame
        data = self.preprocessing(data)
        image = data["image"]
        batch = image[None].to(self.state.device)  # (1, 1, P, P, Z)
        log_probs = self.inferer(batch, self.network)[0]  # (C, P, P, Z)
        out = {}
        if self.save_probabilities:
            probs = self._invert_linear({"image": image, "pred": torch.softmax(log_probs, 0).cpu()})["pred"]
            out["probabilities"] = np.moveaxis(np.asarray(probs, dtype=np.float32), 0, -1)  # (X, Y, Z, C)
        if self.save_uncertainty:
            dis = self.inferer(batch, StreamDisagreement(self.network))[0].cpu()  # (1, P, P, Z)
            out["uncertainty"] = np.asarray(self._invert_linear({"image": image, "pred": dis})["pred"][0], dtype=np.float32)
        label = self.case_postprocessing({"image": image, "pred": log_probs.cpu()})["pred"]
        out["label"] = np.asarray(label[0]).astype(np.uint8)
        return out

    def segment_case(self, case: dict) -> dict[str, Path]:
        """Segment one file (a DICOM series: its NIfTI copy, made now and deleted after) and write its outputs
        atomically; returns the written paths."""
        if case.get("dicom_folder"):
            image_path, _ = dicom_series_as_nifti(case["dicom_folder"], case["case_id"], case.get("series_uid"))
            try:
                return self.segment_case({**case, "image": image_path, "dicom_folder": None})
            finally:
                release_nifti_copy(image_path)
        image_path = Path(case["image"])
        paths = self.output_paths(case)
        volume_shape(image_path)  # 2D/5D, zero-length axes, oversized headers: refused before reading pixels
        shape = read_shape(image_path)
        frames = [None] if len(shape) == 3 else list(range(shape[3]))
        results = [self._segment_frame(image_path, f) for f in frames]
        stacked = {k: (results[0][k] if frames == [None] else np.stack([r[k] for r in results], axis=3))
                   for k in results[0]}
        description = self._description(image_path)
        for key, path in paths.items():
            save_label_like(stacked[key], image_path, path, dtype=np.uint8 if key == "label" else np.float32,
                            description=description)
        return paths

    def _description(self, image_path: Path) -> str | None:
        """The outputs' NIfTI ``descrip``: the series (a DICOM series' NIfTI copy names it) then the model."""
        if not self.model_label:
            return None
        parts = [f"model {self.model_label}"]
        if image_suffix(image_path) in NIFTI_SUFFIXES:
            own = nib.load(str(image_path)).header["descrip"].tobytes().split(b"\0")[0].decode("ascii", "replace")
            if own.startswith("SeriesInstanceUID "):
                parts.insert(0, own)
        return "; ".join(parts)

    def _iteration(self, engine: SegmentationEvaluator, batchdata: list[dict]) -> dict:
        """Segment the batch's files; ``state.output``: ``{"written": [paths], "cases": [{"case_id", "status"
        ("done" / "failed"), "reason", "seconds"}]}`` (what :class:`~ideal_monai.handlers.CohortStatus` records)."""
        engine.network.eval()
        written, results = [], []
        for case in batchdata:
            start = time.perf_counter()
            try:
                written.append(engine.segment_case(case))
                results.append({"case_id": case["case_id"], "status": "done", "reason": "",
                                "seconds": time.perf_counter() - start})
            except OutputError:
                raise  # a full disk or an unwritable folder fails every case alike: stop at once
            except Exception as e:  # noqa: BLE001 - one bad file must not end a long unattended run
                input_error = find_input_error(e)  # also behind MONAI's RuntimeError("applying transform ...")
                if input_error is not None:
                    msg = str(input_error)
                elif isinstance(e, OSError):
                    msg = f"{case['image']}: {e.strerror or e}"
                else:
                    text = str(e).strip().splitlines()
                    msg = f"{case['image']}: {type(e).__name__}: {text[0] if text else ''}"
                engine.state.failures.append({"image": str(case["image"]), "error": msg})
                results.append({"case_id": case["case_id"], "status": "failed", "reason": msg,
                                "seconds": time.perf_counter() - start})
                logger.error("failed: %s", msg, exc_info=debug_enabled())
        engine.state.outputs.extend(written)
        engine.state.output = {"written": written, "cases": results}
        return engine.state.output


def report_failures(evaluator: SegmentationEvaluator, exit_on_failure: bool = True, cohort: Cohort | None = None) -> list[dict]:
    """Print a one-line summary (and one line per failed file); exit with status 1 if any failed.

    With a ``cohort`` keeping status, the summary is the whole cohort's (every process's, merged at its
    ``finish``): printed by rank 0, and every process exits 1 when any file of the cohort failed.
    """
    status = cohort.finish() if cohort is not None else {}
    if status:
        failures = [{"error": f["reason"]} for f in status["failures"]]
        if cohort.rank == 0:
            before = len(cohort.done_at_start)
            print(f"ideal-monai inference: {status['done'] - before} file(s) segmented into {evaluator.output_dir}, "
                  f"{before} done before, {status['failed']} failed; {status_line(status)}", file=sys.stderr)
            for f in failures:
                print_error(f["error"])
        cohort.barrier()  # no process exits (torchrun would stop the others) before rank 0 has printed
    else:
        failures = evaluator.state.failures
        total = len(failures) + len(evaluator.state.outputs)
        print(f"ideal-monai inference: {len(evaluator.state.outputs)} of {total} file(s) segmented into "
              f"{evaluator.output_dir}", file=sys.stderr)
        for f in failures:
            print_error(f["error"])
    if failures and exit_on_failure:
        sys.exit(1)
    return failures
