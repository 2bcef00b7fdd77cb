"""Cohort runs through the ``ideal-monai`` command, in real processes: two processes under ``torchrun`` write
what one writes, each case once; a run killed with ``kill -9`` half-way and started again does only the rest;
``function`` the same per patient; ``ideal-monai status`` tells a script how far a run is."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from ideal_monai.bundle_runner import run_bundle
from ideal_monai.cli import main as cli_main
from ideal_monai.data.synthetic import write_synthetic_dataset
from ideal_monai.errors import find_input_error
from ideal_monai.networks import DualDecoderUNet

pytestmark = pytest.mark.skipif(not (torch.distributed.is_available() and torch.distributed.is_gloo_available()),
                                reason="torch.distributed with the gloo backend is not available")

FEATURES = [4, 8, 8, 8, 8]
SMALL = ["--patch_size", "[32,32]", "--features", str(FEATURES).replace(" ", "")]
SMALL_OVERRIDES = {"patch_size": [32, 32], "features": FEATURES}
# One thread per process, so one process and two compute every case with the same kernels.
ENV = dict(os.environ, OMP_NUM_THREADS="1")


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> dict:
    """Four phantom patients (ED/ES files and a 4D cine each: 12 image files) and a small random model."""
    root = tmp_path_factory.mktemp("cohort")
    write_synthetic_dataset(root / "data", num_cases=4, seed=3, with_cine=True, num_frames=4)
    (root / "bundle" / "models").mkdir(parents=True)
    torch.manual_seed(0)
    torch.save(DualDecoderUNet(features=FEATURES).state_dict(), root / "bundle" / "models" / "model.pt")
    return {"root": root, "data": root / "data", "bundle": root / "bundle"}


def _command(nproc: int, *args: str) -> list[str]:
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"] \
        if nproc > 1 else [sys.executable]
    return [*launcher, "-m", "ideal_monai.cli", *args]


def _run(nproc: int, *args: str, expect: int = 0) -> subprocess.CompletedProcess:
    proc = subprocess.run(_command(nproc, *args), env=ENV, capture_output=True, text=True, timeout=600)
    assert proc.returncode == expect, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc


def _records(out: Path) -> list[dict]:
    plan = json.loads((out / "status" / "plan.json").read_text())
    lines = [json.loads(line) for log in sorted((out / "status").glob("rank*.jsonl")) for line in log.open()]
    return [r for r in lines if r["run_id"] == plan["run_id"]]


def _labels(out: Path) -> dict[str, tuple]:
    found = {}
    for p in sorted(out.glob("*.nii.gz")):
        img = nib.load(str(p))
        found[p.name] = (np.asarray(img.dataobj), img.affine, img.header.binaryblock)
    return found


def _status(out: Path, capsys) -> tuple[int, str]:
    """``ideal-monai status OUT`` in this process: its exit status and what it printed."""
    capsys.readouterr()
    code = cli_main(["status", str(out)])
    return code, capsys.readouterr().out


def _infer(cohort, out: Path, *extra: str) -> list[str]:
    return ["infer", "--dataset_dir", str(cohort["data"]), "--output_dir", str(out), "--bundle_root",
            str(cohort["bundle"]), *SMALL, *extra]


def test_two_processes_write_what_one_writes_each_file_once(cohort, tmp_path):
    _run(1, *_infer(cohort, tmp_path / "one"))
    _run(2, *_infer(cohort, tmp_path / "two"))
    one, two = _labels(tmp_path / "one"), _labels(tmp_path / "two")
    assert len(one) == 12 and one.keys() == two.keys()
    for name in one:
        np.testing.assert_array_equal(one[name][0], two[name][0], err_msg=name)
        np.testing.assert_array_equal(one[name][1], two[name][1])
        assert one[name][2] == two[name][2], f"{name}: headers differ"
    records = _records(tmp_path / "two")
    assert sorted(r["case_id"] for r in records) == sorted(n[:-len(".nii.gz")] for n in one)  # each exactly once
    assert {r["rank"] for r in records} == {0, 1}
    status = json.loads((tmp_path / "two" / "status" / "status.json").read_text())
    assert (status["done"], status["failed"], status["left"], status["complete"]) == (12, 0, 0, True)


def test_a_run_killed_half_way_then_started_again_does_only_the_rest(cohort, tmp_path, capsys):
    out = tmp_path / "out"
    proc = subprocess.Popen(_command(1, *_infer(cohort, out)), env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    log = out / "status" / "rank0.jsonl"
    deadline = time.monotonic() + 300
    while not (log.is_file() and log.read_text().count("\n") >= 3):
        assert proc.poll() is None and time.monotonic() < deadline, "the run ended before it could be killed"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    finished = _records(out)
    assert 3 <= len(finished) < 12, "kill -9 must land half-way"
    kept = {f"{r['case_id']}.nii.gz": (out / f"{r['case_id']}.nii.gz").stat().st_mtime_ns for r in finished}

    code, text = _status(out, capsys)
    assert code == 1 and f"12 case(s): {len(finished)} done, 0 failed, {12 - len(finished)} left" in text

    run_bundle("inference", bundle_root=str(cohort["bundle"]), dataset_dir=str(cohort["data"]), output_dir=str(out),
               **SMALL_OVERRIDES)
    redone = _records(out)
    assert len(redone) == 12 - len(finished)  # only the rest
    assert not {f"{r['case_id']}.nii.gz" for r in redone} & kept.keys()
    assert {name: (out / name).stat().st_mtime_ns for name in kept} == kept  # finished files untouched
    assert len(list(out.glob("*.nii.gz"))) == 12
    assert not [p for p in out.iterdir() if p.name.startswith(".")], "no temporary file of the killed run left"
    code, text = _status(out, capsys)
    assert code == 0 and "12 done, 0 failed, 0 left" in text


def test_a_replaced_scan_is_segmented_again_and_another_model_is_refused(cohort, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for name in ("patient001_frame01.nii.gz", "patient002_frame01.nii.gz"):
        (data / name).write_bytes((cohort["data"] / name.split("_")[0] / name).read_bytes())
    out = tmp_path / "out"

    def infer(bundle_root, **kwargs):
        run_bundle("inference", bundle_root=str(bundle_root), dataset_dir=str(data), output_dir=str(out),
                   **SMALL_OVERRIDES, **kwargs)

    infer(cohort["bundle"])
    first = {p.name: p.stat().st_mtime_ns for p in out.glob("*.nii.gz")}
    later = time.time() + 5
    os.utime(data / "patient002_frame01.nii.gz", (later, later))  # the scan was exported again
    infer(cohort["bundle"])
    assert [r["case_id"] for r in _records(out)] == ["patient002_frame01"]
    assert (out / "patient001_frame01.nii.gz").stat().st_mtime_ns == first["patient001_frame01.nii.gz"]

    other = tmp_path / "other"
    (other / "models").mkdir(parents=True)
    torch.manual_seed(1)
    torch.save(DualDecoderUNet(features=FEATURES).state_dict(), other / "models" / "model.pt")
    before = {p.name: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    with pytest.raises(Exception) as info:
        infer(other)
    assert "another model or settings (model_sha256 differ" in str(find_input_error(info.value))
    assert {p.name: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == before
    infer(other, overwrite=True)
    assert len(_records(out)) == 2


def test_function_two_processes_report_what_one_reports_and_a_rerun_does_only_the_rest(cohort, tmp_path):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(cohort["data"], data)
    (data / "patient005").mkdir()  # a patient whose scan cannot be read: it fails alone, in either run
    (data / "patient005" / "patient005_4d.nii.gz").write_bytes(b"\x1f\x8b\x08not really gzip")

    def function(nproc, out):
        return _run(nproc, "function", "--dataset_dir", str(data), "--output_dir", str(out), "--bundle_root",
                    str(cohort["bundle"]), *SMALL, expect=1)

    function(1, tmp_path / "one")
    # with a failed patient, the report is still written before any process exits (torchrun stops them all
    # as soon as one exits with an error)
    function(2, tmp_path / "two")
    assert (tmp_path / "one" / "function.csv").read_text() == (tmp_path / "two" / "function.csv").read_text()
    one = json.loads((tmp_path / "one" / "function.json").read_text())["patients"]
    two = json.loads((tmp_path / "two" / "function.json").read_text())["patients"]
    assert one == two and [e["status"] for e in one] == ["ok"] * 4 + ["not computed"]
    assert sorted(r["case_id"] for r in _records(tmp_path / "two")) == [f"patient00{i}" for i in range(1, 6)]

    # one patient's result lost (as if its process had been killed before writing it): only it and the failed
    # one are computed again
    (tmp_path / "two" / "patients" / "patient003.json").unlink()
    seg = tmp_path / "two" / "segmentations" / "patient001_4d.nii.gz"
    seg_time = seg.stat().st_mtime_ns
    with pytest.raises(SystemExit):
        run_bundle("function", bundle_root=str(cohort["bundle"]), dataset_dir=str(data),
                   output_dir=str(tmp_path / "two"), **SMALL_OVERRIDES)
    assert sorted(r["case_id"] for r in _records(tmp_path / "two")) == ["patient003", "patient005"]
    assert seg.stat().st_mtime_ns == seg_time  # its segmentation was not redone either
    assert json.loads((tmp_path / "two" / "function.json").read_text())["patients"] == one


def test_function_records_each_chunk_of_patients_before_segmenting_the_next(cohort, tmp_path, monkeypatch):
    import ideal_monai.function.workflow as workflow

    monkeypatch.setattr(workflow, "PATIENTS_PER_CHUNK", 2)
    log = tmp_path / "out" / "status" / "rank0.jsonl"
    seen, segment = [], workflow.segment_missing

    def watched(patients, *args, **kwargs):
        seen.append((len(patients), log.read_text().count("\n") if log.is_file() else 0))
        return segment(patients, *args, **kwargs)

    monkeypatch.setattr(workflow, "segment_missing", watched)
    run_bundle("function", bundle_root=str(cohort["bundle"]), dataset_dir=str(cohort["data"]),
               output_dir=str(tmp_path / "out"), **SMALL_OVERRIDES)
    assert seen == [(2, 0), (2, 2)]  # the first two patients were recorded before the next two were segmented
