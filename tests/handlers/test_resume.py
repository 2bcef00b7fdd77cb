"""Training that survives interruption, and reproducible training.

* ``kill -9`` of a real ``python -m monai.bundle run pretrain|finetune`` process after its first
  epoch checkpoint, then the same command again: it resumes from the last full checkpoint
  (weights, optimizer, scheduler, iteration, RNG, best validation metric; the consistency ramp-up
  follows the restored iteration) and its final weights equal, tensor for tensor, those of an
  uninterrupted run with the same seed. The loss (and lambda) logged after the resume equal the
  uninterrupted run's at the same iterations.
* Two runs with the same seed and data on CPU log identical loss traces.
* A non-finite loss stops training with a one-line message and keeps the last good checkpoint
  (``nonfinite="skip"`` drops the batch instead); rerunning then resumes from that checkpoint.

Tiny settings (40x40x4 volumes, patch 32, features [4, 8, 8, 8, 8]) keep this to seconds of CPU.
"""

from __future__ import annotations

import math
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
from ideal_monai.evaluation import read_scalars

CONFIGS = Path(__file__).resolve().parents[2] / "bundle" / "configs"
SMALL = [4, 8, 8, 8, 8]
COMMON = {"patch_size": [32, 32], "features": SMALL, "seed": 3}
STAGES = {
    # run id: (config, overrides, checkpoint, final weights, TensorBoard folder)
    "pretrain": ("pretrain.json", {**COMMON, "batch_size": 8, "iterations_per_epoch": 3},
                 "pretrain_checkpoint.pt", "pretrained_encoder.pt", "pretrain"),
    # iterations_per_epoch 5 is not a multiple of the 3 labeled batches: epochs do not align with
    # passes over the loader, the case Ignite would otherwise carry across epochs.
    "finetune": ("train.json", {**COMMON, "use_pretrained": False, "num_val": 1, "batch_size_labeled": 4,
                                "batch_size_unlabeled": 4, "iterations_per_epoch": 5, "sw_batch_size": 4,
                                "learning_rate": 0.05},
                 "finetune_checkpoint.pt", "model_final.pt", "finetune"),
}
# Fine-tuning with everything random the pseudo-label keys add: copy-paste boxes, strong views, an EMA teacher.
STAGES["finetune_mixed"] = ("train.json", {**STAGES["finetune"][1], "copy_paste": True, "strong_augmentation": True,
                                           "pseudo_label_weight": 0.5}, *STAGES["finetune"][2:])
#: The bundle run id of each entry of STAGES.
RUN_ID = {"finetune_mixed": "finetune"}
EPOCHS = 8


def write_dataset(root: Path, n: int = 4, shape=(40, 40, 4)) -> Path:
    """ACDC layout, a ring-shaped 'heart' on noise per frame (labels 0-3)."""
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    for i in range(n):
        rng = np.random.default_rng(i)
        pid = f"patient{i + 1:03d}"
        (root / pid).mkdir(parents=True, exist_ok=True)
        for frame in (1, 2):
            cy, cx = np.array(shape[:2]) // 2 + rng.integers(-3, 4, 2)
            r = np.hypot(yy - cy, xx - cx)
            lab = np.zeros(shape[:2], np.uint8)
            lab[r < 12], lab[r < 8] = 2, 3
            lab[(np.abs(yy - cy) < 4) & (xx > cx + 12) & (xx < cx + 18)] = 1
            lab = np.repeat(lab[..., None], shape[2], 2)
            img = (lab * 200.0 + rng.normal(100, 30, shape)).astype(np.int16)
            aff = np.diag([1.5, 1.5, 8.0, 1.0])
            nib.save(nib.Nifti1Image(img, aff), str(root / pid / f"{pid}_frame{frame:02d}.nii.gz"))
            nib.save(nib.Nifti1Image(lab, aff), str(root / pid / f"{pid}_frame{frame:02d}_gt.nii.gz"))
    return root


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("resume") / "data")


def command(run_id: str, bundle_root: Path, data: Path, max_epochs: int = EPOCHS) -> list[str]:
    config, overrides, *_ = STAGES[run_id]
    cmd = [sys.executable, "-m", "monai.bundle", "run", RUN_ID.get(run_id, run_id), "--config_file", str(CONFIGS / config),
           "--meta_file", str(CONFIGS / "metadata.json"), "--logging_file", str(CONFIGS / "logging.conf"),
           "--bundle_root", str(bundle_root), "--dataset_dir", str(data), "--max_epochs", str(max_epochs)]
    for key, value in overrides.items():
        cmd += [f"--{key}", repr(value)]
    return cmd


ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def checkpoint_epoch(path: Path) -> int:
    """The epoch of a training checkpoint, or -1 while there is none (writes are atomic renames)."""
    if not path.exists():
        return -1
    return int(torch.load(path, map_location="cpu", weights_only=True)["engine"]["epoch"])


def assert_same_tensors(a: Path, b: Path) -> None:
    sa, sb = (torch.load(p, map_location="cpu", weights_only=True) for p in (a, b))
    assert sa.keys() == sb.keys()
    differ = {k: float((sa[k].double() - sb[k].double()).abs().max()) for k in sa if not torch.equal(sa[k], sb[k])}
    assert not differ, f"{len(differ)} of {len(sa)} tensors differ in {b.name}: {dict(list(differ.items())[:5])}"


@pytest.mark.parametrize("run_id", list(STAGES))
def test_kill_9_then_rerun_resumes_and_matches_uninterrupted(run_id, dataset, tmp_path):
    _, _, ckpt_name, final_name, tb = STAGES[run_id]
    reference, resumed = tmp_path / "reference", tmp_path / "resumed"

    # 1. the uninterrupted run
    ref = subprocess.run(command(run_id, reference, dataset), env=ENV, capture_output=True, text=True, timeout=600)
    assert ref.returncode == 0, ref.stderr[-3000:]

    # 2. the same command, killed with SIGKILL once its first epoch checkpoint is on disk
    ckpt = resumed / "models" / ckpt_name
    proc = subprocess.Popen(command(run_id, resumed, dataset), env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while checkpoint_epoch(ckpt) < 1 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, f"the run ended by itself (rc {proc.returncode}) before it was killed"
    killed_at = checkpoint_epoch(ckpt)
    assert 1 <= killed_at < EPOCHS
    assert not (resumed / "models" / final_name).exists() or run_id == "pretrain"  # pretrain saves every epoch

    # 3. the same command again: resumes and finishes
    again = subprocess.run(command(run_id, resumed, dataset), env=ENV, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"at epoch {killed_at}" in again.stdout and "resumed from" in again.stdout, again.stdout[-3000:]

    # final weights equal the uninterrupted run's, tensor for tensor
    assert_same_tensors(reference / "models" / final_name, resumed / "models" / final_name)
    if run_id.startswith("finetune"):  # the best model and the average too: both are part of the checkpoint
        assert_same_tensors(reference / "models" / "model_ema.pt", resumed / "models" / "model_ema.pt")
        assert_same_tensors(reference / "models" / "model.pt", resumed / "models" / "model.pt")
    full_ref = torch.load(reference / "models" / ckpt_name, weights_only=True)
    full_res = torch.load(ckpt, weights_only=True)
    assert full_res["engine"] == full_ref["engine"] == {"epoch": EPOCHS, "iteration": full_ref["engine"]["iteration"]}
    assert full_res["lr_scheduler"] == full_ref["lr_scheduler"]
    # optimizer state (SGD momentum / AdamW moments) equal too
    for k, v in full_ref["optimizer"]["state"].items():
        for name, t in v.items():
            assert torch.equal(torch.as_tensor(t), torch.as_tensor(full_res["optimizer"]["state"][k][name])), (k, name)

    # everything logged (loss, and lambda: the ramp-up position) equals the uninterrupted run's at
    # every iteration, including the ones of the killed epoch that the resumed run did again
    ref_series, res_series = read_scalars(reference / "runs" / tb), read_scalars(resumed / "runs" / tb)
    tags = [t for t in ref_series if t.startswith("loss") or t == "lambda"]
    assert tags
    for tag in tags:
        ref_by_step = dict(ref_series[tag])
        seen = {}
        for step, value in res_series[tag]:
            seen.setdefault(step, set()).add(value)
        assert sorted(seen) == sorted(ref_by_step), tag
        assert all(values == {ref_by_step[s]} for s, values in seen.items()), tag
    # no temporary file left by the atomic writers (the kill may interrupt one: it is swept at resume)
    assert not [p.name for p in (resumed / "models").iterdir() if p.name.startswith(".")]


# ---------------------------------------------------------------------------------------------
# in-process runs: determinism and the non-finite loss policy


def _run(run_id: str, bundle_root: Path, data: Path, **extra) -> int:
    """``run_bundle`` single-threaded, ending like ``python -m monai.bundle run`` (excepthook, exit 1)."""
    config, overrides, *_ = STAGES[run_id]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run_bundle(RUN_ID.get(run_id, run_id), bundle_root=str(bundle_root), dataset_dir=str(data), **{**overrides, **extra})
        return 0
    except SystemExit as e:
        return int(e.code or 0)
    except BaseException:  # noqa: BLE001
        sys.excepthook(*sys.exc_info())
        return 1
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _restore_logging():
    import logging

    def loggers():
        found = {"": logging.getLogger()}
        found.update({n: lg for n, lg in logging.root.manager.loggerDict.items() if isinstance(lg, logging.Logger)})
        return found

    saved = {n: (lg.handlers[:], lg.level) for n, lg in loggers().items()}
    yield
    for name, lg in loggers().items():
        handlers, level = saved.get(name, ([], logging.NOTSET))
        lg.handlers[:] = handlers
        lg.setLevel(level)


@pytest.mark.parametrize("run_id", list(STAGES))
def test_same_seed_same_data_gives_identical_loss_traces(run_id, dataset, tmp_path):
    tb = STAGES[run_id][4]
    traces = []
    for name in ("a", "b"):
        assert _run(run_id, tmp_path / name, dataset, max_epochs=2) == 0
        traces.append(read_scalars(tmp_path / name / "runs" / tb))
    assert traces[0]["loss"] and len(traces[0]["loss"]) == 2 * STAGES[run_id][1]["iterations_per_epoch"]
    assert traces[0] == traces[1]
    assert_same_tensors(tmp_path / "a" / "models" / STAGES[run_id][3], tmp_path / "b" / "models" / STAGES[run_id][3])


class NanAfter:
    """A loss that turns NaN after ``calls`` calls (a diverging run, on purpose)."""

    def __init__(self, inner, calls: int):
        self.inner, self.calls, self.count = inner, calls, 0

    def __call__(self, *args):
        self.count += 1
        loss = self.inner(*args)
        return loss * float("nan") if self.count > self.calls else loss


def _nan_loss(run_id: str, calls_before: int):
    if run_id == "finetune":
        from monai.losses import DiceCELoss

        # two streams: two supervised-loss calls per iteration
        return {"train#supervised_loss": NanAfter(DiceCELoss(to_onehot_y=True, softmax=True), 2 * calls_before)}
    from ideal_monai.losses import DenseLocalContrastiveLoss

    # both directions and one dense level: two calls per iteration
    return {"pretraining#dense_loss": NanAfter(DenseLocalContrastiveLoss(temperature=0.1), 2 * calls_before)}


@pytest.mark.parametrize("run_id", ["pretrain", "finetune"])
def test_nonfinite_loss_stops_and_keeps_the_last_good_checkpoint(run_id, dataset, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("IDEAL_MONAI_DEBUG", raising=False)
    _, overrides, ckpt_name, final_name, _ = STAGES[run_id]
    per_epoch = overrides["iterations_per_epoch"]
    root = tmp_path / "run"
    capsys.readouterr()
    # NaN from the 2nd iteration of epoch 3: epochs 1 and 2 are good
    rc = _run(run_id, root, dataset, max_epochs=4, **_nan_loss(run_id, 2 * per_epoch + 1))
    err = capsys.readouterr().err
    assert rc == 1
    lines = [ln for ln in err.splitlines() if ln.startswith("ideal-monai: error:")]
    assert len(lines) == 1 and "non-finite loss" in lines[0] and "epoch 3" in lines[0], err[-2000:]
    assert "Traceback" not in err
    ckpt = torch.load(root / "models" / ckpt_name, weights_only=True)
    assert ckpt["engine"] == {"epoch": 2, "iteration": 2 * per_epoch}
    assert all(torch.isfinite(t).all() for t in ckpt["network"].values() if t.is_floating_point())
    if run_id == "finetune":
        assert not (root / "models" / final_name).exists()
    else:  # the per-epoch encoder export is the epoch-2 network, not a NaN one
        enc = torch.load(root / "models" / final_name, weights_only=True)
        assert all(torch.equal(enc[k], ckpt["network"][k]) for k in enc)
    assert not [p for p in (root / "models").iterdir() if p.name.startswith(".")]

    # the same command with a healthy loss resumes from that checkpoint and finishes
    assert _run(run_id, root, dataset, max_epochs=4) == 0
    assert torch.load(root / "models" / ckpt_name, weights_only=True)["engine"]["epoch"] == 4


def test_nonfinite_skip_drops_the_batch_and_finishes(dataset, tmp_path):
    run_id = "finetune"
    per_epoch = STAGES[run_id][1]["iterations_per_epoch"]
    loss = _nan_loss(run_id, per_epoch)  # every iteration of epoch 2 is NaN
    assert _run(run_id, tmp_path, dataset, max_epochs=2, nonfinite="skip", **loss) == 0
    final = torch.load(tmp_path / "models" / "model_final.pt", weights_only=True)
    assert torch.load(tmp_path / "models" / "finetune_checkpoint.pt", weights_only=True)["engine"]["epoch"] == 2
    assert all(torch.isfinite(t).all() for t in final.values() if t.is_floating_point())
    series = read_scalars(tmp_path / "runs" / "finetune")
    assert all(math.isnan(v) for s, v in series["loss"] if s > per_epoch)
    assert all(math.isfinite(v) for s, v in series["loss"] if s <= per_epoch)
