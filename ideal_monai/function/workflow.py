"""The ``function`` run id: segment what is not segmented yet, then report each patient's cardiac function.

Per patient (the grouping of :func:`~ideal_monai.data.discover_cases`), in this order of preference:

- a **4D cine** file ``(X, Y, Z, T)``: every frame is segmented, the LV/RV cavity volume curves are
  computed, ED = maximum and ES = minimum LV cavity volume (or the given frame indices), and the
  curves are drawn with ED/ES marked;
- **ED and ES volumes** (ACDC ``patientXXX_frameYY``): frame numbers from an ACDC ``Info.cfg`` beside
  them when present, else ED = the frame with the larger LV cavity, ES = the smaller;
- **one volume**: its volumes and myocardial mass, no EF (the report says so).

With ground truth (``_gt`` files beside the images, or ``label_dir``) the same indices are computed
from the expert labels and compared over all patients (:mod:`ideal_monai.function.agreement`).
Outputs in ``output_dir``: ``function.csv``, ``function.json``, ``report.md``, ``curves/<patient>.png``
and, with ground truth, ``agreement.csv``, ``bland_altman.png``, ``scatter.png``; per patient
``patients/<patient>.json`` and the cohort's ``status/`` (a rerun computes only the patients not done;
under ``torchrun`` the processes share them). Every file is written atomically; a patient that cannot
be computed is a row with its reason, never a crash.

The run's parts: :mod:`.patients` (the patients and their files), this module (segmentation through the
bundle's ``inference`` and the computation per patient), :mod:`.report` (the report files) and
:mod:`.plots` (the figures).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ..cohort import Cohort, outputs_state
from ..data.io import load_volume, read_shape, strip_image_suffix
from ..errors import IdealInputError, close_before_errors
from ..inference import inference_fingerprint
from ..release import model_label
from ..utils.atomic import atomic_write_text
from .agreement import agreement_table
from .clinical import indexed_values, max_wall_thickness_mm, patient_body
from .indices import (ACDC_CLASSES, INDEX_NAMES, MYOCARDIAL_DENSITY, VolumeUnit, cardiac_indices, class_volumes,
                      find_ed_es, volume_unit)
from .patients import (function_patients, label_file, label_frames, read_info_cfg, read_patient_series,
                       release_patient_series)
from .plots import plot_agreement, plot_volume_curves
from .qc import quality_flags
from .reference import load_reference_ranges, outside_reference
from .report import CLINICAL_NAMES, clinical_values, report_units, write_reports

__all__ = ["patient_function", "patient_inputs", "run_function", "segment_missing", "write_cohort_report"]

logger = logging.getLogger(__name__)

#: Patients segmented per inference run: each chunk's patients are then measured and recorded, so the status
#: follows a long cohort run (and a killed run keeps every finished chunk), while the model is loaded once per
#: chunk, not per patient.
PATIENTS_PER_CHUNK = 16


def patient_function(labels: Sequence[np.ndarray], frame_ids: Sequence[int], unit: VolumeUnit,
                     classes: Mapping[str, int] = ACDC_CLASSES, ed_es: tuple[int, int] | None = None,
                     density: float = MYOCARDIAL_DENSITY, spacing: Sequence[float] | None = None) -> dict:
    """Indices of one patient from its label frames (3D arrays) with the given frame ids.

    ``ed_es``: the ED and ES frame ids; ``None``: from the LV curve (max / min). With one frame only
    ED volumes and mass are computed. Returns ``indices``, ``curves`` (per class, per frame),
    ``ed_frame``, ``es_frame``, ``qc`` flags, ``notes`` and, given the voxel ``spacing`` in mm, ``wall``
    (the maximal end-diastolic LV wall thickness, :func:`~ideal_monai.function.clinical.max_wall_thickness_mm`).
    """
    vols = [class_volumes(lab, unit, classes) for lab in labels]
    curves = {name: [v[name] for v in vols] for name in classes}
    notes = []
    if len(labels) == 1:
        ed_i, es_i = 0, None
        notes.append("one frame only: volumes and mass, no ESV/SV/EF")
    elif ed_es is not None:
        missing = [f for f in ed_es if f not in frame_ids]
        if missing:
            raise IdealInputError("ed_es", f"frame(s) {missing} not among the frames {list(frame_ids)}")
        ed_i, es_i = frame_ids.index(ed_es[0]), frame_ids.index(ed_es[1])
    else:
        ed_i, es_i = find_ed_es(curves["LV"])
    ed = vols[ed_i]
    es = vols[es_i] if es_i is not None else None
    qc = quality_flags(labels[ed_i], "ED", classes)
    if es_i is not None:
        qc += quality_flags(labels[es_i], "ES", classes)
        if ed["LV"] <= es["LV"]:
            qc.append("LV cavity at ED is not larger than at ES")
    wall = (max_wall_thickness_mm(labels[ed_i], spacing, myo=classes["MYO"], lv=classes["LV"])
            if spacing is not None and unit.unit == "mL" else None)
    return {"indices": cardiac_indices(ed, es, density), "curves": curves, "frames": list(frame_ids),
            "ed_frame": frame_ids[ed_i], "es_frame": None if es_i is None else frame_ids[es_i], "qc": qc,
            "notes": notes, "wall": wall}


def patient_entry(p: dict, pred_dir: Path, label_dir: Path | None, classes, density, ed_es,
                   body_given: Mapping | None = None, ranges: Sequence[Mapping] | None = None) -> dict:
    """Automatic (and reference) function of one patient; raises IdealInputError for bad input.

    ``body_given``: ``height_cm`` / ``weight_kg`` / ``sex`` from the user (they win over Info.cfg and DICOM tags).
    """
    if p.get("error") is not None:
        raise p["error"]
    entry: dict = {"patient_id": p["patient_id"], "status": "ok"}
    info = read_info_cfg(p["info"]) if p.get("info") is not None else {}
    where = p.get("info") or (p["dicom"]["source"] if p.get("dicom") else p["patient_id"])
    entry["body"] = patient_body(info, p.get("dicom"), where=str(where), **dict(body_given or {}))
    if p.get("dicom"):
        entry["dicom"] = {k: p["dicom"].get(k) for k in ("source", "patient_id", "study_uid", "series_uid",
                                                         "series_description", "num_files", "phase_order")}
        entry["trigger_times_ms"] = p["dicom"].get("trigger_times_ms")
    given = ed_es
    if p["cine"] is not None:
        image = Path(p["cine"])
        shape = read_shape(image)
        if len(shape) != 4:
            raise IdealInputError(image, f"named as a 4D cine file but has shape {tuple(shape)}")
        if shape[3] < 2:
            raise IdealInputError(image, f"is a 4D cine with {shape[3]} frame: ED and ES need at least two")
        case_id = strip_image_suffix(image)
        sources = {"auto": pred_dir / f"{case_id}.nii.gz",
                   "reference": label_file(label_dir, case_id) or label_file(image.parent, case_id + "_gt")}
        entry["input"] = "4D cine"
        entry["files"] = [str(image)]
    else:
        if not p["frames"]:
            raise IdealInputError(p["patient_id"], "no image")
        numbers = sorted(p["frames"])
        if given is None and "ED" in info and "ES" in info:
            have_ed, have_es = info["ED"] in numbers, info["ES"] in numbers
            if have_ed and have_es:
                given = (info["ED"], info["ES"])
            elif have_ed:  # ED volumes and mass are still right; the report says why there is no EF
                numbers = [info["ED"]]
                entry["note"] = f"ES frame {info['ES']} (Info.cfg) is missing"
            else:
                raise IdealInputError(p["info"], f"names ED frame {info['ED']}, which is missing (frames here: "
                                                 f"{numbers}); an ES volume alone gives no ED volumes or EF")
        elif given is not None and len(numbers) == 1:
            raise IdealInputError(p["frames"][numbers[0]]["image"], "ed_frame/es_frame given but the patient has one frame")
        entry["input"] = "ED + ES volumes" if len(numbers) > 1 else "one volume"
        entry["files"] = [str(p["frames"][n]["image"]) for n in numbers]
        frames_used = {n: p["frames"][n] for n in numbers}
        sources = {
            "auto": [pred_dir / f"{strip_image_suffix(frames_used[n]['image'])}.nii.gz" for n in numbers],
            "reference": [frames_used[n].get("label") or label_file(label_dir, strip_image_suffix(frames_used[n]["image"]))
                          for n in numbers],
        }
        if any(r is None for r in sources["reference"]):
            sources["reference"] = None
    images: dict = {}  # path -> loaded image, read once for both the automatic and the reference labels

    def image(path, frame=None):
        if (path, frame) not in images:
            images[(path, frame)] = load_volume(path, frame=frame)
        return images[(path, frame)]

    for kind, src in sources.items():
        if src is None:
            continue
        if isinstance(src, Path):  # a 4D label file
            labels, zooms, _ = label_frames(src, image(p["cine"], 0))
            frame_ids = list(range(len(labels)))
        else:
            labels, zooms_all, first = [], [], None
            for img_case, path in zip((frames_used[n] for n in numbers), src):
                lab, zooms, tensor = label_frames(Path(path), image(img_case["image"]))
                if first is not None and (tensor.shape != first.shape or
                                          not np.allclose(np.asarray(tensor.affine), np.asarray(first.affine), atol=1e-3)):
                    raise IdealInputError(path, f"is not on the grid of {Path(src[0]).name}: ED and ES of one "
                                                "patient must share a grid")
                first = first if first is not None else tensor
                labels += lab
                zooms_all.append(zooms)
            zooms = zooms_all[0]
            frame_ids = numbers
        unit = volume_unit(zooms, where=str(src if isinstance(src, Path) else src[0]))
        entry[kind] = res = patient_function(labels, frame_ids, unit, classes, given, density, spacing=zooms)
        if entry.get("note"):
            res["notes"].append(entry["note"])
        bsa = entry["body"]["bsa_m2"] if unit.unit == "mL" else None
        res["indexed"] = indexed_values(res["indices"], bsa)
        res["outside_reference"] = outside_reference(clinical_values(res), entry["body"]["sex"], ranges)
        entry["unit"], entry["voxel_mm3"] = unit.unit, unit.voxel_mm3
        entry["mass_unit"] = "g" if unit.unit == "mL" else f"voxels x {density:g}"
    return entry


def _image_files(p: dict) -> list[Path]:
    """The image files of a patient as read (its 4D cine, or its frames)."""
    return [Path(p["cine"])] if p["cine"] is not None else [Path(c["image"]) for c in p["frames"].values()]


def patient_images(p: dict) -> list[tuple[str, Path]]:
    """``(case id, source)`` per image of a patient: the name of its segmentation, and what the user gave (the
    file itself, or the DICOM series folder: its NIfTI copy is new at every run)."""
    if p.get("dicom_folder") is not None:
        return [(p["patient_id"], Path(p["dicom_folder"]))]
    return [(strip_image_suffix(im), im) for im in _image_files(p)]


def patient_inputs(p: dict, pred_dir: Path, label_dir: Path | None) -> list[Path]:
    """Every file a patient's result is computed from: images (their sources), reference labels, ``Info.cfg``
    and segmentations. A result older than any of them is computed again."""
    inputs = []
    for case_id, source in patient_images(p):
        inputs += [source, pred_dir / f"{case_id}.nii.gz"]
        reference = label_file(label_dir, case_id) or (None if source.is_dir() else
                                                        label_file(source.parent, case_id + "_gt"))
        if reference is not None:
            inputs.append(reference)
    inputs += [Path(c["label"]) for c in p["frames"].values() if c.get("label")]
    if p.get("info") is not None:
        inputs.append(Path(p["info"]))
    return inputs


def segment_missing(patients: Sequence[dict], pred_dir: Path, inference_overrides: Mapping, bundle_root: str | None,
                    overwrite: bool = False) -> None:
    """Run the bundle's ``inference`` on the images of ``patients`` whose segmentation in ``pred_dir`` is
    missing or older than the image (all of them with ``overwrite``); an older one is deleted first, so a
    failed segmentation leaves none, and the patient is reported as not computed.

    The files are handed to inference as its ``cases``, without a status of their own (the function run
    keeps the cohort's), and inference reports a file that fails without exiting (``exit_on_failure``
    False): its patient is then reported as not computed.
    """
    from ..bundle_runner import run_bundle

    todo = []
    for p in patients:
        if p.get("error") is not None:
            continue
        sources = dict(patient_images(p))
        todo += [im for im in _image_files(p) if overwrite or outputs_state(
            [sources.get(strip_image_suffix(im), im)], [pred_dir / f"{strip_image_suffix(im)}.nii.gz"]) != "done"]
    if not todo:
        return
    for image in todo:  # a stale one must not stand in for a new one that fails
        (pred_dir / f"{strip_image_suffix(image)}.nii.gz").unlink(missing_ok=True)
    logger.info("segmenting %d file(s) into %s", len(todo), pred_dir)
    overrides = dict(inference_overrides)
    if bundle_root:
        overrides["bundle_root"] = bundle_root
    cases = [{"image": str(im), "case_id": strip_image_suffix(im)} for im in todo]
    run_bundle("inference", output_dir=str(pred_dir), overwrite=True, exit_on_failure=False, status_dir="",
               cases=cases, **overrides)


def function_fingerprint(pred_dir: Path, segmenting: bool, inference_overrides: Mapping, settings: Mapping) -> dict:
    """What a function run's results depend on beyond its input files: the model (checksum) and inference
    settings when it segments, else the prediction folder; and the function ``settings``."""
    if segmenting:
        source = inference_fingerprint(inference_overrides.get("model_path", ""), dict(inference_overrides))
    else:
        source = {"prediction_dir": str(pred_dir.resolve())}
    return {"segmentation": source, **settings}


def run_function(dataset_dir: str, output_dir: str, prediction_dir: str = "", label_dir: str = "",
                 class_labels: Mapping[str, int] | None = None, myocardial_density: float = MYOCARDIAL_DENSITY,
                 ed_frame: int | None = None, es_frame: int | None = None,
                 inference_overrides: Mapping | None = None, bundle_root: str | None = None,
                 exit_on_failure: bool = True, series_uid: str | None = None, height_cm: float | None = None,
                 weight_kg: float | None = None, sex: str | None = None, reference_ranges: str = "",
                 overwrite: bool = False, distributed: bool = False) -> dict:
    """Segment (unless ``prediction_dir`` holds the labels), compute and report every patient's function.

    Args:
        dataset_dir: images (any layout the data layer reads; 4D cine files included).
        output_dir: the report folder; segmentations go to ``<output_dir>/segmentations`` unless
            ``prediction_dir`` is given.
        prediction_dir: existing label files ``<case_id>.nii.gz`` to use instead of segmenting.
        label_dir: expert labels (``<case_id>_gt`` or ``<case_id>``) when not beside the images.
        class_labels: ``{"RV": v, "MYO": v, "LV": v}`` label values (default ACDC's 1, 2, 3).
        myocardial_density: g/mL for the mass.
        ed_frame, es_frame: fixed ED/ES frame ids (both or neither): 0-based frame indices of a 4D cine,
            ``frameYY`` numbers for ED/ES files. Default: Info.cfg, else the LV curve's maximum / minimum.
        inference_overrides: config values for the ``inference`` run (network, geometry, ``model_path``).
        exit_on_failure: exit with status 1 after writing the report when a patient failed.
        series_uid: the DICOM series to read where a folder holds several.
        height_cm, weight_kg, sex: the patient's, for the body surface area, the indexed values and the
            reference ranges (``M``/``F``); they win over ``Info.cfg`` and DICOM tags, and need a dataset of
            one patient.
        reference_ranges: a JSON file of reference ranges to flag values against (default: the shipped
            guideline cut-offs, :mod:`ideal_monai.function.reference`).
        overwrite: compute every patient again (segmentations too); by default a patient whose result in
            ``<output_dir>/patients/`` is newer than all its files is kept (a rerun does only the rest).
        distributed: share the patients out over the processes of the started group (``torchrun``); rank 0
            writes the report once every process has finished.

    Each patient's result is written to ``patients/<patient_id>.json`` as it is computed, and its status
    (done, or failed with the reason) to ``status/`` (:mod:`ideal_monai.cohort`); the report is merged from
    those files, so one process and several give the same report.

    Returns:
        the report dict written to ``function.json`` (on rank 0; ``{}`` on the other ranks).
    """
    classes = dict(class_labels or ACDC_CLASSES)
    if set(classes) != set(ACDC_CLASSES) or len(set(classes.values())) != 3:
        raise IdealInputError("class_labels", f"needs distinct values for RV, MYO and LV, got {classes!r}")
    if (ed_frame is None) != (es_frame is None):
        raise IdealInputError("ed_frame", "give both ed_frame and es_frame, or neither")
    if not isinstance(myocardial_density, (int, float)) or not myocardial_density > 0:
        raise IdealInputError("myocardial_density", f"must be a positive number, got {myocardial_density!r}")
    data = Path(dataset_dir)
    if not data.exists():
        raise IdealInputError(data, "dataset folder does not exist")
    out = Path(output_dir)
    pred_dir = Path(prediction_dir) if prediction_dir else out / "segmentations"
    label_root = Path(label_dir) if label_dir else None
    if label_root is not None and not label_root.is_dir():
        raise IdealInputError(label_root, "label folder does not exist")
    patients = function_patients(data, series_uid)
    if not patients:
        raise IdealInputError(data, "no images found")
    body_given = {k: v for k, v in (("height_cm", height_cm), ("weight_kg", weight_kg), ("sex", sex))
                  if v not in (None, "")}
    if body_given and len(patients) > 1:
        raise IdealInputError(next(iter(body_given)), f"describes one patient, but {data} holds {len(patients)}: "
                                                      "give it per patient (Info.cfg or DICOM tags) instead")
    if sex not in (None, "") and str(sex).strip().upper() not in ("M", "F", "MALE", "FEMALE"):
        raise IdealInputError("sex", f"expected M or F, got {sex!r}")
    ranges = load_reference_ranges(reference_ranges)
    if prediction_dir and not pred_dir.is_dir():
        raise IdealInputError(pred_dir, "prediction folder does not exist")
    ed_es = None if ed_frame is None else (int(ed_frame), int(es_frame))
    overrides = dict(inference_overrides or {})
    settings = {"classes": classes, "myocardial_density": float(myocardial_density), "ed_es": ed_es,
                "label_dir": str(label_root or ""), "body": body_given, "reference_ranges": ranges}
    results = out / "patients"
    cohort = Cohort([{"case_id": p["patient_id"], "inputs": patient_inputs(p, pred_dir, label_root),
                      "outputs": [results / f"{p['patient_id']}.json"], "patient": p} for p in patients],
                    status_dir=out / "status", overwrite=overwrite, distributed=distributed,
                    fingerprint=function_fingerprint(pred_dir, not prediction_dir, overrides, settings),
                    cleanup_dirs=[] if prediction_dir else [pred_dir, out / "curves"])
    share = cohort.plan()

    bar = tqdm(total=len(share), desc="patients", disable=cohort.rank > 0 or None, dynamic_ncols=True)
    close_before_errors(bar)
    for first in range(0, len(share), PATIENTS_PER_CHUNK):
        chunk = share[first:first + PATIENTS_PER_CHUNK]
        for case in chunk:
            read_patient_series(case["patient"])
        if not prediction_dir:
            segment_missing([c["patient"] for c in chunk], pred_dir, overrides, bundle_root, overwrite)
        for case in chunk:
            p, start = case["patient"], time.perf_counter()
            try:
                entry = patient_entry(p, pred_dir, label_root, classes, float(myocardial_density), ed_es, body_given,
                                      ranges)
                if entry.get("input") == "4D cine" and entry.get("auto"):
                    entry["curve_png"] = f"curves/{entry['patient_id']}.png"
                    plot_volume_curves(entry, out / entry["curve_png"])
                atomic_write_text(json.dumps(entry, indent=1, default=str) + "\n", results / f"{p['patient_id']}.json")
                cohort.record(p["patient_id"], "done", seconds=time.perf_counter() - start)
            except IdealInputError as e:
                (results / f"{p['patient_id']}.json").unlink(missing_ok=True)  # an earlier result must not stand in
                cohort.record(p["patient_id"], "failed", str(e), time.perf_counter() - start)
            release_patient_series(p)
            bar.update(1)
    bar.close()
    status = cohort.finish()
    failed = status["failures"]
    model = model_label(overrides["model_path"]) if not prediction_dir and overrides.get("model_path") else None
    report = write_cohort_report(out, data, pred_dir, classes, float(myocardial_density), ranges, patients, status,
                                 model) if cohort.rank == 0 else {}
    cohort.barrier()  # no process exits (torchrun would stop the others) before rank 0 has written the report
    if failed and exit_on_failure:
        raise SystemExit(1)
    return report


def write_cohort_report(out: Path, data: Path, pred_dir: Path, classes: Mapping[str, int], density: float,
                        ranges: Sequence[Mapping], patients: Sequence[dict], status: Mapping,
                        model: str | None = None) -> dict:
    """The report of every patient, merged from ``patients/<id>.json`` and the cohort's status; print its summary.
    ``model``: the label of the model that segmented (``None``: the labels of ``pred_dir`` were given)."""
    from ..errors import print_error

    reasons = {c["case_id"]: c["reason"] or "not computed in this run" for c in status["cases"] if c["status"] != "done"}
    entries = []
    for p in patients:
        pid = p["patient_id"]
        if pid in reasons:
            entries.append({"patient_id": pid, "status": "not computed", "reason": reasons[pid]})
        else:
            entries.append(json.loads((out / "patients" / f"{pid}.json").read_text(encoding="utf-8")))
    with_ref = [e for e in entries if e.get("auto") and e.get("reference")]
    names = list(INDEX_NAMES)
    report = {"dataset_dir": str(data), "prediction_dir": str(pred_dir), "model": model, "classes": dict(classes),
              "myocardial_density": density, "reference_ranges": ranges, "patients": entries, "agreement": None}
    units = report_units(next((e.get("unit") for e in entries if e.get("unit")), None), density)
    if with_ref:
        if len({e["unit"] for e in with_ref}) > 1:
            logger.warning("patients mix mL and voxel units: agreement statistics mix them too")
        auto = [clinical_values(e["auto"]) for e in with_ref]
        ref = [clinical_values(e["reference"]) for e in with_ref]
        report["agreement"] = agreement_table(auto, ref, names + CLINICAL_NAMES)
        plot_agreement(auto, ref, names, units, out / "bland_altman.png", out / "scatter.png")
    write_reports(out, report, units)
    failed = [e for e in entries if e["status"] != "ok"]
    print(f"ideal-monai function: {len(entries) - len(failed)} of {len(entries)} patient(s) computed; report: "
          f"{out / 'report.md'}")
    for e in failed:
        print_error(f"{e['patient_id']}: not computed: {e['reason']}")
    return report
