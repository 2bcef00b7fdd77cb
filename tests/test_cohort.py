"""A cohort's bookkeeping: which cases are done, shares, status records, another model refused."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from ideal_monai.cohort import Cohort, outputs_state, read_status
from ideal_monai.errors import IdealInputError


def _touch(path: Path, mtime: float) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    os.utime(path, (mtime, mtime))
    return path


def test_outputs_are_done_only_when_all_exist_and_none_is_older_than_an_input(tmp_path):
    now = time.time()
    image = _touch(tmp_path / "in" / "a.nii.gz", now - 100)
    label, probs = tmp_path / "out" / "a.nii.gz", tmp_path / "out" / "a_probs.nii.gz"
    assert outputs_state([image], [label, probs]) == "missing"
    _touch(label, now - 50)
    assert outputs_state([image], [label, probs]) == "partial"
    _touch(probs, now - 50)
    assert outputs_state([image], [label, probs]) == "done"
    os.utime(image, (now, now))  # the scan was replaced after it was segmented
    assert outputs_state([image], [label, probs]) == "stale"


def test_a_dicom_folder_input_is_as_new_as_its_newest_file(tmp_path):
    now = time.time()
    series = tmp_path / "series"
    _touch(series / "IM0001.dcm", now - 100)
    out = _touch(tmp_path / "seg.nii.gz", now - 50)
    assert outputs_state([series], [out]) == "done"
    _touch(series / "IM0002.dcm", now)
    assert outputs_state([series], [out]) == "stale"


def _cases(tmp_path: Path, n: int) -> list[dict]:
    cases = []
    for i in range(n):
        image = _touch(tmp_path / "in" / f"c{i}.nii.gz", time.time() - 100)
        cases.append({"case_id": f"c{i}", "inputs": [image], "outputs": [tmp_path / "out" / f"c{i}.nii.gz"]})
    return cases


def test_rerun_plans_only_what_is_left_and_status_counts_every_case(tmp_path):
    cases = _cases(tmp_path, 5)
    status_dir = tmp_path / "out" / "status"
    first = Cohort(cases, status_dir, fingerprint={"model": "a"})
    assert [c["case_id"] for c in first.plan()] == ["c0", "c1", "c2", "c3", "c4"]
    for cid in ("c0", "c1"):  # two finished, then the run was killed
        _touch(tmp_path / "out" / f"{cid}.nii.gz", time.time())
        first.record(cid, "done", seconds=2.0)
    first.record("c2", "failed", "c2.nii.gz: not a NIfTI file")
    mid = read_status(tmp_path / "out")
    assert (mid["done"], mid["failed"], mid["left"], mid["complete"]) == (2, 1, 2, False)
    assert mid["failures"] == [{"case_id": "c2", "reason": "c2.nii.gz: not a NIfTI file"}]

    again = Cohort(cases, status_dir, fingerprint={"model": "a"})
    assert [c["case_id"] for c in again.plan()] == ["c2", "c3", "c4"]  # the failed one is tried again
    fresh = read_status(tmp_path / "out")
    assert (fresh["done"], fresh["failed"], fresh["left"]) == (2, 0, 3)  # done before the rerun still count
    for cid in ("c2", "c3", "c4"):
        again.record(cid, "done", seconds=1.0)
    final = again.finish()
    assert final["complete"] and final["done"] == 5
    saved = json.loads((status_dir / "status.json").read_text())
    assert saved["done"] == 5 and saved["left"] == 0
    assert (status_dir / "status.csv").read_text().count("\n") == 6


def test_a_line_cut_by_a_kill_is_skipped(tmp_path):
    cases = _cases(tmp_path, 2)
    cohort = Cohort(cases, tmp_path / "out" / "status")
    cohort.plan()
    cohort.record("c0", "done", seconds=1.0)
    with open(tmp_path / "out" / "status" / "rank0.jsonl", "a") as f:
        f.write('{"run_id": "' + cohort.run_id + '", "case_id": "c1", "sta')
    state = read_status(tmp_path / "out")
    assert (state["done"], state["left"]) == (1, 1)


def test_outputs_of_another_model_are_refused_unless_overwritten(tmp_path):
    cases = _cases(tmp_path, 2)
    status_dir = tmp_path / "out" / "status"
    Cohort(cases, status_dir, fingerprint={"model_sha256": "aaa", "patch_size": [128, 128]}).plan()
    _touch(tmp_path / "out" / "c0.nii.gz", time.time())
    before = (status_dir / "plan.json").read_text()
    with pytest.raises(IdealInputError, match="another model or settings.*model_sha256"):
        Cohort(cases, status_dir, fingerprint={"model_sha256": "bbb", "patch_size": [128, 128]}).plan()
    assert (status_dir / "plan.json").read_text() == before  # nothing written
    redo = Cohort(cases, status_dir, overwrite=True, fingerprint={"model_sha256": "bbb", "patch_size": [128, 128]})
    assert len(redo.plan()) == 2


def test_two_inputs_with_one_case_id_are_refused(tmp_path):
    cases = _cases(tmp_path, 1) * 2
    with pytest.raises(IdealInputError, match="c0: two inputs share this case id"):
        Cohort(cases, tmp_path / "status")


def test_temporaries_of_a_killed_run_are_removed_at_the_start(tmp_path):
    cases = _cases(tmp_path, 1)
    left = _touch(tmp_path / "out" / ".c0.nii.gz.abcd1234.tmp.nii.gz", time.time())
    Cohort(cases, tmp_path / "out" / "status").plan()
    assert not left.exists()


def test_no_status_dir_writes_nothing_and_plans_all_with_overwrite(tmp_path):
    cases = _cases(tmp_path, 3)
    _touch(tmp_path / "out" / "c1.nii.gz", time.time())
    cohort = Cohort(cases, "", overwrite=True)
    assert len(cohort.plan()) == 3
    cohort.record("c0", "done")
    assert cohort.finish() == {}
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["c1.nii.gz"]


def test_status_of_a_folder_without_a_run_is_a_one_line_error(tmp_path):
    with pytest.raises(IdealInputError, match="holds no cohort run"):
        read_status(tmp_path)


def test_an_interrupted_overwrite_is_finished_by_the_next_run_not_taken_as_done(tmp_path):
    cases = _cases(tmp_path, 3)
    status_dir = tmp_path / "out" / "status"
    for cid in ("c0", "c1", "c2"):  # model A's outputs, newer than the inputs
        _touch(tmp_path / "out" / f"{cid}.nii.gz", time.time())
    redo = Cohort(cases, status_dir, overwrite=True, fingerprint={"model_sha256": "B"})
    assert len(redo.plan()) == 3
    redo.record("c0", "done")  # then the run was killed (or c1, c2 failed): their files are still model A's
    again = Cohort(cases, status_dir, fingerprint={"model_sha256": "B"})
    assert [c["case_id"] for c in again.plan()] == ["c1", "c2"]
    again.record("c1", "done")
    third = Cohort(cases, status_dir, fingerprint={"model_sha256": "B"})
    assert [c["case_id"] for c in third.plan()] == ["c2"]
    assert read_status(tmp_path / "out")["done"] == 2


def test_another_model_is_refused_where_only_intermediate_files_exist(tmp_path):
    """``function`` killed after segmenting, before any patient's result: its segmentations are model A's."""
    cases = _cases(tmp_path, 2)
    status_dir, segmentations = tmp_path / "out" / "status", tmp_path / "out" / "segmentations"
    Cohort(cases, status_dir, fingerprint={"model_sha256": "A"}, cleanup_dirs=[segmentations]).plan()
    _touch(segmentations / "c0.nii.gz", time.time())
    with pytest.raises(IdealInputError, match="another model or settings"):
        Cohort(cases, status_dir, fingerprint={"model_sha256": "B"}, cleanup_dirs=[segmentations]).plan()
